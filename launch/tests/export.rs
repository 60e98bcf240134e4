//! `launch export`: a tiny taming-style run trained through `launch`, exported under taming's
//! names, and read back by `model.init_from`, bit for bit.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use burn::backend::{Autodiff, Flex};
use trainer::{Checkpoints, Resume, TrainConfig, Trainer, models::StateDict};

fn launch(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_launch"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn launch_ok(args: &[&str]) -> String {
    let (out, text) = launch(args);
    assert!(out.status.success(), "launch {args:?}: {text}");
    text
}

fn launch_err(args: &[&str]) -> String {
    let (out, text) = launch(args);
    assert!(!out.status.success(), "launch {args:?} succeeded: {text}");
    text
}

/// A taming `VQModel` run of 2 steps on 24 RGB images of 20x20 under `dir`, checkpointing every
/// step; `extra` goes into `[model]`.
fn config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let data = dir.join("rgb");
    if !data.exists() {
        std::fs::create_dir_all(&data).unwrap();
        for i in 0..24u32 {
            image::RgbImage::from_fn(20, 20, |x, y| {
                image::Rgb([(x * 12 + i) as u8, (y * 12) as u8, (i * 9) as u8])
            })
            .save(data.join(format!("{i:02}.png")))
            .unwrap();
        }
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[run]
name = "{name}"
output_dir = "{out}"
seed = 7
steps = 2
batch_size = 4
log_every = 1
val_batches = 1
checkpoint_every = 1

[data]
source = {{ kind = "image_folder", train = "{data}", val_fraction = 0.2 }}
resolution = 16
random_crop = true

[model]
kind = "vq_model"
{extra}

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
kind = "vqvae"
reconstruction = "l1"

[optim]
lr = 1e-3
"#,
            out = dir.join("runs").display(),
            data = data.display(),
        ),
    )
    .unwrap();
    path
}

#[test]
fn export_writes_taming_names_that_init_from_reads_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg_path = config(dir, "src", "");
    let cfg = cfg_path.to_str().unwrap();
    let out = dir.join("export/src.safetensors");
    let out_s = out.to_str().unwrap();

    // Nothing trained yet: a clear error, and nothing written.
    let e = launch_err(&["export", cfg, "--out", out_s]);
    assert!(e.contains("no checkpoint to export"), "{e}");
    assert!(!out.exists());

    let text = launch_ok(&["--resume", "never", cfg]);
    assert!(text.contains("done: 2 steps"), "{text}");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let text = launch_ok(&["export", cfg, "--out", out_s]);
    assert!(
        text.contains("step-00000002") && text.contains("tensors"),
        "{text}"
    );

    // (a) taming's names, every tensor of the model.
    let exported = StateDict::load(&out).unwrap();
    for key in [
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.mid.attn_1.q.weight",
        "quant_conv.weight",
        "quantize.embedding.weight",
        "post_quant_conv.bias",
        "decoder.up.1.upsample.conv.weight",
        "decoder.conv_out.weight",
    ] {
        assert!(exported.get(key).is_some(), "no `{key}`");
    }
    assert!(
        exported
            .names()
            .all(|n| !n.contains("gamma") && !n.contains(".Vq.")),
        "rotor-only names: {:?}",
        exported.names().collect::<Vec<_>>()
    );
    // The newest checkpoint's weights, exactly.
    let train_cfg = TrainConfig::load(&cfg_path, &[]).unwrap();
    let ckpts = dir.join("runs/src/checkpoints");
    let at = |step: usize| ckpts.join(format!("step-{step:08}"));
    let device = Default::default();
    let step2 = Checkpoints::load_model::<Flex>(&train_cfg, &at(2), &device).unwrap();
    assert_eq!(step2.export_state_dict(), exported);

    // --checkpoint picks another one.
    let out1 = dir.join("export/step1.safetensors");
    let ckpt1 = at(1);
    launch_ok(&[
        "export",
        cfg,
        "--checkpoint",
        ckpt1.to_str().unwrap(),
        "--out",
        out1.to_str().unwrap(),
    ]);
    let step1 = StateDict::load(&out1).unwrap();
    assert_eq!(
        step1.names().collect::<Vec<_>>(),
        exported.names().collect::<Vec<_>>()
    );
    assert_ne!(step1, exported, "steps 1 and 2 exported the same weights");

    // (b) A new run with model.init_from = the export starts from exactly those weights.
    let extra = format!("init_from = \"{}\"", out.display());
    let new_cfg = TrainConfig::load(&config(dir, "fine", &extra), &[]).unwrap();
    let t = Trainer::<Autodiff<Flex>>::new(new_cfg, Default::default(), Resume::Never).unwrap();
    assert_eq!(t.model().export_state_dict(), exported);
    drop(t);
    // ... and trains from there through launch.
    let text = launch_ok(&["--resume", "never", dir.join("fine.toml").to_str().unwrap()]);
    assert!(
        text.contains("done: 2 steps") && text.contains("model.init_from"),
        "{text}"
    );

    // Refusals: a missing or broken checkpoint, an output that is not .safetensors.
    let e = launch_err(&[
        "export",
        cfg,
        "--checkpoint",
        "/nonexistent/step-9",
        "--out",
        out_s,
    ]);
    assert!(
        e.contains("/nonexistent/step-9") && e.contains("no such checkpoint directory"),
        "{e}"
    );
    let model = at(1).join("model.mpk");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&model, bytes).unwrap();
    let e = launch_err(&[
        "export",
        cfg,
        "--checkpoint",
        ckpt1.to_str().unwrap(),
        "--out",
        out_s,
    ]);
    assert!(
        e.contains("step-00000001") && e.contains("model.mpk") && e.contains("corrupted"),
        "{e}"
    );
    let e = launch_err(&["export", cfg, "--out", dir.join("x.bin").to_str().unwrap()]);
    assert!(e.contains("*.safetensors"), "{e}");
    // The refused exports left the earlier one as it was.
    assert_eq!(StateDict::load(&out).unwrap(), exported);
}
