//! `launch plot`: two synthetic runs' metrics.jsonl drawn into one PNG; clear errors for a
//! directory without metrics and for an unparsable line.
//!
//! Needs a font (Debian's fonts-dejavu-core, installed by .ci/run, or ROTOR_PLOT_FONT).

use std::{
    collections::HashSet,
    path::Path,
    process::{Command, Output},
};

fn launch(args: &[&std::ffi::OsStr]) -> (Output, String) {
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

/// A run directory with training lines every 10 steps up to 200 and validation lines every 50;
/// `with_perplexity: false` leaves perplexity out (that run has no series in its panel).
fn synthetic_run(dir: &Path, scale: f64, with_perplexity: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    for step in (10..=200).step_by(10) {
        let t = step as f64 / 200.0;
        let mut line = serde_json::json!({
            "step": step,
            "loss": scale * (0.3 - 0.2 * t),
            "rec": 0.2,
            "used_fraction": (0.2 + 0.7 * t * scale).min(1.0),
        });
        if with_perplexity {
            line["perplexity"] = serde_json::json!(20.0 + 100.0 * t * scale);
        }
        text += &format!("{line}\n");
        if step % 50 == 0 {
            let val = serde_json::json!({
                "step": step, "split": "val", "mse": 0.08, "psnr": 15.0 + 3.0 * t * scale,
                "used_fraction": 0.5, "perplexity": 40.0,
            });
            text += &format!("{val}\n");
        }
        if step == 100 {
            text += "\n"; // blank lines are skipped
        }
    }
    text += &format!(
        "{}\n",
        serde_json::json!({"step": 200, "split": "eval", "psnr": 99.0, "ssim": 0.5})
    );
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    // Ignored by plot, even unparsable.
    std::fs::write(dir.join("metrics.discarded.jsonl"), "not json\n").unwrap();
}

#[test]
fn plot_overlays_runs_and_names_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("fm-rotation");
    let b = tmp.path().join("fm-ste");
    synthetic_run(&a, 1.0, true);
    synthetic_run(&b, 0.5, false);
    let png = tmp.path().join("compare.png");

    let (out, text) = launch(&[
        "plot".as_ref(),
        a.as_os_str(),
        b.as_os_str(),
        "--out".as_ref(),
        png.as_os_str(),
    ]);
    assert!(out.status.success(), "launch plot: {text}");
    assert!(text.contains("fm-rotation, fm-ste"), "{text}");

    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1600, 1200));
    let colors: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colors.len() > 20, "only {} colours", colors.len());
    // The runs' line colours (matplotlib's tab10 blue and orange, in command-line order).
    for (run, rgb) in [("fm-rotation", [31, 119, 180]), ("fm-ste", [255, 127, 14])] {
        let n = img.pixels().filter(|p| p.0 == rgb).count();
        assert!(n > 500, "{run}: {n} pixels of its colour {rgb:?}");
    }
    // Text was drawn: dark (glyph) pixels in the legend strip at the top, beside the swatches.
    let dark = (0..1600)
        .flat_map(|x| (0..40).map(move |y| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count();
    assert!(dark > 100, "no legend text: {dark} dark pixels");

    // A directory without metrics.jsonl.
    let empty = tmp.path().join("not-a-run");
    std::fs::create_dir_all(&empty).unwrap();
    let (out, text) = launch(&[
        "plot".as_ref(),
        a.as_os_str(),
        empty.as_os_str(),
        "--out".as_ref(),
        tmp.path().join("x.png").as_os_str(),
    ]);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("not-a-run") && text.contains("metrics.jsonl"),
        "{text}"
    );
    assert!(!tmp.path().join("x.png").exists());

    // An unparsable line in the middle: named with its file and line.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("metrics.jsonl"),
        "{\"step\": 10, \"loss\": 0.5}\n\n{\"step\": 20, \"loss\"\n{\"step\": 30, \"loss\": 0.4}\n",
    )
    .unwrap();
    let (out, text) = launch(&[
        "plot".as_ref(),
        bad.as_os_str(),
        "--out".as_ref(),
        tmp.path().join("y.png").as_os_str(),
    ]);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{} line 3", bad.join("metrics.jsonl").display())),
        "{text}"
    );
}
