//! The sample order: epoch `e` visits the dataset in a permutation drawn from `(seed, e)`; the
//! global sample cursor `s` maps to epoch `s / n`, position `s % n`. A global batch of `B` samples
//! starting at cursor `c` is split into `world` contiguous shards, rank `r` taking
//! `c + r B/world ..`. Resuming at any cursor, with any world size, reproduces the same stream.

use rand::{SeedableRng, seq::SliceRandom};

/// Deterministic, shardable sample order over a dataset of `len` samples.
#[derive(Debug, Clone)]
pub struct Order {
    len: usize,
    seed: u64,
    shuffle: bool,
    epoch: u64,
    perm: Vec<usize>,
}

impl Order {
    /// Order over `len` samples; `shuffle = false` visits them in index order every epoch.
    pub fn new(len: usize, seed: u64, shuffle: bool) -> Self {
        let mut o = Self {
            len,
            seed,
            shuffle,
            epoch: u64::MAX,
            perm: Vec::new(),
        };
        o.set_epoch(0);
        o
    }

    fn set_epoch(&mut self, epoch: u64) {
        if epoch == self.epoch {
            return;
        }
        self.epoch = epoch;
        self.perm = (0..self.len).collect();
        if self.shuffle {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            self.perm.shuffle(&mut rng);
        }
    }

    /// Dataset index of global sample `cursor`.
    pub fn index(&mut self, cursor: u64) -> usize {
        let n = self.len as u64;
        self.set_epoch(cursor / n);
        self.perm[(cursor % n) as usize]
    }

    /// Epoch of a cursor.
    pub fn epoch_of(&self, cursor: u64) -> u64 {
        cursor / self.len as u64
    }
}
