//! `launch encode` / `launch decode`: a tiny taming-style run trained through `launch`, its
//! validation set encoded to shards that hold exactly the model's own indices, decoded back to
//! the model's reconstructions; interrupted and damaged encodes resume, other jobs are refused.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use burn::{
    backend::Flex,
    tensor::{Int, Tensor, TensorData},
};
use trainer::{
    Checkpoints, TrainConfig,
    data::{Transform, load_batch, open_datasets},
    quantizers::Mode,
    tokens::{TokenDtype, TokenManifest, value_to_byte},
};

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

/// A taming `VQModel` run of 2 steps on 24 RGB images of 20x20 under `dir` (as
/// tests/export.rs), checkpointing every step.
fn config(dir: &Path) -> PathBuf {
    let data = dir.join("rgb");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..24u32 {
        image::RgbImage::from_fn(20, 20, |x, y| {
            image::Rgb([(x * 12 + i) as u8, (y * 12) as u8, (i * 9) as u8])
        })
        .save(data.join(format!("{i:02}.png")))
        .unwrap();
    }
    let path = dir.join("tok.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[run]
name = "tok"
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
flip = true

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

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// The shard files and the manifest of a token directory, as bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn encode_writes_the_models_indices_and_decode_gives_its_reconstructions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg_path = config(dir);
    let cfg_s = cfg_path.to_str().unwrap();
    let tok = dir.join("tokens-val");
    let tok_s = tok.to_str().unwrap();

    let e = launch_err(&["encode", cfg_s, "--split", "val", "--out", tok_s]);
    assert!(e.contains("no checkpoint to encode with"), "{e}");
    let text = launch_ok(&["--resume", "never", cfg_s]);
    assert!(text.contains("done: 2 steps"), "{text}");

    let encode = |extra: &[&str]| {
        let mut args = vec![
            "encode",
            cfg_s,
            "--split",
            "val",
            "--out",
            tok_s,
            "--shard-samples",
            "2",
            "--batch",
            "2",
        ];
        args.extend_from_slice(extra);
        launch(&args)
    };
    let (out, text) = encode(&[]);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("step-00000002"), "{text}");

    // The manifest describes the job; the shards hold the model's own indices, sample by sample.
    let cfg = TrainConfig::load(&cfg_path, &[]).unwrap();
    let (train_set, val_set, channels) = open_datasets(&cfg.data).unwrap();
    let n = val_set.len();
    assert!(n >= 3, "{n} validation images");
    let m = TokenManifest::read(&tok).unwrap();
    assert_eq!(
        (m.samples, m.shards.len(), m.shard_samples),
        (n, n.div_ceil(2), 2)
    );
    assert!(m.is_complete());
    assert_eq!(m.map_shape, [1, 8, 8]);
    assert_eq!(m.tokens_per_sample, 64);
    assert_eq!(
        (m.dtype, m.codebook_size, m.levels),
        (TokenDtype::U16, 32, 1)
    );
    assert_eq!((m.frames, m.latent_frames, m.channels), (1, 1, 3));
    assert_eq!(
        (m.split.as_str(), m.model_kind.as_str(), m.checkpoint_step),
        ("val", "vq_model", Some(2))
    );
    let ckpt = dir.join("runs/tok/checkpoints/step-00000002");
    let device = Default::default();
    let model = Checkpoints::load_model::<Flex>(&cfg, &ckpt, &device).unwrap();
    let transform = Transform {
        resolution: 16,
        resize: None,
        random_crop: false,
        flip: false,
        channels,
    };
    let mut decoded_bytes = Vec::new();
    let mut recon_bytes = Vec::new();
    for shard in &m.shards {
        let tokens = m.read_shard(&tok, shard).unwrap();
        let bytes = std::fs::read(tok.join(&shard.file)).unwrap();
        assert_eq!(bytes.len(), shard.samples * 64 * 2, "{}", shard.file);
        let idx: Vec<usize> = (shard.first_sample..shard.first_sample + shard.samples).collect();
        let batch = load_batch(val_set.as_ref(), &transform, &idx, 1).unwrap();
        let x = Tensor::<Flex, 4>::from_data(TensorData::new(batch.images, batch.shape), &device);
        let out = model.forward(x, Mode::Eval);
        let maps = out.encoded.index_maps();
        let own: Vec<u32> = maps
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as u32)
            .collect();
        assert_eq!(tokens, own, "{}", shard.file);
        // decode(encode(x)) is the model's reconstruction.
        let maps = Tensor::<Flex, 4, Int>::from_data(
            TensorData::new(
                tokens.iter().map(|t| *t as i64).collect::<Vec<_>>(),
                [shard.samples, 1, 8, 8],
            ),
            &device,
        );
        let again = values(model.decode_indices(maps));
        let rec = values(out.reconstruction);
        let worst = again
            .iter()
            .zip(&rec)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{}: decode differs by {worst}", shard.file);
        decoded_bytes.extend(again.iter().map(|v| value_to_byte(*v)));
        recon_bytes.extend(rec.iter().map(|v| value_to_byte(*v)));
    }

    // `launch decode`: one PNG per sample, the decoded values as bytes.
    let img = dir.join("decoded");
    let text = launch_ok(&[
        "decode",
        cfg_s,
        "--tokens",
        tok_s,
        "--out",
        img.to_str().unwrap(),
        "--batch",
        "2",
    ]);
    assert!(text.contains(&format!("{n} images decoded")), "{text}");
    let per = 3 * 16 * 16;
    for s in 0..n {
        let png = image::open(img.join(format!("{s:06}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(png.dimensions(), (16, 16));
        for (p, px) in png.pixels().enumerate() {
            for c in 0..3 {
                let want = decoded_bytes[s * per + c * 256 + p];
                assert_eq!(px.0[c], want, "sample {s} pixel {p} channel {c}");
                let rec = recon_bytes[s * per + c * 256 + p];
                assert!(
                    px.0[c].abs_diff(rec) <= 1,
                    "sample {s}: {} vs {rec}",
                    px.0[c]
                );
            }
        }
    }
    assert!(!img.join(format!("{n:06}.png")).exists());
    let few = dir.join("few");
    launch_ok(&[
        "decode",
        cfg_s,
        "--tokens",
        tok_s,
        "--out",
        few.to_str().unwrap(),
        "--limit",
        "3",
    ]);
    assert_eq!(std::fs::read_dir(&few).unwrap().count(), 3);

    // Resuming: a missing last shard is written again, identical; the others are kept.
    let before = snapshot(&tok);
    let last = m.shards.last().unwrap().file.clone();
    std::fs::remove_file(tok.join(&last)).unwrap();
    let (out, text) = encode(&[]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{} shards kept", m.shards.len() - 1)),
        "{text}"
    );
    assert_eq!(snapshot(&tok), before);
    // A corrupted shard is detected and redone.
    let first = tok.join(&m.shards[0].file);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[5] ^= 0x10;
    std::fs::write(&first, bytes).unwrap();
    let (out, text) = encode(&[]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("shard-00000.bin is unusable") && text.contains("sha256"),
        "{text}"
    );
    assert_eq!(snapshot(&tok), before);
    // Nothing to do: everything kept.
    let (_, text) = encode(&[]);
    assert!(
        text.contains(&format!("{} shards kept", m.shards.len())),
        "{text}"
    );

    // Another job into the same directory is refused, and changes nothing.
    let e = launch_err(&["encode", cfg_s, "--split", "train", "--out", tok_s]);
    assert!(
        e.contains("split") && e.contains("new --out") && e.contains("shard_samples"),
        "{e}"
    );
    let ckpt1 = dir.join("runs/tok/checkpoints/step-00000001");
    let (out, e) = encode(&["--checkpoint", ckpt1.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        e.contains("model_sha256") && e.contains("checkpoint_step") && e.contains("new --out"),
        "{e}"
    );
    assert_eq!(snapshot(&tok), before);
    // A folder of other files is not a token directory.
    let e = launch_err(&["encode", cfg_s, "--out", dir.join("rgb").to_str().unwrap()]);
    assert!(e.contains("not a token directory"), "{e}");

    // Tokens that do not fit the model are refused by decode.
    let odd = dir.join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    for (name, bytes) in &before {
        std::fs::write(odd.join(name), bytes).unwrap();
    }
    let text = std::fs::read_to_string(odd.join("manifest.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["map_shape"] = serde_json::json!([1, 4, 16]);
    std::fs::write(odd.join("manifest.json"), v.to_string()).unwrap();
    let e = launch_err(&[
        "decode",
        cfg_s,
        "--tokens",
        odd.to_str().unwrap(),
        "--out",
        dir.join("odd-img").to_str().unwrap(),
    ]);
    assert!(e.contains("do not fit") && e.contains("[1, 4, 16]"), "{e}");

    // The training split: every training image in index order, one shard.
    let train_tok = dir.join("tokens-train");
    launch_ok(&["encode", cfg_s, "--out", train_tok.to_str().unwrap()]);
    let t = TokenManifest::read(&train_tok).unwrap();
    assert_eq!(
        (t.samples, t.shards.len(), t.split.as_str()),
        (train_set.len(), 1, "train")
    );
    assert_eq!(
        std::fs::metadata(train_tok.join("shard-00000.bin"))
            .unwrap()
            .len(),
        (train_set.len() * 64 * 2) as u64
    );

    // Two data-parallel workers write the same directory, byte for byte, as one process.
    let one = dir.join("tokens-one");
    let two = dir.join("tokens-two");
    let args = |out: &Path, cpu: Option<&'static str>| {
        let mut a: Vec<String> = [
            "encode",
            cfg_s,
            "--shard-samples",
            "3",
            "--batch",
            "2",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(out.to_str().unwrap().to_string());
        if let Some(n) = cpu {
            a.extend(["--cpu".to_string(), n.to_string()]);
        }
        a
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        launch_ok(&a)
    };
    run(args(&one, None));
    run(args(&two, Some("2")));
    let (a, b) = (
        TokenManifest::read(&one).unwrap(),
        TokenManifest::read(&two).unwrap(),
    );
    assert!(a.shards.len() >= 3, "several shards: {}", a.shards.len());
    assert_eq!(a.shards, b.shards);
    for s in &a.shards {
        assert_eq!(
            std::fs::read(one.join(&s.file)).unwrap(),
            std::fs::read(two.join(&s.file)).unwrap()
        );
    }
}

/// Video: a 3-D conv VQGAN on BAIR clips of 4 frames; frame-major maps with 2 latent frames, a
/// PNG strip and a GIF per clip.
#[test]
fn video_clips_encode_to_frame_major_maps_and_decode_to_strips_and_gifs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bair =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/data/bair/softmotion30_44k");
    let cfg_path = dir.join("video.toml");
    std::fs::write(
        &cfg_path,
        format!(
            r#"
[run]
name = "video"
output_dir = "{out}"
seed = 2
steps = 1
batch_size = 2
log_every = 1
val_batches = 1

[data]
source = {{ kind = "bair", train = "{train}", val = "{val}" }}
resolution = 16
resize = 16
frames = 4
frame_stride = 2

[model]
kind = "conv3d_vq"
frames = 4
n_hiddens = 8
downsample = [2, 4, 4]
embed_dim = 8
norm_groups = 4
quantizer = {{ kind = "vq", dim = 8, codebook_size = 32, estimator = "rotation" }}

[objective]
kind = "vqvae"
reconstruction = "mse"

[optim]
lr = 1e-3
"#,
            out = dir.join("runs").display(),
            train = bair.join("train").display(),
            val = bair.join("test").display(),
        ),
    )
    .unwrap();
    let cfg_s = cfg_path.to_str().unwrap();
    launch_ok(&["--resume", "never", cfg_s]);
    let tok = dir.join("tokens");
    launch_ok(&[
        "encode",
        cfg_s,
        "--split",
        "val",
        "--out",
        tok.to_str().unwrap(),
    ]);
    let m = TokenManifest::read(&tok).unwrap();
    assert!(m.is_complete() && m.samples >= 1, "{m:?}");
    // 4 frames of 16x16 downsampled by (2, 4, 4): 2 latent frames of 4x4, frame-major.
    assert_eq!((m.map_shape, m.latent_frames, m.frames), ([1, 8, 4], 2, 4));

    // The first clip's indices are the model's.
    let cfg = TrainConfig::load(&cfg_path, &[]).unwrap();
    let (_, val_set, channels) = open_datasets(&cfg.data).unwrap();
    let ckpt = dir.join("runs/video/checkpoints/step-00000001");
    let device = Default::default();
    let model = Checkpoints::load_model::<Flex>(&cfg, &ckpt, &device).unwrap();
    let transform = Transform {
        resolution: 16,
        resize: Some(16),
        random_crop: false,
        flip: false,
        channels,
    };
    let batch = load_batch(val_set.as_ref(), &transform, &[0], 1).unwrap();
    let x = Tensor::<Flex, 4>::from_data(TensorData::new(batch.images, batch.shape), &device);
    let own: Vec<i64> = model
        .forward(x, Mode::Eval)
        .encoded
        .index_maps()
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    let tokens = m.read_shard(&tok, &m.shards[0]).unwrap();
    let first: Vec<i64> = tokens[..32].iter().map(|t| *t as i64).collect();
    assert_eq!(first, own);

    let out = dir.join("clips");
    let text = launch_ok(&[
        "decode",
        cfg_s,
        "--tokens",
        tok.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--limit",
        "1",
    ]);
    assert!(text.contains("1 clips"), "{text}");
    assert_eq!(
        image::image_dimensions(out.join("000000.png")).unwrap(),
        (4 * 16, 16)
    );
    let gif = std::fs::read(out.join("000000.gif")).unwrap();
    assert!(gif.starts_with(b"GIF89a"));
    assert!(!out.join("000001.png").exists());
}
