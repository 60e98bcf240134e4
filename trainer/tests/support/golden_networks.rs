//! The network kinds of the metric golden cases (`fid_inception`, `i3d`): rotor's FID Inception
//! and I3D from `models`, loaded with the case's weights (every tensor that is not an input or
//! output), against the reference outputs.

use burn::{
    backend::Flex,
    tensor::{Tensor, TensorData},
};
use models::{FidInception, I3d, StateDict, TensorEntry};

use super::metric_case::Case;

type B = Flex;

/// The case's tensors other than `io`, as a state dict.
fn weights(case: &Case, io: &[&str]) -> Result<StateDict, String> {
    let mut dict = StateDict::default();
    for name in case.names().filter(|n| !io.contains(n)) {
        let (shape, values) = case.tensor_f32(name)?;
        dict.insert(name, TensorEntry { shape, values });
    }
    Ok(dict)
}

fn tensor<const D: usize>(case: &Case, name: &str) -> Result<Tensor<B, D>, String> {
    let (shape, values) = case.tensor_f32(name)?;
    Ok(Tensor::from_data(
        TensorData::new(values, shape),
        &Default::default(),
    ))
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 tensor")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// pytorch-fid's InceptionV3: preprocessing, pool3, logits, logits without bias.
pub fn check_fid_inception(case: &Case) -> Result<(), String> {
    let io = ["input", "preprocessed", "pool3", "logits", "logits_is"];
    let dict = weights(case, &io)?;
    // The shape table that tests use for random-weight files is the network's real one.
    let mut table = models::fid_inception_shapes();
    table.sort();
    let mut file: Vec<(String, Vec<usize>)> = dict
        .names()
        .map(|n| {
            (
                n.to_string(),
                dict.get(n).map(|e| e.shape.clone()).unwrap_or_default(),
            )
        })
        .collect();
    file.sort();
    if table != file {
        return Err("models::fid_inception_shapes() differs from the case's weights".into());
    }
    let net = FidInception::<B>::from_state_dict(&dict, &Default::default())
        .map_err(|e| e.to_string())?;
    let pre = FidInception::<B>::preprocess(tensor::<4>(case, "input")?);
    case.check("preprocessed", &host(pre.clone()))?;
    let out = net.forward_preprocessed(pre);
    case.check("pool3", &host(out.pool3))?;
    case.check("logits", &host(out.logits))?;
    case.check("logits_is", &host(out.logits_is))
}

/// The FVD I3D: byte truncation, preprocessing and logits.
pub fn check_i3d(case: &Case) -> Result<(), String> {
    let io = ["video", "video_u8", "input", "logits"];
    let dict = weights(case, &io)?;
    let mut table = models::i3d_shapes();
    table.sort();
    let mut file: Vec<(String, Vec<usize>)> = dict
        .names()
        .map(|n| {
            (
                n.to_string(),
                dict.get(n).map(|e| e.shape.clone()).unwrap_or_default(),
            )
        })
        .collect();
    file.sort();
    if table != file {
        return Err("models::i3d_shapes() differs from the case's weights".into());
    }
    let net = I3d::<B>::from_state_dict(&dict, &Default::default()).map_err(|e| e.to_string())?;
    // [B, T, H, W, 3] -> frames [B*T, 3, H, W], clip-major as rotor's batches are.
    let video = tensor::<5>(case, "video")?;
    let [b, t, h, w, c] = video.dims();
    let frames = video.reshape([b * t, h, w, c]).permute([0, 3, 1, 2]);
    let input = I3d::<B>::preprocess(frames, b);
    case.check("input", &host(input.clone()))?;
    let logits = net.forward_preprocessed(input);
    case.check("logits", &host(logits))
}
