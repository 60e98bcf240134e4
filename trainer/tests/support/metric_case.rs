//! One golden metric case (`shared/golden/metrics/*.safetensors`): its metadata (`kind`,
//! `config`, `tolerance`) and its tensors, all widened to float64 (F16, F32 and F64 are stored
//! losslessly in f64).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

/// A loaded case.
pub struct Case {
    /// The file stem.
    pub name: String,
    /// Metadata `kind`.
    pub kind: String,
    /// Metadata `config` (parsed JSON).
    pub config: serde_json::Value,
    /// Metadata `tolerance`: output name (or a prefix of names, ending before a `_`) ->
    /// (atol, rtol).
    pub tolerance: BTreeMap<String, (f64, f64)>,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    /// Outputs [`Case::check`] has compared (see [`Case::unchecked_outputs`]).
    checked: RefCell<BTreeSet<String>>,
}

impl Case {
    /// Reads a case file.
    pub fn load(path: &Path) -> Result<Case, String> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| format!("{}: bad safetensors header: {e}", path.display()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            metadata
                .get(key)
                .cloned()
                .ok_or_else(|| format!("{name}: metadata has no `{key}`"))
        };
        let kind = field("kind")?;
        let config = match metadata.get("config") {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| format!("{name}: metadata `config` is not JSON: {e}"))?,
            None => serde_json::Value::Null,
        };
        let tolerance: BTreeMap<String, (f64, f64)> = serde_json::from_str(&field("tolerance")?)
            .map_err(|e| {
                format!("{name}: metadata `tolerance` is not {{name: [atol, rtol]}}: {e}")
            })?;

        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| format!("{}: bad safetensors file: {e}", path.display()))?;
        let mut tensors = BTreeMap::new();
        for (tname, view) in st.iter() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes(b.try_into().expect("4 bytes"))))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f64())
                    .collect(),
                Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64)
                    .collect(),
                other => {
                    return Err(format!(
                        "{name}: tensor `{tname}` has unsupported dtype {other:?}"
                    ));
                }
            };
            tensors.insert(tname.to_string(), (view.shape().to_vec(), values));
        }
        Ok(Case {
            name,
            kind,
            config,
            tolerance,
            tensors,
            checked: RefCell::new(BTreeSet::new()),
        })
    }

    /// All tensor names (sorted).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// A tensor's shape and values.
    pub fn tensor(&self, name: &str) -> Result<(&[usize], &[f64]), String> {
        self.tensors
            .get(name)
            .map(|(shape, values)| (shape.as_slice(), values.as_slice()))
            .ok_or_else(|| format!("{}: no tensor `{name}`", self.name))
    }

    /// A tensor's shape and values narrowed to f32 (exact for F16 and F32 tensors).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
        let (shape, values) = self.tensor(name)?;
        Ok((shape.to_vec(), values.iter().map(|&v| v as f32).collect()))
    }

    /// The (atol, rtol) of an output: its own key, else the longest key `k` with the output
    /// named `k_...` (`mu` covers `mu_a`, `mu_b`).
    pub fn tolerance_of(&self, output: &str) -> Option<(f64, f64)> {
        if let Some(&t) = self.tolerance.get(output) {
            return Some(t);
        }
        self.tolerance
            .iter()
            .filter(|(key, _)| {
                output
                    .strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.starts_with('_'))
            })
            .max_by_key(|(key, _)| key.len())
            .map(|(_, &t)| t)
    }

    /// Compares `got` with the stored output elementwise: each value must satisfy
    /// |got - want| <= atol + rtol |want|. The error names the worst element (by excess over its
    /// allowance) and how many failed.
    pub fn check(&self, output: &str, got: &[f64]) -> Result<(), String> {
        let (atol, rtol) = self
            .tolerance_of(output)
            .ok_or_else(|| format!("{}: no tolerance for output `{output}`", self.name))?;
        let (_, want) = self.tensor(output)?;
        self.checked.borrow_mut().insert(output.to_string());
        if got.len() != want.len() {
            return Err(format!(
                "`{output}`: got {} values, the reference has {}",
                got.len(),
                want.len()
            ));
        }
        let mut failed = 0usize;
        let mut worst: Option<(usize, f64, f64, f64, f64)> = None; // index, got, want, allowed, ratio
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let allowed = atol + rtol * w.abs();
            let diff = (g - w).abs();
            // NaN never passes.
            let ok = diff <= allowed;
            if !ok {
                failed += 1;
            }
            let ratio = if diff.is_nan() {
                f64::INFINITY
            } else {
                diff / allowed
            };
            if worst.is_none_or(|(.., r)| ratio > r) {
                worst = Some((i, g, w, allowed, ratio));
            }
        }
        match worst {
            Some((i, g, w, allowed, ratio)) if failed > 0 => Err(format!(
                "`{output}`: {failed} of {} values out of tolerance [{atol:e}, {rtol:e}]; \
                 worst at {i}: got {g:.10e}, want {w:.10e}, |diff| {:.3e} > allowed {allowed:.3e} \
                 ({ratio:.1}x)",
                want.len(),
                (g - w).abs()
            )),
            _ => Ok(()),
        }
    }

    /// Tensors with a tolerance (outputs) that [`Case::check`] has not compared yet.
    pub fn unchecked_outputs(&self) -> Vec<String> {
        let checked = self.checked.borrow();
        self.names()
            .filter(|n| self.tolerance_of(n).is_some() && !checked.contains(*n))
            .map(str::to_string)
            .collect()
    }
}
