//! Routing a tensor of a generic backend to rotor's CPU kernels, and the small `FlexTensor`
//! helpers (contiguous f32 views, allocation) the kernels share.

use std::{any::Any, borrow::Cow, cell::RefCell};

use burn::{
    backend::{
        Autodiff, Flex,
        autodiff::{
            checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
            grads::Gradients,
            ops::{Backward, Ops, OpsKind, unary},
        },
        flex::{FlexTensor, Layout},
    },
    tensor::{DType, Shape, Tensor, TensorData, TensorPrimitive, backend::Backend},
};

/// The CPU training backend.
pub(crate) type Cpu = Autodiff<Flex>;

/// Where a tensor of backend `B` goes.
pub(crate) enum Routed<B: Backend, const D: usize> {
    /// `B` is `Autodiff<Flex>`: a kernel with its own backward.
    Autodiff(Tensor<Cpu, D>),
    /// `B` is `Flex` (evaluation): the forward kernel.
    Plain(Tensor<Flex, D>),
    /// Any other backend or dtype, or inside `with_reference_ops`: burn's operation.
    Other(Tensor<B, D>),
}

/// Sorts `t` by backend (see [`Routed`]).
pub(crate) fn route<B: Backend, const D: usize>(t: Tensor<B, D>) -> Routed<B, D> {
    if !super::kernels_enabled() || t.dtype() != DType::F32 {
        return Routed::Other(t);
    }
    let boxed: Box<dyn Any> = Box::new(t);
    let boxed = match boxed.downcast::<Tensor<Cpu, D>>() {
        Ok(t) => return Routed::Autodiff(*t),
        Err(other) => other,
    };
    match boxed.downcast::<Tensor<Flex, D>>() {
        Ok(t) => Routed::Plain(*t),
        Err(other) => Routed::Other(*other.downcast().expect("the tensor's own type")),
    }
}

/// `t` as the same value of the concrete type it is (a tensor of the backend it was routed by).
pub(crate) fn cast<T: 'static, U: 'static>(t: T) -> U {
    *(Box::new(t) as Box<dyn Any>)
        .downcast::<U>()
        .expect("tensors of one call share a backend")
}

/// `t` with a row-major layout (borrowed when it already has one).
pub(crate) fn contiguous(t: &FlexTensor) -> Cow<'_, FlexTensor> {
    if t.is_contiguous() && t.as_slice::<f32>().is_some() {
        Cow::Borrowed(t)
    } else {
        Cow::Owned(t.to_contiguous())
    }
}

/// The f32 elements of a contiguous tensor.
pub(crate) fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// The dimensions of `t`.
pub(crate) fn dims<const D: usize>(t: &FlexTensor) -> [usize; D] {
    t.layout().shape().dims::<D>()
}

/// A tensor owning `data` with the given shape.
pub(crate) fn from_vec(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, Shape::from(shape.to_vec())))
}

thread_local! {
    /// This thread's reusable kernel buffers (grown, never shrunk): a fresh buffer per block
    /// costs a memset and cold cache lines.
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Buffers a thread keeps for reuse.
const SCRATCH_KEPT: usize = 4;

/// A buffer of at least `len` floats from this thread's pool (its length never shrinks, so
/// a buffer is zero-filled only when it grows); its contents are unspecified: callers write
/// every element they read.
pub(crate) fn scratch(len: usize) -> Vec<f32> {
    let mut buf = SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    buf
}

/// A scratch buffer as a tensor, and a contiguous view of its first elements with `shape`.
pub(crate) fn scratch_tensor(buf: Vec<f32>, shape: &[usize]) -> (FlexTensor, FlexTensor) {
    let len = buf.len();
    let full = from_vec(buf, &[len]);
    let view = full
        .clone()
        .with_layout(Layout::contiguous(Shape::from(shape.to_vec())));
    (full, view)
}

/// Hands a buffer back to this thread's pool.
pub(crate) fn recycle(buf: Vec<f32>) {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SCRATCH_KEPT {
            s.push(buf);
        }
    });
}

/// Hands a tensor's buffer back to this thread's pool (once no view of it is left).
pub(crate) fn recycle_tensor(t: FlexTensor) {
    if let Ok(v) = t.into_data().into_vec::<f32>() {
        recycle(v);
    }
}

/// The float primitive of an autodiff tensor, and of a plain one.
pub(crate) fn ad_primitive<const D: usize>(
    t: Tensor<Cpu, D>,
) -> burn::tensor::ops::FloatTensor<Cpu> {
    t.into_primitive().tensor()
}

/// The Flex tensor inside a plain tensor.
pub(crate) fn flex_primitive<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor()
}

/// A plain tensor from a Flex tensor.
pub(crate) fn flex_tensor<const D: usize>(t: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// One-input, one-output operation whose backward needs the state `S` built from the input
/// and the output: `grad_in = backward(state, grad_out)`.
#[derive(Debug)]
pub(crate) struct UnaryOp<S> {
    backward: fn(&S, &FlexTensor) -> FlexTensor,
    _state: std::marker::PhantomData<S>,
}

impl<S: Clone + Send + std::fmt::Debug + 'static> Backward<Flex, 1> for UnaryOp<S> {
    type State = S;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        let f = self.backward;
        unary::<Flex, _>(ops.parents, ops.node, grads, |g| f(&state, &g));
    }
}

/// Runs a one-input kernel as an autodiff operation: `forward(x) -> (out, state)`, and
/// `backward(state, grad_out) -> grad_x` when `x` is tracked.
pub(crate) fn unary_autodiff<S, const D: usize>(
    x: Tensor<Cpu, D>,
    forward: impl FnOnce(&FlexTensor) -> (FlexTensor, S),
    backward: fn(&S, &FlexTensor) -> FlexTensor,
) -> Tensor<Cpu, D>
where
    S: Clone + Send + std::fmt::Debug + 'static,
{
    let x = ad_primitive(x);
    let (out, state) = forward(&x.primitive);
    let op = UnaryOp {
        backward,
        _state: std::marker::PhantomData,
    };
    let out = match op
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
