//! The prefetching loader: a producer thread assembles batches in cursor order, decoding each
//! batch's images on `workers` threads, and keeps up to `prefetch` batches ready in a bounded
//! queue. An unreadable or corrupt image is logged once, counted, and replaced by the next
//! readable image of the dataset, deterministically, so the run goes on and stays reproducible.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, sync_channel},
    },
    thread::JoinHandle,
    time::Instant,
};

use rand::SeedableRng;

use crate::data::{Dataset, Order, SampleCache, Transform};

/// A batch of samples, channels first, values in `[-1, 1]`; a batch of `B` clips of `T` frames
/// is `B*T` frames, clip-major.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B*T * C * H * W]` values.
    pub images: Vec<f32>,
    /// `[B*T, C, H, W]`.
    pub shape: [usize; 4],
    /// Frames per sample (T; 1 for images).
    pub frames: usize,
    /// Global cursor of the batch's first sample.
    pub cursor: u64,
    /// Seconds the decoding of this batch took (all workers).
    pub decode_secs: f64,
}

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    /// Samples per batch on this process.
    pub batch: usize,
    /// Global samples per step (all processes).
    pub global_batch: usize,
    /// This process's rank and the world size.
    pub rank: usize,
    /// World size.
    pub world: usize,
    /// Decoding threads.
    pub workers: usize,
    /// Batches kept ready.
    pub prefetch: usize,
    /// Seed of order and augmentation.
    pub seed: u64,
    /// Bytes of prepared samples kept across epochs ([`SampleCache`]; 0: none).
    pub cache_bytes: usize,
}

/// Unreadable samples seen so far (logged once each).
#[derive(Default)]
struct BadSamples {
    seen: Mutex<HashSet<usize>>,
    count: AtomicUsize,
}

impl BadSamples {
    fn is_bad(&self, index: usize) -> bool {
        self.seen.lock().unwrap().contains(&index)
    }

    fn record(&self, index: usize, err: &str) {
        if self.seen.lock().unwrap().insert(index) {
            let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!("skipping unreadable sample ({n} so far): {err}");
        }
    }
}

fn sample_rng(seed: u64, cursor: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(
        seed.rotate_left(17) ^ cursor.wrapping_mul(0xD6E8_FEB8_6659_FD93),
    )
}

/// Decodes one sample, replacing an unreadable one by the next readable index.
fn decode(
    dataset: &dyn Dataset,
    transform: &Transform,
    bad: &BadSamples,
    cache: Option<&SampleCache>,
    index: usize,
    cursor: u64,
    seed: u64,
) -> Result<Vec<f32>, String> {
    let n = dataset.len();
    let cache = cache.filter(|_| dataset.cacheable());
    for k in 0..n {
        let i = (index + k) % n;
        if bad.is_bad(i) {
            continue;
        }
        let mut rng = sample_rng(seed, cursor);
        // (A cacheable dataset does not draw from `rng`: skipping `sample` leaves it as is.)
        let frames = match cache.and_then(|c| c.get(i)) {
            Some(frames) => Ok(frames),
            None => dataset.sample(i, &mut rng).map(|frames| {
                let prepared = frames.into_iter().map(|f| transform.prepare(f)).collect();
                match cache {
                    Some(c) => c.insert(i, prepared),
                    None => Arc::new(prepared),
                }
            }),
        };
        match frames {
            Ok(frames) => {
                // Every frame of a clip gets the same crop and flip.
                let mut out = Vec::new();
                for frame in frames.iter() {
                    out.extend(transform.finish(frame, &mut rng.clone()));
                }
                return Ok(out);
            }
            Err(e) => bad.record(i, &e),
        }
    }
    Err(format!("no readable sample in {}", dataset.describe()))
}

