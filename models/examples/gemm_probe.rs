use std::time::Instant;
fn run(m: usize, k: usize, n: usize, par: gemm::Parallelism, split: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let go = |c: &mut [f32]| {
        use rayon::prelude::*;
        let rows = m / split;
        c.par_chunks_mut(rows * n)
            .enumerate()
            .for_each(|(i, cc)| unsafe {
                gemm::gemm(
                    rows,
                    n,
                    k,
                    cc.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr().add(i * rows * k),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            });
    };
    go(&mut c);
    let reps = 50;
    let t = Instant::now();
    for _ in 0..reps {
        go(&mut c);
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    2.0 * (m * k * n) as f64 / s / 1e9
}
fn main() {
    for (m, k, n) in [(512, 256, 768), (512, 256, 1024), (512, 1024, 256)] {
        println!(
            "{m}x{k}x{n}: 1 thread {:.1}  Rayon(0) {:.1}  split2 {:.1} split8 {:.1} GFLOP/s",
            run(m, k, n, gemm::Parallelism::None, 1),
            run(m, k, n, gemm::Parallelism::Rayon(0), 1),
            run(m, k, n, gemm::Parallelism::None, 2),
            run(m, k, n, gemm::Parallelism::None, 8)
        );
    }
}
