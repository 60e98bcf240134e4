//! The evaluation end to end (`Trainer::evaluate`, what `launch eval` and `run.eval_every` run):
//! a short real training run on Fashion-MNIST (the sample data), then every metric of the report, with a FID Inception
//! whose random weights this test writes and pins (real weights never exist offline), the same
//! report again (same bits), the same numbers from two data-parallel workers, and a refused
//! weight file whose sha256 is not the pinned one.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use burn::backend::{Autodiff, Flex};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use trainer::{
    Communicator, Resume, TrainConfig, Trainer,
    models::{StateDict, TensorEntry, fid_inception_shapes, i3d_shapes},
    ring::{TcpRing, bind},
};

type B = Autodiff<Flex>;

/// A FID Inception weight file with seeded random weights (Kaiming-normal convs, unit
/// BatchNorm); returns its sha256.
fn random_inception(path: &Path) -> String {
    random_weights(path, fid_inception_shapes(), "fc.weight")
}

/// The same for a metric network's `(name, shape)` table; `head` is its final linear layer.
fn random_weights(path: &Path, shapes: Vec<(String, Vec<usize>)>, head: &str) -> String {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut normal = move || {
        let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    };
    let mut dict = StateDict::default();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product();
        let values: Vec<f32> =
            if name.ends_with("conv.weight") || (name.ends_with("conv3d.weight") && name != head) {
                let s = (2.0 / fan_in as f32).sqrt();
                (0..n).map(|_| normal() * s).collect()
            } else if name.ends_with("bn.weight") || name.ends_with("running_var") {
                vec![1.0; n]
            } else if name.ends_with("bn.bias") {
                (0..n).map(|_| normal() * 0.1).collect()
            } else if name == head {
                (0..n).map(|_| normal() * 0.05).collect()
            } else {
                vec![0.0; n]
            };
        dict.insert(name, TensorEntry { shape, values });
    }
    dict.save_safetensors(path).unwrap();
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

fn config(out: &Path, data: &Path, weights: &Path, sha: &str) -> TrainConfig {
    let text = format!(
        r#"
[run]
name = "e"
output_dir = "{out}"
seed = 5
steps = 3
batch_size = 4
log_every = 1
val_batches = 1
checkpoint_every = 3

[data]
source = {{ kind = "fashion_mnist", train = "{data}/train-images-idx3-ubyte.gz", val = "{data}/t10k-images-idx3-ubyte.gz" }}
resolution = 28

[model]
kind = "peer"
in_channels = 1

[model.quantizer]
kind = "vq"
dim = 32
codebook_size = 64
estimator = "rotation"

[objective]
kind = "vqvae"
reconstruction = "l1"
clamp_output = true

[optim]
lr = 1e-3

[eval]
limit = 4
is_splits = 2
fid = {{ weights = "{weights}", sha256 = "{sha}" }}
"#,
        out = out.display(),
        data = data.display(),
        weights = weights.display(),
    );
    TrainConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    // The sample data (scripts/fetch-data.sh, part of the README's test command).
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist");
    assert!(
        data.join("t10k-images-idx3-ubyte.gz").exists(),
        "Fashion-MNIST missing: run scripts/fetch-data.sh first (the README's test command does)"
    );
    let weights = tmp.path().join("inception.safetensors");
    let sha = random_inception(&weights);
    (tmp, data, weights, sha)
}

fn newest_checkpoint(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .max()
        .unwrap()
}

