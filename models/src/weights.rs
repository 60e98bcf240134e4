//! Weight import and export by name: a module's parameters are matched to PyTorch state-dict keys
//! through a [`Naming`] (burn path -> PyTorch key), shapes are checked, and a load that leaves
//! parameters missing or keys unused fails with both lists, so a wrong or partial checkpoint is
//! never loaded silently.

use std::collections::BTreeSet;

use burn::{
    module::{Module, ModuleMapper, ModuleVisitor, Param},
    tensor::{
        Tensor, TensorData,
        backend::{AutodiffBackend, Backend},
    },
};

use crate::{ModelError, StateDict, TensorEntry};

/// Where a parameter lives in a PyTorch state dict.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchKey {
    /// The state-dict key.
    pub key: String,
    /// burn `Linear` stores `[in, out]`, PyTorch `[out, in]`: transpose on the way.
    pub transpose: bool,
    /// Absent in some checkpoints (EMA buffers, rotor-only state): keep the current value.
    pub optional: bool,
}

impl TorchKey {
    /// A required key, no transposition.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            transpose: false,
            optional: false,
        }
    }
}

/// Maps a burn module path (`encoder.down.0.block.0.norm1.gamma`) to its PyTorch key.
pub trait Naming {
    /// The key for `path`.
    fn torch_key(&self, path: &str) -> TorchKey;
}

/// taming's conventions: same paths, GroupNorm's `gamma`/`beta` are `weight`/`bias`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TamingNaming;

impl Naming for TamingNaming {
    fn torch_key(&self, path: &str) -> TorchKey {
        TorchKey::new(norm_param_names(path))
    }
}

/// `...gamma` -> `...weight`, `...beta` -> `...bias`.
pub fn norm_param_names(path: &str) -> String {
    if let Some(p) = path.strip_suffix("gamma") {
        format!("{p}weight")
    } else if let Some(p) = path.strip_suffix("beta") {
        format!("{p}bias")
    } else {
        path.to_string()
    }
}

/// `[r, c]` row-major values -> (`[c, r]`, transposed values).
fn transpose(values: &[f32], r: usize, c: usize) -> (Vec<usize>, Vec<f32>) {
    let mut t = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = values[i * c + j];
        }
    }
    (vec![c, r], t)
}

/// Buffers PyTorch saves that have no counterpart here.
fn ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

struct Loader<'a, N: Naming> {
    dict: &'a StateDict,
    naming: &'a N,
    path: Vec<String>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    errors: Vec<String>,
}

impl<B: Backend, N: Naming> ModuleMapper<B> for Loader<'_, N> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.path.join(".");
        let key = self.naming.torch_key(&path);
        let (id, tensor, mapper) = param.consume();
        let Some(entry) = self.dict.get(&key.key) else {
            if !key.optional {
                self.missing.push(key.key);
            }
            return Param::from_mapped_value(id, tensor, mapper);
        };
        self.used.insert(key.key.clone());
        let want = tensor.dims().to_vec();
        let (shape, values) = if key.transpose && entry.shape.len() == 2 {
            transpose(&entry.values, entry.shape[0], entry.shape[1])
        } else {
            (entry.shape.clone(), entry.values.clone())
        };
        let squeeze = |s: &[usize]| s.iter().copied().filter(|d| *d != 1).collect::<Vec<_>>();
        let (shape, fits) = if shape == want {
            (shape, true)
        } else if squeeze(&shape) == squeeze(&want) {
            // Same values, singleton dims differ (torch scalar buffers, [C] vs [1, C, 1, 1]).
            (want.clone(), true)
        } else {
            (shape, false)
        };
        if !fits {
            self.errors.push(format!(
                "`{}` has shape {:?}, the model's `{path}` needs {:?}",
                key.key, entry.shape, want
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let new = Tensor::<B, D>::from_data(TensorData::new(values, shape), &tensor.device());
        let new = if tensor.is_require_grad() {
            new.require_grad()
        } else {
            new
        };
        Param::from_mapped_value(id, new, mapper)
    }
}

/// Loads `dict` into `module`. Fails, listing every problem, when a required parameter has no
/// key, a shape differs, or the dict holds keys the module does not use.
pub fn load_weights<B: Backend, M: Module<B>, N: Naming>(
    module: M,
    dict: &StateDict,
    naming: &N,
) -> Result<M, ModelError> {
    let mut loader = Loader {
        dict,
        naming,
        path: Vec::new(),
        used: BTreeSet::new(),
        missing: Vec::new(),
        errors: Vec::new(),
    };
    let module = module.map(&mut loader);
    let unexpected: Vec<&str> = dict
        .names()
        .filter(|n| !loader.used.contains(*n) && !ignorable(n))
        .collect();
    if loader.missing.is_empty() && loader.errors.is_empty() && unexpected.is_empty() {
        return Ok(module);
    }
    let mut msg = String::from("the weights do not fit the model:");
    let list = |v: &[&str]| {
        let shown: Vec<&str> = v.iter().take(20).copied().collect();
        let more = v.len().saturating_sub(20);
        format!(
            "{}{}",
            shown.join(", "),
            if more > 0 {
                format!(" ... and {more} more")
            } else {
                String::new()
            }
        )
    };
    if !loader.missing.is_empty() {
        let m: Vec<&str> = loader.missing.iter().map(String::as_str).collect();
        msg += &format!("\n  missing keys ({}): {}", m.len(), list(&m));
    }
    if !unexpected.is_empty() {
        msg += &format!(
            "\n  unexpected keys ({}): {}",
            unexpected.len(),
            list(&unexpected)
        );
    }
    for e in &loader.errors {
        msg += &format!("\n  {e}");
    }
    msg += "\n  (is the architecture config the one the checkpoint was trained with?)";
    Err(ModelError::WeightMismatch(msg))
}

struct Exporter<'a, N: Naming> {
    naming: &'a N,
    path: Vec<String>,
    dict: StateDict,
}

