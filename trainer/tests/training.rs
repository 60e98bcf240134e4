//! End to end: real training on Fashion-MNIST (loss falls, usage reported, outputs written),
//! exact resume from a checkpoint, fallback from a corrupted checkpoint.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use trainer::{Resume, TrainConfig, Trainer};

use crate::busy_load;
use busy_load::Load;
#[path = "support/lpips_files.rs"]
mod lpips_files;
use crate::weights_support;
use lpips_files::lpips_files;
use weights_support::{weight_tensors, weights};

type B = Autodiff<Flex>;

fn synthetic_folder(dir: &Path, n: usize) {
    for i in 0..n {
        let img = image::GrayImage::from_fn(28, 28, |x, y| {
            image::Luma([((x * (i as u32 % 5 + 1) + y * (i as u32 % 3 + 2)) % 256) as u8])
        });
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

fn config(out: &Path, data: &str, steps: usize, extra_quantizer: &str) -> TrainConfig {
    let text = format!(
        r#"
[run]
name = "t"
output_dir = "{out}"
seed = 3
steps = {steps}
batch_size = 16
log_every = 1
val_batches = 1
checkpoint_every = 3
keep_checkpoints = 5

[data]
source = {data}
resolution = 28
random_crop = true
flip = true

[model]
kind = "peer"
in_channels = 1

[model.quantizer]
kind = "vq"
dim = 32
codebook_size = 64
estimator = "rotation"
commitment_weight = 10.0
{extra_quantizer}

[objective]
kind = "vqvae"
reconstruction = "l1"
clamp_output = true

[optim]
lr = 1e-3
weight_decay = 0.01
warmup_steps = 2
schedule = "cosine"
grad_clip = 1.0
accumulate = 2
"#,
        out = out.display()
    );
    TrainConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn folder_source(dir: &Path) -> String {
    format!(
        "{{ kind = \"image_folder\", train = \"{}\", val_fraction = 0.1, channels = 1 }}",
        dir.display()
    )
}

/// 40 synthetic images in `dir/data`, as an image-folder source.
fn synthetic_source(dir: &Path) -> String {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    synthetic_folder(&data, 40);
    folder_source(&data)
}

#[test]
fn resumed_run_matches_uninterrupted_run() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let src = synthetic_source(tmp.path());
    // EMA with dead-code restart: the quantizer RNG must be restored too.
    let extra = "dead_code_threshold = 0.5\ncodebook = { kind = \"ema\", decay = 0.8 }";

    let out_a = tmp.path().join("a");
    let mut a = Trainer::<B>::new(
        config(&out_a, &src, 6, extra),
        Default::default(),
        Resume::Never,
    )
    .unwrap();
    a.train_until(6).unwrap();

    let out_b = tmp.path().join("b");
    let mut b = Trainer::<B>::new(
        config(&out_b, &src, 6, extra),
        Default::default(),
        Resume::Never,
    )
    .unwrap();
    b.train_until(4).unwrap(); // checkpoint at step 3; steps 4 is lost with the "crash"
    drop(b);
    let mut b = Trainer::<B>::new(
        config(&out_b, &src, 6, extra),
        Default::default(),
        Resume::Auto,
    )
    .unwrap();
    assert_eq!(b.step(), 3, "resumed from the step-3 checkpoint");
    b.train_until(6).unwrap();

    let (wa, wb) = (weights(&a), weights(&b));
    assert_eq!(wa.len(), wb.len());
    let differ = wa
        .iter()
        .zip(&wb)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differ, 0, "{differ} weights differ (bitwise) after resume");
    let (la, lb) = (losses(&out_a.join("t")), losses(&out_b.join("t")));
    assert_eq!(
        la.iter().map(|l| l.0).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(
        lb.iter().map(|l| l.0).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>(),
        "metrics after the checkpoint were rewritten"
    );
    let discarded =
        std::fs::read_to_string(out_b.join("t").join("metrics.discarded.jsonl")).unwrap();
    assert!(
        discarded.contains("\"step\":4"),
        "the interrupted run's step 4 is kept aside: {discarded}"
    );
    assert_eq!(
        la, lb,
        "per-step losses of the resumed run are the uninterrupted run's, exactly"
    );

    // Fresh start refuses to overwrite a run with checkpoints.
    let err = Trainer::<B>::new(
        config(&out_b, &src, 6, extra),
        Default::default(),
        Resume::Never,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("--resume auto"), "{err}");

    // A truncated newest checkpoint is detected; the previous one is used.
    let ckpts = out_b.join("t").join("checkpoints");
    let newest = ckpts.join("step-00000006").join("model.mpk");
    let len = std::fs::metadata(&newest).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let c = Trainer::<B>::new(
        config(&out_b, &src, 6, extra),
        Default::default(),
        Resume::Auto,
    )
    .unwrap();
    assert_eq!(c.step(), 3, "fell back to the previous valid checkpoint");
}

/// The same config and seed give bitwise the same weights and per-step losses whatever the
/// number of threads and the machine's load (both cores kept busy): micro-batches of 8 split
/// every convolution's weight gradient over 8 tasks.
#[test]
fn same_seed_gives_the_same_bits_on_any_thread_count_under_load() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let src = synthetic_source(tmp.path());
    let extra = "codebook = { kind = \"ema\", decay = 0.8 }";
    let _load = Load::start(2);
    let mut runs = Vec::new();
    for threads in [1, 2, 4] {
        let out = tmp.path().join(format!("threads-{threads}"));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let w = pool.install(|| {
            let mut t = Trainer::<B>::new(
                config(&out, &src, 5, extra),
                Default::default(),
                Resume::Never,
            )
            .unwrap();
            t.train_until(5).unwrap();
            weights(&t)
        });
        runs.push((threads, w, losses(&out.join("t"))));
    }
    let (_, w1, l1) = &runs[0];
    for (threads, w, l) in &runs[1..] {
        let differ = w1
            .iter()
            .zip(w)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "{differ} weights differ between 1 and {threads} threads"
        );
        assert_eq!(l1, l, "per-step losses, 1 vs {threads} threads");
    }
}

