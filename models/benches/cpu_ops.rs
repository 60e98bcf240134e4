//! Forward + backward time of each CPU kernel against burn's own operation, same inputs, same
//! run (ratios; absolute times on shared machines are noisy):
//!
//! ```text
//! cargo bench -p models --bench cpu_ops [-- --reps 10]
//! ```
//!
//! Shapes are the Fashion-MNIST peer network's (batch 256), the small VQ-VAE's, and two
//! VideoGPT-style 3-D convolutions (8 frames of 32x32, 64 channels).

use std::time::Instant;

use burn::{
    backend::{Autodiff, Flex},
    nn::{
        GroupNormConfig, PaddingConfig2d, PaddingConfig3d,
        conv::{Conv2dConfig, Conv3dConfig},
    },
    tensor::{Distribution, Tensor},
};
use models::cpu;

type B = Autodiff<Flex>;

fn time(reps: usize, f: &dyn Fn()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn report(name: &str, reps: usize, f: &dyn Fn()) {
    let rotor = time(reps, f);
    let burn = cpu::with_reference_ops(|| time(reps, f));
    println!(
        "{{\"op\":\"{name}\",\"rotor_ms\":{rotor:.2},\"burn_ms\":{burn:.2},\"speedup\":{:.2}}}",
        burn / rotor
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10usize);
    let dev = Default::default();
    let x = |shape: [usize; 4]| {
        Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &dev).require_grad()
    };
    // Backward from a ones gradient of y's shape (no reduction op in the measurement).
    let fwd_bwd = |y: Tensor<B, 4>| {
        let _ = y.backward();
    };
    for (name, ci, co, side, batch) in [
        ("conv3x3 1->16 28x28 b256", 1, 16, 28, 256),
        ("conv3x3 16->32 14x14 b256", 16, 32, 14, 256),
        ("conv3x3 32->16 14x14 b256", 32, 16, 14, 256),
        ("conv3x3 128->128 32x32 b8", 128, 128, 32, 8),
        ("conv3x3 64->64 64x64 b8", 64, 64, 64, 8),
    ] {
        let conv = Conv2dConfig::new([ci, co], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<B>(&dev);
        let input = x([batch, ci, side, side]);
        report(name, reps, &|| fwd_bwd(cpu::conv2d(&conv, input.clone())));
    }
    for (name, k, stride) in [
        ("conv3d 3x3x3 64->64 2x8x32x32", 3, 1),
        ("conv3d 4x4x4 s2 64->64 2x8x32x32", 4, 2),
    ] {
        let conv = Conv3dConfig::new([64, 64], [k; 3])
            .with_stride([stride; 3])
            .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
            .init::<B>(&dev);
        let input =
            Tensor::<B, 5>::random([2, 64, 8, 32, 32], Distribution::Normal(0.0, 1.0), &dev)
                .require_grad();
        report(name, reps, &|| {
            let _ = cpu::conv3d(&conv, input.clone()).backward();
        });
    }
    let a = x([256, 16, 28, 28]);
    report("max_pool2x2 256x16x28x28", reps, &|| {
        fwd_bwd(cpu::max_pool2x2(a.clone()))
    });
    report("gelu 256x16x28x28", reps, &|| fwd_bwd(cpu::gelu(a.clone())));
    report("upsample2 256x16x14x14", reps, &|| {
        fwd_bwd(cpu::upsample_nearest2(a.clone().slice([
            0..256,
            0..16,
            0..14,
            0..14,
        ])))
    });
    let norm = GroupNormConfig::new(32, 128).init::<B>(&dev);
    let g = x([8, 128, 32, 32]);
    report("group_norm_silu 8x128x32x32", reps, &|| {
        fwd_bwd(cpu::group_norm_silu(&norm, g.clone()))
    });
}
