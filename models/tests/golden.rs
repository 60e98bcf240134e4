//! Golden cases computed by taming-transformers' own modules with seeded random weights
//! (`../shared/golden/models`, copied into `tests/golden/`): every `*.safetensors` case of the
//! directory is checked, an unknown kind fails. `MODELS_GOLDEN_DIR` points at another directory.
//! Floats within 1e-4 + 1e-3*|want| (deep float32 stacks). With the feature `wgpu` every case is
//! checked again on `Autodiff<Wgpu>` (in CI: Mesa's lavapipe), with the same tolerances (their
//! absolute floor 1e-4 is already above the ~2e-5 by which lavapipe's summation order differs).

use std::path::{Path, PathBuf};

use burn::{
    backend::{Autodiff, Flex},
    module::AutodiffModule,
    tensor::{
        Tensor, TensorData,
        backend::{AutodiffBackend, Backend},
    },
};
use models::{
    AutoencoderConfig, Decoder, DiscNormKind, DiscriminatorConfig, Encoder, Lpips, StateDict,
    load_weights, weights::TamingNaming,
};

#[path = "support/golden_transformers.rs"]
mod transformers;

type B = Autodiff<Flex>;
const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-3;

fn golden_dir() -> PathBuf {
    match std::env::var_os("MODELS_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden"),
    }
}

struct Case {
    dict: StateDict,
    meta: std::collections::HashMap<String, String>,
}

impl Case {
    fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
        Ok(Self {
            meta: header.metadata().clone().unwrap_or_default(),
            dict: StateDict::from_safetensors(&bytes)?,
        })
    }

    fn meta(&self, key: &str) -> Result<&str, String> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("metadata `{key}` missing"))
    }

    fn tensor<Bk: Backend>(
        &self,
        name: &str,
        device: &Bk::Device,
    ) -> Result<Tensor<Bk, 4>, String> {
        let e = self
            .dict
            .get(name)
            .ok_or_else(|| format!("tensor `{name}` missing"))?;
        let s = &e.shape;
        Ok(Tensor::from_data(
            TensorData::new(e.values.clone(), [s[0], s[1], s[2], s[3]]),
            device,
        ))
    }

    fn tensor_n<Bk: Backend, const D: usize>(
        &self,
        name: &str,
        device: &Bk::Device,
    ) -> Result<Tensor<Bk, D>, String> {
        let e = self
            .dict
            .get(name)
            .ok_or_else(|| format!("tensor `{name}` missing"))?;
        if e.shape.len() != D {
            return Err(format!("`{name}` has shape {:?}, want rank {D}", e.shape));
        }
        Ok(Tensor::from_data(
            TensorData::new(e.values.clone(), e.shape.clone()),
            device,
        ))
    }

    fn want(&self, name: &str) -> Result<&[f32], String> {
        Ok(&self
            .dict
            .get(name)
            .ok_or_else(|| format!("tensor `{name}` missing"))?
            .values)
    }
}

fn close<Bk: Backend, const D: usize>(
    name: &str,
    got: Tensor<Bk, D>,
    want: &[f32],
) -> Result<(), String> {
    let got = got.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    if got.len() != want.len() {
        return Err(format!("{name}: {} values, want {}", got.len(), want.len()));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= ATOL + RTOL * w.abs();
        if !ok {
            return Err(format!("{name}: element {i}: got {g}, want {w}"));
        }
    }
    Ok(())
}

fn check_autoencoder<Bk: AutodiffBackend>(case: &Case, device: &Bk::Device) -> Result<(), String> {
    let cfg: AutoencoderConfig =
        serde_json::from_str(case.meta("config")?).map_err(|e| format!("config: {e}"))?;
    let enc = Encoder::<Bk::InnerBackend>::new(&cfg, device).map_err(|e| e.to_string())?;
    let enc =
        load_weights(enc, &case.dict.sub("encoder."), &TamingNaming).map_err(|e| e.to_string())?;
    let dec = Decoder::<Bk::InnerBackend>::new(&cfg, device).map_err(|e| e.to_string())?;
    let dec =
        load_weights(dec, &case.dict.sub("decoder."), &TamingNaming).map_err(|e| e.to_string())?;
    close(
        "encoded",
        enc.forward(case.tensor("input", device)?),
        case.want("encoded")?,
    )?;
    close(
        "decoded",
        dec.forward(case.tensor("latent", device)?),
        case.want("decoded")?,
    )?;
    if !is_flex::<Bk>() {
        return Ok(()); // parameter counts do not depend on the backend
    }
    let device = Default::default();
    for (what, n, key) in [
        (
            "encoder",
            models::trainable_params(&Encoder::<B>::new(&cfg, &device).unwrap()),
            "encoder_params",
        ),
        (
            "decoder",
            models::trainable_params(&Decoder::<B>::new(&cfg, &device).unwrap()),
            "decoder_params",
        ),
    ] {
        let want: usize = case.meta(key)?.parse().map_err(|e| format!("{key}: {e}"))?;
        if n != want {
            return Err(format!("{what} has {n} parameters, taming {want}"));
        }
    }
    Ok(())
}

