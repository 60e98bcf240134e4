//! A convolution (2-D or 3-D) as one autodiff operation on `Autodiff<Flex>`: recording the
//! forward with parents `[x, weight]` or `[x, weight, bias]`, and routing the backward to the
//! kernel's own gradients; plus the bias gradient every convolution shares.

use burn::backend::{
    Flex,
    autodiff::{
        checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
        grads::Gradients,
        ops::{Backward, Ops, OpsKind},
    },
    flex::FlexTensor,
};
use burn::tensor::ops::FloatTensor;
use rayon::prelude::*;

use super::simd::{sum_f64, vectorized};
use super::tensor::{Cpu, from_vec};

/// A convolution's geometry, which computes its gradients.
pub(super) trait ConvGrads: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// Gradients of the input, the weight and the bias (each only when `want` says so) from
    /// the output gradient `dy`.
    fn grads(
        &self,
        x: &FlexTensor,
        w: &FlexTensor,
        dy: &FlexTensor,
        want: [bool; 3],
    ) -> [Option<FlexTensor>; 3];
}

/// Records `out = conv(x, w, b)` (computed by the caller) on the autodiff graph.
pub(super) fn record<G: ConvGrads>(
    x: FloatTensor<Cpu>,
    w: FloatTensor<Cpu>,
    b: Option<FloatTensor<Cpu>>,
    geom: G,
    out: FlexTensor,
) -> FloatTensor<Cpu> {
    let op = ConvBackward::<G>(std::marker::PhantomData);
    match b {
        Some(b) => match op
            .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive, geom), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
        None => match op
            .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive, geom), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
    }
}

/// `db[c] = sum_{n, p} dy[n, c, p]` for `dy` `[n, co, p]` (f64 sums).
pub(super) fn bias_grad(dy: &[f32], n: usize, co: usize, p: usize) -> FlexTensor {
    let sums: Vec<f32> = (0..co)
        .into_par_iter()
        .map(|c| {
            (0..n)
                .map(|s| {
                    let plane = &dy[(s * co + c) * p..][..p];
                    vectorized(
                        #[inline(always)]
                        || sum_f64(plane, |v| v as f64),
                    )
                })
                .sum::<f64>() as f32
        })
        .collect();
    from_vec(sums, &[co])
}

/// The backward of a convolution with geometry `G`.
#[derive(Debug)]
struct ConvBackward<G>(std::marker::PhantomData<G>);

fn conv_backward<G: ConvGrads, const N: usize>(
    ops: Ops<(FlexTensor, FlexTensor, G), N>,
    grads: &mut Gradients,
) {
    let (x, w, geom) = &ops.state;
    let dy = grads.consume::<Flex>(&ops.node);
    let want: [bool; 3] = std::array::from_fn(|i| ops.parents.get(i).is_some_and(|p| p.is_some()));
    let out = geom.grads(x, w, &dy, want);
    for (parent, grad) in ops.parents.iter().zip(out) {
        if let (Some(node), Some(grad)) = (parent, grad) {
            grads.register::<Flex>(node.id, grad);
        }
    }
}

impl<G: ConvGrads> Backward<Flex, 3> for ConvBackward<G> {
    type State = (FlexTensor, FlexTensor, G);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        conv_backward(ops, grads);
    }
}

impl<G: ConvGrads> Backward<Flex, 2> for ConvBackward<G> {
    type State = (FlexTensor, FlexTensor, G);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        conv_backward(ops, grads);
    }
}
