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
        &base.replace("steps = 300", "steps = \"many\""),
    );
    let err = TrainConfig::load(&wrong_type, &[]).unwrap_err().to_string();
    assert!(
        err.contains("type.toml") && err.contains("run.steps"),
        "{err}"
    );

    let accumulate = write(
        dir.path(),
        "acc.toml",
        &format!("{base}\n").replace(
            "schedule = \"cosine\"",
            "schedule = \"cosine\"\naccumulate = 3",
        ),
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
