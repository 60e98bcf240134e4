//! SSIM and PSNR of images in [0, 1], as scikit-image 0.26 computes them.

use super::MetricError;

/// Gaussian window: sigma 1.5, truncated at 3.5 sigma (scipy's radius int(3.5 * 1.5 + 0.5) = 5).
const SIGMA: f64 = 1.5;
const RADIUS: usize = 5;
const TAPS: usize = 2 * RADIUS + 1;
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;

/// The structural similarity of an image pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Ssim {
    /// Mean of the channel values.
    pub mean: f64,
    /// Each channel's mean SSIM over the image cropped by 5 pixels on every side.
    pub per_channel: Vec<f64>,
    /// The full SSIM image, HWC like the inputs (its 5-pixel border depends on the edge rule,
    /// scipy's 'reflect').
    pub map: Vec<f32>,
}

/// SSIM of two HWC images in [0, 1] (data range 1), computed in float64 as scikit-image 0.26
/// `structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
/// use_sample_covariance=False, data_range=1.0)`: per channel, separable 11-tap Gaussian
/// filtering (sigma 1.5, edges mirrored including the edge pixel) of a, b, a*a, b*b, a*b; the
/// SSIM image; its mean after cropping 5 pixels from every border.
///
/// # Errors
/// Buffers that do not hold `height * width * channels` values, zero channels, an image smaller
/// than 11x11.
pub fn ssim(
    a: &[f32],
    b: &[f32],
    height: usize,
    width: usize,
    channels: usize,
) -> Result<Ssim, MetricError> {
    if channels == 0 {
        return Err(MetricError::Empty { what: "channels" });
    }
    let expected = height * width * channels;
    for got in [a.len(), b.len()] {
        if got != expected {
            return Err(MetricError::ImageSize {
                height,
                width,
                channels,
                expected,
                got,
            });
        }
    }
    if height < TAPS || width < TAPS {
        return Err(MetricError::ImageTooSmall { height, width });
    }

    let weights = gaussian_weights();
    let plane = height * width;
    let mut filter = Filter::new(height, width);
    let mut x = vec![0.0_f64; plane];
    let mut y = vec![0.0_f64; plane];
    let mut prod = vec![0.0_f64; plane];
    let [mut ux, mut uy, mut uxx, mut uyy, mut uxy] = [(); 5].map(|()| vec![0.0_f64; plane]);
    let mut map = vec![0.0_f32; expected];
    let mut per_channel = Vec::with_capacity(channels);

    for c in 0..channels {
        for (i, (xv, yv)) in x.iter_mut().zip(y.iter_mut()).enumerate() {
            *xv = f64::from(a[i * channels + c]);
            *yv = f64::from(b[i * channels + c]);
        }
        filter.apply(&weights, &x, &mut ux);
        filter.apply(&weights, &y, &mut uy);
        for (p, v) in prod.iter_mut().zip(&x) {
            *p = v * v;
        }
        filter.apply(&weights, &prod, &mut uxx);
        for (p, v) in prod.iter_mut().zip(&y) {
            *p = v * v;
        }
        filter.apply(&weights, &prod, &mut uyy);
        for ((p, xv), yv) in prod.iter_mut().zip(&x).zip(&y) {
            *p = xv * yv;
        }
        filter.apply(&weights, &prod, &mut uxy);

        let mut cropped_sum = 0.0;
        for row in 0..height {
            let inside_row = row >= RADIUS && row < height - RADIUS;
            for col in 0..width {
                let i = row * width + col;
                let (mx, my) = (ux[i], uy[i]);
                let vx = uxx[i] - mx * mx;
                let vy = uyy[i] - my * my;
                let vxy = uxy[i] - mx * my;
                let s = (2.0 * mx * my + C1) * (2.0 * vxy + C2)
                    / ((mx * mx + my * my + C1) * (vx + vy + C2));
                map[i * channels + c] = s as f32;
                if inside_row && col >= RADIUS && col < width - RADIUS {
                    cropped_sum += s;
                }
            }
        }
        let cropped = ((height - 2 * RADIUS) * (width - 2 * RADIUS)) as f64;
        per_channel.push(cropped_sum / cropped);
    }

    let mean = per_channel.iter().sum::<f64>() / channels as f64;
    Ok(Ssim {
        mean,
        per_channel,
        map,
    })
}

/// PSNR of two images with data range 1: 10 log10(1 / mean((a - b)^2)) over all values, in
/// float64. Infinite for identical images; NaN for empty or differently sized buffers.
pub fn psnr_unit(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    let sse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum();
    let mse = sse / a.len() as f64;
    10.0 * (1.0 / mse).log10()
}

/// The normalized 11-tap Gaussian, scipy `_gaussian_kernel1d(1.5, 0, 5)`.
fn gaussian_weights() -> [f64; TAPS] {
    let mut w = [0.0; TAPS];
    for (i, wi) in w.iter_mut().enumerate() {
        let x = i as f64 - RADIUS as f64;
        *wi = (-0.5 / (SIGMA * SIGMA) * x * x).exp();
    }
    let sum: f64 = w.iter().sum();
    w.iter_mut().for_each(|wi| *wi /= sum);
    w
}

