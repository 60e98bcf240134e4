//! `model.init_from`: a fresh run starts from the weights of a real PyTorch (Lightning-style)
//! taming `VQModel` checkpoint (trainer/tests/data/init_from, written by
//! scripts/make-init-from-fixture.py), trains from there, and a checkpoint of the run itself wins
//! on resume; a checkpoint that does not fit, or a missing file, is refused naming the key.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use sha2::{Digest, Sha256};
use trainer::{Resume, TrainConfig, Trainer, models::StateDict};

type B = Autodiff<Flex>;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/init_from")
}

fn fixture() -> PathBuf {
    fixture_dir().join("taming_tiny.ckpt")
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// 24 RGB images of 20x20 in `dir`.
fn rgb_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..24u32 {
        image::RgbImage::from_fn(20, 20, |x, y| {
            image::Rgb([(x * 12 + i) as u8, (y * 12) as u8, (i * 9) as u8])
        })
        .save(dir.join(format!("{i:02}.png")))
        .unwrap();
    }
}

/// The fixture's architecture (taming ddconfig, `embed_dim` 8, `n_embed` 32) with
/// `model.init_from = init_from`; `z_channels` and `attn` vary it for the mismatch cases.
fn config_text(dir: &Path, init_from: &Path, z_channels: usize, attn: &str) -> String {
    format!(
        r#"
[run]
name = "init"
output_dir = "{out}"
seed = 5
steps = 2
batch_size = 4
log_every = 1
val_batches = 1
checkpoint_every = 2

[data]
source = {{ kind = "image_folder", train = "{data}", val_fraction = 0.2 }}
resolution = 16
random_crop = true

[model]
kind = "vq_model"
init_from = "{init_from}"

[model.autoencoder]
ch = 32
ch_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = {attn}
resolution = 16
z_channels = {z_channels}

[model.quantizer]
kind = "vq"
dim = 8
codebook_size = 32
estimator = "rotation"
codebook = {{ kind = "learnable", beta = 0.25, legacy = true }}

[objective]
kind = "vqvae"
reconstruction = "l1"

[optim]
lr = 1e-4
"#,
        out = dir.display(),
        data = dir.join("rgb").display(),
        init_from = init_from.display(),
    )
}

fn config(dir: &Path, init_from: &Path, z_channels: usize, attn: &str) -> TrainConfig {
    TrainConfig::from_toml(&config_text(dir, init_from, z_channels, attn))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_fresh_run_starts_from_a_pytorch_checkpoint_trains_and_its_own_checkpoint_wins() {
    let _serial = crate::serial();
    let want = expected();
    assert_eq!(
        sha256(&fixture()),
        want["sha256"].as_str().unwrap(),
        "the fixture is not the one expected.json describes: rerun scripts/make-init-from-fixture.py"
    );
    let tmp = tempfile::tempdir().unwrap();
    rgb_folder(&tmp.path().join("rgb"));
    let cfg = config(tmp.path(), &fixture(), 8, "[8]");
    let mut t = Trainer::<B>::new(cfg.clone(), Default::default(), Resume::Never).unwrap();

    // Every model tensor of the checkpoint is in the model, exactly; `loss.*` was skipped.
    let file = StateDict::load(fixture()).unwrap();
    let start = t.model().export_state_dict();
    let mut model_tensors = 0;
    for name in file.names() {
        if name.starts_with("loss.") {
            assert!(start.get(name).is_none(), "{name}");
            continue;
        }
        model_tensors += 1;
        let (a, b) = (start.get(name).unwrap(), file.get(name).unwrap());
        assert_eq!(a.shape, b.shape, "{name}");
        assert!(
            a.values == b.values,
            "{name}: the model does not hold the file's values"
        );
    }
    assert_eq!(model_tensors, want["model_tensors"].as_u64().unwrap());
    assert_eq!(
        file.names().filter(|n| n.starts_with("loss.")).count() as u64,
        want["loss_tensors"].as_u64().unwrap()
    );
    // What the model has beyond the file: the quantizer's optional rotor-only buffers.
    let extra: Vec<&str> = start.names().filter(|n| file.get(n).is_none()).collect();
    assert!(
        extra.iter().all(|n| n.starts_with("quantize.")),
        "{extra:?}"
    );
    // The values are PyTorch's: the probes and every tensor's sum, as torch computed them.
    for (name, probe) in want["probes"].as_object().unwrap() {
        let got = &start.get(name).unwrap().values;
        for (i, v) in probe.as_array().unwrap().iter().enumerate() {
            assert_eq!(got[i], v.as_f64().unwrap() as f32, "{name}[{i}]");
        }
    }
    for (name, sum) in want["sums"].as_object().unwrap() {
        if name.starts_with("loss.") {
            continue;
        }
        let got: f64 = start
            .get(name)
            .unwrap()
            .values
            .iter()
            .map(|v| *v as f64)
            .sum();
        let sum = sum.as_f64().unwrap();
        assert!(
            (got - sum).abs() < 1e-9 * (1.0 + sum.abs()) + 1e-9,
            "{name}: {got} vs {sum}"
        );
    }

    // Training goes on from there.
    t.train_until(2).unwrap();
    let run = tmp.path().join("init");
    let losses: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("loss").and_then(|l| l.as_f64()))
        .collect();
    assert_eq!(losses.len(), 2, "{losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let trained = t.model().export_state_dict();
    assert_ne!(
        trained.get("encoder.conv_in.weight"),
        start.get("encoder.conv_in.weight"),
        "two steps changed nothing"
    );
    drop(t);

    // Resuming, the run's own checkpoint wins over model.init_from.
    let r = Trainer::<B>::new(cfg, Default::default(), Resume::Auto).unwrap();
    assert_eq!(r.step(), 2);
    assert_eq!(r.model().export_state_dict(), trained);
}

#[test]
fn a_checkpoint_that_does_not_fit_is_refused_naming_the_file_and_the_keys() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    rgb_folder(&tmp.path().join("rgb"));
    let err = |z: usize, attn: &str| {
        let cfg = config(tmp.path(), &fixture(), z, attn);
        match Trainer::<B>::new(cfg, Default::default(), Resume::Never) {
            Ok(_) => panic!("z_channels {z}, attn {attn}: loaded"),
            Err(e) => e.to_string(),
        }
    };
    // Mis-shaped: the checkpoint's latents are 8 wide.
    let e = err(16, "[8]");
    assert!(
        e.contains("model.init_from")
            && e.contains("taming_tiny.ckpt")
            && e.contains("`encoder.conv_out.weight` has shape [8, 64, 3, 3]")
            && e.contains("`quant_conv.weight` has shape"),
        "{e}"
    );
    // No attention at 8x8: the checkpoint's attention blocks are unexpected keys.
    let e = err(8, "[]");
    assert!(
        e.contains("model.init_from")
            && e.contains("unexpected keys (30)")
            && e.contains("decoder.up.1.attn.0.q.weight"),
        "{e}"
    );
    assert!(!e.contains("loss."), "loss keys are not the model's: {e}");
}

#[test]
fn a_missing_init_from_file_is_a_config_error_naming_the_key() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    rgb_folder(&tmp.path().join("rgb"));
    let missing = tmp.path().join("nowhere/vqgan.ckpt");
    let err = TrainConfig::from_toml(&config_text(tmp.path(), &missing, 8, "[8]")).unwrap_err();
    assert!(
        err.contains("model.init_from")
            && err.contains("nowhere/vqgan.ckpt")
            && err.contains("does not exist")
            && err.contains("launch export"),
        "{err}"
    );
}
