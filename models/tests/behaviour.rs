//! Gradient flow through the VQ model, weight import/export round trips and their errors,
//! ActNorm's data-dependent init, index round trips, LPIPS configuration errors.

use burn::{
    backend::{Autodiff, Flex},
    module::Module,
    tensor::{Distribution, Tensor},
};
use models::{
    AutoencoderConfig, DiscNormKind, DiscriminatorConfig, LpipsWeights, StateDict, VqModelConfig,
};
use quantizers::{CodebookLearning, Estimator, Mode, QuantizerConfig, VqConfig};

type B = Autodiff<Flex>;

fn tiny(estimator: Estimator, codebook: CodebookLearning) -> VqModelConfig {
    VqModelConfig {
        autoencoder: AutoencoderConfig {
            ch: 32,
            ch_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![8],
            resolution: 16,
            in_channels: 3,
            out_ch: 3,
            z_channels: 8,
            dropout: 0.0,
            resamp_with_conv: true,
            double_z: false,
        },
        quantizer: QuantizerConfig::Vq(VqConfig {
            estimator,
            codebook,
            ..VqConfig::new(8, 32)
        }),
        init_from: None,
    }
}

fn values<Bk: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn image(seed_shift: f32) -> Tensor<B, 4> {
    Tensor::<B, 4>::random(
        [2, 3, 16, 16],
        Distribution::Uniform(-1.0, 1.0),
        &Default::default(),
    ) * (1.0 - seed_shift)
}

#[test]
fn encoder_gets_gradient_through_ste_and_rotation_and_ema_codebook_none() {
    let device = Default::default();
    for estimator in [
        Estimator::Ste,
        Estimator::Rotation,
        Estimator::RotationUnscaled,
    ] {
        let model = tiny(estimator, CodebookLearning::default())
            .init::<B>(&device)
            .unwrap();
        let x = image(0.0);
        let out = model.forward(x.clone(), Mode::Train);
        let rec = (out.reconstruction - x).powi_scalar(2).mean();
        let loss = rec + out.encoded.quant.loss();
        let grads = loss.backward();
        let g = model
            .encoder
            .conv_in
            .weight
            .grad(&grads)
            .expect("encoder gets a gradient");
        assert!(
            values(g).iter().any(|v| *v != 0.0),
            "{estimator:?}: zero encoder gradient"
        );
        let g = model
            .decoder
            .conv_out
            .weight
            .grad(&grads)
            .expect("decoder gets a gradient");
        assert!(values(g).iter().any(|v| *v != 0.0));
        let quantizers::AnyQuantizer::Vq(vq) = &model.quantize else {
            panic!()
        };
        assert!(
            vq.codebook.grad(&grads).is_none(),
            "EMA codebook must not be trained by gradient"
        );
    }
    // A learnable codebook does get one (from the codebook loss).
    let model = tiny(
        Estimator::Rotation,
        CodebookLearning::Learnable {
            beta: 0.25,
            legacy: true,
        },
    )
    .init::<B>(&device)
    .unwrap();
    let x = image(0.0);
    let out = model.forward(x.clone(), Mode::Train);
    let grads = ((out.reconstruction - x).abs().mean() + out.encoded.quant.loss()).backward();
    let quantizers::AnyQuantizer::Vq(vq) = &model.quantize else {
        panic!()
    };
    assert!(vq.codebook.grad(&grads).is_some());
}

#[test]
fn decode_indices_equals_eval_reconstruction() {
    let model = tiny(Estimator::Rotation, CodebookLearning::default())
        .init::<B>(&Default::default())
        .unwrap();
    let x = image(0.0);
    let out = model.forward(x, Mode::Eval);
    let maps = out.encoded.index_maps();
    assert_eq!(maps.dims(), [2, 1, 8, 8]);
    let again = model.decode_indices(maps);
    assert_eq!(values(again), values(out.reconstruction));
}

