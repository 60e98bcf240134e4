//! Video through the command line: `launch prepare-video` on the sample videos (ffmpeg), then
//! training on the prepared shards and on BAIR's TFRecords through `launch`, and `launch --cpu 2`
//! on video clips ending where one process accumulating both halves does.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_launch")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run_ok(args: &[&str]) -> String {
    let out = Command::new(exe())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "launch {args:?}: {text}");
    text
}

fn prepare(dir: &Path) -> PathBuf {
    let out = dir.join("prepared");
    let text = run_ok(&[
        "prepare-video",
        "--src",
        repo().join("data/videos").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--size",
        "32",
        "--jobs",
        "2",
    ]);
    assert!(
        text.contains("2 videos decoded") && text.contains("1045 frames"),
        "{text}"
    );
    out
}

/// A 3-D conv VQGAN (or the TimeSformer-VQGAN) on `source`: 4 frames of 16x16.
fn config(dir: &Path, source: &str, timesformer: bool, steps: usize) -> PathBuf {
    let model = if timesformer {
        r#"kind = "timesformer_vq"
embed_dim = 8
timesformer = { image_size = 16, patch_size = 4, num_frames = 4, hidden_size = 32, num_attention_heads = 2, num_hidden_layers = 1, intermediate_size = 64 }
quantizer = { kind = "vq", dim = 8, codebook_size = 32, distance = "cosine", estimator = "rotation" }"#
    } else {
        r#"kind = "conv3d_vq"
frames = 4
n_hiddens = 8
downsample = [2, 4, 4]
embed_dim = 8
norm_groups = 4
quantizer = { kind = "vq", dim = 8, codebook_size = 32, estimator = "rotation" }"#
    };
    let cfg = dir.join("video.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[run]
name = "video"
output_dir = "{out}"
seed = 2
steps = {steps}
batch_size = 4
log_every = 1
val_batches = 1
checkpoint_every = 100

[data]
source = {source}
resolution = 16
resize = 16
random_crop = true
flip = true
frames = 4
frame_stride = 2

[model]
{model}

[objective]
kind = "vqvae"
reconstruction = "mse"

[optim]
lr = 1e-3
"#,
            out = dir.join("runs").display(),
        ),
    )
    .unwrap();
    cfg
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("runs/video/metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("loss").is_some())
        .collect()
}

#[test]
fn prepared_videos_and_bair_records_train_through_launch() {
    let tmp = tempfile::tempdir().unwrap();
    let prepared = prepare(tmp.path());
    let folder = tmp.path().join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    let source = format!(
        r#"{{ kind = "video_folder", train = "{}", val_fraction = 0.2 }}"#,
        prepared.display()
    );
    let text = run_ok(&[config(&folder, &source, false, 4).to_str().unwrap()]);
    assert!(text.contains("done: 4 steps"), "{text}");
    assert!(text.contains("clips of 4 frames from 2 videos"), "{text}");
    assert!(folder.join("runs/video/samples/step-00000004.gif").exists());
    assert_eq!(metrics(&folder).len(), 4);

    let bair = tmp.path().join("bair");
    std::fs::create_dir_all(&bair).unwrap();
    let d =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/data/bair/softmotion30_44k");
    let source = format!(
        r#"{{ kind = "bair", train = "{}", val = "{}" }}"#,
        d.join("train").display(),
        d.join("test").display()
    );
    let text = run_ok(&[config(&bair, &source, true, 4).to_str().unwrap()]);
    assert!(
        text.contains("done: 4 steps") && text.contains("BAIR"),
        "{text}"
    );
    // Continuing a finished run to more steps resumes from its checkpoint.
    let text = run_ok(&[
        "--set",
        "run.steps=6",
        config(&bair, &source, true, 4).to_str().unwrap(),
    ]);
    assert!(
        text.contains("resumed from") || text.contains("step 4"),
        "{text}"
    );
    assert_eq!(metrics(&bair).len(), 6);
}

const TRAINING_FIELDS: [&str; 7] = [
    "loss",
    "rec",
    "quant_loss",
    "used_fraction",
    "perplexity",
    "quant_error",
    "grad_norm",
];

#[test]
fn two_cpu_workers_on_video_equal_one_process_with_accumulation() {
    let tmp = tempfile::tempdir().unwrap();
    let prepared = prepare(tmp.path());
    let source = format!(
        r#"{{ kind = "video_folder", train = "{}", val_fraction = 0.2 }}"#,
        prepared.display()
    );
    let one = tmp.path().join("one");
    let two = tmp.path().join("two");
    for d in [&one, &two] {
        std::fs::create_dir_all(d).unwrap();
    }
    run_ok(&[
        "--set",
        "optim.accumulate=2",
        config(&one, &source, false, 4).to_str().unwrap(),
    ]);
    run_ok(&[
        "--cpu",
        "2",
        "--timeout",
        "60",
        config(&two, &source, false, 4).to_str().unwrap(),
    ]);
    let (a, b) = (metrics(&one), metrics(&two));
    assert_eq!((a.len(), b.len()), (4, 4));
    for (x, y) in a.iter().zip(&b) {
        for key in TRAINING_FIELDS {
            let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (p - q).abs() <= 1e-6 * p.abs().max(q.abs()) + 1e-12,
                "step {}: {key} is {p} in one process, {q} over two workers",
                x["step"]
            );
        }
    }
}
