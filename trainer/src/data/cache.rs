//! The training loader's cache of prepared samples: a sample's frames after decoding and the
//! deterministic resize (before the random crop and flip), kept in memory up to a byte budget
//! (`data.cache_mb`) so that later epochs skip the image codec and the resampling. Only
//! datasets whose sample is a function of its index alone are cached (folders of images: a
//! video clip's window is drawn at random). Nothing is evicted: the first samples to arrive
//! fill the budget and the rest are decoded every time, so batches are the same bits with or
//! without the cache.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use image::DynamicImage;

/// Prepared samples by dataset index.
#[derive(Debug)]
pub struct SampleCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    samples: HashMap<usize, Arc<Vec<DynamicImage>>>,
    bytes: usize,
}

impl SampleCache {
    /// A cache holding at most `budget` bytes of pixels.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Sample `index`, if cached.
    pub fn get(&self, index: usize) -> Option<Arc<Vec<DynamicImage>>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.samples.get(&index).cloned()
    }

    /// Keeps sample `index` if the budget allows; returns it either way.
    pub fn insert(&self, index: usize, frames: Vec<DynamicImage>) -> Arc<Vec<DynamicImage>> {
        let frames = Arc::new(frames);
        let size: usize = frames.iter().map(|f| f.as_bytes().len()).sum();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.bytes + size <= self.budget && !inner.samples.contains_key(&index) {
            inner.bytes += size;
            inner.samples.insert(index, frames.clone());
        }
        frames
    }

    /// Bytes of pixels held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(side: u32) -> DynamicImage {
        DynamicImage::new_rgb8(side, side)
    }

    #[test]
    fn keeps_samples_within_the_budget() {
        // 10x10 RGB = 300 bytes; a budget of 700 holds two.
        let cache = SampleCache::new(700);
        for i in 0..4 {
            let got = cache.insert(i, vec![image(10)]);
            assert_eq!(got.len(), 1, "the sample comes back whether kept or not");
        }
        assert!(cache.get(0).is_some() && cache.get(1).is_some());
        assert!(cache.get(2).is_none() && cache.get(3).is_none());
        assert_eq!(cache.bytes(), 600);
        // Inserting a kept index again does not count it twice.
        cache.insert(0, vec![image(10)]);
        assert_eq!(cache.bytes(), 600);
    }
}
