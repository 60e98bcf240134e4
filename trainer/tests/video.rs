//! Video: BAIR's TFRecords (against records written by an independent writer), corrupt records,
//! `prepare-video` on real videos (ffmpeg), clip sampling from frame shards, and training the
//! video tokenizers (3-D conv VQGAN, TimeSformer-VQGAN): loss falls, usage reported, samples
//! written, exact resume, the same bits on any thread count.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use burn::{
    backend::{Autodiff, Flex},
    module::Module,
};
use rand::SeedableRng;
use sha2::Digest;
use trainer::{
    Resume, TrainConfig, Trainer,
    data::{
        BairRecords, ClipSpec, Dataset, Loader, LoaderOptions, PrepareOptions, Transform,
        VideoFolder, prepare_videos,
        tfrecord::{Feature, index_records, parse_example, read_record},
        video_shard::ShardHeader,
    },
};

use crate::busy_load;
use busy_load::Load;

use crate::weights_support;
use weights_support::weights;

type B = Autodiff<Flex>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bair_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bair")
}

fn rng() -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(0)
}

fn spec(frames: usize, stride: usize, step: usize) -> ClipSpec {
    ClipSpec {
        frames,
        stride,
        step,
    }
}

fn frame_bytes(frames: &[image::DynamicImage]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.to_rgb8().into_raw()).collect()
}

#[test]
fn bair_records_read_as_an_independent_writer_wrote_them() {
    let _serial = crate::serial();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bair_fixture().join("expected.json")).unwrap(),
    )
    .unwrap();
    for split in ["train", "test"] {
        let want = expected["trajectories"][split].as_array().unwrap();
        // Whole trajectories (30 frames, fixed window): the bytes the writer stored.
        let all = BairRecords::open(
            &bair_fixture().join("softmotion30_44k").join(split),
            spec(30, 1, 30),
            false,
        )
        .unwrap();
        assert_eq!(all.len(), want.len(), "{}", all.describe());
        for (i, w) in want.iter().enumerate() {
            let frames = all.sample(i, &mut rng()).unwrap();
            assert_eq!(frames.len(), 30);
            assert_eq!((frames[0].width(), frames[0].height()), (16, 16));
            let got = format!("{:x}", sha2::Sha256::digest(frame_bytes(&frames)));
            assert_eq!(
                got,
                w["frames_sha256"].as_str().unwrap(),
                "{split} trajectory {i}"
            );
        }
    }
    // The float features parse too (packed float_list, as protobuf writes it).
    let file = bair_fixture().join("softmotion30_44k/train/traj_0_to_3.tfrecords");
    let (spans, problem) = index_records(&file).unwrap();
    assert_eq!((spans.len(), problem), (4, None));
    let f = std::fs::File::open(&file).unwrap();
    let example = parse_example(&read_record(&f, &file, spans[0]).unwrap()).unwrap();
    let Some(Feature::Float(action)) = example.get("0/action") else {
        panic!(
            "no 0/action: {:?}",
            example.keys().take(5).collect::<Vec<_>>()
        )
    };
    let want: Vec<f32> = expected["trajectories"]["train"][0]["action0"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(action, &want);

    // 16-frame clips: one window per trajectory, training starts anywhere in 0..=14, validation
    // at 0; a clip is the trajectory's frames from its start.
    let train = BairRecords::open(
        &bair_fixture().join("softmotion30_44k/train"),
        spec(16, 1, 16),
        true,
    )
    .unwrap();
    let whole = frame_bytes(&all_frames(0));
    let mut starts = std::collections::BTreeSet::new();
    let mut r = rng();
    for _ in 0..60 {
        let clip = frame_bytes(&train.sample(0, &mut r).unwrap());
        let start = (0..=14)
            .find(|s| whole[s * 768..(s + 16) * 768] == clip[..])
            .expect("a clip is 16 consecutive frames of its trajectory");
        starts.insert(start);
    }
    assert!(
        starts.len() > 8 && starts.iter().all(|s| *s <= 14),
        "{starts:?}"
    );
}

fn all_frames(i: usize) -> Vec<image::DynamicImage> {
    BairRecords::open(
        &bair_fixture().join("softmotion30_44k/train"),
        spec(30, 1, 30),
        false,
    )
    .unwrap()
    .sample(i, &mut rng())
    .unwrap()
}

