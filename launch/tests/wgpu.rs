//! Training on burn's wgpu backend through `launch --device wgpu` (feature `wgpu`; in CI on Mesa's
//! software Vulkan driver, lavapipe): a short VQ-VAE run whose loss falls and whose codebook usage
//! is reported, a small VQGAN with its discriminator and LPIPS, checkpoint and resume, and two
//! wgpu workers over the TCP ring. Lavapipe reduces in another order than Flex and between runs
//! its float atomics may too, so comparisons between runs use a tolerance (stated at each).
#![cfg(feature = "wgpu")]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

#[path = "../../trainer/tests/support/lpips_files.rs"]
mod lpips_files;
use lpips_files::lpips_files;

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_launch")
}

/// Fails with the fix when this machine has no Vulkan driver at all (Linux).
fn require_vulkan() {
    if cfg!(target_os = "linux")
        && std::env::var_os("VK_ICD_FILENAMES").is_none()
        && std::env::var_os("VK_DRIVER_FILES").is_none()
    {
        let found = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .count();
        assert!(
            found > 0,
            "no Vulkan driver on this machine: the wgpu tests need one (without a GPU: \
             scripts/install-lavapipe.sh, i.e. Debian's mesa-vulkan-drivers and libvulkan1)"
        );
    }
}

fn images(dir: &Path, n: u32, rgb: bool) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..n {
        let path = data.join(format!("{i:03}.png"));
        if rgb {
            image::RgbImage::from_fn(20, 20, |x, y| {
                image::Rgb([(x * 12 + i) as u8, (y * 12) as u8, (i * 9) as u8])
            })
            .save(path)
            .unwrap();
        } else {
            image::GrayImage::from_fn(28, 28, |x, y| {
                image::Luma([((x * (i % 5 + 1) + y * (i % 3 + 2) + i) % 256) as u8])
            })
            .save(path)
            .unwrap();
        }
    }
    data
}

fn vqvae(dir: &Path, steps: usize) -> PathBuf {
    let data = images(dir, 40, false);
    let cfg = dir.join("vqvae.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[run]
name = "w"
output_dir = "{out}"
seed = 3
steps = {steps}
batch_size = 8
log_every = 1
val_batches = 1
checkpoint_every = 3

[data]
source = {{ kind = "image_folder", train = "{data}", val_fraction = 0.1, channels = 1 }}
resolution = 28

[model]
kind = "peer"
in_channels = 1

[model.quantizer]
kind = "vq"
dim = 32
codebook_size = 32
estimator = "rotation"
codebook = {{ kind = "ema", decay = 0.8 }}
dead_code_threshold = 0.5

[objective]
kind = "vqvae"
reconstruction = "l1"

[optim]
lr = 3e-3
"#,
            out = dir.join("runs").display(),
            data = data.display()
        ),
    )
    .unwrap();
    cfg
}

fn vqgan(dir: &Path, steps: usize) -> PathBuf {
    let data = images(dir, 24, true);
    let (vgg, heads) = lpips_files(dir);
    let cfg = dir.join("vqgan.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[run]
name = "w"
output_dir = "{out}"
steps = {steps}
batch_size = 2
log_every = 1
val_batches = 1
checkpoint_every = 2

[data]
source = {{ kind = "image_folder", train = "{data}", val_fraction = 0.2 }}
resolution = 16

[model]
kind = "vq_model"

[model.autoencoder]
ch = 32
ch_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = [8]
resolution = 16
z_channels = 8

[model.quantizer]
kind = "vq"
dim = 8
codebook_size = 32
estimator = "rotation"
codebook = {{ kind = "learnable", beta = 0.25, legacy = true }}

[objective]
kind = "vqgan"
perceptual_weight = 1.0
lpips = {{ vgg16 = "{vgg}", heads = "{heads}" }}
disc_start = 2
disc_weight = 0.8
discriminator = {{ ndf = 8, n_layers = 2 }}

[optim]
lr = 2e-4
betas = [0.5, 0.9]
"#,
            out = dir.join("runs").display(),
            data = data.display(),
            vgg = vgg.display(),
            heads = heads.display()
        ),
    )
    .unwrap();
    cfg
}

fn launch(cfg: &Path, args: &[&str]) -> String {
    require_vulkan();
    let out = Command::new(exe())
        .args(["--device", "wgpu"])
        .args(args)
        .arg(cfg)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "launch --device wgpu {args:?}: {text}"
    );
    text
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("runs/w/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .collect()
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no `{key}` in {v}"))
}

/// `|a - b| <= 1e-4 + 1e-3 |b|`: lavapipe's reductions may order sums differently between runs.
fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 + 1e-3 * b.abs()
}