/// scipy.ndimage 'reflect' (half-sample symmetric: d c b a | a b c d | d c b a) for an index
/// at most RADIUS outside [0, n), with n > RADIUS.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let r = if i < 0 {
        -i - 1
    } else if i >= n {
        2 * n - i - 1
    } else {
        i
    };
    r as usize
}

/// Buffers of the separable filter, reused across channels and filtered images.
struct Filter {
    height: usize,
    width: usize,
    /// One padded row (width + 2 RADIUS).
    padded: Vec<f64>,
    /// The image filtered along its rows (axis 1).
    along_rows: Vec<f64>,
}

impl Filter {
    fn new(height: usize, width: usize) -> Self {
        Self {
            height,
            width,
            padded: vec![0.0; width + 2 * RADIUS],
            along_rows: vec![0.0; height * width],
        }
    }

    /// `out` = the image `src` (row-major height x width) filtered by `w` along both axes.
    fn apply(&mut self, w: &[f64; TAPS], src: &[f64], out: &mut [f64]) {
        let (h, wd) = (self.height, self.width);
        // Along each row (horizontal), through a padded copy of the row.
        for (src_row, dst_row) in src.chunks(wd).zip(self.along_rows.chunks_mut(wd)) {
            for (p, v) in self.padded.iter_mut().enumerate() {
                *v = src_row[reflect(p as isize - RADIUS as isize, wd)];
            }
            for (x, d) in dst_row.iter_mut().enumerate() {
                let window = &self.padded[x..x + TAPS];
                *d = window.iter().zip(w).map(|(v, wk)| v * wk).sum();
            }
        }
        // Along each column (vertical): output row y accumulates whole reflected input rows.
        for (yy, out_row) in out.chunks_mut(wd).enumerate() {
            out_row.iter_mut().for_each(|v| *v = 0.0);
            for (k, wk) in w.iter().enumerate() {
                let r = reflect(yy as isize + k as isize - RADIUS as isize, h);
                let in_row = &self.along_rows[r * wd..(r + 1) * wd];
                for (o, v) in out_row.iter_mut().zip(in_row) {
                    *o += wk * v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(seed: u32, len: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 24) as f32
            })
            .collect()
    }

    #[test]
    fn image_with_itself_is_one() {
        let (h, w, c) = (13, 17, 3);
        let a = image(1, h * w * c);
        let s = ssim(&a, &a, h, w, c).unwrap();
        assert!((s.mean - 1.0).abs() < 1e-12, "{}", s.mean);
        assert_eq!(s.per_channel.len(), 3);
        assert!(s.map.iter().all(|v| (v - 1.0).abs() < 1e-6));
        assert_eq!(psnr_unit(&a, &a), f64::INFINITY);
    }

    #[test]
    fn weights_are_normalized_and_symmetric() {
        let w = gaussian_weights();
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        for i in 0..TAPS {
            assert_eq!(w[i], w[TAPS - 1 - i]);
        }
        assert!(w[RADIUS] > w[RADIUS - 1]);
    }

    #[test]
    fn reflect_includes_the_edge_pixel() {
        assert_eq!(reflect(-1, 11), 0);
        assert_eq!(reflect(-5, 11), 4);
        assert_eq!(reflect(11, 11), 10);
        assert_eq!(reflect(15, 11), 6);
        assert_eq!(reflect(3, 11), 3);
    }

    #[test]
    fn filter_keeps_constants_and_reflects_ramps() {
        let (h, w) = (11, 12);
        let mut f = Filter::new(h, w);
        let wts = gaussian_weights();
        let mut out = vec![0.0; h * w];
        f.apply(&wts, &vec![0.7; h * w], &mut out);
        assert!(out.iter().all(|v| (v - 0.7).abs() < 1e-14));
        // A ramp along the rows: the interior keeps it (symmetric window), the edges bend.
        let ramp: Vec<f64> = (0..h * w).map(|i| (i % w) as f64).collect();
        f.apply(&wts, &ramp, &mut out);
        assert!((out[5 * w + 6] - 6.0).abs() < 1e-12);
        assert!(out[5 * w] > 0.0);
    }

    #[test]
    fn different_images_score_below_one_and_symmetrically() {
        let (h, w, c) = (16, 12, 2);
        let a = image(2, h * w * c);
        let b: Vec<f32> = a
            .iter()
            .zip(image(3, h * w * c))
            .map(|(x, n)| 0.8 * x + 0.2 * n)
            .collect();
        let ab = ssim(&a, &b, h, w, c).unwrap();
        let ba = ssim(&b, &a, h, w, c).unwrap();
        assert!(ab.mean < 0.99 && ab.mean > 0.0, "{}", ab.mean);
        assert!((ab.mean - ba.mean).abs() < 1e-12);
        let psnr = psnr_unit(&a, &b);
        assert!(psnr.is_finite() && psnr > 0.0);
    }

    #[test]
    fn bad_sizes_are_errors() {
        let a = vec![0.5_f32; 10 * 20 * 3];
        assert!(matches!(
            ssim(&a, &a, 10, 20, 3),
            Err(MetricError::ImageTooSmall { .. })
        ));
        assert!(matches!(
            ssim(&a, &a[1..], 10, 20, 3),
            Err(MetricError::ImageSize { .. })
        ));
        assert!(psnr_unit(&a, &a[1..]).is_nan());
    }
}
