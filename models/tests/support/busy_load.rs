//! A background load for the reproducibility tests (shared by the tests of several crates
//! through `#[path]`): threads spinning on float work until dropped, so the kernels under test
//! run on a busy machine and rayon's scheduling differs from an idle run.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// `threads` threads kept busy until dropped.
pub struct Load(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl Load {
    /// Starts the load.
    pub fn start(threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 1.0f64 + i as f64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = (x * 1.000_001).sin() + 1.0;
                        }
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        Self(stop, handles)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for h in self.1.drain(..) {
            let _ = h.join();
        }
    }
}
