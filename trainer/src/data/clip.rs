//! Clips: how `frames` frames, `stride` apart, are cut from a video of `len` frames. A video
//! holds `windows(len)` samples, window `k` starting at `k * step`; a training sample starts at a
//! random frame of its window's first `step` positions (VideoGPT draws a random start per
//! trajectory), a validation sample at the window's start, so validation is fixed.

use rand::{Rng, RngCore};

/// Clip geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipSpec {
    /// Frames per clip (T).
    pub frames: usize,
    /// Distance between a clip's consecutive frames in the source video.
    pub stride: usize,
    /// Distance between the starts of consecutive windows.
    pub step: usize,
}

impl ClipSpec {
    /// Source frames one clip covers: `(frames - 1) * stride + 1`.
    pub fn span(&self) -> usize {
        (self.frames - 1) * self.stride + 1
    }

    /// Samples a video of `len` frames holds (0 when it is shorter than one clip).
    pub fn windows(&self, len: usize) -> usize {
        if len < self.span() {
            0
        } else {
            (len - self.span()) / self.step + 1
        }
    }

    /// First source frame of window `k` (random within the window when `rng` is given).
    pub fn start(&self, len: usize, k: usize, rng: Option<&mut dyn RngCore>) -> usize {
        let first = k * self.step;
        match rng {
            Some(rng) => {
                let last = (first + self.step - 1).min(len - self.span());
                rng.random_range(first..=last)
            }
            None => first,
        }
    }

    /// Source frame indices of the clip starting at `start`.
    pub fn frame_indices(&self, start: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.frames).map(move |i| start + i * self.stride)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn windows_cover_the_video_and_random_starts_stay_inside() {
        let spec = ClipSpec {
            frames: 16,
            stride: 1,
            step: 16,
        };
        // BAIR: 30 frames give one 16-frame window, its start anywhere in 0..=14.
        assert_eq!(spec.windows(30), 1);
        assert_eq!(spec.windows(15), 0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let starts: Vec<usize> = (0..400)
            .map(|_| spec.start(30, 0, Some(&mut rng)))
            .collect();
        assert_eq!(*starts.iter().min().unwrap(), 0);
        assert_eq!(*starts.iter().max().unwrap(), 14);
        // vtest.avi: 795 frames, stride 2 -> span 31, step 31: 25 windows.
        let spec = ClipSpec {
            frames: 16,
            stride: 2,
            step: 31,
        };
        assert_eq!(spec.windows(795), 25);
        for k in 0..25 {
            let s = spec.start(795, k, Some(&mut rng));
            assert!(s + spec.span() <= 795 && s >= k * 31 && s < (k + 1) * 31);
        }
        assert_eq!(spec.start(795, 3, None), 93);
        assert_eq!(
            spec.frame_indices(93).collect::<Vec<_>>()[..3],
            [93, 95, 97]
        );
    }
}