fn truncate(file: &Path) {
    let len = std::fs::metadata(file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

/// Files (relative path, length) under `dir`, sorted.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::metadata(&p).unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

/// No run is lost to damaged checkpoints: when none verifies, `Resume::Auto` stops listing each
/// and changes nothing; `Resume::Weights` starts from the intact model weights and moves an
/// older run's same-step directory aside instead of overwriting it; pruning never removes a
/// checkpoint that does not verify.
#[test]
fn damaged_checkpoints_are_never_overwritten_or_pruned() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let src = synthetic_source(tmp.path());
    let out = tmp.path().join("out");
    let ckpts = out.join("t").join("checkpoints");
    let mut a =
        Trainer::<B>::new(config(&out, &src, 6, ""), Default::default(), Resume::Never).unwrap();
    a.train_until(6).unwrap();
    let trained = weights(&a);
    drop(a);
    truncate(&ckpts.join("step-00000003").join("optim.mpk"));
    truncate(&ckpts.join("step-00000006").join("optim.mpk"));
    let before = listing(&out);

    let err = Trainer::<B>::new(config(&out, &src, 9, ""), Default::default(), Resume::Auto)
        .err()
        .expect("no checkpoint verifies")
        .to_string();
    for want in [
        "step-00000003",
        "step-00000006",
        "optim.mpk",
        "--resume weights",
        "--resume never",
    ] {
        assert!(err.contains(want), "the error says {want:?}: {err}");
    }
    assert_eq!(listing(&out), before, "nothing was changed");

    let mut w = Trainer::<B>::new(
        config(&out, &src, 3, ""),
        Default::default(),
        Resume::Weights,
    )
    .unwrap();
    assert_eq!(w.step(), 0);
    let differ = weights(&w)
        .iter()
        .zip(&trained)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differ, 0, "started from step 6's intact model weights");
    w.train_until(3).unwrap();
    drop(w);
    let aside: Vec<_> = std::fs::read_dir(&ckpts)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("step-00000003.replaced-"))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the damaged step-3 was moved aside: {aside:?}"
    );
    let moved = ckpts.join(&aside[0]);
    assert_eq!(
        std::fs::metadata(moved.join("optim.mpk")).unwrap().len(),
        before
            .iter()
            .find(|(p, _)| p.ends_with("step-00000003/optim.mpk"))
            .unwrap()
            .1,
        "with its contents"
    );
    assert!(moved.join("model.mpk").exists());

    // Pruning past run.keep_checkpoints skips a damaged checkpoint (here the damaged step 6,
    // renamed to an older step) and removes verified ones.
    std::fs::rename(ckpts.join("step-00000006"), ckpts.join("step-00000002")).unwrap();
    let mut cfg = config(&out, &src, 6, "");
    cfg.run.keep_checkpoints = 1;
    let mut c = Trainer::<B>::new(cfg, Default::default(), Resume::Auto).unwrap();
    assert_eq!(c.step(), 3, "continued from the weights run's step 3");
    c.train_until(6).unwrap();
    assert!(ckpts.join("step-00000006").exists());
    assert!(
        !ckpts.join("step-00000003").exists(),
        "a verified old checkpoint is pruned"
    );
    assert!(
        ckpts.join("step-00000002").join("model.mpk").exists(),
        "a damaged one is kept"
    );
}

