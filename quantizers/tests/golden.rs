//! Golden cases computed by vector-quantize-pytorch itself (`../shared/golden/quantizers`, copied
//! into `tests/golden/`). Every `*.safetensors` case of the directory is checked; a case of an
//! unknown kind or estimator fails. `QUANTIZER_GOLDEN_DIR` points the test at another directory.
//! Indices must be equal; floats within 1e-5 + 1e-4*|want| on Flex. With the feature `wgpu` every
//! case is checked again on `Autodiff<Wgpu>` (in CI: Mesa's lavapipe), whose reductions sum in
//! another order: there the absolute floor is 2e-5 (same relative tolerance).

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use burn::{
    module::{Param, ParamId},
    tensor::{
        Int, Tensor, TensorData,
        backend::{AutodiffBackend, Backend},
    },
};
use common::{B, check_close, device, floats, ints};
use quantizers::{
    AnyQuantizer, CodebookLearning, Distance, Estimator, FsqConfig, LfqConfig, Mode, QuantRng,
    Quantizer, VqConfig,
};
use rand::SeedableRng;
use safetensors::{Dtype, SafeTensors};

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;
/// The absolute floor on wgpu (lavapipe sums in another order than Flex).
#[cfg(feature = "wgpu")]
const ATOL_WGPU: f32 = 2e-5;

/// Where a case runs: the backend's device and the absolute tolerance there.
struct On<Bk: Backend> {
    device: Bk::Device,
    atol: f32,
}

struct Case {
    meta: HashMap<String, String>,
    floats: HashMap<String, (Vec<f32>, Vec<usize>)>,
    ints: HashMap<String, Vec<i64>>,
}

impl Case {
    fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| format!("bad header: {e}"))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("bad file: {e}"))?;
        let mut floats = HashMap::new();
        let mut ints = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            match view.dtype() {
                Dtype::F32 => {
                    let v = data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    floats.insert(name, (v, view.shape().to_vec()));
                }
                Dtype::I64 => {
                    let v = data
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    ints.insert(name, v);
                }
                other => return Err(format!("tensor {name}: unsupported dtype {other:?}")),
            }
        }
        Ok(Self { meta, floats, ints })
    }

    fn meta(&self, key: &str) -> Result<&str, String> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("metadata `{key}` missing"))
    }

    fn meta_f32(&self, key: &str) -> Result<f32, String> {
        self.meta(key)?
            .parse()
            .map_err(|e| format!("metadata `{key}`: {e}"))
    }

    fn f(&self, name: &str) -> Result<&(Vec<f32>, Vec<usize>), String> {
        self.floats
            .get(name)
            .ok_or_else(|| format!("tensor `{name}` missing"))
    }

    fn t1<Bk: Backend>(&self, name: &str, on: &On<Bk>) -> Result<Tensor<Bk, 1>, String> {
        let (v, s) = self.f(name)?;
        Ok(Tensor::from_data(
            TensorData::new(v.clone(), [s[0]]),
            &on.device,
        ))
    }

    fn t2<Bk: Backend>(&self, name: &str, on: &On<Bk>) -> Result<Tensor<Bk, 2>, String> {
        let (v, s) = self.f(name)?;
        Ok(Tensor::from_data(
            TensorData::new(v.clone(), [s[0], s[1]]),
            &on.device,
        ))
    }

    fn want(&self, name: &str) -> Result<&[f32], String> {
        Ok(&self.f(name)?.0)
    }

    fn want_indices(&self) -> Result<&[i64], String> {
        self.ints
            .get("indices")
            .map(Vec::as_slice)
            .ok_or_else(|| "tensor `indices` missing".to_string())
    }
}

fn close<Bk: Backend>(on: &On<Bk>, name: &str, got: Vec<f32>, want: &[f32]) -> Result<(), String> {
    check_close(name, &got, want, on.atol, RTOL)
}