#[test]
fn corrupt_bair_records_are_reported_counted_and_skipped() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("train");
    std::fs::create_dir_all(&dir).unwrap();
    let src = bair_fixture().join("softmotion30_44k/train");
    for name in ["traj_0_to_3.tfrecords", "traj_4_to_6.tfrecords"] {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
    }
    // Record 1 of the first file: one flipped byte in its frames (the data CRC fails).
    let first = dir.join("traj_0_to_3.tfrecords");
    let (spans, _) = index_records(&first).unwrap();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[(spans[1].offset + 12 + 100) as usize] ^= 0x55;
    std::fs::write(&first, &bytes).unwrap();
    // The second file cut in the middle of its last record: framing stops there.
    let second = dir.join("traj_4_to_6.tfrecords");
    let len = std::fs::metadata(&second).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&second)
        .unwrap();
    f.set_len(len - 500).unwrap();
    let (spans2, problem) = index_records(&second).unwrap();
    assert_eq!(spans2.len(), 2);
    let problem = problem.expect("the truncation is reported");
    assert!(
        problem.contains("traj_4_to_6") && problem.contains("truncated"),
        "{problem}"
    );

    let ds = BairRecords::open(&dir, spec(8, 1, 30), true).unwrap();
    assert_eq!(ds.len(), 6, "{}", ds.describe());
    assert!(
        ds.describe().contains("1 files cut short"),
        "{}",
        ds.describe()
    );
    let err = ds.sample(1, &mut rng()).unwrap_err();
    assert!(
        err.contains("traj_0_to_3.tfrecords")
            && err.contains(&format!("byte {}", spans[1].offset))
            && err.contains("CRC"),
        "{err}"
    );
    // The loader skips it (counted), and every batch is whole.
    let transform = Transform {
        resolution: 16,
        resize: None,
        random_crop: false,
        flip: false,
        channels: 3,
    };
    let opts = LoaderOptions {
        batch: 3,
        global_batch: 3,
        rank: 0,
        world: 1,
        workers: 2,
        prefetch: 2,
        seed: 5,
        cache_bytes: 1 << 20,
    };
    let mut loader = Loader::start(std::sync::Arc::new(ds), transform, opts, 0);
    for _ in 0..4 {
        let b = loader.next_batch().unwrap();
        assert_eq!(b.shape, [24, 3, 16, 16]);
        assert_eq!(b.frames, 8);
        assert!(b.images.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
    assert_eq!(loader.skipped(), 1);
}

/// The sample videos prepared once (shorter side 32) for the tests of this file.
fn prepared() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let videos = repo().join("data/videos");
        assert!(
            videos.join("vtest.avi").exists() && videos.join("bikes.mp4").exists(),
            "the sample videos are missing: run scripts/fetch-data.sh"
        );
        let out = tempfile::tempdir().unwrap().keep().join("prepared");
        let report = prepare_videos(&PrepareOptions {
            src: videos,
            out: out.clone(),
            size: 32,
            split_lists: None,
            split: 1,
            jobs: 2,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.decoded, 2, "{report:?}");
        out
    })
}

