//! The Inception Score (improved-gan / pytorch-image-generation-metrics `use_torch=False`).

use super::MetricError;

/// The Inception Score over S splits.
#[derive(Debug, Clone, PartialEq)]
pub struct InceptionScore {
    /// Mean of the split scores.
    pub mean: f64,
    /// Population standard deviation (divided by S) of the split scores.
    pub std: f64,
    /// exp(mean KL(p(y|x) || p(y))) of each split.
    pub split_scores: Vec<f64>,
}

/// The Inception Score of `logits` (row-major `[N, classes]`; in real use pool3 @ fc.weight^T of
/// the FID Inception, without the fc bias, 1008 classes).
///
/// p = softmax of each row in float64; split k of S holds rows floor(k N / S) ..
/// floor((k + 1) N / S); per split q = column mean of its p, KL = mean over its rows of
/// sum_c p (ln p - ln q) (terms with p = 0 count 0), score = exp(KL).
///
/// # Errors
/// Zero classes, a length that is not a multiple of `classes`, zero splits or fewer rows than
/// splits, a non-finite logit.
pub fn inception_score(
    logits: &[f32],
    classes: usize,
    splits: usize,
) -> Result<InceptionScore, MetricError> {
    if classes == 0 {
        return Err(MetricError::Empty { what: "classes" });
    }
    if !logits.len().is_multiple_of(classes) {
        return Err(MetricError::DimensionMismatch {
            what: "logits (a multiple of classes)",
            expected: logits.len().div_ceil(classes) * classes,
            got: logits.len(),
        });
    }
    let rows = logits.len() / classes;
    if splits == 0 || rows < splits {
        return Err(MetricError::BadSplits { rows, splits });
    }
    if logits.iter().any(|v| !v.is_finite()) {
        return Err(MetricError::NonFinite { what: "logits" });
    }

    // ln p of every row (log-softmax in float64).
    let mut log_p = vec![0.0_f64; logits.len()];
    for (row, out) in logits.chunks(classes).zip(log_p.chunks_mut(classes)) {
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
        let log_sum = sum.ln();
        for (o, &v) in out.iter_mut().zip(row) {
            *o = f64::from(v) - max - log_sum;
        }
    }

    let mut split_scores = Vec::with_capacity(splits);
    let mut q = vec![0.0_f64; classes];
    let mut log_q = vec![0.0_f64; classes];
    for k in 0..splits {
        let (start, end) = (k * rows / splits, (k + 1) * rows / splits);
        let part = &log_p[start * classes..end * classes];
        let n = (end - start) as f64;
        q.iter_mut().for_each(|v| *v = 0.0);
        for row in part.chunks(classes) {
            for (qc, lp) in q.iter_mut().zip(row) {
                *qc += lp.exp();
            }
        }
        for (lq, qc) in log_q.iter_mut().zip(&q) {
            *lq = (qc / n).ln();
        }
        let mut kl_sum = 0.0;
        for row in part.chunks(classes) {
            let kl: f64 = row
                .iter()
                .zip(&log_q)
                .map(|(&lp, &lq)| {
                    let p = lp.exp();
                    if p == 0.0 { 0.0 } else { p * (lp - lq) }
                })
                .sum();
            kl_sum += kl;
        }
        split_scores.push((kl_sum / n).exp());
    }

    let s = splits as f64;
    let mean = split_scores.iter().sum::<f64>() / s;
    let var = split_scores
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum::<f64>()
        / s;
    Ok(InceptionScore {
        mean,
        std: var.sqrt(),
        split_scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_score_one() {
        let logits = vec![0.25_f32; 20 * 7];
        let is = inception_score(&logits, 7, 4).unwrap();
        assert_eq!(is.split_scores.len(), 4);
        for s in &is.split_scores {
            assert!((s - 1.0).abs() < 1e-12, "{s}");
        }
        assert!((is.mean - 1.0).abs() < 1e-12);
        assert!(is.std.abs() < 1e-12);
    }

    #[test]
    fn confident_distinct_classes_score_the_class_count() {
        // Each row is (almost) one-hot on its own class, classes evenly used: IS -> classes.
        let classes = 5;
        let mut logits = vec![0.0_f32; 10 * classes];
        for (r, row) in logits.chunks_mut(classes).enumerate() {
            row[r % classes] = 60.0;
        }
        let is = inception_score(&logits, classes, 2).unwrap();
        for s in &is.split_scores {
            assert!((s - classes as f64).abs() < 1e-9, "{s}");
        }
    }

    #[test]
    fn uneven_splits_and_population_std() {
        // 5 rows into 2 splits: rows 0..2 (all class 0, score 1) and 2..5 (three classes, score 3).
        let classes = 3;
        let mut logits = vec![0.0_f32; 5 * classes];
        let hot = [0, 0, 0, 1, 2];
        for (row, &c) in logits.chunks_mut(classes).zip(&hot) {
            row[c] = 80.0;
        }
        let is = inception_score(&logits, classes, 2).unwrap();
        assert!((is.split_scores[0] - 1.0).abs() < 1e-9);
        assert!((is.split_scores[1] - 3.0).abs() < 1e-9);
        assert!((is.mean - 2.0).abs() < 1e-9);
        assert!((is.std - 1.0).abs() < 1e-9, "population std: {}", is.std);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(inception_score(&[0.0; 6], 3, 3).is_err());
        assert!(inception_score(&[0.0; 6], 3, 0).is_err());
        assert!(inception_score(&[0.0; 7], 3, 1).is_err());
        assert!(inception_score(&[0.0; 6], 0, 1).is_err());
        assert!(inception_score(&[0.0, f32::INFINITY, 0.0], 3, 1).is_err());
    }
}
