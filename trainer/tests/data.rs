//! Data: image folders (with a corrupt file), deterministic shardable order, the loader.

use std::{path::Path, sync::Arc};

use trainer::data::{Dataset, ImageFolder, Loader, LoaderOptions, Order, Transform};

fn make_folder(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(40, 36, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 7) as u8, (i * 20) as u8])
        });
        let sub = if i % 2 == 0 { "a" } else { "b" };
        img.save(dir.join(sub).join(format!("img{i:02}.png")))
            .unwrap();
    }
    std::fs::write(
        dir.join("a").join("broken.jpg"),
        b"\xff\xd8\xff this is not a jpeg",
    )
    .unwrap();
    std::fs::write(dir.join("notes.txt"), b"ignored").unwrap();
}

fn opts(batch: usize, global: usize, rank: usize, world: usize) -> LoaderOptions {
    LoaderOptions {
        batch,
        global_batch: global,
        rank,
        world,
        workers: 2,
        prefetch: 2,
        seed: 7,
        cache_bytes: 0,
    }
}

#[test]
fn order_is_a_pure_function_of_seed_epoch_and_cursor() {
    let mut a = Order::new(10, 3, true);
    let mut b = Order::new(10, 3, true);
    let first: Vec<usize> = (0..25).map(|c| a.index(c)).collect();
    let again: Vec<usize> = (0..25)
        .rev()
        .map(|c| b.index(c))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(first, again);
    let mut epoch0: Vec<usize> = first[..10].to_vec();
    epoch0.sort();
    assert_eq!(
        epoch0,
        (0..10).collect::<Vec<_>>(),
        "an epoch visits every sample once"
    );
    assert_ne!(first[..10], first[10..20], "epochs are reshuffled");
    let mut other = Order::new(10, 4, true);
    assert_ne!(
        first[..10],
        (0..10).map(|c| other.index(c)).collect::<Vec<_>>()[..]
    );
}

#[test]
fn image_folder_loader_skips_corrupt_files_and_shards_by_rank() {
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path(), 12);
    let ds: Arc<dyn Dataset> = Arc::new(ImageFolder::open(dir.path()).unwrap());
    assert_eq!(
        ds.len(),
        13,
        "12 pngs + the broken jpg, recursive, txt ignored"
    );
    let t = Transform {
        resolution: 32,
        resize: None,
        random_crop: true,
        flip: true,
        channels: 3,
    };
    let mut whole = Loader::start(ds.clone(), t.clone(), opts(8, 8, 0, 1), 0);
    let mut r0 = Loader::start(ds.clone(), t.clone(), opts(4, 8, 0, 2), 0);
    let mut r1 = Loader::start(ds.clone(), t.clone(), opts(4, 8, 1, 2), 0);
    for _ in 0..4 {
        let w = whole.next_batch().unwrap();
        let (a, b) = (r0.next_batch().unwrap(), r1.next_batch().unwrap());
        assert_eq!(w.shape, [8, 3, 32, 32]);
        assert!(w.images.iter().all(|v| (-1.0..=1.0).contains(v)));
        let joined: Vec<f32> = a.images.iter().chain(&b.images).copied().collect();
        assert_eq!(joined, w.images, "two ranks' shards = one process's batch");
    }
    assert_eq!(
        whole.skipped(),
        1,
        "the broken file was skipped and counted once"
    );
    // Resuming at a cursor continues the same stream.
    let mut from_16 = Loader::start(ds.clone(), t.clone(), opts(8, 8, 0, 1), 16);
    let mut fresh = Loader::start(ds, t, opts(8, 8, 0, 1), 0);
    fresh.next_batch().unwrap();
    fresh.next_batch().unwrap();
    assert_eq!(
        from_16.next_batch().unwrap().images,
        fresh.next_batch().unwrap().images
    );
}

#[test]
fn cached_samples_give_the_same_batches() {
    // Two epochs and more of 12 readable images (resized, random crops and flips), without the
    // cache, with one that holds everything, and with one that holds a few images.
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path(), 12);
    let ds: Arc<dyn Dataset> = Arc::new(ImageFolder::open(dir.path()).unwrap());
    let t = Transform {
        resolution: 24,
        resize: Some(30),
        random_crop: true,
        flip: true,
        channels: 3,
    };
    let batches = |cache_bytes: usize| {
        let mut o = opts(5, 5, 0, 1);
        o.cache_bytes = cache_bytes;
        let mut loader = Loader::start(ds.clone(), t.clone(), o, 0);
        let out: Vec<Vec<f32>> = (0..7)
            .map(|_| loader.next_batch().unwrap().images)
            .collect();
        (out, loader.skipped())
    };
    let (plain, skipped) = batches(0);
    assert_eq!(skipped, 1);
    // A resized image is 33x30 RGB (2,970 bytes).
    for budget in [64 << 20, 10_000] {
        let (cached, skipped) = batches(budget);
        assert_eq!(cached, plain, "cache of {budget} bytes");
        assert_eq!(skipped, 1, "the broken file is still counted once");
    }
}

#[test]
fn transform_resizes_crops_and_scales() {
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
        100,
        50,
        image::Rgb([255, 0, 128]),
    ));
    let t = Transform {
        resolution: 16,
        resize: Some(20),
        random_crop: false,
        flip: false,
        channels: 3,
    };
    use rand::SeedableRng;
    let out = t.apply(img, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
    assert_eq!(out.len(), 3 * 16 * 16);
    assert!((out[0] - 1.0).abs() < 1e-6 && (out[256] + 1.0).abs() < 1e-6);
    assert!((out[512] - (128.0 / 127.5 - 1.0)).abs() < 1e-6);
}