fn check_patchgan<Bk: AutodiffBackend>(case: &Case, device: &Bk::Device) -> Result<(), String> {
    let norm = match case.meta("norm")? {
        "batchnorm" => DiscNormKind::Batch,
        "actnorm" => DiscNormKind::Act,
        other => return Err(format!("unknown norm `{other}`")),
    };
    let cfg = DiscriminatorConfig {
        in_channels: 3,
        ndf: case.meta("ndf")?.parse().map_err(|e| format!("ndf: {e}"))?,
        n_layers: case
            .meta("n_layers")?
            .parse()
            .map_err(|e| format!("n_layers: {e}"))?,
        norm,
        seed: 0,
    };
    let disc = cfg.init::<Bk>(device).map_err(|e| e.to_string())?;
    // The stored running statistics are those AFTER the training forward: load the weights,
    // reset the statistics to PyTorch's initial values, and let our training forward update them.
    let mut start = case.dict.clone();
    let after: Vec<(String, models::TensorEntry)> = case
        .dict
        .names()
        .filter(|n| n.ends_with("running_mean") || n.ends_with("running_var"))
        .map(|n| (n.to_string(), case.dict.get(n).unwrap().clone()))
        .collect();
    for (name, entry) in &after {
        let fill = if name.ends_with("running_var") {
            1.0
        } else {
            0.0
        };
        start.insert(
            name.clone(),
            models::TensorEntry {
                shape: entry.shape.clone(),
                values: vec![fill; entry.values.len()],
            },
        );
    }
    let weights_only = start.without(&["input", "output_train", "output_eval"]);
    let disc = disc.load_taming(&weights_only).map_err(|e| e.to_string())?;
    let x = case.tensor::<Bk>("input", device)?;
    if disc.needs_init() {
        return Err("ActNorm golden cases are not produced by the reference script".into());
    }
    close(
        "output_train",
        disc.forward(x.clone()),
        case.want("output_train")?,
    )?;
    let exported = disc.export_taming();
    for (name, entry) in &after {
        let got = exported
            .get(name)
            .ok_or_else(|| format!("no `{name}` exported"))?;
        close::<Flex, 1>(
            name,
            Tensor::from_data(
                TensorData::new(got.values.clone(), [got.values.len()]),
                &Default::default(),
            ),
            &entry.values,
        )?;
    }
    let eval = disc.valid();
    close(
        "output_eval",
        eval.forward(x.inner()),
        case.want("output_eval")?,
    )?;
    if let Ok(p) = case.meta("params") {
        let want: usize = p.parse().map_err(|e| format!("params: {e}"))?;
        let n = models::trainable_params(&disc);
        if n != want {
            return Err(format!("discriminator has {n} parameters, taming {want}"));
        }
    }
    Ok(())
}

fn check_lpips<Bk: AutodiffBackend>(case: &Case, device: &Bk::Device) -> Result<(), String> {
    let weights = case.dict.without(&["input_a", "input_b", "distance"]);
    let lpips = Lpips::<Bk::InnerBackend>::new(device)
        .load_taming(&weights)
        .map_err(|e| e.to_string())?;
    let d = lpips.forward(
        case.tensor("input_a", device)?,
        case.tensor("input_b", device)?,
    );
    close("distance", d, case.want("distance")?)
}

fn is_flex<Bk: AutodiffBackend>() -> bool {
    std::any::TypeId::of::<Bk>() == std::any::TypeId::of::<B>()
}

fn check_on<Bk: AutodiffBackend>(case: &Case, device: &Bk::Device) -> Result<String, String> {
    let kind = case.meta("kind")?.to_string();
    match kind.as_str() {
        "taming_autoencoder" => check_autoencoder::<Bk>(case, device),
        "patchgan" => check_patchgan::<Bk>(case, device),
        "lpips_vgg16" => check_lpips::<Bk>(case, device),
        other => Err(format!("unknown kind `{other}`: no checker for it")),
    }?;
    Ok(kind)
}