#[test]
fn weights_round_trip_through_safetensors_under_taming_names() {
    let device = Default::default();
    let cfg = tiny(Estimator::Rotation, CodebookLearning::default());
    let a = cfg.init::<B>(&device).unwrap();
    let dict = a.export_taming();
    for key in [
        "encoder.down.0.block.0.norm1.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.mid.attn_1.proj_out.bias",
        "decoder.up.1.upsample.conv.weight",
        "decoder.conv_out.weight",
        "quant_conv.weight",
        "post_quant_conv.bias",
        "quantize.embedding.weight",
        "quantize.embedding.cluster_size",
    ] {
        assert!(
            dict.get(key).is_some(),
            "missing {key}; have {:?}",
            dict.names().take(8).collect::<Vec<_>>()
        );
    }
    let path = std::env::temp_dir().join(format!("rotor-vq-{}.safetensors", std::process::id()));
    dict.save_safetensors(&path).unwrap();
    let loaded = StateDict::load(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let b = cfg
        .init::<B>(&device)
        .unwrap()
        .load_taming(&loaded)
        .unwrap();
    let x = image(0.0);
    let ra = a.forward(x.clone(), Mode::Eval).reconstruction;
    let rb = b.forward(x, Mode::Eval).reconstruction;
    assert_eq!(values(ra), values(rb));
    // A taming checkpoint with a learnable codebook has no EMA buffers: still loads.
    let learnable = tiny(
        Estimator::Rotation,
        CodebookLearning::Learnable {
            beta: 0.25,
            legacy: true,
        },
    );
    let dict_l = learnable.init::<B>(&device).unwrap().export_taming();
    let no_ema = dict_l.without(&[
        "quantize.embedding.cluster_size",
        "quantize.embedding.embed_avg",
        "quantize.initialized",
    ]);
    learnable
        .init::<B>(&device)
        .unwrap()
        .load_taming(&no_ema)
        .unwrap();
}

#[test]
fn mismatched_weights_list_missing_unexpected_and_shapes() {
    let device = Default::default();
    let small = tiny(Estimator::Rotation, CodebookLearning::default());
    let mut other = small.clone();
    other.autoencoder.ch_mult = vec![1, 2, 2];
    other.autoencoder.resolution = 16;
    let dict = other.init::<B>(&device).unwrap().export_taming();
    let err = small
        .init::<B>(&device)
        .unwrap()
        .load_taming(&dict)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unexpected keys"), "{err}");
    assert!(
        err.contains("decoder.up.2.") && err.contains("and 8 more"),
        "{err}"
    );
    let mut wide = small.clone();
    wide.autoencoder.ch = 64;
    let dict = wide.init::<B>(&device).unwrap().export_taming();
    let err = small
        .init::<B>(&device)
        .unwrap()
        .load_taming(&dict)
        .unwrap_err()
        .to_string();
    assert!(err.contains("has shape"), "{err}");
    let partial = small
        .init::<B>(&device)
        .unwrap()
        .export_taming()
        .without(&["decoder."]);
    let err = small
        .init::<B>(&device)
        .unwrap()
        .load_taming(&partial)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing keys (88)") && err.contains("decoder.conv_in.weight"),
        "{err}"
    );
    // Unreadable files name the file.
    let err = StateDict::load("/nonexistent/vq.ckpt")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/vq.ckpt"), "{err}");
    let err = StateDict::load("weights.npz").unwrap_err().to_string();
    assert!(err.contains("unknown extension"), "{err}");
}

#[test]
fn actnorm_discriminator_initializes_from_first_batch() {
    let device = Default::default();
    let cfg = DiscriminatorConfig {
        ndf: 8,
        n_layers: 2,
        norm: DiscNormKind::Act,
        ..DiscriminatorConfig::new()
    };
    let mut d = cfg.init::<B>(&device).unwrap();
    assert!(d.needs_init());
    let x = Tensor::<B, 4>::random([4, 3, 32, 32], Distribution::Normal(0.5, 2.0), &device);
    d.init_from_batch(x.clone());
    assert!(!d.needs_init());
    // After init, each ActNorm's output on that batch has zero mean and unit std per channel.
    let mut h = burn::tensor::activation::leaky_relu(d.first.forward(x), 0.2);
    for b in &d.blocks {
        let pre = b.conv.forward(h.clone());
        let models::DiscNorm::Act(a) = &b.norm else {
            panic!()
        };
        let out = a.forward(pre);
        let [n, c, hh, ww] = out.dims();
        let flat = out.clone().swap_dims(0, 1).reshape([c, n * hh * ww]);
        let mean = values(flat.clone().mean_dim(1));
        let var = values(flat.var(1));
        assert!(mean.iter().all(|m| m.abs() < 1e-3), "{mean:?}");
        assert!(var.iter().all(|v| (v - 1.0).abs() < 1e-2), "{var:?}");
        h = burn::tensor::activation::leaky_relu(out, 0.2);
    }
    // taming's keys, with `initialized` as a buffer.
    let dict = d.export_taming();
    assert!(dict.get("main.3.loc").is_some() && dict.get("main.3.initialized").is_some());
    let reloaded = cfg.init::<B>(&device).unwrap().load_taming(&dict).unwrap();
    assert!(!reloaded.needs_init());
}

#[test]
fn lpips_without_weight_files_says_which_files_and_how() {
    let err = LpipsWeights::default()
        .load::<Flex>(&Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vgg16") && err.contains("vgg16-397923af.pth") && err.contains("lpips"),
        "{err}"
    );
    let err = LpipsWeights {
        vgg16: Some("/missing/vgg16.pth".into()),
        heads: None,
    }
    .load::<Flex>(&Default::default())
    .unwrap_err()
    .to_string();
    assert!(err.contains("heads"), "{err}");
}

#[test]
fn lpips_is_zero_on_identical_images_and_positive_otherwise() {
    let lpips = models::Lpips::<Flex>::new(&Default::default());
    let a = Tensor::<Flex, 4>::random(
        [2, 3, 32, 32],
        Distribution::Uniform(-1.0, 1.0),
        &Default::default(),
    );
    let b = Tensor::<Flex, 4>::random(
        [2, 3, 32, 32],
        Distribution::Uniform(-1.0, 1.0),
        &Default::default(),
    );
    assert!(
        values(lpips.forward(a.clone(), a.clone()))
            .iter()
            .all(|v| v.abs() < 1e-6)
    );
    assert!(values(lpips.forward(a, b)).iter().all(|v| *v != 0.0));
    assert_eq!(
        models::trainable_params(&lpips.clone().fork(&Default::default())),
        0
    );
}
