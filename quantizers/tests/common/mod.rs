//! Helpers shared by the integration tests: host/device conversion and the golden tolerance.
#![allow(dead_code)]

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

pub type B = burn::backend::Autodiff<burn::backend::Flex>;

pub fn device() -> burn::tensor::Device<B> {
    Default::default()
}

pub fn floats<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data")
}

pub fn ints<Bk: Backend, const D: usize>(t: Tensor<Bk, D, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("i64 data")
}

pub fn tensor2(values: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(values, shape), &device())
}

/// `|got - want| <= atol + rtol * |want|` elementwise; the error names the worst element.
pub fn check_close(
    name: &str,
    got: &[f32],
    want: &[f32],
    atol: f32,
    rtol: f32,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{name}: {} values, want {}", got.len(), want.len()));
    }
    let mut worst: Option<(usize, f32)> = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        let within = excess <= 0.0; // false for NaN
        if !within && worst.is_none_or(|(_, e)| excess > e || excess.is_nan()) {
            worst = Some((i, excess));
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "{name}: element {i}: got {}, want {} (tolerance {atol} + {rtol}*|want|)",
            got[i], want[i]
        )),
    }
}

/// A small deterministic normal sampler (Box-Muller over a seeded ChaCha stream).
pub fn randn(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random_range(1e-7..1.0);
            let u2: f32 = rng.random_range(0.0..1.0);
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect()
}
