//! TensorBoard event files written by rotor, read back by TensorBoard's own reader
//! (`EventAccumulator` of the `tensorboard` package, in `.venv-tools`: scripts/install-test-tools.sh,
//! part of the README's test command): every numeric field of metrics.jsonl arrives as a scalar
//! with its step and value, and the validation sample grid as a PNG image of the right size.

use std::{path::Path, process::Command};

use burn::backend::{Autodiff, Flex};
use trainer::{Resume, TrainConfig, Trainer};

type B = Autodiff<Flex>;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn tensorboard_reads_rotors_scalars_and_sample_grids() {
    let _serial = crate::serial();
    let python = repo().join(".venv-tools/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/install-test-tools.sh (the README's test command does)",
        python.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..20u32 {
        image::GrayImage::from_fn(28, 28, |x, y| {
            image::Luma([((x * (i % 5 + 1) + y * 3) % 256) as u8])
        })
        .save(data.join(format!("{i:03}.png")))
        .unwrap();
    }
    let text = format!(
        r#"
[run]
name = "tb"
output_dir = "{out}"
steps = 4
batch_size = 4
log_every = 1
val_every = 2
val_batches = 1
checkpoint_every = 2

[data]
source = {{ kind = "image_folder", train = "{data}", val_fraction = 0.2, channels = 1 }}
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
        out = tmp.path().display(),
        data = data.display()
    );
    let cfg = TrainConfig::from_toml(&text).unwrap();
    // Interrupted after step 3 (checkpoint at 2), then resumed: step 3 is logged twice in the
    // event files, and TensorBoard must keep only the resumed run's.
    let mut t = Trainer::<B>::new(cfg.clone(), Default::default(), Resume::Never).unwrap();
    t.train_until(3).unwrap();
    drop(t);
    let mut t = Trainer::<B>::new(cfg, Default::default(), Resume::Auto).unwrap();
    assert_eq!(t.step(), 2);
    t.run().unwrap();
    let run = tmp.path().join("tb");
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/read_tensorboard.py"))
        .arg(run.join("tensorboard"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "TensorBoard's reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scalars = read["scalars"].as_object().unwrap();

    // Every numeric field of every metrics line, as `<split>/<name>` at its step.
    let mut expected = 0;
    for line in std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_i64().unwrap();
        let split = v.get("split").and_then(|s| s.as_str()).unwrap_or("train");
        for (k, val) in v.as_object().unwrap() {
            let (Some(x), false) = (val.as_f64(), k == "step") else {
                continue;
            };
            let tag = format!("{split}/{k}");
            let events = scalars
                .get(&tag)
                .unwrap_or_else(|| panic!("tag {tag} missing; have {:?}", scalars.keys()));
            let found =
                events.as_array().unwrap().iter().any(|e| {
                    e[0].as_i64() == Some(step) && e[1].as_f64().unwrap() as f32 == x as f32
                });
            assert!(found, "{tag} at step {step} = {x} not in {events}");
            expected += 1;
        }
    }
    assert!(expected > 20, "only {expected} scalars checked");
    for (tag, events) in scalars {
        let mut steps: Vec<i64> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[0].as_i64().unwrap())
            .collect();
        let n = steps.len();
        steps.dedup();
        assert_eq!(
            steps.len(),
            n,
            "{tag}: a step twice after the resume: {events}"
        );
    }
    assert_eq!(scalars["train/loss"].as_array().unwrap().len(), 4);
    assert!(scalars.contains_key("train/loss") && scalars.contains_key("val/psnr"));

    // Sample grids at the validation steps, PNGs of the grid's size.
    let images = read["images"]["val/reconstructions"].as_array().unwrap();
    let steps: Vec<i64> = images.iter().map(|e| e[0].as_i64().unwrap()).collect();
    assert_eq!(steps, [2, 4]);
    let grid = run.join("samples/step-00000004.png");
    let (w, h) = image::image_dimensions(&grid).unwrap();
    assert_eq!(
        (images[1][1].as_u64(), images[1][2].as_u64()),
        (Some(w as u64), Some(h as u64))
    );
    assert_eq!(
        images[1][3].as_u64(),
        Some(std::fs::metadata(&grid).unwrap().len())
    );
}