/// A global batch larger than the training set fails before anything is written, naming the key.
#[test]
fn a_batch_larger_than_the_training_set_is_refused() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let src = synthetic_source(tmp.path());
    let mut cfg = config(&tmp.path().join("out"), &src, 5, "");
    cfg.run.batch_size = 64;
    cfg.optim.accumulate = 1;
    let err = Trainer::<B>::new(cfg, Default::default(), Resume::Never)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("run.batch_size") && err.contains("64") && err.contains("36 images"),
        "{err}"
    );
    assert!(
        !tmp.path().join("out").join("t").exists(),
        "no run directory left behind"
    );
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn short_real_training_on_fashion_mnist_lowers_the_loss_and_reports_usage() {
    let _serial = crate::serial();
    let fm = repo().join("data/fashion-mnist");
    assert!(
        fm.join("train-images-idx3-ubyte.gz").exists(),
        "Fashion-MNIST missing: run scripts/fetch-data.sh first (the README's test command does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let src = format!(
        "{{ kind = \"fashion_mnist\", train = \"{}\", val = \"{}\" }}",
        fm.join("train-images-idx3-ubyte.gz").display(),
        fm.join("t10k-images-idx3-ubyte.gz").display()
    );
    let mut cfg = config(
        tmp.path(),
        &src,
        40,
        "codebook = { kind = \"ema\", decay = 0.8 }",
    );
    cfg.run.batch_size = 64;
    cfg.optim.accumulate = 1;
    cfg.data.random_crop = false;
    cfg.data.flip = false;
    cfg.run.checkpoint_every = 20;
    let mut t = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
    let val = t.run().unwrap();
    let run = tmp.path().join("t");
    let l = losses(&run);
    assert_eq!(l.len(), 40);
    let first: f64 = l[..5].iter().map(|x| x.1).sum::<f64>() / 5.0;
    let last: f64 = l[35..].iter().map(|x| x.1).sum::<f64>() / 5.0;
    assert!(
        last < 0.7 * first,
        "loss did not fall: first {first}, last {last}"
    );
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(text.lines().nth(39).unwrap()).unwrap();
    for key in [
        "used_fraction",
        "perplexity",
        "quant_error",
        "lr",
        "images_per_s",
        "data_images_per_s",
        "q_commitment",
        "host_reads_per_step",
    ] {
        assert!(
            rec[key].as_f64().is_some(),
            "metrics line lacks {key}: {rec}"
        );
    }
    // Logged every step, so every read happens at a logging step (after the step); the steps
    // themselves read nothing.
    for line in text.lines().filter(|l| !l.contains("\"split\"")) {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(rec["host_reads_per_step"], 0.0, "{rec}");
        assert_eq!(rec["staged_reads_per_step"], 0.0, "{rec}");
    }
    assert!(val.used_fraction > 0.0 && val.psnr > 10.0, "{val:?}");
    assert!(text.lines().any(|l| l.contains("\"split\":\"val\"")));
    assert!(run.join("samples").join("step-00000040.png").exists());
    assert!(run.join("checkpoints").join("latest").exists());
}