#[test]
fn a_vqvae_trains_on_wgpu_and_resumes_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let text = launch(&vqvae(tmp.path(), 6), &["--resume", "never"]);
    assert!(text.contains("training on wgpu"), "{text}");
    let full = metrics(tmp.path());
    assert_eq!(full.len(), 6);
    let (first, last) = (f(&full[0], "rec"), f(&full[5], "rec"));
    assert!(
        last < first,
        "the reconstruction loss fell: {first} -> {last}"
    );
    assert!(
        full.iter()
            .all(|m| f(m, "used_fraction") > 0.0 && f(m, "perplexity") >= 1.0)
    );
    // Dead-code restart ran on the device, and no step read a tensor.
    assert!(
        full.iter().any(|m| f(m, "restarted_codes") > 0.0),
        "{full:?}"
    );
    assert!(full.iter().all(|m| f(m, "host_reads_per_step") == 0.0));
    assert!(tmp.path().join("runs/w/checkpoints/step-00000003").is_dir());
    // Again to step 3, then resumed to 6 in a second process: the same figures (tolerance above).
    let again = tempfile::tempdir().unwrap();
    let cfg = vqvae(again.path(), 3);
    launch(&cfg, &["--resume", "never"]);
    let cfg = vqvae(again.path(), 6);
    launch(&cfg, &["--resume", "auto"]);
    let resumed = metrics(again.path());
    assert_eq!(resumed.len(), 6);
    for (a, b) in resumed.iter().zip(&full) {
        for key in ["loss", "rec", "quant_error", "grad_norm"] {
            assert!(
                near(f(a, key), f(b, key)),
                "step {}: {key} {} after resume, {} uninterrupted",
                a["step"],
                f(a, key),
                f(b, key)
            );
        }
    }
}

#[test]
fn two_wgpu_workers_train_as_one_accumulating_process() {
    let one = tempfile::tempdir().unwrap();
    launch(
        &vqvae(one.path(), 3),
        &["--resume", "never", "--set", "optim.accumulate=2"],
    );
    let two = tempfile::tempdir().unwrap();
    launch(
        &vqvae(two.path(), 3),
        &["--resume", "never", "--cpu", "2", "--timeout", "120"],
    );
    let (a, b) = (metrics(two.path()), metrics(one.path()));
    assert_eq!(a.len(), 3);
    // Inside a step, the group reads only its host-staged collectives.
    assert!(a.iter().all(|m| f(m, "host_reads_per_step") == 0.0));
    assert!(a.iter().all(|m| f(m, "staged_reads_per_step") > 0.0));
    for (x, y) in a.iter().zip(&b) {
        for key in ["loss", "rec", "used_fraction", "quant_error", "grad_norm"] {
            assert!(
                near(f(x, key), f(y, key)),
                "step {}: {key} {} with two wgpu workers, {} in one accumulating",
                x["step"],
                f(x, key),
                f(y, key)
            );
        }
    }
}

#[test]
fn a_small_vqgan_trains_its_discriminator_on_wgpu() {
    let tmp = tempfile::tempdir().unwrap();
    launch(&vqgan(tmp.path(), 3), &["--resume", "never"]);
    let m = metrics(tmp.path());
    assert_eq!(m.len(), 3);
    assert_eq!(f(&m[0], "d_weight"), 0.0, "no GAN before disc_start");
    let late = &m[2];
    assert!(
        f(late, "d_weight") > 0.0 && f(late, "d_weight").is_finite(),
        "{late}"
    );
    assert!(f(late, "disc_loss") > 0.0, "{late}");
    assert!(f(late, "perceptual") != 0.0, "{late}");
    assert!(
        m.iter().all(|r| f(r, "host_reads_per_step") == 0.0),
        "{m:?}"
    );
    assert!(
        tmp.path()
            .join("runs/w/checkpoints/step-00000002/disc.mpk")
            .exists()
    );
}

/// WGSL and SPIR-V through wgpu have no bf16 type: mixed precision is refused before training,
/// naming the key and the way out, and nothing is written.
#[test]
fn bf16_precision_is_refused_on_wgpu_naming_the_key() {
    require_vulkan();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = vqvae(tmp.path(), 2);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen("[run]\n", "[run]\nprecision = \"bf16\"\n", 1),
    )
    .unwrap();
    let out = Command::new(exe())
        .args(["--device", "wgpu", "--resume", "never"])
        .arg(&cfg)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bf16 on wgpu was accepted: {err}");
    assert!(
        err.contains("run.precision") && err.contains("f32") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!tmp.path().join("runs/w/checkpoints").exists());
}

/// scripts/gpu-check.sh's training step (the VQGAN run, its resume and the figures it reports)
/// through the wgpu backend: what it does on a GPU, checked before any GPU minute is spent.
#[test]
fn gpu_check_trains_and_resumes_a_vqgan_on_wgpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(
        root.join("data/photos").is_dir(),
        "data/photos missing: run scripts/fetch-data.sh first (the README's test command does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report.json");
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/gpu-check.sh"))
        .args([
            "--device", "wgpu", "--tiny", "--only", "train", "--steps", "4", "--out",
        ])
        .arg(&report)
        .env("ROTOR_LAUNCH", exe())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(out.status.success(), "{err}\n{report}");
    let train = &report["steps"][0];
    assert_eq!(train["status"], "passed", "{report}");
    let fig = &train["figures"];
    assert_eq!(fig["steps"], 4, "{report}");
    assert_eq!(fig["host_reads_per_step_max"], 0.0, "{report}");
    assert!(
        fig["resume_max_rel_diff"].as_f64().unwrap() <= 1e-3,
        "{report}"
    );
}