/// Checks every case on the backend `Bk` (`label`: `""` for Flex, `" on wgpu"`, ...), printing
/// a line per case and a summary line, and collects the failures.
fn check_all<Bk: AutodiffBackend>(
    paths: &[PathBuf],
    dir: &Path,
    label: &str,
    failures: &mut Vec<String>,
) {
    let device = Default::default();
    let mut failed = 0;
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match Case::load(path).and_then(|c| check_on::<Bk>(&c, &device)) {
            Ok(kind) => println!("golden ok   {name} ({kind}){label}"),
            Err(e) => {
                println!("golden FAIL {name}{label}: {e}");
                failures.push(format!("{name}{label}: {e}"));
                failed += 1;
            }
        }
    }
    println!(
        "golden: checked {} model cases in {}{label}, {failed} failed",
        paths.len(),
        dir.display()
    );
}

#[test]
fn golden_models_match_taming() {
    let dir = golden_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no cases in {}", dir.display());
    let mut failures = Vec::new();
    check_all::<B>(&paths, &dir, "", &mut failures);
    #[cfg(feature = "wgpu")]
    check_all::<Autodiff<models::quantizers::burn_wgpu::Wgpu>>(
        &paths,
        &dir,
        " on wgpu",
        &mut failures,
    );
    // With the feature `cuda` (scripts/gpu-check.sh on a GPU machine), every case again on
    // burn-cuda, with the same tolerances.
    #[cfg(feature = "cuda")]
    check_all::<Autodiff<burn::backend::Cuda>>(&paths, &dir, " on cuda", &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn full_size_parameter_counts_match_taming() {
    let path = golden_dir().join("param_counts.json");
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let device = Default::default();
    let mut checked = 0;
    for (name, entry) in counts.as_object().unwrap() {
        if let Some(cfg) = entry.get("config") {
            let cfg: AutoencoderConfig = serde_json::from_value(cfg.clone()).unwrap();
            let enc = models::trainable_params(&Encoder::<B>::new(&cfg, &device).unwrap());
            let dec = models::trainable_params(&Decoder::<B>::new(&cfg, &device).unwrap());
            assert_eq!(
                enc as u64,
                entry["encoder"].as_u64().unwrap(),
                "{name} encoder"
            );
            assert_eq!(
                dec as u64,
                entry["decoder"].as_u64().unwrap(),
                "{name} decoder"
            );
            checked += 1;
        } else if let Some(rest) = name.strip_prefix("patchgan_n") {
            let (n, ndf) = rest.split_once("_ndf").unwrap();
            let cfg = DiscriminatorConfig {
                n_layers: n.parse().unwrap(),
                ndf: ndf.parse().unwrap(),
                ..DiscriminatorConfig::new()
            };
            let got = models::trainable_params(&cfg.init::<B>(&device).unwrap());
            assert_eq!(got as u64, entry.as_u64().unwrap(), "{name}");
            checked += 1;
        } else {
            panic!("param_counts.json: unknown entry `{name}`");
        }
    }
    println!("parameter counts: {checked} configs match taming");
    assert!(checked >= 5);
}

#[test]
fn golden_transformers_match_references() {
    let dir = transformers::golden_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no cases in {}", dir.display());
    let mut failures = Vec::new();
    transformers::check_all::<B>(&paths, &dir, "", 1e-5, &mut failures);
    #[cfg(feature = "wgpu")]
    transformers::check_all::<Autodiff<models::quantizers::burn_wgpu::Wgpu>>(
        &paths,
        &dir,
        " on wgpu",
        2e-5,
        &mut failures,
    );
    #[cfg(feature = "cuda")]
    transformers::check_all::<Autodiff<burn::backend::Cuda>>(
        &paths,
        &dir,
        " on cuda",
        2e-5,
        &mut failures,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The paper's full-size transformer configs: trainable parameter counts and every state-dict
/// name and shape equal what the references build (`param_counts_transformers.json`).
#[test]
fn full_size_transformer_parameter_counts_match_references() {
    use models::{
        StyleGan2Config, StyleGan2Discriminator, StyleGan2Naming, Timesformer, TimesformerConfig,
        TimesformerNaming, VitConfig, VitDecoder, VitEncoder, VitNaming, export_weights,
    };
    let path = transformers::golden_dir().join("param_counts_transformers.json");
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let device = Default::default();
    // Every state-dict name and shape the reference lists is exported, and nothing else.
    let same_shapes = |name: &str, dict: &StateDict, want: &serde_json::Value| {
        let Some(want) = want.as_object() else { return };
        for (key, shape) in want {
            let shape: Vec<usize> = serde_json::from_value(shape.clone()).unwrap();
            let got = dict
                .get(key)
                .unwrap_or_else(|| panic!("{name}: `{key}` not exported"));
            assert_eq!(got.shape, shape, "{name}: shape of `{key}`");
        }
        assert_eq!(dict.len(), want.len(), "{name}: exported names");
    };
    let mut checked = 0;
    for (name, entry) in counts.as_object().unwrap() {
        let cfg = &entry["config"];
        if name.starts_with("vitvqgan") {
            let mut c = cfg.clone();
            let n_embed = c.as_object_mut().unwrap().remove("n_embed").unwrap();
            let vit: VitConfig = serde_json::from_value(c).unwrap();
            let enc = VitEncoder::<B>::new(&vit, &device).unwrap();
            let dec = VitDecoder::<B>::new(&vit, &device).unwrap();
            let t = &entry["trainable"];
            assert_eq!(
                models::trainable_params(&enc) as u64,
                t["encoder"].as_u64().unwrap(),
                "{name} encoder"
            );
            assert_eq!(
                models::trainable_params(&dec) as u64,
                t["decoder"].as_u64().unwrap(),
                "{name} decoder"
            );
            let (e, d) = (vit.encoder.dim, vit.decoder.dim);
            let emb = vit.embed_dim;
            assert_eq!((e * emb + emb) as u64, t["pre_quant"].as_u64().unwrap());
            assert_eq!((emb * d + d) as u64, t["post_quant"].as_u64().unwrap());
            assert_eq!(
                n_embed.as_u64().unwrap() * emb as u64,
                t["quantizer"].as_u64().unwrap()
            );
            let all = &entry["including_frozen_pos_embedding"];
            let with_frozen = |m: usize, tokens: usize, dim: usize| (m + tokens * dim) as u64;
            let tokens = vit.grid() * vit.grid();
            assert_eq!(
                with_frozen(models::trainable_params(&enc), tokens, e),
                all["encoder"].as_u64().unwrap()
            );
            assert_eq!(
                with_frozen(models::trainable_params(&dec), tokens, d),
                all["decoder"].as_u64().unwrap()
            );
            if let Some(shapes) = entry.get("shapes") {
                let mut dict = StateDict::default();
                dict.extend_prefixed("encoder.", export_weights(&enc, &VitNaming));
                dict.extend_prefixed("decoder.", export_weights(&dec, &VitNaming));
                let skip: Vec<&str> = vec!["quantizer.", "pre_quant.", "post_quant."];
                let want: serde_json::Map<String, serde_json::Value> = shapes
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| !skip.iter().any(|s| k.starts_with(s)))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                same_shapes(name, &dict, &serde_json::Value::Object(want));
            }
        } else if name.starts_with("stylegan2") {
            let mut sg = StyleGan2Config::new(cfg["size"].as_u64().unwrap() as usize);
            sg.channel_multiplier = cfg["channel_multiplier"].as_u64().unwrap() as usize;
            let disc = StyleGan2Discriminator::<B>::new(&sg, &device).unwrap();
            // The reference table, as the json spells it out.
            for (r, w) in cfg["channels"].as_object().unwrap() {
                assert_eq!(
                    sg.width(r.parse().unwrap()) as u64,
                    w.as_u64().unwrap(),
                    "{name} width at {r}"
                );
            }
            assert_eq!(
                models::trainable_params(&disc) as u64,
                entry["params"].as_u64().unwrap(),
                "{name}"
            );
            if let Some(shapes) = entry.get("shapes") {
                same_shapes(name, &export_weights(&disc, &StyleGan2Naming), shapes);
            }
        } else if name.starts_with("timesformer") {
            let tc: TimesformerConfig = serde_json::from_value(cfg.clone()).unwrap();
            let model = Timesformer::<B>::new(&tc, &device).unwrap();
            assert_eq!(
                models::trainable_params(&model) as u64,
                entry["params"].as_u64().unwrap(),
                "{name}"
            );
            if let Some(shapes) = entry.get("shapes") {
                same_shapes(name, &export_weights(&model, &TimesformerNaming), shapes);
            }
        } else {
            panic!("param_counts_transformers.json: unknown entry `{name}`");
        }
        checked += 1;
    }
    println!("parameter counts: {checked} transformer configs match the references");
    assert_eq!(checked, 5);
}