impl<B: Backend, N: Naming> ModuleVisitor<B> for Exporter<'_, N> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let key = self.naming.torch_key(&self.path.join("."));
        let t = param.val();
        let mut shape = t.dims().to_vec();
        let mut values = quantizers::host::read_f32(t, quantizers::host::HostRead::Checkpoint);
        if key.transpose && shape.len() == 2 {
            (shape, values) = transpose(&values, shape[0], shape[1]);
        }
        self.dict.insert(key.key, TensorEntry { shape, values });
    }
}

/// Every parameter (and running statistic) of `module` under its PyTorch key.
pub fn export_weights<B: Backend, M: Module<B>, N: Naming>(module: &M, naming: &N) -> StateDict {
    let mut exporter = Exporter {
        naming,
        path: Vec::new(),
        dict: StateDict::default(),
    };
    module.visit(&mut exporter);
    exporter.dict
}

/// Number of trainable parameters (tensors that require gradients; running statistics and EMA
/// buffers excluded), the number PyTorch's `sum(p.numel() for p in m.parameters())` gives.
pub fn trainable_params<B: Backend, M: Module<B>>(module: &M) -> usize {
    struct Counter(usize);
    impl<B: Backend> ModuleVisitor<B> for Counter {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            }
        }
    }
    let mut c = Counter(0);
    module.visit(&mut c);
    c.0
}

/// The gradient of every trainable parameter of `module` under its PyTorch key (for comparing
/// with a reference's `param.grad`, and for inspecting a step). A trainable parameter the loss
/// does not depend on has no entry in `grads`: it is exported as zeros, as its gradient is.
pub fn export_grads<B: AutodiffBackend, M: Module<B>, N: Naming>(
    module: &M,
    naming: &N,
    grads: &B::Gradients,
) -> StateDict {
    struct GradExporter<'a, B: AutodiffBackend, N: Naming> {
        naming: &'a N,
        grads: &'a B::Gradients,
        path: Vec<String>,
        dict: StateDict,
    }
    impl<B: AutodiffBackend, N: Naming> ModuleVisitor<B> for GradExporter<'_, B, N> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }

        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }

        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !param.is_require_grad() {
                return;
            }
            let key = self.naming.torch_key(&self.path.join("."));
            let (mut shape, mut values) = match param.grad(self.grads) {
                Some(g) => (
                    g.dims().to_vec(),
                    quantizers::host::read_f32(g, quantizers::host::HostRead::Eval),
                ),
                None => (
                    param.dims().to_vec(),
                    vec![0.0; param.shape().num_elements()],
                ),
            };
            if key.transpose && shape.len() == 2 {
                (shape, values) = transpose(&values, shape[0], shape[1]);
            }
            self.dict.insert(key.key, TensorEntry { shape, values });
        }
    }
    let mut exporter = GradExporter {
        naming,
        grads,
        path: Vec::new(),
        dict: StateDict::default(),
    };
    module.visit(&mut exporter);
    exporter.dict
}
