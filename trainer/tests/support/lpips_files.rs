//! Writes LPIPS weight files in the layouts a config points at (torchvision's VGG16 `features.*`
//! and taming's `lin*` heads), from rotor's own randomly initialized LPIPS: what a VQGAN test
//! needs without downloading the real weights. Shared by the trainer's and the launcher's tests.

use std::path::{Path, PathBuf};

/// Returns the paths of `vgg16.safetensors` and `vgg_heads.safetensors` written into `dir`.
pub fn lpips_files(dir: &Path) -> (PathBuf, PathBuf) {
    let lpips = trainer::models::Lpips::<burn::backend::Flex>::new(&Default::default());
    let taming = lpips.export_taming();
    let (mut vgg, mut heads) = (
        trainer::models::StateDict::default(),
        trainer::models::StateDict::default(),
    );
    for name in taming.names() {
        let e = taming.get(name).unwrap().clone();
        if let Some(rest) = name.strip_prefix("net.slice") {
            let (_, idx_param) = rest.split_once('.').unwrap();
            vgg.insert(format!("features.{idx_param}"), e);
        } else if name.starts_with("lin") {
            heads.insert(name, e);
        }
    }
    let (v, h) = (
        dir.join("vgg16.safetensors"),
        dir.join("vgg_heads.safetensors"),
    );
    vgg.save_safetensors(&v).unwrap();
    heads.save_safetensors(&h).unwrap();
    (v, h)
}
