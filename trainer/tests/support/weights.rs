//! Every float parameter of a trainer's model, in visiting order: what the tests compare bit for
//! bit between runs.

use burn::{
    module::{Module, ModuleVisitor, Param},
    tensor::{
        Tensor,
        backend::{AutodiffBackend, Backend},
    },
};
use trainer::Trainer;

struct Collect(Vec<f32>);

impl<Bk: Backend> ModuleVisitor<Bk> for Collect {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Bk, D>>) {
        self.0.extend(
            p.val()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap(),
        );
    }
}

/// The model's parameters, flattened.
pub fn weights<B: AutodiffBackend>(t: &Trainer<B>) -> Vec<f32> {
    let mut c = Collect(Vec::new());
    t.model().visit(&mut c);
    c.0
}
