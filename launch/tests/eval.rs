//! `launch eval` through the binary: a tiny run trained by `launch`, evaluated as one process and
//! as two data-parallel CPU workers (`--cpu 2`): the same report up to float rounding, printed
//! once, written to the run directory; a run without checkpoints is refused clearly.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn launch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_launch"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn launch_ok(args: &[&str]) -> String {
    let out = launch(args);
    assert!(
        out.status.success(),
        "launch {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A peer-net run of 2 steps on 20 grayscale images under `dir`.
fn config(dir: &Path) -> PathBuf {
    let data = dir.join("gray");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..20u32 {
        image::GrayImage::from_fn(28, 28, |x, y| {
            image::Luma([((x * (i % 4 + 1) + y * 5) % 256) as u8])
        })
        .save(data.join(format!("{i:02}.png")))
        .unwrap();
    }
    let path = dir.join("e.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[run]
name = "e"
output_dir = "{out}"
steps = 2
batch_size = 4
log_every = 1
val_batches = 1
checkpoint_every = 2

[data]
source = {{ kind = "image_folder", train = "{data}", val_fraction = 0.25, channels = 1 }}
resolution = 28

[model]
kind = "peer"
in_channels = 1

[model.quantizer]
kind = "vq"
dim = 16
codebook_size = 32

[objective]
kind = "vqvae"

[optim]
lr = 1e-3
"#,
            out = dir.display(),
            data = data.display()
        ),
    )
    .unwrap();
    path
}

fn report(stdout: &str) -> serde_json::Value {
    let start = stdout.find('{').expect("a JSON report on stdout");
    serde_json::from_str(&stdout[start..]).unwrap()
}

#[test]
fn launch_eval_reports_once_and_two_workers_agree_with_one() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let cfg = cfg.to_str().unwrap();
    let out = launch(&["eval", cfg]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("no checkpoint"),
        "{text}"
    );

    launch_ok(&[cfg]);
    let one = report(&launch_ok(&["eval", cfg]));
    assert_eq!(one["samples"], 5, "every 4th of 20 images");
    assert_eq!(one["step"], 2);
    assert!(one["psnr"].as_f64().unwrap() > 0.0 && one["ssim"].as_f64().is_some());
    assert!(one["fid"].is_null(), "no pinned Inception here");
    assert!(tmp.path().join("e/eval/step-00000002.json").exists());

    let stdout = launch_ok(&["eval", "--cpu", "2", "--limit", "4", cfg]);
    assert_eq!(
        stdout.matches("\"samples\"").count(),
        1,
        "rank 0 prints: {stdout}"
    );
    let two = report(&stdout);
    let one = report(&launch_ok(&["eval", "--limit", "4", cfg]));
    assert_eq!(two["samples"], 4);
    for key in [
        "mse",
        "l1",
        "ssim",
        "quant_error",
        "used_fraction",
        "perplexity",
    ] {
        let (a, b) = (one[key].as_f64().unwrap(), two[key].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{key}: {a} vs {b}");
    }
}