#[test]
fn prepare_video_decodes_real_videos_resumably_and_skips_unreadable_ones() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    // A UCF-101-style tree: Class/v_Class_gXX_cYY.avi, official-style split lists, an
    // unreadable video and one in no list.
    let src = tmp.path().join("UCF-101");
    let videos = repo().join("data/videos");
    for (class, name, from) in [
        ("Street", "v_Street_g01_c01.avi", "vtest.avi"),
        ("Biking", "v_Biking_g01_c01.mp4", "bikes.mp4"),
        ("Biking", "v_Biking_g02_c01.mp4", "bikes.mp4"),
    ] {
        std::fs::create_dir_all(src.join(class)).unwrap();
        std::os::unix::fs::symlink(videos.join(from), src.join(class).join(name)).unwrap();
    }
    std::fs::write(
        src.join("Biking/v_Biking_g03_c01.avi"),
        b"not a video at all",
    )
    .unwrap();
    let lists = tmp.path().join("ucfTrainTestlist");
    std::fs::create_dir_all(&lists).unwrap();
    std::fs::write(
        lists.join("trainlist01.txt"),
        "Street/v_Street_g01_c01.avi 1\r\nBiking/v_Biking_g01_c01.mp4 2\r\nBiking/v_Biking_g03_c01.avi 2\r\n",
    )
    .unwrap();
    std::fs::write(
        lists.join("testlist01.txt"),
        "Biking/v_Biking_g02_c01.mp4\n",
    )
    .unwrap();
    let out = tmp.path().join("prepared");
    let opts = PrepareOptions {
        src: src.clone(),
        out: out.clone(),
        size: 24,
        split_lists: Some(lists.clone()),
        split: 1,
        jobs: 2,
    };
    let report = prepare_videos(&opts).unwrap();
    assert_eq!(
        (report.decoded, report.kept, report.unlisted),
        (3, 0, 0),
        "{report:?}"
    );
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].0.ends_with("v_Biking_g03_c01.avi"));
    assert_eq!(report.frames, 795 + 250 + 250);
    // vtest.avi is 768x576: shorter side 24, the other 32; bikes.mp4 640x272: 57 (56.47 up).
    let header = |p: &Path| {
        let f = std::fs::File::open(p).unwrap();
        ShardHeader::read(&f, p).unwrap()
    };
    let street = header(&out.join("train/Street/v_Street_g01_c01.frames"));
    assert_eq!((street.frames, street.width, street.height), (795, 32, 24));
    assert_eq!(street.fps_milli, 10_000);
    let bikes = header(&out.join("test/Biking/v_Biking_g02_c01.frames"));
    assert_eq!((bikes.frames, bikes.width, bikes.height), (250, 57, 24));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["videos"].as_array().unwrap().len(), 3);
    assert_eq!(manifest["failed"].as_array().unwrap().len(), 1);

    // Rerun (as after an interruption): finished shards are kept, not decoded again; a
    // half-written shard (left under its temporary name) is not taken for a finished one.
    std::fs::remove_file(out.join("test/Biking/v_Biking_g02_c01.frames")).unwrap();
    std::fs::write(
        out.join("test/Biking/v_Biking_g02_c01.frames.partial"),
        b"ROTORVID",
    )
    .unwrap();
    let report = prepare_videos(&opts).unwrap();
    assert_eq!((report.decoded, report.kept), (1, 2), "{report:?}");
    assert_eq!(
        header(&out.join("test/Biking/v_Biking_g02_c01.frames")),
        bikes
    );

    // A video in no list is counted and left out.
    std::fs::write(lists.join("testlist01.txt"), "").unwrap();
    let report = prepare_videos(&PrepareOptions {
        out: tmp.path().join("other"),
        ..opts
    })
    .unwrap();
    assert_eq!(report.unlisted, 1, "{report:?}");
}

#[test]
fn video_folder_clips_are_the_shards_frames() {
    let _serial = crate::serial();
    let dir = prepared();
    // vtest: 795 frames; 8 frames at stride 2 span 15; windows every 15 frames: 53; bikes: 16.
    let s = spec(8, 2, 15);
    let val = VideoFolder::open(dir, s, false).unwrap();
    assert_eq!(val.len(), 16 + 53, "{}", val.describe());
    let shard = dir.join("vtest.frames");
    let f = std::fs::File::open(&shard).unwrap();
    let h = ShardHeader::read(&f, &shard).unwrap();
    // Clips are sorted by file: bikes first, so vtest's window 3 is sample 16 + 3.
    let clip = val.sample(16 + 3, &mut rng()).unwrap();
    for (i, frame) in clip.iter().enumerate() {
        let want = h.frame(&f, &shard, 45 + 2 * i).unwrap();
        assert_eq!(frame.to_rgb8(), want.to_rgb8(), "frame {i}");
    }
    // Training windows start at random within their window.
    let train = VideoFolder::open(dir, s, true).unwrap();
    let mut r = rng();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let clip = train.sample(16 + 3, &mut r).unwrap();
        let start = (45..60)
            .find(|st| h.frame(&f, &shard, *st).unwrap().to_rgb8() == clip[0].to_rgb8())
            .expect("the clip starts inside window 3");
        assert_eq!(
            clip[7].to_rgb8(),
            h.frame(&f, &shard, start + 14).unwrap().to_rgb8()
        );
        seen.insert(start);
    }
    assert!(seen.len() > 5, "{seen:?}");
    // Held out: every 5th clip.
    let (t, v) = VideoFolder::open(dir, s, true).unwrap().split(0.2).unwrap();
    assert_eq!((t.len(), v.len()), (56, 13));
    // A folder without shards says how to make them.
    let empty = tempfile::tempdir().unwrap();
    let err = VideoFolder::open(empty.path(), s, true)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("prepare-video"), "{err}");
}