/// LPIPS weight files as a user would supply them (torchvision VGG16 names, LPIPS head names),
/// with random values: there are no real weights offline.
#[test]
fn vqgan_objective_trains_generator_and_discriminator_and_resumes() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rgb");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..24u32 {
        image::RgbImage::from_fn(20, 20, |x, y| {
            image::Rgb([(x * 12 + i) as u8, (y * 12) as u8, (i * 9) as u8])
        })
        .save(data.join(format!("{i:02}.png")))
        .unwrap();
    }
    let (vgg, heads) = lpips_files(tmp.path());
    let text = |steps: usize| {
        format!(
            r#"
[run]
name = "gan"
output_dir = "{out}"
steps = {steps}
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
            out = tmp.path().display(),
            data = data.display(),
            vgg = vgg.display(),
            heads = heads.display()
        )
    };
    let cfg = TrainConfig::from_toml(&text(4)).unwrap_or_else(|e| panic!("{e}"));
    let mut t = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
    t.train_until(4).unwrap();
    let run = tmp.path().join("gan");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for l in &lines[..2] {
        assert_eq!(
            l["d_weight"].as_f64().unwrap(),
            0.0,
            "no GAN before disc_start: {l}"
        );
        assert!(
            l["perceptual"].as_f64().unwrap() != 0.0,
            "LPIPS term active (random heads may be negative): {l}"
        );
    }
    for l in &lines[2..] {
        let dw = l["d_weight"].as_f64().unwrap();
        assert!(
            dw.is_finite() && dw > 0.0,
            "adaptive weight from disc_start: {l}"
        );
        assert!(l["disc_loss"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["q_codebook"].as_f64().is_some(), "{l}");
    }
    // The GAN terms and the adaptive weight stay on the device too.
    for l in &lines {
        assert_eq!(l["host_reads_per_step"], 0.0, "{l}");
    }
    let ckpt = run.join("checkpoints").join("step-00000004");
    assert!(ckpt.join("disc.mpk").exists() && ckpt.join("disc_optim.mpk").exists());
    // Resume continues with the discriminator and its optimizer.
    let cfg = TrainConfig::from_toml(&text(6)).unwrap();
    let mut r = Trainer::<B>::new(cfg, Default::default(), Resume::Auto).unwrap();
    assert_eq!(r.step(), 4);
    r.train_until(6).unwrap();

    // Without LPIPS files, a perceptual loss is refused up front, naming what is needed.
    let err = TrainConfig::from_toml(&text(4).replace(
        &format!(
            "lpips = {{ vgg16 = \"{}\", heads = \"{}\" }}",
            vgg.display(),
            heads.display()
        ),
        "",
    ))
    .unwrap_err();
    assert!(
        err.contains("objective.lpips") && err.contains("vgg16-397923af.pth"),
        "{err}"
    );
}

