//! Forward + backward time of the VQ layer with the rotation trick against STE, in the same run.
//!
//!     cargo bench -p quantizers --bench estimators [-- --reps 5]
//!     cargo bench -p quantizers --features wgpu --bench estimators -- --backend wgpu [--only-first]
//!     cargo bench -p quantizers --features cuda --bench estimators -- --backend cuda [--only-first]
//!
//! Prints one JSON line per case with the median times and the ratio rotation / STE (target
//! <= 1.10: the paper reports no measurable cost). Absolute times depend on the machine; compare
//! ratios only.

use std::time::Instant;

use burn::{
    backend::{Autodiff, Flex},
    tensor::{Distribution, Tensor, backend::AutodiffBackend},
};
use quantizers::{Estimator, Mode, Quantizer, VqConfig};

fn step<B: AutodiffBackend>(
    vq: &quantizers::VectorQuantizer<B>,
    x: &Tensor<B, 2>,
    g: &Tensor<B, 2>,
) -> f64 {
    let start = Instant::now();
    let x = x.clone().require_grad();
    let out = vq.quantize(x.clone(), Mode::Train);
    let loss = (out.quantized.clone() * g.clone()).sum() + out.loss();
    let grads = loss.backward();
    let grad = x.grad(&grads).expect("gradient");
    // Force completion of every queued op before stopping the clock.
    let _ = grad.sum().into_scalar();
    start.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    let backend = args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("flex");
    let mut sizes = vec![(65_536usize, 256usize, 1_024usize), (65_536, 4, 16_384)];
    if args.iter().any(|a| a == "--only-first") {
        sizes.truncate(1);
    }
    match backend {
        "flex" => run::<Autodiff<Flex>>("flex", &Default::default(), reps, &sizes),
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            run::<Autodiff<quantizers::burn_wgpu::Wgpu>>("wgpu", &Default::default(), reps, &sizes)
        }
        #[cfg(feature = "cuda")]
        "cuda" => run::<Autodiff<burn::backend::Cuda>>("cuda", &Default::default(), reps, &sizes),
        other => panic!(
            "--backend {other}: flex, wgpu (built with --features wgpu) or cuda (--features cuda)"
        ),
    }
}

fn run<B: AutodiffBackend>(
    name: &str,
    device: &B::Device,
    reps: usize,
    sizes: &[(usize, usize, usize)],
) {
    for &(n, d, k) in sizes {
        let x = Tensor::<B, 2>::random([n, d], Distribution::Normal(0.0, 1.0), device);
        let g = Tensor::<B, 2>::random([n, d], Distribution::Normal(0.0, 1.0), device);
        let build = |estimator| {
            let mut cfg = VqConfig::new(d, k);
            cfg.estimator = estimator;
            cfg.init::<B>(device).expect("valid config")
        };
        let ste = build(Estimator::Ste);
        let rot = build(Estimator::Rotation);
        step(&ste, &x, &g);
        step(&rot, &x, &g);
        let (mut ts, mut tr) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            // Alternate which estimator goes first so drift on a shared machine hits both.
            if rep % 2 == 0 {
                ts.push(step(&ste, &x, &g));
                tr.push(step(&rot, &x, &g));
            } else {
                tr.push(step(&rot, &x, &g));
                ts.push(step(&ste, &x, &g));
            }
        }
        let (s, r) = (median(ts), median(tr));
        println!(
            "{{\"bench\":\"vq_forward_backward\",\"backend\":\"{name}\",\"n\":{n},\"d\":{d},\"k\":{k},\"reps\":{reps},\"ste_ms\":{s:.1},\"rotation_ms\":{r:.1},\"ratio\":{:.3}}}",
            r / s
        );
    }
}