fn metric_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A small video run: the 3-D conv VQGAN (`conv3d`) or the TimeSformer-VQGAN with the paper's
/// objective (`timesformer`), on `source`, 4 frames of 16x16.
fn video_config(out: &Path, source: &str, name: &str, model: &str, steps: usize) -> String {
    let (model, objective) = match model {
        "conv3d" => (
            r#"
kind = "conv3d_vq"
frames = 4
n_hiddens = 8
downsample = [2, 4, 4]
embed_dim = 8
norm_groups = 4

[model.quantizer]
kind = "vq"
dim = 8
codebook_size = 32
estimator = "rotation"
codebook = { kind = "learnable", beta = 0.25, legacy = false }
"#,
            r#"
kind = "vqvae"
reconstruction = "mse"
"#,
        ),
        _ => (
            r#"
kind = "timesformer_vq"
embed_dim = 8

[model.timesformer]
image_size = 16
patch_size = 4
num_frames = 4
hidden_size = 32
num_attention_heads = 2
num_hidden_layers = 1
intermediate_size = 64

[model.quantizer]
kind = "vq"
dim = 8
codebook_size = 32
distance = "cosine"
estimator = "rotation"
codebook = { kind = "learnable", beta = 0.25, legacy = false }
"#,
            r#"
kind = "vit_vqgan"
perceptual_weight = 0.0
adversarial_weight = 0.1
disc_start = 1
discriminator = { size = 16, channels = { "16" = 8, "8" = 16, "4" = 16 }, do_r1_every = 2 }
"#,
        ),
    };
    format!(
        r#"
[run]
name = "{name}"
output_dir = "{out}"
seed = 7
steps = {steps}
batch_size = 4
log_every = 1
val_batches = 1
checkpoint_every = 3

[data]
source = {source}
resolution = 16
resize = 16
random_crop = true
frames = 4
frame_stride = 2
workers = 2

[model]
{model}
[objective]
{objective}
[optim]
lr = 2e-3
weight_decay = 1e-4
"#,
        out = out.display(),
    )
}

fn prepared_source() -> String {
    format!(
        r#"{{ kind = "video_folder", train = "{}", val_fraction = 0.2 }}"#,
        prepared().display()
    )
}

fn bair_source() -> String {
    let d = bair_fixture().join("softmotion30_44k");
    format!(
        r#"{{ kind = "bair", train = "{}", val = "{}" }}"#,
        d.join("train").display(),
        d.join("test").display()
    )
}

/// Trains `steps` in one go and with a stop at step 3 and a resume: the same bits; returns the
/// uninterrupted run's metrics lines.
fn trains_and_resumes_exactly(source: &str, model: &str, steps: usize) -> Vec<serde_json::Value> {
    let tmp = tempfile::tempdir().unwrap();
    let text = |name: &str| video_config(tmp.path(), source, name, model, steps);
    let cfg = TrainConfig::from_toml(&text("full")).unwrap_or_else(|e| panic!("{e}"));
    let mut full = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
    let val = full.run().unwrap();
    assert!(val.images > 0 && val.psnr.is_finite(), "{val:?}");
    let cfg = TrainConfig::from_toml(&text("cut")).unwrap();
    let mut cut = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
    cut.train_until(3).unwrap();
    drop(cut);
    let cfg = TrainConfig::from_toml(&text("cut")).unwrap();
    let mut resumed = Trainer::<B>::new(cfg, Default::default(), Resume::Auto).unwrap();
    assert_eq!(resumed.step(), 3);
    resumed.train_until(steps).unwrap();
    assert!(
        weights(&resumed) == weights(&full),
        "{model}: the resumed video run differs from the uninterrupted one"
    );
    // Samples: a frame strip and an animated GIF of the clips.
    let samples = tmp.path().join("full/samples");
    let png = image::open(samples.join(format!("step-{steps:08}.png"))).unwrap();
    assert_eq!((png.width(), png.height()), (4 * 18, 2 * 18));
    let gif = std::fs::read(samples.join(format!("step-{steps:08}.gif"))).unwrap();
    assert!(gif.starts_with(b"GIF89a"), "not a GIF");
    metric_lines(&tmp.path().join("full"))
}