/// The ViT-VQGAN objective end to end (enhancing's loss, StyleGAN2 discriminator with R1): the
/// GAN terms switch on at `disc_start`, R1 runs on its steps, nothing is read from the device
/// inside a step, the discriminator and its AdamW state are checkpointed, and a run resumed from
/// a checkpoint ends with the same bits as one that was never interrupted.
#[test]
fn vit_vqgan_objective_trains_with_r1_and_resumes_exactly() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rgb");
    rgb_folder(&data);
    let text = |name: &str, steps: usize| vit_vqgan_config(tmp.path(), &data, name, steps, 32, 64);
    let cfg = TrainConfig::from_toml(&text("full", 6)).unwrap_or_else(|e| panic!("{e}"));
    let mut full = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
    full.train_until(6).unwrap();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(tmp.path().join("full/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|l: &serde_json::Value| l.get("split").is_none())
            .collect();
    assert_eq!(lines.len(), 6);
    let f =
        |l: &serde_json::Value, k: &str| l[k].as_f64().unwrap_or_else(|| panic!("no `{k}` in {l}"));
    // Step 0 (logged as step 1): before disc_start, no adversarial weight, no discriminator turn.
    assert_eq!(f(&lines[0], "d_weight"), 0.0, "{}", lines[0]);
    assert_eq!(f(&lines[0], "disc_loss"), 0.0, "{}", lines[0]);
    for (i, l) in lines.iter().enumerate().skip(1) {
        assert!((f(l, "d_weight") - 0.1).abs() < 1e-7, "{l}");
        assert!(f(l, "disc_loss") > 0.0 && f(l, "g_loss") > 0.0, "{l}");
        // R1 on every second step (steps 2 and 4 of 0..6 are logged as 3 and 5).
        assert_eq!(f(l, "r1_reg") > 0.0, i % 2 == 0, "step {i}: {l}");
        assert!(
            (f(l, "nll") - f(l, "l2")).abs() < 1e-6,
            "nll = l2 here: {l}"
        );
    }
    for l in &lines {
        assert_eq!(l["host_reads_per_step"], 0.0, "{l}");
        assert!(f(l, "used_fraction") > 0.0, "{l}");
    }
    assert!(
        f(&lines[5], "l2") < f(&lines[0], "l2"),
        "the reconstruction improves: {} -> {}",
        lines[0]["l2"],
        lines[5]["l2"]
    );
    let ckpt = tmp.path().join("full/checkpoints/step-00000003");
    assert!(ckpt.join("disc.mpk").exists() && ckpt.join("disc_optim.mpk").exists());

    // Interrupted after the step-3 checkpoint, resumed to 6: the same bits.
    let cfg = TrainConfig::from_toml(&text("cut", 6)).unwrap();
    let mut cut = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
    cut.train_until(3).unwrap();
    drop(cut);
    let cfg = TrainConfig::from_toml(&text("cut", 6)).unwrap();
    let mut resumed = Trainer::<B>::new(cfg, Default::default(), Resume::Auto).unwrap();
    assert_eq!(resumed.step(), 3);
    resumed.train_until(6).unwrap();
    assert!(
        weights(&resumed) == weights(&full),
        "resumed ViT-VQGAN run differs from the uninterrupted one"
    );
}

/// The small ViT-VQGAN (StyleGAN2 discriminator, R1 every second step) of the tests below.
fn vit_vqgan_config(
    out: &Path,
    data: &Path,
    name: &str,
    steps: usize,
    dim: usize,
    mlp: usize,
) -> String {
    format!(
        r#"
[run]
name = "{name}"
output_dir = "{out}"
seed = 3
steps = {steps}
batch_size = 4
log_every = 1
val_batches = 1
checkpoint_every = 3

[data]
source = {{ kind = "image_folder", train = "{data}", val_fraction = 0.2 }}
resolution = 16
random_crop = true

[model]
kind = "vit_vq"

[model.vit]
image_size = 16
patch_size = 4
encoder = {{ dim = {dim}, depth = 1, heads = 2, mlp_dim = {mlp}, dim_head = 16 }}
decoder = {{ dim = {dim}, depth = 1, heads = 2, mlp_dim = {mlp}, dim_head = 16 }}
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
disc_start = 1
discriminator = {{ size = 16, channels = {{ "16" = 8, "8" = 16, "4" = 16 }}, do_r1_every = 2 }}

[optim]
lr = 1e-3
betas = [0.9, 0.99]
weight_decay = 1e-4
"#,
        out = out.display(),
        data = data.display(),
    )
}

/// 20 RGB images of 20x20.
fn rgb_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..20u32 {
        image::RgbImage::from_fn(20, 20, |x, y| {
            image::Rgb([
                (x * 11 + i * 3) as u8,
                (y * 13 + i) as u8,
                ((x + y) * 5 + i * 7) as u8,
            ])
        })
        .save(dir.join(format!("{i:02}.png")))
        .unwrap();
    }
}

/// The transformer step (attention, LayerNorm, token GEMMs large enough for burn's GEMM to run
/// on several threads), the StyleGAN2 discriminator and R1: the same bits with 1, 2 and 4
/// threads on a loaded machine.
#[test]
fn vit_vqgan_gives_the_same_bits_on_any_thread_count_under_load() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rgb");
    rgb_folder(&data);
    let _load = Load::start(2);
    let mut runs = Vec::new();
    for threads in [1, 2, 4] {
        let name = format!("threads-{threads}");
        // 4 images x 16 tokens x 256 wide into 1024: 16.8 M multiply-adds per product, above
        // burn's 7 M threshold for a multi-threaded GEMM.
        let text = vit_vqgan_config(tmp.path(), &data, &name, 4, 256, 1024);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let w = pool.install(|| {
            let cfg = TrainConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
            let mut t = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
            t.train_until(4).unwrap();
            weights(&t)
        });
        runs.push((threads, w, losses(&tmp.path().join(&name))));
    }
    let (_, w1, l1) = &runs[0];
    for (threads, w, l) in &runs[1..] {
        let differ = w1
            .iter()
            .zip(w)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "{differ} weights differ between 1 and {threads} threads"
        );
        assert_eq!(l1, l, "per-step losses, 1 vs {threads} threads");
    }
}

