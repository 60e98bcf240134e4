//! Data parallelism on CPU workers: two ranks with half batches over the TCP ring end with the
//! same parameters (and EMA codebook) as one worker with the whole batch.

use std::{net::SocketAddr, path::Path, time::Duration};

use burn::backend::{Autodiff, Flex};
use trainer::{
    Communicator, Resume, TrainConfig, Trainer,
    ring::{TcpRing, bind},
};

use crate::weights_support;
use weights_support::weights;

type B = Autodiff<Flex>;

fn config(out: &Path, data: &Path, quantizer: &str, accumulate: usize) -> TrainConfig {
    TrainConfig::from_toml(&format!(
        r#"
[run]
name = "dp"
output_dir = "{out}"
seed = 5
steps = 20
batch_size = 16
log_every = 5
val_batches = 1
checkpoint_every = 100

[data]
source = {{ kind = "image_folder", train = "{data}", val_fraction = 0.1, channels = 1 }}
resolution = 28
random_crop = true
flip = true

[model]
kind = "peer"
in_channels = 1

[model.quantizer]
{quantizer}

[objective]
kind = "vqvae"
reconstruction = "l1"
clamp_output = true

[optim]
lr = 1e-3
grad_clip = 1.0
accumulate = {accumulate}
"#,
        out = out.display(),
        data = data.display()
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `world` workers; with one worker the batch of 16 runs in `accumulate` micro-batches.
fn run_world(
    world: usize,
    accumulate: usize,
    out: &Path,
    data: &Path,
    quantizer: &str,
) -> Vec<Vec<f32>> {
    if world == 1 {
        let mut t = Trainer::<B>::new(
            config(out, data, quantizer, accumulate),
            Default::default(),
            Resume::Never,
        )
        .unwrap();
        t.train_until(20).unwrap();
        return vec![weights(&t)];
    }
    let bound: Vec<_> = (0..world).map(|_| bind("127.0.0.1").unwrap()).collect();
    let addrs: Vec<SocketAddr> = bound.iter().map(|b| b.1).collect();
    let secret = trainer::RunSecret::random();
    let handles: Vec<_> = bound
        .into_iter()
        .enumerate()
        .map(|(r, (l, _))| {
            let (addrs, out, data, q, secret) = (
                addrs.clone(),
                out.to_path_buf(),
                data.to_path_buf(),
                quantizer.to_string(),
                secret.clone(),
            );
            std::thread::spawn(move || {
                let comm: Box<dyn Communicator> = Box::new(
                    TcpRing::connect(r, world, l, &addrs, &secret, Duration::from_secs(60))
                        .unwrap(),
                );
                let mut t = Trainer::<B>::with_communicator(
                    config(&out, &data, &q, 1),
                    Default::default(),
                    Resume::Never,
                    comm,
                )
                .unwrap();
                t.train_until(20).unwrap();
                weights(&t)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0.0f32, 0usize);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs() / (1e-2 + x.abs().max(y.abs()));
        if d > worst.0 {
            worst = (d, i);
        }
    }
    assert!(
        worst.0 < 2e-3,
        "{what}: element {} differs: {} vs {} (relative {})",
        worst.1,
        a[worst.1],
        b[worst.1],
        worst.0
    );
}

fn folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..48u32 {
        image::GrayImage::from_fn(30, 30, |x, y| {
            image::Luma([((x * (i % 5 + 1) + y * (i % 7 + 2) + i) % 256) as u8])
        })
        .save(dir.join(format!("{i:03}.png")))
        .unwrap();
    }
}

#[test]
fn two_workers_with_half_batches_equal_one_worker() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    folder(&data);
    let quantizers = [
        // Rotation trick, EMA codebook, dead-code restart (restart candidates gathered from both ranks).
        "kind = \"vq\"\ndim = 32\ncodebook_size = 64\nestimator = \"rotation\"\ncommitment_weight = 10.0\ndead_code_threshold = 0.5\ncodebook = { kind = \"ema\", decay = 0.8 }",
        // LFQ: the batch entropy over the global batch.
        "kind = \"lfq\"\ndim = 32\nentropy_loss_weight = 0.1\ncommitment_loss_weight = 0.25\n",
    ];
    for (i, q) in quantizers.iter().enumerate() {
        let lfq = q.contains("lfq");
        // The peer network's latent width is the quantizer's dim.
        let q = if lfq {
            q.replace("dim = 32", "dim = 8")
        } else {
            q.to_string()
        };
        // One worker with the batch of 16. For the VQ it runs as two micro-batches of 8 (the same
        // batch step, accumulated), so each forward has the shapes the two workers see and the
        // float rounding matches: nearest-code choices and dead-code restarts are discrete, and a
        // rounding-level difference in one of them (possible with one forward of 16, whose
        // convolutions round differently) replaces a restarted code entirely. LFQ's batch entropy
        // is over each forward's batch, so its reference is one forward of 16.
        let acc = if lfq { 1 } else { 2 };
        let one = run_world(1, acc, &tmp.path().join(format!("one{i}")), &data, &q);
        let two = run_world(2, 1, &tmp.path().join(format!("two{i}")), &data, &q);
        assert!(
            two[0] == two[1],
            "both ranks must hold identical parameters"
        );
        assert_close(
            &one[0],
            &two[0],
            &format!("quantizer {i}: world 2 vs world 1"),
        );
        // No step waits for the device outside logging steps: the only reads inside steps are
        // a group's host-staged collectives (gradients, EMA statistics, LFQ's probabilities).
        for (dir, world) in [(format!("one{i}"), 1), (format!("two{i}"), 2)] {
            for rec in records(&tmp.path().join(dir).join("dp")) {
                assert_eq!(rec["host_reads_per_step"], 0.0, "world {world}: {rec}");
                let staged = rec["staged_reads_per_step"].as_f64().unwrap();
                assert_eq!(staged > 0.0, world > 1, "world {world}: {rec}");
            }
        }
    }
}

fn records(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r.get("split").is_none())
        .collect();
    assert_eq!(recs.len(), 4, "20 steps logged every 5");
    recs
}

/// `world` workers training the config `text` (its `{accumulate}` filled in: the micro-batches
/// per step of one worker) for `steps` steps; every rank's final parameters.
fn run_world_text(world: usize, steps: usize, text: &str, accumulate: usize) -> Vec<Vec<f32>> {
    let one_worker = text.replace("{accumulate}", &accumulate.to_string());
    if world == 1 {
        let cfg = TrainConfig::from_toml(&one_worker).unwrap_or_else(|e| panic!("{e}"));
        let mut t = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
        t.train_until(steps).unwrap();
        return vec![weights(&t)];
    }
    let per_worker = text.replace("{accumulate}", "1");
    let bound: Vec<_> = (0..world).map(|_| bind("127.0.0.1").unwrap()).collect();
    let addrs: Vec<SocketAddr> = bound.iter().map(|b| b.1).collect();
    let secret = trainer::RunSecret::random();
    let handles: Vec<_> = bound
        .into_iter()
        .enumerate()
        .map(|(r, (l, _))| {
            let (addrs, text, secret) = (addrs.clone(), per_worker.clone(), secret.clone());
            std::thread::spawn(move || {
                let comm: Box<dyn Communicator> = Box::new(
                    TcpRing::connect(r, world, l, &addrs, &secret, Duration::from_secs(60))
                        .unwrap(),
                );
                let cfg = TrainConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
                let mut t =
                    Trainer::<B>::with_communicator(cfg, Default::default(), Resume::Never, comm)
                        .unwrap();
                t.train_until(steps).unwrap();
                weights(&t)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// The discriminator's gradient seam: ViT-VQGAN with its StyleGAN2 discriminator (R1 on every
/// second step) on two workers with half batches ends where one worker with the whole batch in
/// two micro-batches does (the minibatch-stddev groups are the same micro-batches on both).
#[test]
fn two_workers_equal_one_worker_with_a_discriminator() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rgb");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..24u32 {
        image::RgbImage::from_fn(18, 18, |x, y| {
            image::Rgb([
                (x * 13 + i * 5) as u8,
                (y * 11 + i) as u8,
                ((x * y) % 97 + i * 3) as u8,
            ])
        })
        .save(data.join(format!("{i:02}.png")))
        .unwrap();
    }
    let text = |out: &Path| {
        format!(
            r#"
[run]
name = "dp"
output_dir = "{out}"
seed = 9
steps = 6
batch_size = 8
log_every = 3
val_batches = 1
checkpoint_every = 100

[data]
source = {{ kind = "image_folder", train = "{data}", val_fraction = 0.1 }}
resolution = 16
random_crop = true
flip = true

[model]
kind = "vit_vq"

[model.vit]
image_size = 16
patch_size = 4
encoder = {{ dim = 32, depth = 1, heads = 2, mlp_dim = 64, dim_head = 16 }}
decoder = {{ dim = 32, depth = 1, heads = 2, mlp_dim = 64, dim_head = 16 }}
embed_dim = 8

[model.quantizer]
kind = "vq"
dim = 8
codebook_size = 32
distance = "cosine"
estimator = "rotation"
codebook = {{ kind = "learnable", beta = 0.25, legacy = false }}

[objective]
kind = "vit_vqgan"
perceptual_weight = 0.0
adversarial_weight = 0.1
discriminator = {{ size = 16, channels = {{ "16" = 8, "8" = 16, "4" = 16 }}, do_r1_every = 2 }}

[optim]
lr = 1e-3
betas = [0.9, 0.99]
weight_decay = 1e-4
grad_clip = 1.0
accumulate = {{accumulate}}
"#,
            out = out.display(),
            data = data.display()
        )
    };
    let one = run_world_text(1, 6, &text(&tmp.path().join("one")), 2);
    let two = run_world_text(2, 6, &text(&tmp.path().join("two")), 2);
    assert!(
        two[0] == two[1],
        "both ranks must hold identical parameters"
    );
    assert_close(
        &one[0],
        &two[0],
        "ViT-VQGAN + StyleGAN2: world 2 vs world 1",
    );
    let metrics = std::fs::read_to_string(tmp.path().join("two/dp/metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r.get("split").is_none())
        .collect();
    assert_eq!(steps.len(), 2, "6 steps logged every 3");
    for rec in &steps {
        assert_eq!(rec["host_reads_per_step"], 0.0, "{rec}");
        assert!(rec["disc_loss"].as_f64().unwrap() > 0.0, "{rec}");
    }
}
