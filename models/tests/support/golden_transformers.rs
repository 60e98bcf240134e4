//! The transformer golden cases (`../shared/golden/transformers`, copied into
//! `tests/golden/transformers/`): enhancing-transformers' `ViTVQ` and `StyleDiscriminator`, and
//! Hugging Face's `TimesformerModel`, with seeded random weights. Every `*.safetensors` case of
//! the directory is checked, an unknown kind fails; `TRANSFORMERS_GOLDEN_DIR` points at another
//! directory. Tolerance as the golden README says: `|got - want| <= 1e-5 + 1e-4*|want|` on Flex;
//! on wgpu (lavapipe sums in another order) the absolute floor is 2e-5, relative the same.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, backend::AutodiffBackend, backend::Backend};
use models::{
    StyleGan2Config, StyleGan2Discriminator, StyleGan2Naming, Timesformer, TimesformerConfig,
    TimesformerNaming, VitConfig, VitDecoder, VitEncoder, VitNaming, export_grads, load_weights,
    weights::{Naming, TorchKey},
};

/// A lone PyTorch Linear (`weight` `[out, in]`, transposed into burn's `[in, out]`).
struct LinearNaming;

impl Naming for LinearNaming {
    fn torch_key(&self, path: &str) -> TorchKey {
        TorchKey {
            key: path.to_string(),
            transpose: path == "weight",
            optional: false,
        }
    }
}

use super::Case;

pub fn golden_dir() -> PathBuf {
    match std::env::var_os("TRANSFORMERS_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/transformers"),
    }
}

/// Elementwise `|got - want| <= atol + 1e-4*|want|`, reporting the worst element's share of the
/// tolerance on failure.
pub fn close<Bk: Backend, const D: usize>(
    name: &str,
    got: Tensor<Bk, D>,
    want: &[f32],
    atol: f32,
) -> Result<(), String> {
    let got = got.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    if got.len() != want.len() {
        return Err(format!("{name}: {} values, want {}", got.len(), want.len()));
    }
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let share = (g - w).abs() / (atol + 1e-4 * w.abs());
        if share.is_nan() || share > worst.0 {
            worst = (if share.is_nan() { f32::INFINITY } else { share }, i);
        }
    }
    if worst.0 > 1.0 {
        let i = worst.1;
        return Err(format!(
            "{name}: element {i}: got {}, want {} ({:.2}x the tolerance)",
            got[i], want[i], worst.0
        ));
    }
    Ok(())
}

fn config<T: serde::de::DeserializeOwned>(case: &Case) -> Result<T, String> {
    serde_json::from_str(case.meta("config")?).map_err(|e| format!("config: {e}"))
}

fn count(case: &Case, key: &str) -> Result<usize, String> {
    case.meta(key)?.parse().map_err(|e| format!("{key}: {e}"))
}

fn check_vit<Bk: AutodiffBackend>(
    case: &Case,
    device: &Bk::Device,
    atol: f32,
) -> Result<(), String> {
    type Inner<Bk> = <Bk as AutodiffBackend>::InnerBackend;
    let cfg: VitConfig = config(case)?;
    let enc = VitEncoder::<Inner<Bk>>::new(&cfg, device).map_err(|e| e.to_string())?;
    let enc =
        load_weights(enc, &case.dict.sub("encoder."), &VitNaming).map_err(|e| e.to_string())?;
    let dec = VitDecoder::<Inner<Bk>>::new(&cfg, device).map_err(|e| e.to_string())?;
    let dec =
        load_weights(dec, &case.dict.sub("decoder."), &VitNaming).map_err(|e| e.to_string())?;
    let pre = burn::nn::LinearConfig::new(cfg.encoder.dim, cfg.embed_dim).init::<Inner<Bk>>(device);
    let pre = load_weights(pre, &case.dict.sub("pre_quant."), &LinearNaming)
        .map_err(|e| e.to_string())?;
    let post =
        burn::nn::LinearConfig::new(cfg.embed_dim, cfg.decoder.dim).init::<Inner<Bk>>(device);
    let post = load_weights(post, &case.dict.sub("post_quant."), &LinearNaming)
        .map_err(|e| e.to_string())?;
    // The stored position tables are the reference's; ours are computed (both f64-derived).
    let stored = case.want("encoder.en_pos_embedding")?;
    let ours = models::sincos_position_table(cfg.grid(), cfg.encoder.dim);
    let pos_err = stored
        .iter()
        .zip(&ours)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    if pos_err > 1e-6 {
        return Err(format!(
            "position table differs from the reference by {pos_err}"
        ));
    }
    let encoded = enc.forward(case.tensor::<Inner<Bk>>("input", device)?);
    close("encoded", encoded.clone(), case.want("encoded")?, atol)?;
    close(
        "pre_quant",
        pre.forward(encoded),
        case.want("pre_quant")?,
        atol,
    )?;
    let post_q = post.forward(case.tensor_n::<Inner<Bk>, 3>("latent", device)?);
    close("post_quant", post_q.clone(), case.want("post_quant")?, atol)?;
    close("decoded", dec.forward(post_q), case.want("decoded")?, atol)?;
    let enc_n = models::trainable_params(&VitEncoder::<Bk>::new(&cfg, device).unwrap());
    let dec_n = models::trainable_params(&VitDecoder::<Bk>::new(&cfg, device).unwrap());
    for (what, n, key) in [
        ("encoder", enc_n, "encoder_params"),
        ("decoder", dec_n, "decoder_params"),
    ] {
        let want = count(case, key)?;
        if n != want {
            return Err(format!(
                "{what} has {n} trainable parameters, enhancing {want}"
            ));
        }
    }
    Ok(())
}

