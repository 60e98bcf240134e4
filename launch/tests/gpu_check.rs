//! `scripts/gpu-check.sh` without a GPU: its argument checks and its JSON report (the steps
//! that run on wgpu are exercised in tests/wgpu.rs), so a lent GPU's first minute is not spent
//! on a typo.

use std::{path::PathBuf, process::Command};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/gpu-check.sh")
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("bash runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    for (args, says) in [
        (&["--bogus"][..], "unknown argument '--bogus'"),
        (&["--device", "tpu"][..], "--device must be cuda or wgpu"),
        (&["--steps", "x"][..], "--steps must be a whole number"),
        (&["--steps", "2"][..], "at least 4"),
        (&["--only", "golden,warp"][..], "unknown step 'warp'"),
        (&["--out"][..], "--out needs a file"),
    ] {
        let (code, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
    }
    let (code, _) = run(&["--help"]);
    assert_eq!(code, 0);
}

#[test]
fn a_dry_run_writes_the_report_with_every_step_planned() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report.json");
    let (code, err) = run(&["--dry-run", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("dry run, nothing ran"), "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["device"], "cuda");
    assert_eq!(report["ok"], false, "a dry run proves nothing");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "env",
            "golden",
            "train",
            "bf16",
            "launcher",
            "throughput",
            "estimators"
        ]
    );
}

#[test]
fn missing_executables_fail_their_step_with_the_fix_and_cuda_only_steps_skip_on_wgpu() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("report.json");
    let (code, err) = run(&[
        "--device",
        "wgpu",
        "--only",
        "estimators,launcher,throughput",
        "--bundle",
        tmp.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps[0]["status"], "failed");
    assert!(
        steps[0]["detail"]
            .as_str()
            .unwrap()
            .contains("run scripts/gpu-check-build.sh"),
        "{report}"
    );
    assert_eq!(steps[1]["status"], "skipped");
    assert_eq!(steps[2]["status"], "skipped");
    assert_eq!(report["ok"], false);
}
