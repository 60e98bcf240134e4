//! Reductions across parallel tasks whose summation order is a function of the problem size
//! only: never of the thread count, the machine's load or rayon's work stealing.
//!
//! A kernel cuts its work into tasks by problem size (samples per task from
//! [`samples_per_task`]); [`ordered_sum`] runs them in at most [`SLOTS`] contiguous ranges in
//! parallel, each range accumulating its tasks in task order into its own buffer, and adds the
//! ranges' buffers in range order. The float summation tree is therefore fixed by
//! `(n_tasks, len)`, so the same inputs give the same bits with 1, 2 or 64 threads, busy or idle.
//! (rayon's `fold`/`reduce` splits adaptively: its tree depends on stealing.)

use rayon::prelude::*;

/// Parallel tasks a batch is cut into, and the most partial sums a reduction keeps. A constant
/// (not the thread count) so that results do not depend on the machine; 8 leaves four tasks
/// per thread on two cores and still feeds eight.
pub(super) const SLOTS: usize = 8;

/// Samples per parallel task for a batch of `n`: at most [`SLOTS`] tasks.
pub(super) fn samples_per_task(n: usize) -> usize {
    n.div_ceil(SLOTS).max(1)
}

/// `sum_t task(t)` over `t in 0..n_tasks`, where `task(t, acc)` adds its contribution into
/// `acc` (length `len`). `out` (when given) is cut into chunks of `chunk` elements and task `t`
/// gets chunk `t` to write (its own part of a per-sample output such as an input gradient).
pub(super) fn ordered_sum<F>(
    n_tasks: usize,
    len: usize,
    out: Option<(&mut [f32], usize)>,
    task: F,
) -> Vec<f32>
where
    F: Fn(usize, Option<&mut [f32]>, &mut [f32]) + Sync,
{
    if n_tasks == 0 {
        return vec![0f32; len];
    }
    let per_slot = n_tasks.div_ceil(SLOTS);
    let slots = n_tasks.div_ceil(per_slot);
    let range = |slot: usize| slot * per_slot..((slot + 1) * per_slot).min(n_tasks);
    let partials: Vec<Vec<f32>> = match out {
        Some((out, chunk)) => {
            let chunk = chunk.max(1);
            out.par_chunks_mut(per_slot * chunk)
                .enumerate()
                .map(|(slot, o)| {
                    let mut acc = vec![0f32; len];
                    for (t, c) in range(slot).zip(o.chunks_mut(chunk)) {
                        task(t, Some(c), &mut acc);
                    }
                    acc
                })
                .collect()
        }
        None => (0..slots)
            .into_par_iter()
            .map(|slot| {
                let mut acc = vec![0f32; len];
                for t in range(slot) {
                    task(t, None, &mut acc);
                }
                acc
            })
            .collect(),
    };
    let mut partials = partials.into_iter();
    let mut total = partials.next().unwrap_or_else(|| vec![0f32; len]);
    for p in partials {
        add_into(&mut total, &p);
    }
    total
}

/// `acc += part`, element-wise, vectorized.
pub(super) fn add_into(acc: &mut [f32], part: &[f32]) {
    super::simd::vectorized(
        #[inline(always)]
        || {
            for (a, p) in acc.iter_mut().zip(part) {
                *a += p;
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Terms whose float sum depends on the order they are added in.
    fn term(t: usize, i: usize) -> f32 {
        let x = ((t * 7919 + i * 104_729) % 1000) as f32;
        (x - 500.0) * 1e-3 + if t.is_multiple_of(3) { 1e4 } else { 1e-4 }
    }

    fn run(threads: usize, n_tasks: usize, with_out: bool) -> (Vec<f32>, Vec<f32>) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let len = 37;
        let mut out = vec![0f32; n_tasks * 3];
        let sum = pool.install(|| {
            let task = |t: usize, o: Option<&mut [f32]>, acc: &mut [f32]| {
                if let Some(o) = o {
                    o.fill(t as f32);
                }
                for (i, a) in acc.iter_mut().enumerate() {
                    *a += term(t, i);
                }
            };
            if with_out {
                ordered_sum(n_tasks, len, Some((&mut out, 3)), task)
            } else {
                ordered_sum(n_tasks, len, None, task)
            }
        });
        (sum, out)
    }

    #[test]
    fn same_bits_for_any_thread_count() {
        for n_tasks in [1, 5, 8, 9, 31, 100] {
            for with_out in [false, true] {
                let (want, want_out) = run(1, n_tasks, with_out);
                for threads in [2, 3, 4, 7] {
                    let (got, out) = run(threads, n_tasks, with_out);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{n_tasks} tasks, {threads} threads"
                    );
                    assert_eq!(out, want_out);
                }
                if with_out {
                    for (t, c) in want_out.chunks(3).enumerate() {
                        assert!(
                            c.iter().all(|&v| v == t as f32),
                            "task {t} got its own chunk"
                        );
                    }
                }
                // The sum is right (to float accuracy).
                for (i, &w) in want.iter().enumerate() {
                    let exact: f64 = (0..n_tasks).map(|t| term(t, i) as f64).sum();
                    assert!((w as f64 - exact).abs() <= 1e-2 + 1e-6 * exact.abs());
                }
            }
        }
    }
}
