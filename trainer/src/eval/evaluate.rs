//! The evaluation of a tokenizer on its validation set (`launch eval`, `run.eval_every`):
//! reconstructions in eval mode, data-parallel (each worker takes its slice of every round's
//! samples; per-sample results are gathered in sample order, so the totals are summed in the
//! same order whatever the number of workers), reported as one JSON object:
//! MSE, L1, PSNR, SSIM, LPIPS, codebook usage, perplexity, quantization error, and, with the
//! pinned metric weights, r-FID and r-IS (images) and r-FVD (clips of at least 9 frames).
//!
//! Images enter the metrics clamped to `[-1, 1]` and mapped to `[0, 1]` (the paper's script
//! wraps out-of-range bytes instead; clamping is what every metric library assumes).
//! Grayscale images are repeated to three channels for LPIPS and Inception.

use std::{path::Path, time::Instant};

use burn::tensor::{Tensor, TensorData, backend::Backend};
use models::{
    Autoencoder, FID_CLASSES, FID_FEATURES, FidInception, I3D_CLASSES, I3D_MIN_FRAMES, I3d, Lpips,
    StateDict,
};
use quantizers::{
    Mode, Quantizer,
    host::{HostRead, read_f32, read_i64, read_scalar},
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{FeatureStats, frechet_distance, frechet_distance_of_rows, inception_score, ssim};
use crate::{
    Communicator, EvalConfig, TrainError,
    config::MetricWeights,
    data::{Dataset, Transform, load_batch},
};

/// How to get the metric networks' weights (none ships with any package).
pub const METRIC_WEIGHTS_HOWTO: &str = "r-FID / r-IS need pytorch-fid's \
pt_inception-2015-12-05-6726825d.pth and r-FVD the FVD I3D's i3d_pretrained_400.pt; convert \
each once with `python -c \"import torch, safetensors.torch as st; \
st.save_file({k: v.float().contiguous() for k, v in torch.load('IN', map_location='cpu').items()}, 'OUT.safetensors')\"` \
and set eval.fid / eval.fvd = { weights = \"OUT.safetensors\", sha256 = \"<sha256sum of OUT>\" }";

/// The metric networks named by `[eval]`, each verified against its pinned sha256.
pub struct MetricNets<B: Backend> {
    fid: Option<(FidInception<B>, String)>,
    fvd: Option<(I3d<B>, String)>,
}

fn verified(w: &MetricWeights, key: &str) -> Result<StateDict, TrainError> {
    let err = |reason: String| TrainError::MetricWeights {
        key: key.to_string(),
        path: w.weights.clone(),
        reason,
    };
    let bytes =
        std::fs::read(&w.weights).map_err(|e| err(format!("{e} ({METRIC_WEIGHTS_HOWTO})")))?;
    let got = format!("{:x}", Sha256::digest(&bytes));
    if !got.eq_ignore_ascii_case(&w.sha256) {
        return Err(err(format!(
            "sha256 is {got}, the config pins {}: a different network would give numbers that are \
             not comparable; use the pinned file or update the pin deliberately",
            w.sha256
        )));
    }
    StateDict::from_safetensors(&bytes).map_err(|e| err(format!("{e} ({METRIC_WEIGHTS_HOWTO})")))
}

impl<B: Backend> MetricNets<B> {
    /// Loads what `cfg` names (nothing when it names nothing).
    pub fn load(cfg: &EvalConfig, device: &B::Device) -> Result<Self, TrainError> {
        let fid = match &cfg.fid {
            Some(w) => {
                let dict = verified(w, "eval.fid")?;
                Some((
                    FidInception::from_state_dict(&dict, device)?,
                    w.sha256.clone(),
                ))
            }
            None => None,
        };
        let fvd = match &cfg.fvd {
            Some(w) => {
                let dict = verified(w, "eval.fvd")?;
                Some((I3d::from_state_dict(&dict, device)?, w.sha256.clone()))
            }
            None => None,
        };
        Ok(Self { fid, fvd })
    }

    /// No metric network.
    pub fn none() -> Self {
        Self {
            fid: None,
            fvd: None,
        }
    }
}

/// LPIPS for the evaluation: the objective's `lpips` files when both are configured.
pub fn eval_lpips<B: Backend>(
    cfg: &crate::TrainConfig,
    device: &B::Device,
) -> Result<Option<Lpips<B>>, TrainError> {
    let weights = match &cfg.objective {
        crate::ObjectiveConfig::Vqgan(v) => Some(&v.lpips),
        crate::ObjectiveConfig::VitVqgan(v) => Some(&v.lpips),
        _ => None,
    };
    Ok(weights
        .filter(|l| l.vgg16.is_some() && l.heads.is_some())
        .map(|l| l.load::<B>(device))
        .transpose()?)
}

/// One evaluation's results (`null` for what was not computed; `notes` says why).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EvalReport {
    /// Training step of the evaluated weights.
    pub step: usize,
    /// Samples evaluated (images, or clips).
    pub samples: usize,
    /// Frames per sample (1: images).
    pub frames: usize,
    /// Mean squared error in `[-1, 1]` space.
    pub mse: f64,
    /// Mean absolute error in `[-1, 1]` space.
    pub l1: f64,
    /// PSNR in dB of the mean squared error (peak-to-peak 2).
    pub psnr: f64,
    /// Mean SSIM (scikit-image's Gaussian-window SSIM on `[0, 1]` images, per frame; frames
    /// must be at least 11x11).
    pub ssim: Option<f64>,
    /// Mean LPIPS (VGG16), when `objective.lpips` is configured.
    pub lpips: Option<f64>,
    /// Fraction of the codebook used over the evaluated set.
    pub used_fraction: f64,
    /// Perplexity of the code histogram.
    pub perplexity: f64,
    /// Mean `||e - q||^2`.
    pub quant_error: f64,
    /// Reconstruction FID (pytorch-fid's network, pinned weights).
    pub fid: Option<f64>,
    /// Inception Score of the reconstructions: mean over splits.
    pub is_mean: Option<f64>,
    /// Inception Score: population std over splits.
    pub is_std: Option<f64>,
    /// Reconstruction FVD (the I3D of VideoGPT/TATS, pinned weights).
    pub fvd: Option<f64>,
    /// sha256 of the FID network's weights that produced `fid` / `is_*`.
    pub fid_weights_sha256: Option<String>,
    /// sha256 of the I3D's weights that produced `fvd`.
    pub fvd_weights_sha256: Option<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Why a metric is absent.
    pub notes: Vec<String>,
}

