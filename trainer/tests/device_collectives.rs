//! The gradient all-reduce's two paths: buckets reduced in place on the device (what NCCL does
//! with burn-cuda tensors) and the staged fallback through host memory give the same gradients,
//! bit for bit, and the fallback is taken whenever the communicator declines a tensor.

use std::{
    any::Any,
    sync::mpsc::{Receiver, Sender, channel},
};

use burn::{
    backend::{Autodiff, Flex},
    nn::{Linear, LinearConfig},
    optim::GradientsParams,
    tensor::{Distribution, Tensor, TensorData, backend::Backend},
};
use trainer::{CommError, Communicator, sync::all_reduce_grads};

type B = Autodiff<Flex>;

/// Two in-process ranks joined by channels. With `device`, flat Flex tensors are reduced "on
/// the device": replaced in place by the sum, as NCCL overwrites a burn-cuda buffer.
struct Pair {
    rank: usize,
    tx: Sender<Vec<f32>>,
    rx: Receiver<Vec<f32>>,
    device: bool,
    device_calls: usize,
    host_calls: usize,
}

impl Pair {
    fn sum(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        self.tx
            .send(buf.to_vec())
            .map_err(|e| CommError(e.to_string()))?;
        let other = self.rx.recv().map_err(|e| CommError(e.to_string()))?;
        for (a, b) in buf.iter_mut().zip(other) {
            // (a + b == b + a exactly: both ranks hold the same bits.)
            *a += b;
        }
        Ok(())
    }
}

impl Communicator for Pair {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        2
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        self.host_calls += 1;
        self.sum(buf)
    }
    fn broadcast(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        let mine = buf.to_vec();
        self.tx.send(mine).map_err(|e| CommError(e.to_string()))?;
        let other = self.rx.recv().map_err(|e| CommError(e.to_string()))?;
        if self.rank != 0 {
            buf.copy_from_slice(&other);
        }
        Ok(())
    }
    fn all_reduce_device(&mut self, tensor: &mut dyn Any) -> Result<bool, CommError> {
        let Some(t) = tensor
            .downcast_mut::<Tensor<Flex, 1>>()
            .filter(|_| self.device)
        else {
            return Ok(false);
        };
        self.device_calls += 1;
        let [n] = t.dims();
        let mut v = t.to_data().to_vec::<f32>().unwrap();
        self.sum(&mut v)?;
        *t = Tensor::from_data(TensorData::new(v, [n]), &t.device());
        Ok(true)
    }
}

/// Three layers (a tuple is a module).
type Net<Bk> = (Linear<Bk>, Linear<Bk>, Linear<Bk>);

/// Serializes seeding and drawing from the backend's global RNG.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn grads(rank: usize) -> (Net<B>, GradientsParams) {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    B::seed(&device, 7);
    let net: Net<B> = (
        LinearConfig::new(72, 48).init(&device),
        LinearConfig::new(48, 16).init(&device),
        LinearConfig::new(16, 4).init(&device),
    );
    // burn draws parameters lazily: draw them now, under the seed.
    for w in [&net.0.weight, &net.1.weight, &net.2.weight] {
        let _ = w.val();
    }
    for b in [&net.0.bias, &net.1.bias, &net.2.bias] {
        let _ = b.as_ref().unwrap().val();
    }
    B::seed(&device, 100 + rank as u64);
    let x = Tensor::<B, 4>::random([3, 2, 6, 6], Distribution::Normal(0.0, 1.0), &device);
    let h = net.0.forward(x.reshape([3, 72])).tanh();
    let loss = net.2.forward(net.1.forward(h).tanh()).powi_scalar(2).mean();
    let g = GradientsParams::from_grads::<B, _>(loss.backward(), &net);
    (net, g)
}

fn flat(net: &Net<B>, g: &GradientsParams) -> Vec<f32> {
    let mut v = Vec::new();
    let mut push = |name: &str, t: Option<Tensor<Flex, 1>>| {
        let t = t.unwrap_or_else(|| panic!("no gradient for {name}"));
        v.extend(t.to_data().to_vec::<f32>().unwrap())
    };
    push(
        "inp.weight",
        g.get::<Flex, 2>(net.0.weight.id).map(|t| t.flatten(0, 1)),
    );
    push(
        "fc.weight",
        g.get::<Flex, 2>(net.1.weight.id).map(|t| t.flatten(0, 1)),
    );
    push("fc.bias", g.get::<Flex, 1>(net.1.bias.as_ref().unwrap().id));
    push(
        "out.weight",
        g.get::<Flex, 2>(net.2.weight.id).map(|t| t.flatten(0, 1)),
    );
    v
}

/// Both ranks' all-reduced gradients, flattened, and the (device, host) calls of rank 0.
fn run(device: bool) -> (Vec<Vec<f32>>, (usize, usize)) {
    let (t0, r1) = channel();
    let (t1, r0) = channel();
    let ends = [(0, t0, r0), (1, t1, r1)];
    let handles: Vec<_> = ends
        .into_iter()
        .map(|(rank, tx, rx)| {
            std::thread::spawn(move || {
                let mut comm = Pair {
                    rank,
                    tx,
                    rx,
                    device,
                    device_calls: 0,
                    host_calls: 0,
                };
                let (net, g) = grads(rank);
                let g = all_reduce_grads::<B, _>(&mut comm, &net, g).unwrap();
                (flat(&net, &g), (comm.device_calls, comm.host_calls))
            })
        })
        .collect();
    let out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let calls = out[0].1;
    (out.into_iter().map(|o| o.0).collect(), calls)
}

#[test]
fn device_buckets_and_the_staged_fallback_give_the_same_mean_gradients() {
    let _serial = crate::serial();
    let (on_device, calls) = run(true);
    assert_eq!(calls, (1, 0), "one bucket, reduced on the device");
    let (staged, calls) = run(false);
    assert_eq!(
        calls,
        (0, 1),
        "declined: one bucket staged through the host"
    );
    assert_eq!(on_device[0], on_device[1], "ranks agree");
    assert_eq!(
        on_device[0], staged[0],
        "device path == staged path, bit for bit"
    );
    // And it is the mean of the two ranks' own gradients.
    let (n0, g0) = grads(0);
    let (n1, g1) = grads(1);
    let (a, b) = (flat(&n0, &g0), flat(&n1, &g1));
    assert_ne!(a, b);
    for ((m, x), y) in staged[0].iter().zip(&a).zip(&b) {
        assert_eq!(*m, (x + y) * 0.5);
    }
}