fn check_timesformer<Bk: AutodiffBackend>(
    case: &Case,
    device: &Bk::Device,
    atol: f32,
) -> Result<(), String> {
    type Inner<Bk> = <Bk as AutodiffBackend>::InnerBackend;
    let cfg: TimesformerConfig = config(case)?;
    let model = Timesformer::<Inner<Bk>>::new(&cfg, device).map_err(|e| e.to_string())?;
    let weights = case.dict.without(&["input", "last_hidden_state"]);
    let model = load_weights(model, &weights, &TimesformerNaming).map_err(|e| e.to_string())?;
    let out = model.forward(case.tensor_n::<Inner<Bk>, 5>("input", device)?);
    close(
        "last_hidden_state",
        out,
        case.want("last_hidden_state")?,
        atol,
    )?;
    let n = models::trainable_params(&Timesformer::<Bk>::new(&cfg, device).unwrap());
    let want = count(case, "params")?;
    if n != want {
        return Err(format!("{n} parameters, Hugging Face {want}"));
    }
    Ok(())
}

fn check_stylegan2<Bk: AutodiffBackend>(
    case: &Case,
    device: &Bk::Device,
    atol: f32,
) -> Result<(), String> {
    let cfg: StyleGan2Config = config(case)?;
    let disc = StyleGan2Discriminator::<Bk>::new(&cfg, device).map_err(|e| e.to_string())?;
    let weights = case.dict.without(&["input", "output", "r1", "r1_grad"]);
    let disc = disc.load_enhancing(&weights).map_err(|e| e.to_string())?;
    let want_group = count(case, "mbstd_group_used")?;
    let x = case.tensor::<Bk>("input", device)?;
    let group = disc
        .stddev_group_for(x.dims()[0])
        .map_err(|e| e.to_string())?;
    if group != want_group {
        return Err(format!(
            "minibatch-stddev group {group}, reference {want_group}"
        ));
    }
    let out = disc.forward(x.clone());
    close("output", out.clone(), case.want("output")?, atol)?;
    // R1: the penalty and its gradient with respect to every parameter.
    let r1 = disc.r1_penalty(x.require_grad());
    close(
        "input_grad",
        r1.input_grad.clone(),
        case.want("input_grad")?,
        atol,
    )?;
    close(
        "r1_grad_sq",
        r1.grad_sq.clone(),
        case.want("r1_grad_sq")?,
        atol,
    )?;
    close("r1", r1.penalty.clone(), case.want("r1")?, atol)?;
    let grads = r1.penalty.backward();
    let got = export_grads(&disc, &StyleGan2Naming, &grads);
    let mut checked = 0;
    for name in case.dict.names().filter(|n| n.starts_with("r1_grad.")) {
        let key = &name["r1_grad.".len()..];
        let g = got
            .get(key)
            .ok_or_else(|| format!("no gradient for `{key}`"))?;
        let t = Tensor::<Bk::InnerBackend, 1>::from_floats(g.values.as_slice(), device);
        close(name, t, case.want(name)?, atol)?;
        checked += 1;
    }
    if checked != got.len() {
        return Err(format!(
            "{checked} r1 gradients in the case, the model has {} parameters with one",
            got.len()
        ));
    }
    let n = models::trainable_params(&disc);
    let want = count(case, "params")?;
    if n != want {
        return Err(format!("{n} parameters, enhancing {want}"));
    }
    Ok(())
}

pub fn check_on<Bk: AutodiffBackend>(
    case: &Case,
    device: &Bk::Device,
    atol: f32,
) -> Result<String, String> {
    let kind = case.meta("kind")?.to_string();
    match kind.as_str() {
        "vit_vqgan" => check_vit::<Bk>(case, device, atol),
        "timesformer" => check_timesformer::<Bk>(case, device, atol),
        "stylegan2_disc" => check_stylegan2::<Bk>(case, device, atol),
        other => Err(format!("unknown kind `{other}`: no checker for it")),
    }?;
    Ok(kind)
}

/// Every case on the backend `Bk`, a line per case and the summary line.
pub fn check_all<Bk: AutodiffBackend>(
    paths: &[PathBuf],
    dir: &Path,
    label: &str,
    atol: f32,
    failures: &mut Vec<String>,
) {
    let device = Default::default();
    let mut failed = 0;
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match Case::load(path).and_then(|c| check_on::<Bk>(&c, &device, atol)) {
            Ok(kind) => println!("golden ok   {name} ({kind}){label}"),
            Err(e) => {
                println!("golden FAIL {name}{label}: {e}");
                failures.push(format!("{name}{label}: {e}"));
                failed += 1;
            }
        }
    }
    println!(
        "golden: checked {} transformer cases in {}{label}, {failed} failed",
        paths.len(),
        dir.display()
    );
}