#[test]
fn evaluation_reports_every_metric_and_is_the_same_on_two_workers() {
    let _serial = crate::serial();
    let (tmp, data, weights, sha) = setup();
    let cfg = config(tmp.path(), &data, &weights, &sha);
    let mut t = Trainer::<B>::new(cfg.clone(), Default::default(), Resume::Never).unwrap();
    t.run().unwrap();
    let report = t.evaluate().unwrap();
    let json = serde_json::to_value(&report).unwrap();
    println!("{}", serde_json::to_string_pretty(&json).unwrap());
    assert_eq!(report.samples, 4, "eval.limit");
    assert!(report.mse > 0.0 && report.mse < 4.0);
    assert!((report.psnr - 10.0 * (4.0 / report.mse).log10()).abs() < 1e-9);
    let ssim = report.ssim.expect("28x28 frames");
    assert!(ssim > -1.0 && ssim < 1.0, "ssim {ssim}");
    assert!(report.used_fraction > 0.0 && report.perplexity >= 1.0);
    let fid = report.fid.expect("fid with pinned weights");
    assert!(fid.is_finite() && fid > 0.0, "fid {fid}");
    let is = report.is_mean.expect("is with pinned weights");
    assert!(is >= 1.0 && is.is_finite(), "is {is}");
    assert_eq!(report.fid_weights_sha256.as_deref(), Some(sha.as_str()));
    assert!(report.fvd.is_none() && report.lpips.is_none());
    let file = tmp.path().join("e/eval/step-00000003.json");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let written_fid = written["fid"].as_f64().unwrap();
    assert!(
        (written_fid - fid).abs() <= 1e-12 * fid,
        "{written_fid} vs {fid}"
    );

    // Same weights, same report: the same bits on 1 and on 3 threads, with other threads busy
    // (the Inception's convolutions split into several tasks at 299x299).
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut c = cfg.clone();
        c.run.name = format!("e-threads-{threads}");
        let again = pool.install(|| {
            let mut t = Trainer::<B>::new(c, Default::default(), Resume::Never).unwrap();
            t.load_checkpoint(&newest_checkpoint(&tmp.path().join("e/checkpoints")))
                .unwrap();
            t.evaluate().unwrap()
        });
        assert_eq!(again.fid, report.fid, "{threads} threads");
        assert_eq!(again.is_mean, report.is_mean, "{threads} threads");
        assert_eq!(again.ssim, report.ssim, "{threads} threads");
        assert_eq!(again.mse, report.mse, "{threads} threads");
    }
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    load.into_iter().for_each(|h| {
        h.join().unwrap();
    });

    // Two data-parallel workers evaluating the checkpoint: the same numbers.
    let bound: Vec<_> = (0..2).map(|_| bind("127.0.0.1").unwrap()).collect();
    let addrs: Vec<SocketAddr> = bound.iter().map(|b| b.1).collect();
    let secret = trainer::RunSecret::random();
    let handles: Vec<_> = bound
        .into_iter()
        .enumerate()
        .map(|(r, (l, _))| {
            let (addrs, mut cfg, secret) = (addrs.clone(), cfg.clone(), secret.clone());
            cfg.run.name = "e-parallel".into();
            let ckpt = tmp.path().join("e/checkpoints");
            std::thread::spawn(move || {
                let comm: Box<dyn Communicator> = Box::new(
                    TcpRing::connect(r, 2, l, &addrs, &secret, Duration::from_secs(60)).unwrap(),
                );
                let mut t =
                    Trainer::<B>::with_communicator(cfg, Default::default(), Resume::Never, comm)
                        .unwrap();
                t.load_checkpoint(&newest_checkpoint(&ckpt)).unwrap();
                t.evaluate().unwrap()
            })
        })
        .collect();
    let reports: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &reports {
        assert_eq!(r.samples, report.samples);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * (1.0 + b.abs());
        assert!(close(r.mse, report.mse), "{} vs {}", r.mse, report.mse);
        assert!(close(r.ssim.unwrap(), ssim));
        assert!(close(r.fid.unwrap(), fid), "{:?} vs {fid}", r.fid);
        assert!(close(r.is_mean.unwrap(), is));
        assert_eq!(r.used_fraction, report.used_fraction);
    }
}

#[test]
fn a_metric_weight_file_that_is_not_the_pinned_one_is_refused() {
    let _serial = crate::serial();
    let (tmp, data, weights, sha) = setup();
    let wrong = format!(
        "{}{}",
        &sha[..63],
        if sha.ends_with('0') { "1" } else { "0" }
    );
    let cfg = config(tmp.path(), &data, &weights, &wrong);
    let mut t = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
    let err = t.evaluate().unwrap_err().to_string();
    assert!(err.contains("eval.fid") && err.contains("sha256"), "{err}");
    assert!(
        err.contains(&sha),
        "the message names the file's actual sha256: {err}"
    );

    let mut cfg = config(tmp.path(), &data, &weights, &sha);
    if let Some(f) = &mut cfg.eval.fid {
        f.weights = tmp.path().join("missing.safetensors");
    }
    let err = cfg.validate().unwrap_err();
    assert_eq!(err.0, "eval.fid.weights", "{err:?}");
}

#[test]
fn video_evaluation_reports_fvd_with_a_pinned_i3d() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("i3d.safetensors");
    let sha = random_weights(&weights, i3d_shapes(), "logits.conv3d.weight");
    let bair = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bair/softmotion30_44k");
    let text = format!(
        r#"
[run]
name = "v"
output_dir = "{out}"
seed = 1
steps = 2
batch_size = 2
log_every = 1
val_batches = 1
checkpoint_every = 2

[data]
source = {{ kind = "bair", train = "{train}", val = "{val}" }}
resolution = 16
frames = 10

[model]
kind = "conv3d_vq"
frames = 10
n_hiddens = 8
downsample = [2, 4, 4]
embed_dim = 8
norm_groups = 4

[model.quantizer]
kind = "vq"
dim = 8
codebook_size = 32

[objective]
kind = "vqvae"
reconstruction = "mse"

[optim]
lr = 1e-3

[eval]
limit = 3
fvd = {{ weights = "{weights}", sha256 = "{sha}" }}
"#,
        out = tmp.path().display(),
        train = bair.join("train").display(),
        val = bair.join("test").display(),
        weights = weights.display(),
    );
    let cfg = TrainConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    let mut t = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
    t.train_until(2).unwrap();
    let report = t.evaluate().unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!((report.samples, report.frames), (3, 10));
    let fvd = report.fvd.expect("fvd with a pinned I3D");
    assert!(fvd.is_finite() && fvd > 0.0, "fvd {fvd}");
    assert_eq!(report.fvd_weights_sha256.as_deref(), Some(sha.as_str()));
    assert!(report.fid.is_none() && report.ssim.is_some_and(|s| s > -1.0 && s < 1.0));
    assert!(
        report.notes.iter().any(|n| n.contains("fid")),
        "{:?}",
        report.notes
    );
}
