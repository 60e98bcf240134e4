//! Training-step speed of rotor on the CPU backend (`Autodiff<Flex>` with rotor's CPU kernels),
//! for the workloads of issue 6. Each runs the REAL trainer (data loader, forward, rotation-trick
//! VQ, backward, AdamW) from a config file:
//!
//! - `peer`: `configs/peer_fashion_vq.toml` (vector-quantize-pytorch's Fashion-MNIST autoencoder,
//!   batch 256); PyTorch side: `../shared/peers/fashion_vq.py`.
//! - `vqvae`: `bench/vqvae_small.toml` (taming-style VQ-VAE, 64x64, batch 8); PyTorch side:
//!   `bench/taming_vqvae.py`.
//! - `vit`: `bench/vit_small.toml` (the ViT-VQGAN autoencoder, 64x64, patch 8, width 256, depth 4,
//!   batch 8); PyTorch side: `bench/enhancing_vit.py` (enhancing-transformers' own ViT modules).
//! - `video`: `bench/video_3dconv.toml` (the 3-D conv VQGAN, clips of 8 frames 64x64, batch 4);
//!   PyTorch side: `bench/tats_conv3d.py` (the same network in PyTorch).
//!
//! ```text
//! cargo bench -p trainer --bench cpu_step [-- --workload peer|vqvae|vit|video|all] [--rounds 3] [--baseline]
//! ```
//!
//! Prints one JSON line per workload: the median over rounds of steps/s. `--baseline` also runs
//! each workload with burn's own CPU operations (`models::cpu::with_reference_ops`), same
//! process and allocator, and prints its line and the speedup. `bench/compare.sh` runs
//! both sides in one go and prints the ratios. Needs `./scripts/fetch-data.sh` first.

use std::{path::Path, time::Instant};

use burn::backend::{Autodiff, Flex};
use trainer::{Resume, TrainConfig, Trainer};

type B = Autodiff<Flex>;

/// The allocator `launch` uses (see launch/src/main.rs).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Workload {
    name: &'static str,
    config: &'static str,
    warmup: usize,
    steps: usize,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "peer_fashion_vq",
        config: "configs/peer_fashion_vq.toml",
        warmup: 10,
        steps: 60,
    },
    Workload {
        name: "vqvae_small",
        config: "bench/vqvae_small.toml",
        warmup: 3,
        steps: 20,
    },
    Workload {
        name: "vit_small",
        config: "bench/vit_small.toml",
        warmup: 3,
        steps: 20,
    },
    Workload {
        name: "video_3dconv",
        config: "bench/video_3dconv.toml",
        warmup: 2,
        steps: 10,
    },
];

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let which = arg(&args, "--workload").unwrap_or_else(|| "all".into());
    let rounds: usize = arg(&args, "--rounds")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(3);
    // cargo bench runs in the package directory; configs name paths from the repository root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::set_current_dir(&root)?;
    let baseline = args.iter().any(|a| a == "--baseline");
    for w in WORKLOADS.iter() {
        let short = w.name.split('_').next().unwrap_or(w.name);
        if which != "all" && which != short && which != w.name {
            continue;
        }
        let rotor = measure(w, rounds)?;
        println!("{}", line(w, "rotor", &rotor));
        if baseline {
            let flex = trainer::models::cpu::with_reference_ops(|| measure(w, rounds))?;
            let mut l = line(w, "burn_flex_ops", &flex);
            l.pop();
            println!("{l},\"rotor_speedup\":{:.3}}}", rotor.median / flex.median);
        }
    }
    Ok(())
}

struct Rates {
    median: f64,
    rounds: Vec<f64>,
    batch: usize,
}

fn line(w: &Workload, implementation: &str, r: &Rates) -> String {
    format!(
        "{{\"workload\":\"{}\",\"impl\":\"{implementation}\",\"batch\":{},\"steps_per_s\":{:.3},\"rounds\":{:?},\"threads\":{}}}",
        w.name,
        r.batch,
        r.median,
        r.rounds
            .iter()
            .map(|r| (r * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        rayon_threads(),
    )
}

/// Trains `warmup` steps, then `rounds` x `steps` timed steps.
/// (On a thread of a rayon pool, as `launch` trains on the host backends.)
fn measure(w: &Workload, rounds: usize) -> anyhow::Result<Rates> {
    let pool = rayon::ThreadPoolBuilder::new().build()?;
    // `with_reference_ops` is per thread: carry it to the pool's thread.
    let reference = !trainer::models::cpu::kernels_enabled();
    pool.install(|| {
        if reference {
            trainer::models::cpu::with_reference_ops(|| measure_here(w, rounds))
        } else {
            measure_here(w, rounds)
        }
    })
}

fn measure_here(w: &Workload, rounds: usize) -> anyhow::Result<Rates> {
    {
        let overrides = [
            "run.output_dir=\"target/bench-runs\"".to_string(),
            format!("run.name=\"bench_{}\"", w.name),
            "run.log_every=100000".into(),
            "run.checkpoint_every=100000".into(),
            "run.val_every=0".into(),
        ];
        let cfg = TrainConfig::load(Path::new(w.config), &overrides)
            .map_err(|e| anyhow::anyhow!("{e} (run ./scripts/fetch-data.sh first)"))?;
        let batch = cfg.run.batch_size;
        let mut trainer = Trainer::<B>::new(cfg, Default::default(), Resume::Never)?;
        trainer.train_until(w.warmup)?;
        let mut rates = Vec::new();
        for r in 0..rounds {
            let start = Instant::now();
            trainer.train_until(w.warmup + (r + 1) * w.steps)?;
            rates.push(w.steps as f64 / start.elapsed().as_secs_f64());
        }
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        Ok(Rates {
            median: sorted[sorted.len() / 2],
            rounds: rates,
            batch,
        })
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