#[test]
fn conv3d_vqgan_trains_on_prepared_videos_and_resumes_exactly() {
    let _serial = crate::serial();
    let lines = trains_and_resumes_exactly(&prepared_source(), "conv3d", 8);
    let train: Vec<_> = lines.iter().filter(|l| l.get("split").is_none()).collect();
    assert_eq!(train.len(), 8);
    let rec = |l: &serde_json::Value| l["rec"].as_f64().unwrap();
    assert!(
        rec(train[7]) < rec(train[0]),
        "the reconstruction improves: {} -> {}",
        rec(train[0]),
        rec(train[7])
    );
    for l in &train {
        assert!(l["used_fraction"].as_f64().unwrap() > 0.0, "{l}");
        assert_eq!(l["host_reads_per_step"], 0.0, "{l}");
    }
    let val = lines.iter().find(|l| l.get("split").is_some()).unwrap();
    // 13 held-out clips of 4 frames at stride 2, one validation batch of 4 clips.
    assert_eq!(val["images"], 4, "{val}");
}

#[test]
fn timesformer_vqgan_trains_on_bair_records_and_resumes_exactly() {
    let _serial = crate::serial();
    let lines = trains_and_resumes_exactly(&bair_source(), "timesformer", 6);
    let train: Vec<_> = lines.iter().filter(|l| l.get("split").is_none()).collect();
    assert_eq!(train.len(), 6);
    for l in &train[1..] {
        assert!(l["disc_loss"].as_f64().unwrap() > 0.0, "{l}");
    }
    let val = lines.iter().find(|l| l.get("split").is_some()).unwrap();
    // 2 test trajectories x 4 fixed windows (7 frames each: 4 at stride 2) = 8 clips; one
    // validation batch of 4.
    assert_eq!(val["images"], 4, "{val}");
}

/// The 3-D convolutions (parallel over samples and over output rows), GroupNorm and the
/// TimeSformer's attention: the same bits with 1 and 3 threads on a loaded machine.
#[test]
fn video_training_gives_the_same_bits_on_any_thread_count_under_load() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let _load = Load::start(2);
    for model in ["conv3d", "timesformer"] {
        let mut runs = Vec::new();
        for threads in [1, 3] {
            let name = format!("{model}-{threads}");
            let text = video_config(tmp.path(), &prepared_source(), &name, model, 3);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let w = pool.install(|| {
                let cfg = TrainConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
                let mut t = Trainer::<B>::new(cfg, Default::default(), Resume::Never).unwrap();
                t.train_until(3).unwrap();
                weights(&t)
            });
            runs.push(w);
        }
        let differ = runs[0]
            .iter()
            .zip(&runs[1])
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "{model}: {differ} weights differ between 1 and 3 threads"
        );
    }
}

#[test]
fn video_configs_refuse_mismatched_frames_and_image_models() {
    let _serial = crate::serial();
    let tmp = tempfile::tempdir().unwrap();
    let text = video_config(tmp.path(), &bair_source(), "x", "conv3d", 3);
    let err = TrainConfig::from_toml(
        &text.replace("frames = 4\nframe_stride", "frames = 8\nframe_stride"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("data.frames") && err.contains("takes 4 frames"),
        "{err}"
    );
    let err =
        TrainConfig::from_toml(&text.replace("downsample = [2, 4, 4]", "downsample = [3, 4, 4]"))
            .err()
            .unwrap()
            .to_string();
    assert!(
        err.contains("model.downsample") && err.contains("power of two"),
        "{err}"
    );
}

/// The speed benchmark's two sides are the same network: rotor's 3-D conv VQGAN of
/// `bench/video_3dconv.toml` has as many parameters as `bench/tats_conv3d.py`'s PyTorch module
/// (1,140,803 without the codebook, as that script prints).
#[test]
fn the_benchmarked_conv3d_vqgan_has_the_pytorch_sides_parameter_count() {
    let _serial = crate::serial();
    let text = std::fs::read_to_string(repo().join("bench/video_3dconv.toml")).unwrap();
    let cfg: TrainConfig = toml::from_str(&text).unwrap();
    let model = cfg.model.init::<Flex>(&Default::default()).unwrap();
    let without_codebook = model.num_params() - model.quantizer().num_params();
    assert_eq!(without_codebook, 1_140_803);
}
