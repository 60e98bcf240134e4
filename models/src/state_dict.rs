//! `StateDict`: named float tensors read from, or written to, PyTorch-world weight files:
//! `.safetensors` (any float dtype) and pickled PyTorch `.pth` / `.pt` / `.ckpt` / `.bin` files
//! (a Lightning `.ckpt`'s `state_dict` is found automatically). Integer buffers
//! (`num_batches_tracked`, ActNorm's `initialized`) are kept as floats.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::ModelError;

/// One tensor: shape and row-major f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// Named tensors, sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    entries: BTreeMap<String, TensorEntry>,
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::WeightFile {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl StateDict {
    /// Reads a weight file, choosing the format by extension.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "safetensors" => {
                let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
                Self::from_safetensors(&bytes).map_err(|e| file_err(path, e))
            }
            "pth" | "pt" | "ckpt" | "bin" => Self::from_pytorch(path),
            _ => Err(file_err(
                path,
                "unknown extension: expected .safetensors, .pth, .pt, .ckpt or .bin",
            )),
        }
    }

    /// Parses safetensors bytes.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, String> {
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
        let mut entries = BTreeMap::new();
        for (name, view) in st.tensors() {
            let values = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                format!("tensor `{name}` has unsupported dtype {:?}", view.dtype())
            })?;
            entries.insert(
                name,
                TensorEntry {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        Ok(Self { entries })
    }

    fn from_pytorch(path: &Path) -> Result<Self, ModelError> {
        use burn_store::pytorch::PytorchReader;
        let reader = match PytorchReader::with_top_level_key(path, "state_dict") {
            Ok(r) if !r.is_empty() => r,
            _ => PytorchReader::new(path).map_err(|e| file_err(path, e))?,
        };
        let mut entries = BTreeMap::new();
        for (name, snapshot) in reader.into_tensors() {
            let data = snapshot // host: a file's tensor snapshot, not a device tensor
                .to_data()
                .map_err(|e| file_err(path, format!("tensor `{name}`: {e:?}")))?;
            let shape = data.shape.to_vec();
            let values = data
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| file_err(path, format!("tensor `{name}`: {e:?}")))?;
            entries.insert(name, TensorEntry { shape, values });
        }
        Ok(Self { entries })
    }

    /// Writes a `.safetensors` file atomically (temporary file, fsync, rename).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let path = path.as_ref();
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .entries
            .iter()
            .map(|(n, e)| {
                let b = e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (n.clone(), b, e.shape.clone())
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(n, b, s)| {
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| file_err(path, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let data = safetensors::serialize(views, None).map_err(|e| file_err(path, e))?;
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let mut f = std::fs::File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
        f.write_all(&data).map_err(|e| file_err(&tmp, e))?;
        f.sync_all().map_err(|e| file_err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, entry: TensorEntry) {
        self.entries.insert(name.into(), entry);
    }

    /// All names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tensors under `prefix` (e.g. `loss.discriminator.`), with the prefix removed.
    pub fn sub(&self, prefix: &str) -> StateDict {
        StateDict {
            entries: self
                .entries
                .iter()
                .filter_map(|(n, e)| n.strip_prefix(prefix).map(|s| (s.to_string(), e.clone())))
                .collect(),
        }
    }

    /// The tensors NOT under any of `prefixes`.
    pub fn without(&self, prefixes: &[&str]) -> StateDict {
        StateDict {
            entries: self
                .entries
                .iter()
                .filter(|(n, _)| !prefixes.iter().any(|p| n.starts_with(p)))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
        }
    }

    /// Merges `other` under `prefix`.
    pub fn extend_prefixed(&mut self, prefix: &str, other: StateDict) {
        for (n, e) in other.entries {
            self.entries.insert(format!("{prefix}{n}"), e);
        }
    }
}

fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::U8 => data.iter().map(|v| *v as f32).collect(),
        Dtype::BOOL => data.iter().map(|v| (*v != 0) as u8 as f32).collect(),
        _ => return None,
    })
}
