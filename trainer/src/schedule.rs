//! The learning-rate schedule: linear warmup from 0 to `lr` over `warmup_steps`, then constant,
//! cosine or linear decay to `lr * final_lr_fraction` at the last step. A pure function of the
//! step, so resuming needs no scheduler state beyond the step.

use crate::{OptimConfig, config::Schedule};

/// Learning rate for optimizer step `step` (0-based) of `total`.
pub fn learning_rate(cfg: &OptimConfig, step: usize, total: usize) -> f64 {
    let lr = cfg.lr;
    if step < cfg.warmup_steps {
        return lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = total.saturating_sub(cfg.warmup_steps).max(1) as f64;
    let t = ((step - cfg.warmup_steps) as f64 / span).clamp(0.0, 1.0);
    let floor = lr * cfg.final_lr_fraction;
    match cfg.schedule {
        Schedule::Constant => lr,
        Schedule::Cosine => floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
        Schedule::Linear => lr + (floor - lr) * t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_reaches_the_floor() {
        let cfg = OptimConfig {
            lr: 1e-3,
            betas: [0.9, 0.99],
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 10,
            schedule: Schedule::Cosine,
            final_lr_fraction: 0.5,
            grad_clip: None,
            accumulate: 1,
        };
        assert!((learning_rate(&cfg, 0, 110) - 1e-4).abs() < 1e-12);
        assert!((learning_rate(&cfg, 9, 110) - 1e-3).abs() < 1e-12);
        assert!((learning_rate(&cfg, 10, 110) - 1e-3).abs() < 1e-12);
        assert!((learning_rate(&cfg, 60, 110) - 7.5e-4).abs() < 1e-9);
        assert!((learning_rate(&cfg, 110, 110) - 5e-4).abs() < 1e-12);
        let lin = OptimConfig {
            schedule: Schedule::Linear,
            warmup_steps: 0,
            final_lr_fraction: 0.0,
            ..cfg
        };
        assert!((learning_rate(&lin, 50, 100) - 5e-4).abs() < 1e-12);
    }
}