/// What the evaluation reads.
pub struct EvalInputs<'a, B: Backend> {
    /// The model (eval mode is applied here).
    pub model: &'a Autoencoder<B>,
    /// The validation set.
    pub val_set: &'a dyn Dataset,
    /// The validation transform (center crops).
    pub transform: &'a Transform,
    /// Decoding threads.
    pub workers: usize,
    /// LPIPS, when configured.
    pub lpips: Option<&'a Lpips<B>>,
    /// The metric networks.
    pub nets: &'a MetricNets<B>,
    /// Samples per round over all workers.
    pub global_batch: usize,
    /// Training step of the weights.
    pub step: usize,
    /// The device.
    pub device: &'a B::Device,
}

/// Per-sample scalars at the head of a sample's slot.
const VALID: usize = 0;
const MSE: usize = 1;
const L1: usize = 2;
const QE: usize = 3;
const SSIM: usize = 4;
const LPIPS: usize = 5;
const SCALARS: usize = 6;

/// SSIM's Gaussian window has 11 taps.
const SSIM_MIN_SIDE: usize = 11;

/// Fraction of codes used and perplexity of per-level histograms (`levels` of `k` codes).
pub(crate) fn usage_figures(hist: &[u64], k: usize, levels: usize) -> (f64, f64) {
    let total: u64 = hist.iter().sum();
    let used = hist.iter().filter(|c| **c > 0).count() as f64 / (k * levels).max(1) as f64;
    let entropy: f64 = hist
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / total as f64;
            -p * p.ln()
        })
        .sum();
    (used, (entropy - (levels as f64).ln()).exp())
}

/// `[N, C, H, W]` with `C` 1 or 3 -> three channels (grayscale repeated).
fn rgb<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    if x.dims()[1] == 1 {
        Tensor::cat(vec![x.clone(), x.clone(), x], 1)
    } else {
        x
    }
}

/// `[N, C, H, W]` in `[-1, 1]` -> `[N, 3, H, W]` in `[0, 1]` (Inception's and I3D's input).
fn to_unit_rgb<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    rgb((x + 1.0) * 0.5)
}

/// CHW frame -> HWC in `[0, 1]`.
fn frame_hwc(values: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; c * h * w];
    for ch in 0..c {
        for p in 0..h * w {
            out[p * c + ch] = (values[ch * h * w + p] + 1.0) * 0.5;
        }
    }
    out
}

