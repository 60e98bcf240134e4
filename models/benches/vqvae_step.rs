//! Forward + backward time of one training step of a small taming-style VQ-VAE on the CPU
//! backend (Flex): ch 64, ch_mult [1, 2, 2], one ResnetBlock per level, attention at 16x16,
//! 64x64 inputs, batch 8, rotation-trick VQ (1024 codes of width 64, EMA).
//!
//!     cargo bench -p models --bench vqvae_step [-- --reps 5]
//!
//! Prints one JSON line: median milliseconds per step and steps/s.

use std::time::Instant;

use burn::{
    backend::{Autodiff, Flex},
    tensor::{Distribution, Tensor},
};
use models::{AutoencoderConfig, VqModelConfig};
use quantizers::{Mode, QuantizerConfig, VqConfig};

type B = Autodiff<Flex>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    let device = Default::default();
    let cfg = VqModelConfig {
        autoencoder: AutoencoderConfig {
            ch: 64,
            ch_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![16],
            resolution: 64,
            in_channels: 3,
            out_ch: 3,
            z_channels: 64,
            dropout: 0.0,
            resamp_with_conv: true,
            double_z: false,
        },
        quantizer: QuantizerConfig::Vq(VqConfig::new(64, 1024)),
        init_from: None,
    };
    let model = cfg.init::<B>(&device).expect("valid config");
    let x = Tensor::<B, 4>::random([8, 3, 64, 64], Distribution::Uniform(-1.0, 1.0), &device);
    let step = || {
        let start = Instant::now();
        let out = model.forward(x.clone(), Mode::Train);
        let loss =
            (out.reconstruction - x.clone()).powi_scalar(2).mean() + out.encoded.quant.loss();
        let grads = loss.backward();
        let g = model.encoder.conv_in.weight.grad(&grads).expect("gradient");
        let _ = g.sum().into_scalar();
        start.elapsed().as_secs_f64() * 1e3
    };
    step();
    let mut times: Vec<f64> = (0..reps).map(|_| step()).collect();
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    println!(
        "{{\"bench\":\"vqvae_step_forward_backward\",\"backend\":\"flex\",\"ch\":64,\"ch_mult\":[1,2,2],\"resolution\":64,\"batch\":8,\"reps\":{reps},\"median_ms\":{ms:.1},\"steps_per_s\":{:.3}}}",
        1e3 / ms
    );
}
