//! Clipping by the GLOBAL gradient norm: `g <- g * min(1, max_norm / ||g||)` with `||g||` over all
//! parameters together (burn's own clipping is per tensor).

use burn::{
    module::{Module, ModuleVisitor, Param, ParamId},
    optim::GradientsParams,
    tensor::{Tensor, backend::AutodiffBackend},
};

struct Ids(Vec<(ParamId, usize)>);

impl<B: AutodiffBackend> ModuleVisitor<B> for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push((param.id, D));
    }
}

fn sq_norm<B: AutodiffBackend, const D: usize>(
    grads: &GradientsParams,
    id: ParamId,
) -> Option<f64> {
    grads
        .get::<B::InnerBackend, D>(id)
        .map(|g| g.powi_scalar(2).sum().into_scalar().elem::<f64>())
}

fn scale<B: AutodiffBackend, const D: usize>(grads: &mut GradientsParams, id: ParamId, s: f64) {
    if let Some(g) = grads.remove::<B::InnerBackend, D>(id) {
        grads.register::<B::InnerBackend, D>(id, g * s);
    }
}

macro_rules! by_rank {
    ($d:expr, $f:ident, $($args:expr),*) => {
        match $d {
            1 => $f::<B, 1>($($args),*),
            2 => $f::<B, 2>($($args),*),
            3 => $f::<B, 3>($($args),*),
            4 => $f::<B, 4>($($args),*),
            5 => $f::<B, 5>($($args),*),
            _ => panic!("parameters of rank {} are not supported", $d),
        }
    };
}

/// The global L2 norm of `grads` over the parameters of `module`.
pub fn global_norm<B: AutodiffBackend, M: Module<B>>(module: &M, grads: &GradientsParams) -> f64 {
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
        .iter()
        .filter_map(|(id, d)| by_rank!(*d, sq_norm, grads, *id))
        .sum::<f64>()
        .sqrt()
}

/// Scales `grads` so their global norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: Option<f32>,
) -> f64 {
    let norm = global_norm(module, grads);
    if let Some(max) = max_norm
        && norm > max as f64
    {
        let s = max as f64 / (norm + 1e-6);
        let mut ids = Ids(Vec::new());
        module.visit(&mut ids);
        for (id, d) in ids.0 {
            by_rank!(d, scale, grads, id, s);
        }
    }
    norm
}

use burn::tensor::ElementConversion;
