//! Clipping by the GLOBAL gradient norm: `g <- g * min(1, max_norm / ||g||)` with `||g||` over all
//! parameters together (burn's own clipping is per tensor). Norm and factor stay on the device:
//! the step reads neither.

use burn::{
    module::{Module, ModuleVisitor, Param, ParamId},
    optim::GradientsParams,
    tensor::{Tensor, backend::AutodiffBackend, backend::Backend},
};

/// Every float parameter's id and rank, in the module's (fixed) visiting order.
pub(crate) struct ParamIds(pub Vec<(ParamId, usize)>);

impl ParamIds {
    pub(crate) fn of<B: Backend, M: Module<B>>(module: &M) -> Self {
        let mut ids = ParamIds(Vec::new());
        module.visit(&mut ids);
        ids
    }
}

impl<B: Backend> ModuleVisitor<B> for ParamIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push((param.id, D));
    }
}

/// Calls `$f::<B, D>(args)` for a parameter of rank `$d` (1 to 5).
macro_rules! by_rank {
    ($d:expr, $f:ident, $($args:expr),*) => {
        match $d {
            1 => $f::<B, 1>($($args),*),
            2 => $f::<B, 2>($($args),*),
            3 => $f::<B, 3>($($args),*),
            4 => $f::<B, 4>($($args),*),
            5 => $f::<B, 5>($($args),*),
            d => panic!("parameters of rank {d} are not supported"),
        }
    };
}
pub(crate) use by_rank;

fn sq_norm<B: AutodiffBackend, const D: usize>(
    grads: &GradientsParams,
    id: ParamId,
) -> Option<Tensor<B::InnerBackend, 1>> {
    grads
        .get::<B::InnerBackend, D>(id)
        .map(|g| g.powi_scalar(2).sum())
}

fn scale<B: AutodiffBackend, const D: usize>(
    grads: &mut GradientsParams,
    id: ParamId,
    s: &Tensor<B::InnerBackend, 1>,
) {
    if let Some(g) = grads.remove::<B::InnerBackend, D>(id) {
        grads.register::<B::InnerBackend, D>(id, g * s.clone().reshape([1; D]));
    }
}

/// The global L2 norm `[1]` of `grads` over the parameters of `module`, on the device.
pub fn global_norm<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Option<Tensor<B::InnerBackend, 1>> {
    let parts: Vec<Tensor<B::InnerBackend, 1>> = ParamIds::of(module)
        .0
        .iter()
        .filter_map(|(id, d)| by_rank!(*d, sq_norm, grads, *id))
        .collect();
    if parts.is_empty() {
        return None;
    }
    Some(Tensor::cat(parts, 0).sum().sqrt())
}

/// Scales `grads` so their global norm is at most `max_norm` (torch's `clip_grad_norm_`: every
/// gradient times `min(1, max_norm / (norm + 1e-6))`, computed on the device, so nothing waits
/// for it); returns the norm before clipping (`None` without gradients).
pub fn clip_global_norm<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: Option<f32>,
) -> Option<Tensor<B::InnerBackend, 1>> {
    let norm = global_norm(module, grads)?;
    if let Some(max) = max_norm {
        let s = (norm.clone() + 1e-6).recip().mul_scalar(max).clamp_max(1.0);
        for (id, d) in ParamIds::of(module).0 {
            by_rank!(d, scale, grads, id, &s);
        }
    }
    Some(norm)
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::{Autodiff, Flex},
        nn::LinearConfig,
        tensor::Distribution,
    };

    use super::*;

    type B = Autodiff<Flex>;

    fn host<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    fn scalar(t: Option<Tensor<Flex, 1>>) -> f64 {
        host(t.expect("gradients")).remove(0) as f64
    }

    #[test]
    fn clipping_scales_all_gradients_to_the_global_norm() {
        let device = Default::default();
        let lin = LinearConfig::new(5, 3).init::<B>(&device);
        let x = Tensor::<B, 2>::random([4, 5], Distribution::Normal(0.0, 1.0), &device);
        let grads = (lin.forward(x) * 10.0).powi_scalar(2).sum().backward();
        let mut gp = GradientsParams::from_grads(grads, &lin);
        let w = host(gp.get::<Flex, 2>(lin.weight.id).unwrap());
        let b = host(gp.get::<Flex, 1>(lin.bias.as_ref().unwrap().id).unwrap());
        let want = w
            .iter()
            .chain(&b)
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = scalar(global_norm(&lin, &gp));
        assert!((norm - want).abs() < 1e-4 * want, "{norm} vs {want}");
        let max = (want / 4.0) as f32;
        let before = scalar(clip_global_norm(&lin, &mut gp, Some(max)));
        assert!((before - want).abs() < 1e-4 * want);
        let after = scalar(global_norm(&lin, &gp));
        assert!(
            (after - max as f64).abs() < 1e-3 * max as f64,
            "clipped norm {after}, max {max}"
        );
        // Every tensor scaled by the same factor (the direction is kept).
        let w2 = host(gp.get::<Flex, 2>(lin.weight.id).unwrap());
        let b2 = host(gp.get::<Flex, 1>(lin.bias.as_ref().unwrap().id).unwrap());
        let s = w2[0] / w[0];
        assert!(
            w2.iter()
                .zip(&w)
                .chain(b2.iter().zip(&b))
                .all(|(a, o)| (a - o * s).abs() <= 1e-5 * o.abs().max(1.0))
        );
        // Under the limit nothing changes.
        assert_eq!(scalar(clip_global_norm(&lin, &mut gp, Some(1e9))), after);
        assert_eq!(host(gp.get::<Flex, 2>(lin.weight.id).unwrap()), w2);
    }
}