fn same_indices<Bk: Backend>(got: Tensor<Bk, 2, Int>, want: &[i64]) -> Result<(), String> {
    let got = ints(got);
    if got.len() != want.len() {
        return Err(format!(
            "indices: {} values, want {}",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(format!(
            "indices: element {i}: got {}, want {}",
            got[i], want[i]
        )),
    }
}

fn check_vq<Bk: AutodiffBackend>(case: &Case, on: &On<Bk>) -> Result<(), String> {
    let distance = match case.meta("distance")? {
        "euclidean" => Distance::Euclidean,
        "cosine" => Distance::Cosine,
        other => return Err(format!("unknown distance `{other}`")),
    };
    let estimator = match case.meta("estimator")? {
        "ste" => Estimator::Ste,
        "rotation" => Estimator::Rotation,
        "rotation_unscaled" => Estimator::RotationUnscaled,
        other => return Err(format!("unknown estimator `{other}`")),
    };
    let commitment_weight = case.meta.get("commitment_weight").map_or(Ok(1.0), |v| {
        v.parse().map_err(|e| format!("commitment_weight: {e}"))
    })?;
    let (_, cb_shape) = case.f("codebook")?;
    let mut cfg = VqConfig::new(cb_shape[1], cb_shape[0]);
    cfg.distance = distance;
    cfg.estimator = estimator;
    cfg.commitment_weight = commitment_weight;
    cfg.codebook = CodebookLearning::Ema {
        decay: case.meta_f32("decay")?,
        eps: case.meta_f32("eps")?,
        init_cluster_size: 1.0,
    };
    let mut vq = cfg.init::<Bk>(&on.device).map_err(|e| e.to_string())?;
    vq.codebook = Param::initialized(ParamId::new(), case.t2("codebook", on)?);
    vq.cluster_size = Param::initialized(ParamId::new(), case.t1("cluster_size", on)?);
    vq.embed_avg = Param::initialized(ParamId::new(), case.t2("embed_avg", on)?);

    let e = case.t2("e", on)?.require_grad();
    let out = vq.quantize(e.clone(), Mode::Train);
    same_indices(out.indices.clone(), case.want_indices()?)?;
    close(on, "q", floats(out.quantized.clone()), case.want("q")?)?;
    let loss = (out.quantized.clone() * case.t2("upstream_grad", on)?).sum();
    let grads = loss.backward();
    let grad_e = e.grad(&grads).ok_or("no gradient reached e")?;
    close(on, "grad_e", floats(grad_e), case.want("grad_e")?)?;
    let commit = out.loss_value("commitment").ok_or("no commitment loss")? / commitment_weight;
    close(on, "commit_loss", vec![commit], case.want("commit_loss")?)?;

    let mut rng = QuantRng::seed_from_u64(0);
    vq.apply_stats(out.stats, &mut rng)
        .map_err(|e| e.to_string())?;
    close(
        on,
        "new_cluster_size",
        floats(vq.cluster_size.val()),
        case.want("new_cluster_size")?,
    )?;
    close(
        on,
        "new_embed_avg",
        floats(vq.embed_avg.val()),
        case.want("new_embed_avg")?,
    )?;
    close(
        on,
        "new_codebook",
        floats(vq.codebook.val()),
        case.want("new_codebook")?,
    )?;
    Ok(())
}

fn check_lfq<Bk: AutodiffBackend>(case: &Case, on: &On<Bk>) -> Result<(), String> {
    let (_, shape) = case.f("x")?;
    if let Some(order) = case.meta.get("bit_order")
        && !order.contains("first dimension is the most significant")
    {
        return Err(format!("unsupported bit order `{order}`"));
    }
    let cfg = LfqConfig {
        dim: shape[1],
        entropy_loss_weight: case.meta_f32("entropy_loss_weight")?,
        commitment_loss_weight: case.meta_f32("commitment_loss_weight")?,
        diversity_gamma: case.meta_f32("diversity_gamma")?,
        inv_temperature: case.meta_f32("inv_temperature")?,
        codebook_scale: case.meta.get("codebook_scale").map_or(Ok(1.0), |v| {
            v.parse().map_err(|e| format!("codebook_scale: {e}"))
        })?,
    };
    let lfq = AnyQuantizer::Lfq(cfg.init::<Bk>(&on.device).map_err(|e| e.to_string())?);
    let x = case.t2("x", on)?.require_grad();
    let out = lfq.quantize(x.clone(), Mode::Train);
    same_indices(out.indices.clone(), case.want_indices()?)?;
    close(on, "q", floats(out.quantized.clone()), case.want("q")?)?;
    let per_sample = out
        .loss_value("per_sample_entropy")
        .ok_or("no per-sample entropy")?
        / cfg.entropy_loss_weight;
    close(
        on,
        "per_sample_entropy",
        vec![per_sample],
        case.want("per_sample_entropy")?,
    )?;
    let be = out.batch_entropy.first().ok_or("no batch entropy term")?;
    let batch = floats(be.loss_local())[0] / -be.weight;
    close(
        on,
        "batch_entropy",
        vec![batch],
        case.want("batch_entropy")?,
    )?;
    let commitment =
        out.loss_value("commitment").ok_or("no commitment")? / cfg.commitment_loss_weight;
    close(on, "commitment", vec![commitment], case.want("commitment")?)?;
    close(on, "aux_loss", floats(out.loss()), case.want("aux_loss")?)?;
    let grads = (out.quantized.clone() * case.t2("upstream_grad", on)?)
        .sum()
        .backward();
    close(
        on,
        "grad_x",
        floats(x.grad(&grads).ok_or("no gradient reached x")?),
        case.want("grad_x")?,
    )?;
    Ok(())
}

fn check_fsq<Bk: AutodiffBackend>(case: &Case, on: &On<Bk>) -> Result<(), String> {
    let levels: Vec<u32> =
        serde_json::from_str(case.meta("levels")?).map_err(|e| format!("levels: {e}"))?;
    let fsq = AnyQuantizer::Fsq(
        FsqConfig { levels }
            .init::<Bk>(&on.device)
            .map_err(|e| e.to_string())?,
    );
    let z = case.t2("z", on)?.require_grad();
    let out = fsq.quantize(z.clone(), Mode::Train);
    same_indices(out.indices.clone(), case.want_indices()?)?;
    close(
        on,
        "codes",
        floats(out.quantized.clone()),
        case.want("codes")?,
    )?;
    let grads = (out.quantized.clone() * case.t2("upstream_grad", on)?)
        .sum()
        .backward();
    close(
        on,
        "grad_z",
        floats(z.grad(&grads).ok_or("no gradient reached z")?),
        case.want("grad_z")?,
    )?;
    close(
        on,
        "codes_from_indices",
        floats(fsq.decode(out.indices)),
        case.want("codes_from_indices")?,
    )?;
    Ok(())
}

fn check_on<Bk: AutodiffBackend>(case: &Case, on: &On<Bk>) -> Result<String, String> {
    let kind = case.meta("kind")?.to_string();
    match kind.as_str() {
        "vq" => check_vq(case, on),
        "lfq" => check_lfq(case, on),
        "fsq" => check_fsq(case, on),
        other => Err(format!("unknown kind `{other}`: no checker for it")),
    }?;
    Ok(kind)
}

fn flex() -> On<B> {
    On {
        device: device(),
        atol: ATOL,
    }
}

fn check_case(path: &Path) -> Result<String, String> {
    check_on(&Case::load(path)?, &flex())
}

/// `Autodiff<Wgpu>` on the default adapter (lavapipe on a machine without a GPU).
#[cfg(feature = "wgpu")]
fn wgpu() -> On<burn::backend::Autodiff<quantizers::burn_wgpu::Wgpu>> {
    On {
        device: Default::default(),
        atol: ATOL_WGPU,
    }
}

fn golden_dir() -> PathBuf {
    match std::env::var_os("QUANTIZER_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden"),
    }
}

#[test]
fn golden_cases_match_reference() {
    let dir = golden_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read golden directory {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "no *.safetensors cases in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    check_all(&paths, &dir, &flex(), "", &mut failures);
    #[cfg(feature = "wgpu")]
    check_all(&paths, &dir, &wgpu(), " on wgpu", &mut failures);
    // With the feature `cuda` (scripts/gpu-check.sh on a GPU machine), every case again on
    // burn-cuda, with the wgpu floor (GPU reductions sum in another order than Flex too).
    #[cfg(feature = "cuda")]
    check_all(
        &paths,
        &dir,
        &On::<burn::backend::Autodiff<burn::backend::Cuda>> {
            device: Default::default(),
            atol: 2e-5,
        },
        " on cuda",
        &mut failures,
    );
    assert!(
        failures.is_empty(),
        "golden failures:\n{}",
        failures.join("\n")
    );
}

/// Checks every case on one backend (`on`: `""` for Flex, `" on wgpu"`, ...), printing a line
/// per case and a summary line, and collects the failures.
fn check_all<Bk: AutodiffBackend>(
    paths: &[PathBuf],
    dir: &Path,
    on: &On<Bk>,
    label: &str,
    failures: &mut Vec<String>,
) {
    let mut failed = 0;
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match Case::load(path).and_then(|c| check_on(&c, on)) {
            Ok(kind) => println!("golden ok   {name} ({kind}){label}"),
            Err(e) => {
                println!("golden FAIL {name}{label}: {e}");
                failures.push(format!("{name}{label}: {e}"));
                failed += 1;
            }
        }
    }
    println!(
        "golden: checked {} cases in {}{label}, {failed} failed",
        paths.len(),
        dir.display()
    );
}

/// Rewrites a case's metadata (same tensors) into `dir`, returning the new path.
fn rewrite_case(src: &Path, dir: &Path, edit: impl Fn(&mut HashMap<String, String>)) -> PathBuf {
    let bytes = std::fs::read(src).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap_or_default();
    edit(&mut meta);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st.tensors();
    let out = safetensors::serialize(
        tensors.iter().map(|(n, v)| (n.clone(), v.clone())),
        Some(meta),
    )
    .unwrap();
    let path = dir.join(src.file_name().unwrap());
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn golden_checker_rejects_wrong_estimator_and_unknown_kind() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/vq_euclidean_rotation_d32_k64.safetensors");
    let dir = std::env::temp_dir().join(format!("rotor-golden-neg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = rewrite_case(&src, &dir, |m| {
        m.insert("estimator".into(), "ste".into());
    });
    let err = check_case(&wrong).expect_err("an STE forward cannot match rotation gradients");
    assert!(err.contains("grad_e"), "{err}");
    let unknown = rewrite_case(&src, &dir, |m| {
        m.insert("kind".into(), "gumbel".into());
    });
    let err = check_case(&unknown).expect_err("unknown kinds fail");
    assert!(err.contains("unknown kind"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