/// Decodes the samples at `indices` (with their cursors) on `workers` threads.
fn decode_all(
    dataset: &dyn Dataset,
    transform: &Transform,
    bad: &BadSamples,
    cache: Option<&SampleCache>,
    items: &[(usize, u64)],
    workers: usize,
    seed: u64,
) -> Result<Vec<f32>, String> {
    let per = dataset.frames() * transform.channels * transform.resolution * transform.resolution;
    let mut out = vec![0.0f32; items.len() * per];
    let chunk = items.len().div_ceil(workers.max(1)).max(1);
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = out
            .chunks_mut(chunk * per)
            .zip(items.chunks(chunk))
            .map(|(dst, its)| {
                s.spawn(move || {
                    for (slot, (index, cursor)) in dst.chunks_mut(per).zip(its) {
                        slot.copy_from_slice(&decode(
                            dataset, transform, bad, cache, *index, *cursor, seed,
                        )?);
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err("decoder thread panicked".into())))
            .collect()
    });
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(out)
}

/// Decodes a batch synchronously (validation): samples `indices` in that order.
pub fn load_batch(
    dataset: &dyn Dataset,
    transform: &Transform,
    indices: &[usize],
    workers: usize,
) -> Result<Batch, String> {
    let start = Instant::now();
    let items: Vec<(usize, u64)> = indices.iter().map(|i| (*i, *i as u64)).collect();
    let bad = BadSamples::default();
    let images = decode_all(dataset, transform, &bad, None, &items, workers, 0)?;
    Ok(Batch {
        images,
        shape: [
            indices.len() * dataset.frames(),
            transform.channels,
            transform.resolution,
            transform.resolution,
        ],
        frames: dataset.frames(),
        cursor: 0,
        decode_secs: start.elapsed().as_secs_f64(),
    })
}

/// Background batch producer; dropping it stops the thread.
pub struct Loader {
    rx: Option<Receiver<Result<Batch, String>>>,
    handle: Option<JoinHandle<()>>,
    bad: Arc<BadSamples>,
}

impl Loader {
    /// Starts producing the batches of this rank from global cursor `cursor` on.
    pub fn start(
        dataset: Arc<dyn Dataset>,
        transform: Transform,
        opts: LoaderOptions,
        cursor: u64,
    ) -> Self {
        let (tx, rx) = sync_channel(opts.prefetch.max(1));
        let bad = Arc::new(BadSamples::default());
        let bad2 = bad.clone();
        let handle = std::thread::Builder::new()
            .name("rotor-loader".into())
            .spawn(move || produce(dataset, transform, opts, cursor, tx, bad2))
            .expect("spawn loader thread");
        Self {
            rx: Some(rx),
            handle: Some(handle),
            bad,
        }
    }

    /// The next batch (blocks until decoded).
    pub fn next_batch(&mut self) -> Result<Batch, String> {
        self.rx
            .as_ref()
            .expect("loader running")
            .recv()
            .map_err(|_| "the data loader stopped".to_string())?
    }

    /// Unreadable images skipped so far.
    pub fn skipped(&self) -> usize {
        self.bad.count.load(Ordering::Relaxed)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn produce(
    dataset: Arc<dyn Dataset>,
    transform: Transform,
    opts: LoaderOptions,
    mut cursor: u64,
    tx: SyncSender<Result<Batch, String>>,
    bad: Arc<BadSamples>,
) {
    let mut order = Order::new(dataset.len(), opts.seed, true);
    let cache =
        (opts.cache_bytes > 0 && dataset.cacheable()).then(|| SampleCache::new(opts.cache_bytes));
    loop {
        let first = cursor + (opts.rank * opts.batch) as u64;
        let items: Vec<(usize, u64)> = (0..opts.batch as u64)
            .map(|i| (order.index(first + i), first + i))
            .collect();
        let start = Instant::now();
        let result = decode_all(
            dataset.as_ref(),
            &transform,
            &bad,
            cache.as_ref(),
            &items,
            opts.workers,
            opts.seed,
        )
        .map(|images| Batch {
            images,
            shape: [
                opts.batch * dataset.frames(),
                transform.channels,
                transform.resolution,
                transform.resolution,
            ],
            frames: dataset.frames(),
            cursor,
            decode_secs: start.elapsed().as_secs_f64(),
        });
        let failed = result.is_err();
        if tx.send(result).is_err() || failed {
            return;
        }
        cursor += opts.global_batch as u64;
    }
}