/// Evaluates `inputs.model` on the validation set (all of it, or `cfg.limit` samples).
pub fn evaluate<B: Backend>(
    inputs: &EvalInputs<B>,
    cfg: &EvalConfig,
    comm: &mut dyn Communicator,
) -> Result<EvalReport, TrainError> {
    let start = Instant::now();
    let (rank, world) = (comm.rank(), comm.world_size());
    let n = match cfg.limit {
        0 => inputs.val_set.len(),
        l => l.min(inputs.val_set.len()),
    };
    if n == 0 {
        return Err(TrainError::Data(
            "evaluation: the validation set is empty".into(),
        ));
    }
    let frames = inputs.val_set.frames();
    let per_rank = inputs.global_batch.div_ceil(world).max(1);
    let round = per_rank * world;
    let mut notes = Vec::new();
    let fid = inputs.nets.fid.as_ref().filter(|_| frames == 1);
    if frames > 1 {
        notes.push("fid/is: image metrics, not computed for clips (see fvd)".to_string());
    } else if inputs.nets.fid.is_none() {
        notes.push(format!(
            "fid/is: eval.fid not configured ({METRIC_WEIGHTS_HOWTO})"
        ));
    }
    let fvd = inputs.nets.fvd.as_ref().filter(|_| {
        if frames < I3D_MIN_FRAMES {
            notes.push(format!(
                "fvd: clips of {frames} frames; the I3D needs at least {I3D_MIN_FRAMES}"
            ));
        }
        frames >= I3D_MIN_FRAMES
    });
    if inputs.nets.fvd.is_none() && frames > 1 {
        notes.push(format!(
            "fvd: eval.fvd not configured ({METRIC_WEIGHTS_HOWTO})"
        ));
    }
    if inputs.lpips.is_none() {
        notes.push("lpips: objective.lpips not configured".to_string());
    }
    let frame_side = inputs.transform.resolution;
    if frame_side < SSIM_MIN_SIDE {
        notes.push(format!(
            "ssim: frames of {frame_side}x{frame_side}, the 11-tap window needs at least {SSIM_MIN_SIDE}"
        ));
    }
    let fid_width = if fid.is_some() {
        2 * FID_FEATURES + FID_CLASSES
    } else {
        0
    };
    let fvd_width = if fvd.is_some() { 2 * I3D_CLASSES } else { 0 };
    let slot = SCALARS + fid_width + fvd_width;

    let model = inputs.model;
    let k = model.quantizer().codebook_size();
    let levels = model.quantizer().num_levels();
    let mut hist = vec![0u64; k * levels];
    let mut sums = [0f64; SCALARS];
    let mut real_stats = FeatureStats::new(FID_FEATURES);
    let mut rec_stats = FeatureStats::new(FID_FEATURES);
    let mut logits = Vec::new();
    // Rows too, while there are fewer samples than dimensions (the rows route is then exact
    // and takes milliseconds instead of a 2048-d eigendecomposition).
    let mut rows: [Vec<f64>; 4] = Default::default();
    let mut real_clips = FeatureStats::new(I3D_CLASSES);
    let mut rec_clips = FeatureStats::new(I3D_CLASSES);
    let rounds = n.div_ceil(round);
    let mut last_log = Instant::now();
    let mut samples = 0usize;
    for r in 0..rounds {
        let first = (r * round + rank * per_rank).min(n);
        let last = (first + per_rank).min(n);
        let mut buf = vec![0f32; round * slot];
        if first < last {
            let idx: Vec<usize> = (first..last).collect();
            let own = &mut buf[(rank * per_rank) * slot..(rank * per_rank + idx.len()) * slot];
            evaluate_batch(inputs, &idx, fid, fvd, slot, own, &mut hist)?;
        }
        if world > 1 {
            comm.all_reduce_sum(&mut buf)?;
        }
        // Sample order: round by round, rank by rank, as the samples are numbered.
        for s in buf.chunks_exact(slot) {
            if s[VALID] != 1.0 {
                continue;
            }
            samples += 1;
            for (i, v) in s[..SCALARS].iter().enumerate() {
                sums[i] += *v as f64;
            }
            let mut o = SCALARS;
            if fid.is_some() {
                real_stats.push(&s[o..o + FID_FEATURES])?;
                rec_stats.push(&s[o + FID_FEATURES..o + 2 * FID_FEATURES])?;
                if samples <= FID_FEATURES {
                    rows[0].extend(s[o..o + FID_FEATURES].iter().map(|v| *v as f64));
                    let r = &s[o + FID_FEATURES..o + 2 * FID_FEATURES];
                    rows[1].extend(r.iter().map(|v| *v as f64));
                }
                logits.extend_from_slice(&s[o + 2 * FID_FEATURES..o + fid_width]);
                o += fid_width;
            }
            if fvd.is_some() {
                real_clips.push(&s[o..o + I3D_CLASSES])?;
                rec_clips.push(&s[o + I3D_CLASSES..o + 2 * I3D_CLASSES])?;
                if samples <= I3D_CLASSES {
                    rows[2].extend(s[o..o + I3D_CLASSES].iter().map(|v| *v as f64));
                    let r = &s[o + I3D_CLASSES..o + 2 * I3D_CLASSES];
                    rows[3].extend(r.iter().map(|v| *v as f64));
                }
            }
        }
        if rank == 0 && (last_log.elapsed().as_secs_f64() > 10.0 || r + 1 == rounds) {
            last_log = Instant::now();
            let done = samples as f64 / n as f64;
            let secs = start.elapsed().as_secs_f64();
            tracing::info!(
                "eval: {samples}/{n} samples ({:.0}%), {:.0} s, ETA {:.0} s",
                done * 100.0,
                secs,
                secs / done.max(1e-9) * (1.0 - done)
            );
        }
    }
    // Code histograms: per-rank counts summed as two exact f32 halves (low 12 bits, the rest).
    if world > 1 {
        let mut halves: Vec<f32> = hist
            .iter()
            .flat_map(|c| [(c & 0xfff) as f32, (c >> 12) as f32])
            .collect();
        comm.all_reduce_sum(&mut halves)?;
        for (h, pair) in hist.iter_mut().zip(halves.chunks_exact(2)) {
            *h = pair[0] as u64 + ((pair[1] as u64) << 12);
        }
    }
    let m = samples.max(1) as f64;
    let mse = sums[MSE] / m;
    let (used_fraction, perplexity) = usage_figures(&hist, k, levels);
    let mut report = EvalReport {
        step: inputs.step,
        samples,
        frames,
        mse,
        l1: sums[L1] / m,
        psnr: crate::psnr(mse),
        ssim: (frame_side >= SSIM_MIN_SIDE).then(|| sums[SSIM] / m),
        lpips: inputs.lpips.map(|_| sums[LPIPS] / m),
        used_fraction,
        perplexity,
        quant_error: sums[QE] / m,
        notes,
        ..Default::default()
    };
    if let Some((_, sha)) = fid {
        if samples < 2 {
            report.notes.push("fid: needs at least 2 samples".into());
        } else {
            let fd = if samples <= FID_FEATURES {
                frechet_distance_of_rows(&rows[0], &rows[1], FID_FEATURES)?
            } else {
                frechet_distance(
                    &real_stats.mean(),
                    &real_stats.covariance()?,
                    &rec_stats.mean(),
                    &rec_stats.covariance()?,
                )?
            };
            report.fid = Some(fd.distance);
        }
        if samples >= cfg.is_splits {
            let is = inception_score(&logits, FID_CLASSES, cfg.is_splits)?;
            report.is_mean = Some(is.mean);
            report.is_std = Some(is.std);
        } else {
            report.notes.push(format!(
                "is: {samples} samples for {} splits (eval.is_splits)",
                cfg.is_splits
            ));
        }
        report.fid_weights_sha256 = Some(sha.clone());
    }
    if let Some((_, sha)) = fvd {
        if samples < 2 {
            report.notes.push("fvd: needs at least 2 clips".into());
        } else {
            let fd = if samples <= I3D_CLASSES {
                frechet_distance_of_rows(&rows[2], &rows[3], I3D_CLASSES)?
            } else {
                frechet_distance(
                    &real_clips.mean(),
                    &real_clips.covariance()?,
                    &rec_clips.mean(),
                    &rec_clips.covariance()?,
                )?
            };
            report.fvd = Some(fd.distance);
        }
        report.fvd_weights_sha256 = Some(sha.clone());
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

type Net<'a, T> = Option<&'a (T, String)>;

/// One worker's batch: fills a slot per sample in `out` and counts codes into `hist`.
fn evaluate_batch<B: Backend>(
    inputs: &EvalInputs<B>,
    idx: &[usize],
    fid: Net<FidInception<B>>,
    fvd: Net<I3d<B>>,
    slot: usize,
    out: &mut [f32],
    hist: &mut [u64],
) -> Result<(), TrainError> {
    let batch = load_batch(inputs.val_set, inputs.transform, idx, inputs.workers)
        .map_err(TrainError::Data)?;
    let [nf, c, h, w] = batch.shape;
    let t = batch.frames;
    let m = idx.len();
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(batch.images.clone(), batch.shape),
        inputs.device,
    );
    let result = inputs.model.forward(x.clone(), Mode::Eval);
    let rec = result.reconstruction.clamp(-1.0, 1.0);
    let qe = read_scalar(result.encoded.quant.usage.quant_error, HostRead::Eval);
    let k = inputs.model.quantizer().codebook_size();
    let levels = inputs.model.quantizer().num_levels();
    for (j, i) in read_i64(result.encoded.quant.indices, HostRead::Eval)
        .into_iter()
        .enumerate()
    {
        if let Some(hc) = hist.get_mut((j % levels) * k + i as usize) {
            *hc += 1;
        }
    }
    let rec_host = read_f32(rec.clone(), HostRead::Eval);
    let frame = c * h * w;
    let per_sample = t * frame;
    let lpips = inputs.lpips.map(|l| {
        let d = l.forward(rgb(x.clone()), rgb(rec.clone()));
        read_f32(d.reshape([nf]), HostRead::Eval)
    });
    let incep = fid.map(|(net, _)| {
        let real = net.forward(to_unit_rgb(x.clone()));
        let recon = net.forward(to_unit_rgb(rec.clone()));
        (
            read_f32(real.pool3, HostRead::Eval),
            read_f32(recon.pool3, HostRead::Eval),
            read_f32(recon.logits_is, HostRead::Eval),
        )
    });
    let clips = fvd.map(|(net, _)| {
        let real = net.forward(to_unit_rgb(x.clone()), m);
        let recon = net.forward(to_unit_rgb(rec.clone()), m);
        (
            read_f32(real, HostRead::Eval),
            read_f32(recon, HostRead::Eval),
        )
    });
    for (s, slot_out) in out.chunks_exact_mut(slot).enumerate().take(m) {
        let a = &batch.images[s * per_sample..(s + 1) * per_sample];
        let b = &rec_host[s * per_sample..(s + 1) * per_sample];
        let (mut sq, mut ab) = (0f64, 0f64);
        for (p, q) in a.iter().zip(b) {
            let d = (*q - *p) as f64;
            sq += d * d;
            ab += d.abs();
        }
        let mut ssim_sum = 0f64;
        for f in (0..t).filter(|_| h >= SSIM_MIN_SIDE && w >= SSIM_MIN_SIDE) {
            let fa = frame_hwc(&a[f * frame..(f + 1) * frame], c, h, w);
            let fb = frame_hwc(&b[f * frame..(f + 1) * frame], c, h, w);
            ssim_sum += ssim(&fa, &fb, h, w, c)?.mean;
        }
        slot_out[VALID] = 1.0;
        slot_out[MSE] = (sq / per_sample as f64) as f32;
        slot_out[L1] = (ab / per_sample as f64) as f32;
        slot_out[QE] = qe;
        slot_out[SSIM] = (ssim_sum / t as f64) as f32;
        if let Some(l) = &lpips {
            slot_out[LPIPS] =
                (l[s * t..(s + 1) * t].iter().map(|v| *v as f64).sum::<f64>() / t as f64) as f32;
        }
        let mut o = SCALARS;
        if let Some((real, recon, logits)) = &incep {
            slot_out[o..o + FID_FEATURES]
                .copy_from_slice(&real[s * FID_FEATURES..(s + 1) * FID_FEATURES]);
            o += FID_FEATURES;
            slot_out[o..o + FID_FEATURES]
                .copy_from_slice(&recon[s * FID_FEATURES..(s + 1) * FID_FEATURES]);
            o += FID_FEATURES;
            slot_out[o..o + FID_CLASSES]
                .copy_from_slice(&logits[s * FID_CLASSES..(s + 1) * FID_CLASSES]);
            o += FID_CLASSES;
        }
        if let Some((real, recon)) = &clips {
            slot_out[o..o + I3D_CLASSES]
                .copy_from_slice(&real[s * I3D_CLASSES..(s + 1) * I3D_CLASSES]);
            o += I3D_CLASSES;
            slot_out[o..o + I3D_CLASSES]
                .copy_from_slice(&recon[s * I3D_CLASSES..(s + 1) * I3D_CLASSES]);
        }
    }
    Ok(())
}

/// Writes `report` as pretty JSON to `path` (atomically).
pub fn write_report(path: &Path, report: &EvalReport) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(report).unwrap_or_default();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    crate::checkpoint::write_atomic(path, format!("{text}\n").as_bytes())
}
