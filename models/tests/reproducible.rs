//! rotor's CPU kernels give the same bits whatever the number of threads and whatever else the
//! machine is doing: every reduction across parallel tasks (convolution weight gradients, the
//! Winograd `dU` sums) is partitioned by problem size and combined in a fixed order. Checked on
//! sizes that split into many tasks (batches of 6..19 samples, row-blocked samples), with a
//! thread pool kept busy on every core in the background, for pools of 1, 2, 3 and 4 threads.

use burn::{
    backend::{Autodiff, Flex},
    module::Param,
    nn::{
        GroupNormConfig, LayerNormConfig, PaddingConfig2d, PaddingConfig3d,
        conv::{Conv2dConfig, Conv3dConfig},
    },
    tensor::{Distribution, Tensor, backend::Backend},
};
use models::cpu;

#[path = "support/busy_load.rs"]
mod busy_load;
use busy_load::Load;

type B = Autodiff<Flex>;

fn bits<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<u32> {
    t.into_data()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Output, input gradient and every parameter gradient of the kernels under test, as bits.
fn run_all(seed: u64) -> Vec<(String, Vec<u32>)> {
    let device = Default::default();
    B::seed(&device, seed);
    let mut out = Vec::new();
    // (batch, c_in, c_out, side, kernel, stride): Winograd (32+ channels, 3x3 stride 1), the
    // im2col path with grouped samples (tiny planes), row blocks (large planes), stride 2,
    // pointwise.
    let cases2d = [
        (11, 32, 40, 14, 3, 1),
        (19, 3, 16, 9, 3, 1),
        (6, 8, 12, 96, 3, 1),
        (13, 16, 32, 17, 3, 2),
        (9, 24, 8, 10, 1, 1),
    ];
    for (i, (n, ci, co, side, k, stride)) in cases2d.into_iter().enumerate() {
        let mut conv = Conv2dConfig::new([ci, co], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
            .init::<B>(&device);
        conv.weight = Param::from_tensor(conv.weight.val().mul_scalar(3.0).detach().require_grad());
        let x =
            Tensor::<B, 4>::random([n, ci, side, side], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
        let y = cpu::conv2d(&conv, x.clone());
        let g = Tensor::<B, 4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &device);
        let grads = (y.clone() * g).sum().backward();
        out.push((format!("conv2d {i} output"), bits(y.detach())));
        out.push((format!("conv2d {i} dx"), bits(x.grad(&grads).unwrap())));
        out.push((
            format!("conv2d {i} dw"),
            bits(conv.weight.grad(&grads).unwrap()),
        ));
        let bias = conv.bias.as_ref().unwrap();
        out.push((format!("conv2d {i} db"), bits(bias.grad(&grads).unwrap())));
    }
    // Conv3d: one task per sample; vol2col (4 -> 6 channels) and Winograd (32+ channels).
    for (i, (n, ci, co, size)) in [(7, 4, 6, [5, 9, 9]), (5, 32, 36, [4, 10, 9])]
        .into_iter()
        .enumerate()
    {
        let conv = Conv3dConfig::new([ci, co], [3, 3, 3])
            .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
            .init::<B>(&device);
        let x = Tensor::<B, 5>::random(
            [n, ci, size[0], size[1], size[2]],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
        .require_grad();
        let y = cpu::conv3d(&conv, x.clone());
        let grads = y.clone().powi_scalar(2).sum().backward();
        out.push((format!("conv3d {i} output"), bits(y.detach())));
        out.push((format!("conv3d {i} dx"), bits(x.grad(&grads).unwrap())));
        out.push((
            format!("conv3d {i} dw"),
            bits(conv.weight.grad(&grads).unwrap()),
        ));
    }
    // Attention (batched products over (batch, head)), LayerNorm (parameter gradients summed
    // per task of rows), tanh: as in a ViT block.
    let norm = LayerNormConfig::new(64).init::<B>(&device);
    let x =
        Tensor::<B, 3>::random([6, 50, 64], Distribution::Normal(0.3, 2.0), &device).require_grad();
    let qkv = Tensor::<B, 2>::random([64, 3 * 64], Distribution::Normal(0.0, 0.2), &device)
        .require_grad();
    let h = cpu::layer_norm(&norm, 1e-5, x.clone());
    let h = cpu::multi_head_attention(h.matmul(qkv.clone().unsqueeze()), 4, 16);
    let y = cpu::tanh(h);
    let grads = y.clone().powi_scalar(2).sum().backward();
    out.push(("vit block output".into(), bits(y.detach())));
    out.push(("vit block dx".into(), bits(x.grad(&grads).unwrap())));
    out.push(("vit block dqkv".into(), bits(qkv.grad(&grads).unwrap())));
    out.push((
        "layer norm dgamma".into(),
        bits(norm.gamma.grad(&grads).unwrap()),
    ));
    // GroupNorm + SiLU: per-block statistics, gamma/beta gradients summed in block order.
    let norm = GroupNormConfig::new(4, 16).init::<B>(&device);
    let x = Tensor::<B, 4>::random([9, 16, 12, 12], Distribution::Normal(0.5, 2.0), &device)
        .require_grad();
    let y = cpu::group_norm_silu(&norm, x.clone());
    let grads = y.clone().powi_scalar(2).sum().backward();
    out.push(("group_norm dx".into(), bits(x.grad(&grads).unwrap())));
    out.push((
        "group_norm dgamma".into(),
        bits(norm.gamma.as_ref().unwrap().grad(&grads).unwrap()),
    ));
    out
}

fn in_pool(threads: usize) -> Vec<(String, Vec<u32>)> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| run_all(7))
}

#[test]
fn cpu_kernels_give_the_same_bits_on_any_thread_count_under_load() {
    let want = in_pool(1);
    let _load = Load::start(2);
    for threads in [2, 4, 3, 1] {
        let got = in_pool(threads);
        for ((what, a), (_, b)) in want.iter().zip(&got) {
            let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert_eq!(
                differ,
                0,
                "{what}: {differ} of {} elements differ between 1 and {threads} threads",
                a.len()
            );
        }
    }
}
