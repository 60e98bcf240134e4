//! `launch check-quantizer` on every shipped quantizer config, and its errors on bad ones.

use std::{path::Path, process::Command};

fn launch(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_launch"))
        .args(args)
        .output()
        .expect("launch runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_shipped_quantizer_config_builds_and_runs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/quantizers");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (ok, text) = launch(&["check-quantizer", path.to_str().unwrap()]);
            assert!(ok, "{}: {text}", path.display());
            assert!(text.contains("ok: input dim"), "{text}");
            checked += 1;
        }
    }
    assert!(
        checked >= 7,
        "only {checked} configs found in {}",
        dir.display()
    );
}

#[test]
fn bad_configs_name_the_file_and_key() {
    let dir = std::env::temp_dir().join(format!("rotor-launch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let typo = dir.join("typo.toml");
    std::fs::write(
        &typo,
        "[quantizer]\nkind = \"vq\"\ndim = 8\ncodebook_size = 16\ndecay = 0.9\n",
    )
    .unwrap();
    let (ok, text) = launch(&["check-quantizer", typo.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        text.contains("typo.toml") && text.contains("decay"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[quantizer]\nkind = \"fsq\"\nlevels = [8, 1]\n").unwrap();
    let (ok, text) = launch(&["check-quantizer", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        text.contains("bad.toml") && text.contains("levels"),
        "{text}"
    );

    let (ok, text) = launch(&[
        "check-quantizer",
        dir.join("missing.toml").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("cannot read config file"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_applies_environment_and_overrides_and_names_bad_keys() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/quickstart.toml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |env: Option<(&str, &str)>, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_launch"));
        cmd.current_dir(&root)
            .arg("check-config")
            .arg(&config)
            .args(args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = run(None, &[]);
    assert!(ok, "{text}");
    let (ok, text) = run(Some(("ROTOR__OPTIM__LR", "-1")), &[]);
    assert!(
        !ok && text.contains("optim.lr") && text.contains("quickstart.toml"),
        "{text}"
    );
    let (ok, text) = run(
        Some(("ROTOR__OPTIM__LR", "-1")),
        &["--set", "optim.lr=2e-4"],
    );
    assert!(ok, "--set wins over the environment: {text}");
    let (ok, text) = run(None, &["--set", "run.batch_size=0"]);
    assert!(!ok && text.contains("run.batch_size"), "{text}");
    let (ok, text) = run(Some(("ROTOR__RUN__LOG_EVERY", "often")), &[]);
    assert!(
        !ok && text.contains("run.log_every") && text.contains("often"),
        "an environment value of the wrong type is refused: {text}"
    );
    let (ok, text) = run(Some(("ROTOR__RUN__BATCH_SIZE", "12.5")), &[]);
    assert!(!ok && text.contains("run.batch_size"), "{text}");
    let (ok, text) = run(None, &["--set", "optim.lrr=1"]);
    assert!(!ok && text.contains("lrr"), "{text}");
}
