//! Preprocessing: optional resize of the shorter side, crop to a square (random for training,
//! center otherwise), optional random horizontal flip, then channels-first floats in `[-1, 1]`.

use image::{DynamicImage, imageops::FilterType};
use rand::Rng;

/// How a decoded image becomes a training sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    /// Output side.
    pub resolution: usize,
    /// Shorter side after resizing (none: keep, unless smaller than `resolution`).
    pub resize: Option<usize>,
    /// Random crop (else center).
    pub random_crop: bool,
    /// Random horizontal flip.
    pub flip: bool,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
}

impl Transform {
    /// The validation variant: center crop, no flip.
    pub fn eval(&self) -> Self {
        Self {
            random_crop: false,
            flip: false,
            ..self.clone()
        }
    }

    /// `[channels * resolution * resolution]` values in `[-1, 1]`.
    pub fn apply(&self, img: DynamicImage, rng: &mut impl Rng) -> Vec<f32> {
        self.finish(&self.prepare(img), rng)
    }

    /// The deterministic part: the resize of the shorter side (the image itself when none is
    /// needed).
    pub fn prepare(&self, img: DynamicImage) -> DynamicImage {
        let r = self.resolution as u32;
        let mut img = img;
        let (w, h) = (img.width(), img.height());
        let target = self
            .resize
            .map(|s| s as u32)
            .unwrap_or(0)
            .max(if w.min(h) < r { r } else { 0 });
        if target > 0 && target != w.min(h) {
            let (nw, nh) = if w <= h {
                (
                    target,
                    ((h as u64 * target as u64) / w as u64).max(target as u64) as u32,
                )
            } else {
                (
                    ((w as u64 * target as u64) / h as u64).max(target as u64) as u32,
                    target,
                )
            };
            img = img.resize_exact(nw, nh, FilterType::Triangle);
        }
        img
    }

    /// The random part on a [`Transform::prepare`]d image: crop, flip, floats.
    pub fn finish(&self, img: &DynamicImage, rng: &mut impl Rng) -> Vec<f32> {
        let r = self.resolution as u32;
        let (w, h) = (img.width(), img.height());
        let (x0, y0) = if self.random_crop {
            (rng.random_range(0..=w - r), rng.random_range(0..=h - r))
        } else {
            ((w - r) / 2, (h - r) / 2)
        };
        let mut img = img.crop_imm(x0, y0, r, r);
        if self.flip && rng.random_bool(0.5) {
            img = img.fliph();
        }
        let n = (r * r) as usize;
        let mut out = vec![0.0f32; self.channels * n];
        if self.channels == 1 {
            for (i, p) in img.to_luma8().pixels().enumerate() {
                out[i] = p.0[0] as f32 / 127.5 - 1.0;
            }
        } else {
            for (i, p) in img.to_rgb8().pixels().enumerate() {
                for c in 0..3 {
                    out[c * n + i] = p.0[c] as f32 / 127.5 - 1.0;
                }
            }
        }
        out
    }
}
