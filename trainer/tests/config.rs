//! Configuration: every shipped config parses and validates; unknown keys, wrong types and
//! impossible values fail naming the key and the file; overrides apply.

use std::path::{Path, PathBuf};

use trainer::TrainConfig;

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn quickstart_text() -> String {
    std::fs::read_to_string(configs_dir().join("quickstart.toml")).unwrap()
}

#[test]
fn every_shipped_training_config_parses_and_validates() {
    let _serial = crate::serial();
    let mut checked = 0;
    for sub in ["", "paper"] {
        for entry in std::fs::read_dir(configs_dir().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let de = toml::Deserializer::parse(&text).unwrap();
            let cfg: TrainConfig = serde_path_to_error_like(de, &path);
            // Datasets and LPIPS files of the paper configs are not on this machine: check values.
            cfg.validate_values()
                .unwrap_or_else(|(k, r)| panic!("{}: key `{k}`: {r}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 11, "only {checked} configs");
}

fn serde_path_to_error_like(de: toml::Deserializer<'_>, path: &Path) -> TrainConfig {
    use serde::Deserialize;
    TrainConfig::deserialize(de).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn unknown_key_wrong_type_and_bad_values_name_key_and_file() {
    let _serial = crate::serial();
    let dir = tempfile::tempdir().unwrap();
    let base = quickstart_text();
    let typo = write(
        dir.path(),
        "typo.toml",
        &base.replace("weight_decay = 0.01", "weight_decya = 0.01"),
    );
    let err = TrainConfig::load(&typo, &[]).unwrap_err().to_string();
    assert!(
        err.contains("typo.toml") && err.contains("weight_decya") && err.contains("optim"),
        "{err}"
    );

    let wrong_type = write(
        dir.path(),
        "type.toml",
        &base.replace("steps = 1000", "steps = \"many\""),
    );
    let err = TrainConfig::load(&wrong_type, &[]).unwrap_err().to_string();
    assert!(
        err.contains("type.toml") && err.contains("run.steps"),
        "{err}"
    );

    let accumulate = write(
        dir.path(),
        "acc.toml",
        &format!("{base}\n").replace("weight_decay = 0.01", "weight_decay = 0.01\naccumulate = 3"),
    );
    let err = TrainConfig::load(&accumulate, &[]).unwrap_err().to_string();
    assert!(
        err.contains("optim.accumulate") && err.contains("128"),
        "{err}"
    );

    let missing = write(
        dir.path(),
        "missing.toml",
        &base.replace(
            "data/fashion-mnist/train-images",
            "/nonexistent/train-images",
        ),
    );
    let err = TrainConfig::load(&missing, &[]).unwrap_err().to_string();
    assert!(
        err.contains("data.source.train") && err.contains("fetch-data"),
        "{err}"
    );

    let res = write(
        dir.path(),
        "res.toml",
        &base.replace("resolution = 28", "resolution = 30"),
    );
    let err = TrainConfig::load(&res, &[]).unwrap_err().to_string();
    assert!(
        err.contains("data.resolution") && err.contains('4'),
        "{err}"
    );

    let err = TrainConfig::load(&dir.path().join("nope.toml"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.toml") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn overrides_apply() {
    let _serial = crate::serial();
    let dir = tempfile::tempdir().unwrap();
    // Data paths relative to the repository root.
    let text = quickstart_text().replace(
        "\"data/",
        &format!("\"{}/../data/", env!("CARGO_MANIFEST_DIR")),
    );
    let path = write(dir.path(), "q.toml", &text);
    if !Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/fashion-mnist/train-images-idx3-ubyte.gz")
        .exists()
    {
        panic!(
            "sample data missing: run scripts/fetch-data.sh first (the README's test command does)"
        );
    }
    let cfg = TrainConfig::load(
        &path,
        &[
            "optim.lr=5e-4".into(),
            "optim.betas=[0.5, 0.9]".into(),
            "model.quantizer.estimator=ste".into(),
        ],
    )
    .unwrap();
    assert_eq!(cfg.optim.lr, 5e-4);
    assert_eq!(cfg.optim.betas, [0.5, 0.9]);
    let trainer::models::AutoencoderKind::Peer(p) = &cfg.model else {
        panic!()
    };
    let trainer::quantizers::QuantizerConfig::Vq(vq) = &p.quantizer else {
        panic!()
    };
    assert_eq!(vq.estimator, trainer::quantizers::Estimator::Ste);
    let err = TrainConfig::load(&path, &["optim.lr".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("key=value"), "{err}");
    let err = TrainConfig::load(&path, &["optim.lr=-1".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("optim.lr"), "{err}");
}

/// Each of these was accepted (converted, rounded or wrapped) or crashed; each must now fail
/// before training with a message naming the key, whether it comes from the file, the
/// environment or `--set`.
#[test]
fn strict_types_ranges_and_sizes_name_the_key() {
    let _serial = crate::serial();
    let dir = tempfile::tempdir().unwrap();
    let text = quickstart_text().replace(
        "\"data/",
        &format!("\"{}/../data/", env!("CARGO_MANIFEST_DIR")),
    );
    let path = write(dir.path(), "q.toml", &text);
    TrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("the quickstart itself: {e}"));
    let fails = |file_edit: (&str, &str), set: &[&str], key: &str, words: &[&str]| {
        let p = write(
            dir.path(),
            "case.toml",
            &text.replace(file_edit.0, file_edit.1),
        );
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let err = match TrainConfig::load(&p, &set) {
            Ok(_) => panic!("accepted: {file_edit:?} {set:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("`{key}`")),
            "{file_edit:?} {set:?}: names {key}: {err}"
        );
        for w in words {
            assert!(err.contains(w), "{file_edit:?} {set:?}: says {w:?}: {err}");
        }
    };
    let none = ("", "");
    // Types: no conversions.
    fails(
        ("steps = 1000", "steps = \"300\""),
        &[],
        "run.steps",
        &["string", "whole number"],
    );
    fails(
        ("batch_size = 128", "batch_size = 12.5"),
        &[],
        "run.batch_size",
        &["12.5"],
    );
    fails(none, &["run.batch_size=12.5"], "run.batch_size", &["12.5"]);
    fails(
        ("seed = 1234\nsteps", "seed = -1\nsteps"),
        &[],
        "run.seed",
        &["-1"],
    );
    fails(("lr = 3e-4", "lr = \"fast\""), &[], "optim.lr", &["string"]);
    fails(
        ("clamp_output = true", "clamp_output = 1"),
        &[],
        "objective.clamp_output",
        &[],
    );
    fails(
        ("codebook_size = 256", "codebook_size = 256.0"),
        &[],
        "model.quantizer.codebook_size",
        &[],
    );
    fails(none, &["data.workers=-2"], "data.workers", &["-2"]);
    // Values.
    fails(
        ("weight_decay = 0.01", "weight_decay = -0.01"),
        &[],
        "optim.weight_decay",
        &[">= 0"],
    );
    fails(
        none,
        &["optim.warmup_steps=5000"],
        "optim.warmup_steps",
        &["run.steps"],
    );
    fails(("lr = 3e-4", "lr = nan"), &[], "optim.lr", &[]);
    fails(("lr = 3e-4", "lr = inf"), &[], "optim.lr", &[]);
    fails(none, &["optim.eps=0"], "optim.eps", &[]);
    fails(none, &["optim.betas=[0.9, 1.5]"], "optim.betas", &[]);
    fails(
        none,
        &["objective.quantizer_weight=-1"],
        "objective.quantizer_weight",
        &[],
    );
    fails(
        none,
        &["data.resize=20"],
        "data.resize",
        &["data.resolution"],
    );
    fails(none, &["run.val_batches=0"], "run.val_batches", &[]);
    fails(
        ("commitment_weight = 10.0", "commitment_weight = inf"),
        &[],
        "model.quantizer.commitment_weight",
        &["finite"],
    );
    fails(
        ("decay = 0.8", "decay = 1.5"),
        &[],
        "model.quantizer.codebook.decay",
        &[],
    );
    fails(("hidden = 16", "hidden = 0"), &[], "model.hidden", &[]);
    // Sizes that cannot run.
    fails(
        ("codebook_size = 256", "codebook_size = 99999999999"),
        &[],
        "model.quantizer.codebook_size",
        &["2^24"],
    );
    fails(
        ("batch_size = 128", "batch_size = 99999999999999"),
        &[],
        "run.batch_size",
        &["GiB", "data.prefetch"],
    );
    fails(
        none,
        &["data.resolution=4000000"],
        "run.batch_size",
        &["GiB"],
    );
}
