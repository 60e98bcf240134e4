//! Every float parameter of a trainer's model, in visiting order: what the tests compare bit for
//! bit between runs.

use burn::{
    module::{Module, ModuleVisitor, Param},
    tensor::{
        DType, Tensor,
        backend::{AutodiffBackend, Backend},
    },
};
use trainer::Trainer;

struct Collect(Vec<(DType, Vec<f32>)>);

impl<Bk: Backend> ModuleVisitor<Bk> for Collect {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Bk, D>>) {
        let t = p.val();
        let dtype = t.dtype();
        let values = t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        self.0.push((dtype, values));
    }
}

/// The model's parameter tensors, each with its dtype, in visiting order.
pub fn weight_tensors<B: AutodiffBackend>(t: &Trainer<B>) -> Vec<(DType, Vec<f32>)> {
    let mut c = Collect(Vec::new());
    t.model().visit(&mut c);
    c.0
}

/// The model's parameters, flattened.
pub fn weights<B: AutodiffBackend>(t: &Trainer<B>) -> Vec<f32> {
    weight_tensors(t).into_iter().flat_map(|(_, v)| v).collect()
}
