//! The evaluation metrics against the reference implementations' outputs
//! (`shared/golden/metrics/`, see shared/golden/README.md): Fréchet distance (pytorch-fid),
//! FVD distance (TATS / tf-gan), Inception Score, SSIM and PSNR (scikit-image), and the FID
//! Inception and I3D networks. Every case file in the directory is checked; an unknown kind fails.

#[path = "support/golden_networks.rs"]
mod golden_networks;
#[path = "support/metric_case.rs"]
mod metric_case;

use std::path::{Path, PathBuf};

use metric_case::Case;
use trainer::eval::{
    FeatureStats, frechet_distance, frechet_distance_of_rows, inception_score, psnr_unit, ssim,
};

/// Where the cases are: `METRICS_GOLDEN_DIR`, else the workspace's `../shared/golden/metrics`.
fn golden_dir() -> PathBuf {
    match std::env::var_os("METRICS_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/metrics"),
    }
}

/// Mean and covariance of the rows of a [N, D] tensor, through [`FeatureStats`].
fn stats_of(case: &Case, name: &str) -> Result<(Vec<f64>, Vec<f64>), String> {
    let (shape, values) = case.tensor(name)?;
    let [_, dim] = shape else {
        return Err(format!("`{name}` is not [N, D]: {shape:?}"));
    };
    let mut stats = FeatureStats::new(*dim);
    for row in values.chunks(*dim) {
        stats.push_f64(row).map_err(|e| format!("`{name}`: {e}"))?;
    }
    let cov = stats.covariance().map_err(|e| format!("`{name}`: {e}"))?;
    Ok((stats.mean(), cov))
}

/// `frechet_distance` (features_a/b -> fid) and `fvd_distance` (embeddings_a/b -> fvd).
fn check_frechet(case: &Case, inputs: [&str; 2], distance_name: &str) -> Result<(), String> {
    let (mu_a, sigma_a) = stats_of(case, inputs[0])?;
    let (mu_b, sigma_b) = stats_of(case, inputs[1])?;
    case.check("mu_a", &mu_a)?;
    case.check("mu_b", &mu_b)?;
    case.check("sigma_a", &sigma_a)?;
    case.check("sigma_b", &sigma_b)?;
    let fd = frechet_distance(&mu_a, &sigma_a, &mu_b, &sigma_b).map_err(|e| e.to_string())?;
    case.check("trace_sqrt", &[fd.trace_sqrt])?;
    case.check(distance_name, &[fd.distance])?;
    // Fewer samples than dimensions: the rows route (no dim x dim decomposition) as well.
    let (shape_a, rows_a) = case.tensor(inputs[0])?;
    let (_, rows_b) = case.tensor(inputs[1])?;
    let dim = shape_a[1];
    if rows_a.len() / dim <= dim && rows_b.len() / dim <= dim {
        let fd = frechet_distance_of_rows(rows_a, rows_b, dim).map_err(|e| e.to_string())?;
        case.check("trace_sqrt", &[fd.trace_sqrt])
            .map_err(|e| format!("rows route: {e}"))?;
        case.check(distance_name, &[fd.distance])
            .map_err(|e| format!("rows route: {e}"))?;
    }
    Ok(())
}

fn check_inception_score(case: &Case) -> Result<(), String> {
    let splits = case
        .config
        .get("splits")
        .and_then(serde_json::Value::as_u64)
        .ok_or("config has no integer `splits`")? as usize;
    let (shape, logits) = case.tensor_f32("logits")?;
    let [_, classes] = shape[..] else {
        return Err(format!("`logits` is not [N, C]: {shape:?}"));
    };
    let is = inception_score(&logits, classes, splits).map_err(|e| e.to_string())?;
    case.check("split_scores", &is.split_scores)?;
    case.check("is_mean", &[is.mean])?;
    case.check("is_std", &[is.std])
}

fn check_ssim(case: &Case) -> Result<(), String> {
    let (shape, a) = case.tensor_f32("image_a")?;
    let (shape_b, b) = case.tensor_f32("image_b")?;
    if shape != shape_b {
        return Err(format!("image shapes differ: {shape:?} vs {shape_b:?}"));
    }
    let [h, w, c] = shape[..] else {
        return Err(format!("`image_a` is not [H, W, C]: {shape:?}"));
    };
    let s = ssim(&a, &b, h, w, c).map_err(|e| e.to_string())?;
    case.check("ssim", &[s.mean])?;
    case.check("ssim_per_channel", &s.per_channel)?;
    let map: Vec<f64> = s.map.iter().map(|&v| f64::from(v)).collect();
    case.check("ssim_map", &map)?;
    case.check("psnr", &[psnr_unit(&a, &b)])
}

fn check_case(path: &Path) -> Result<Case, (String, String)> {
    let fallback = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let case = Case::load(path).map_err(|e| (fallback, e))?;
    let result = match case.kind.as_str() {
        "frechet_distance" => check_frechet(&case, ["features_a", "features_b"], "fid"),
        "fvd_distance" => check_frechet(&case, ["embeddings_a", "embeddings_b"], "fvd"),
        "inception_score" => check_inception_score(&case),
        "ssim" => check_ssim(&case),
        "fid_inception" => golden_networks::check_fid_inception(&case),
        "i3d" => golden_networks::check_i3d(&case),
        other => Err(format!("unknown kind `{other}`")),
    }
    .and_then(|()| {
        let unchecked = case.unchecked_outputs();
        if unchecked.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "outputs with a tolerance never checked: {unchecked:?}"
            ))
        }
    });
    match result {
        Ok(()) => Ok(case),
        Err(e) => Err((case.name.clone(), e)),
    }
}

#[test]
fn golden_metrics_match_references() {
    let _serial = crate::serial();
    let dir = golden_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "golden metric cases: cannot read {} ({e}); set METRICS_GOLDEN_DIR to the directory \
             of the metric cases (shared/golden/metrics)",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "golden metric cases: no *.safetensors in {}; set METRICS_GOLDEN_DIR to the directory of \
         the metric cases (shared/golden/metrics)",
        dir.display()
    );

    let mut failed = 0;
    for path in &files {
        match check_case(path) {
            Ok(case) => println!("golden ok   {} ({})", case.name, case.kind),
            Err((name, reason)) => {
                failed += 1;
                println!("golden FAIL {name}: {reason}");
            }
        }
    }
    println!(
        "golden: checked {} metric cases in {}, {failed} failed",
        files.len(),
        dir.display()
    );
    assert_eq!(failed, 0, "{failed} golden metric cases failed (see above)");
}