/// `run.precision = "bf16"` (mixed precision) on the CPU backend: a small taming VQ-VAE
/// (GroupNorm, attention, up/down-sampling) trains from the same seed as in f32. bf16 keeps 8 bits
/// of mantissa (relative rounding 2^-9 per operation), so the losses track the f32 run's loosely:
/// within 3% at the first step and 15% over eight steps (relative), and fall. Gradients reach
/// the f32 master weights through the casts: every weight moves about as far as in f32, and the
/// weights stay f32.
#[test]
fn bf16_mixed_precision_tracks_f32_and_updates_the_master_weights() {
    use burn::tensor::DType;
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rgb");
    rgb_folder(&data);
    let text = |name: &str, precision: &str| {
        format!(
            r#"
[run]
name = "{name}"
output_dir = "{out}"
seed = 5
steps = 8
batch_size = 4
log_every = 1
val_batches = 1
checkpoint_every = 8
precision = "{precision}"

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
codebook = {{ kind = "ema", decay = 0.9 }}

[objective]
kind = "vqvae"
reconstruction = "mse"

[optim]
lr = 2e-3
"#,
            out = tmp.path().display(),
            data = data.display(),
        )
    };
    let mut runs = Vec::new();
    for precision in ["f32", "bf16"] {
        let cfg =
            TrainConfig::from_toml(&text(precision, precision)).unwrap_or_else(|e| panic!("{e}"));
        let mut t = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
        let init = weight_tensors(&t);
        t.train_until(8).unwrap();
        let end = weight_tensors(&t);
        runs.push((losses(&tmp.path().join(precision)), init, end));
    }
    let (f32_loss, f32_init, f32_end) = &runs[0];
    let (bf_loss, bf_init, bf_end) = &runs[1];
    assert_eq!(f32_init, bf_init, "same seed, same f32 initial weights");
    assert_eq!(bf_loss.len(), 8);
    for (i, ((step, a), (_, b))) in f32_loss.iter().zip(bf_loss).enumerate() {
        let tol = if i == 0 { 0.03 } else { 0.15 };
        assert!(
            (a - b).abs() <= tol * a.abs(),
            "step {step}: bf16 loss {b} vs f32 {a} (relative tolerance {tol})"
        );
    }
    assert!(
        bf_loss[7].1 < bf_loss[0].1,
        "bf16 loss did not fall: {bf_loss:?}"
    );
    // Master weights: f32, and every weight tensor the f32 run moved moved in bf16 too (a weight
    // whose gradient the casts lost would not move at all; the quantizer's EMA codebook moves
    // without gradients and is included); those the f32 run moved by an RMS of 2e-3 per value
    // or more (AdamW moves a weight by up to about lr = 2e-3 a step) by 0.5x to 2x as much.
    // Weights whose true gradient is about 0 (a convolution's bias before a GroupNorm) are left
    // out of the ratio: AdamW turns bf16's larger rounding noise into steps of lr.
    let dist = |a: &[f32], b: &[f32]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let mut compared = 0;
    for (i, (((d, a0), (_, a1)), (_, b1))) in f32_init.iter().zip(f32_end).zip(bf_end).enumerate() {
        assert_eq!(*d, DType::F32, "parameter {i} is not f32");
        assert_eq!(
            bf_end[i].0,
            DType::F32,
            "bf16 run: parameter {i} is not f32"
        );
        let (m32, m16) = (dist(a0, a1), dist(a0, b1));
        assert!(m32 == 0.0 || m16 > 0.0, "parameter {i} moved in f32 only");
        let rms = m32 / (a0.len() as f64).sqrt();
        if rms >= 2e-3 {
            compared += 1;
            assert!(
                m16 > 0.5 * m32 && m16 < 2.0 * m32,
                "parameter {i} ({} values) moved {m16} in bf16, {m32} in f32",
                a0.len()
            );
        }
    }
    assert!(
        compared >= 10,
        "only {compared} weights moved enough to compare"
    );
}
