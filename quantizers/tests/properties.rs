//! Invariants from the paper and from the quantizers' definitions, on random inputs.

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{B, check_close, device, floats, ints, randn, tensor2};
use quantizers::{
    CodebookLearning, Distance, EmaStats, Estimator, FsqConfig, LfqConfig, Mode, QuantRng,
    Quantizer, QuantizerConfig, ResidualConfig, VqConfig, nearest, shapes,
};
use rand::SeedableRng;

const DIMS: [usize; 4] = [3, 8, 32, 256];

fn rows(v: &[f32], d: usize) -> Vec<&[f32]> {
    v.chunks(d).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn cos(a: &[f32], b: &[f32]) -> f64 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

/// Runs an estimator on (e, q) and returns (forward value, grad_e) for upstream gradient g.
fn estimate(
    est: Estimator,
    e: Vec<f32>,
    q: Vec<f32>,
    g: Vec<f32>,
    n: usize,
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let e = tensor2(e, [n, d]).require_grad();
    let out = est.apply(e.clone(), tensor2(q, [n, d]));
    let grads = (out.clone() * tensor2(g, [n, d])).sum().backward();
    (
        floats(out),
        floats(e.grad(&grads).expect("gradient reaches e")),
    )
}

#[test]
fn rotation_forward_value_is_q() {
    for d in DIMS {
        let n = 64;
        let (e, q, g) = (randn(n * d, 1), randn(n * d, 2), randn(n * d, 3));
        for est in [
            Estimator::Rotation,
            Estimator::RotationUnscaled,
            Estimator::Ste,
        ] {
            let (out, _) = estimate(est, e.clone(), q.clone(), g.clone(), n, d);
            check_close(&format!("{est:?} d={d}"), &out, &q, 1e-5, 1e-4).unwrap();
        }
    }
}

#[test]
fn rotation_preserves_angle_between_vector_and_gradient() {
    // Paper Appendix A.6: angle(e, grad_e) == angle(q, grad_q), grad_q = upstream gradient.
    for d in DIMS {
        let n = 64;
        let (e, q, g) = (randn(n * d, 11), randn(n * d, 12), randn(n * d, 13));
        for est in [Estimator::Rotation, Estimator::RotationUnscaled] {
            let (_, grad_e) = estimate(est, e.clone(), q.clone(), g.clone(), n, d);
            for ((ei, qi), (gi, ge)) in rows(&e, d)
                .iter()
                .zip(rows(&q, d))
                .zip(rows(&g, d).iter().zip(rows(&grad_e, d)))
            {
                let (a, b) = (cos(ei, ge), cos(qi, gi));
                assert!(
                    (a - b).abs() < 1e-4,
                    "{est:?} d={d}: cos(e, grad_e) {a} vs cos(q, g) {b}"
                );
            }
            // The rotation preserves norms: ||grad_e|| = lambda ||g|| (scaled) or ||g|| (unscaled).
            for ((ei, qi), (gi, ge)) in rows(&e, d)
                .iter()
                .zip(rows(&q, d))
                .zip(rows(&g, d).iter().zip(rows(&grad_e, d)))
            {
                let lambda = if est == Estimator::Rotation {
                    (dot(qi, qi) / dot(ei, ei)).sqrt()
                } else {
                    1.0
                };
                let (got, want) = (dot(ge, ge).sqrt(), lambda * dot(gi, gi).sqrt());
                assert!(
                    (got - want).abs() <= 1e-4 * want.max(1.0),
                    "{est:?} d={d}: norm {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn rotation_equals_ste_when_e_equals_q() {
    for d in DIMS {
        let n = 32;
        let (e, g) = (randn(n * d, 21), randn(n * d, 22));
        let (_, rot) = estimate(Estimator::Rotation, e.clone(), e.clone(), g.clone(), n, d);
        let (_, ste) = estimate(Estimator::Ste, e.clone(), e.clone(), g.clone(), n, d);
        check_close(&format!("d={d}"), &rot, &ste, 1e-5, 1e-4).unwrap();
        check_close(&format!("d={d} ste"), &ste, &g, 0.0, 0.0).unwrap();
    }
}

#[test]
fn rotation_gradient_matches_the_paper_formula() {
    // grad_e = lambda (g - 2 r (r.g) + 2 e^ (q^.g)), computed here in f64.
    let (n, d) = (16, 8);
    let (e, q, g) = (randn(n * d, 31), randn(n * d, 32), randn(n * d, 33));
    let (_, grad) = estimate(Estimator::Rotation, e.clone(), q.clone(), g.clone(), n, d);
    for i in 0..n {
        let (ei, qi, gi) = (
            &e[i * d..(i + 1) * d],
            &q[i * d..(i + 1) * d],
            &g[i * d..(i + 1) * d],
        );
        let (ne, nq) = (dot(ei, ei).sqrt(), dot(qi, qi).sqrt());
        let eh: Vec<f64> = ei.iter().map(|x| *x as f64 / ne).collect();
        let qh: Vec<f64> = qi.iter().map(|x| *x as f64 / nq).collect();
        let s: Vec<f64> = eh.iter().zip(&qh).map(|(a, b)| a + b).collect();
        let ns = s.iter().map(|x| x * x).sum::<f64>().sqrt();
        let r: Vec<f64> = s.iter().map(|x| x / ns).collect();
        let rg: f64 = r.iter().zip(gi).map(|(a, b)| a * *b as f64).sum();
        let qg: f64 = qh.iter().zip(gi).map(|(a, b)| a * *b as f64).sum();
        for j in 0..d {
            let want = nq / ne * (gi[j] as f64 - 2.0 * r[j] * rg + 2.0 * eh[j] * qg);
            let got = grad[i * d + j] as f64;
            assert!(
                (got - want).abs() <= 1e-5 + 1e-4 * want.abs(),
                "row {i} col {j}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn degenerate_vectors_give_finite_values() {
    let d = 4;
    let q = vec![1.0, 2.0, -1.0, 0.5];
    let g = vec![0.3, -0.7, 0.2, 1.1];
    // e antiparallel to q: reflection across q's orthogonal hyperplane; value still q.
    let anti: Vec<f32> = q.iter().map(|x| -2.0 * x).collect();
    // ||e|| = 0: straight-through fallback.
    let zero = vec![0.0; d];
    // ||q|| = 0: lambda = 0, value 0, gradient 0.
    let e_any = vec![0.5, -0.1, 0.2, 0.9];
    let q0 = vec![0.0; d];
    for est in [Estimator::Rotation, Estimator::RotationUnscaled] {
        let (out, grad) = estimate(est, anti.clone(), q.clone(), g.clone(), 1, d);
        assert!(
            out.iter().chain(&grad).all(|x| x.is_finite()),
            "{est:?} antiparallel: {out:?} {grad:?}"
        );
        check_close("antiparallel value", &out, &q, 1e-5, 1e-4).unwrap();
        let gnorm = dot(&grad, &grad).sqrt();
        let lambda = if est == Estimator::Rotation { 0.5 } else { 1.0 };
        assert!(
            (gnorm - lambda * dot(&g, &g).sqrt()).abs() < 1e-4,
            "antiparallel gradient norm {gnorm}"
        );

        let (out, grad) = estimate(est, zero.clone(), q.clone(), g.clone(), 1, d);
        check_close("zero-e value", &out, &q, 1e-6, 0.0).unwrap();
        check_close("zero-e gradient is straight-through", &grad, &g, 1e-6, 0.0).unwrap();

        let (out, grad) = estimate(est, e_any.clone(), q0.clone(), g.clone(), 1, d);
        assert!(
            out.iter().chain(&grad).all(|x| x.is_finite()),
            "{est:?} zero q"
        );
        check_close("zero-q value", &out, &q0, 1e-6, 0.0).unwrap();
    }
}

fn ema_vq(d: usize, k: usize, threshold: f32, distance: Distance) -> VqConfig {
    let mut cfg = VqConfig::new(d, k);
    cfg.distance = distance;
    cfg.dead_code_threshold = threshold;
    cfg.seed = 7;
    cfg
}

#[test]
fn ema_from_summed_halves_equals_ema_on_whole_batch() {
    for distance in [Distance::Euclidean, Distance::Cosine] {
        let (n, d, k) = (200, 8, 32);
        let cfg = ema_vq(d, k, 0.5, distance);
        let mut whole = cfg.init::<B>(&device()).unwrap();
        let mut halves = cfg.init::<B>(&device()).unwrap();
        let x = tensor2(randn(n * d, 41), [n, d]);
        for step in 0..3 {
            let out = whole.quantize(x.clone(), Mode::Train);
            let a = halves.quantize(x.clone().narrow(0, 0, n / 2), Mode::Train);
            let b = halves.quantize(x.clone().narrow(0, n / 2, n - n / 2), Mode::Train);
            let (sa, sb) = (
                a.stats.into_iter().next().unwrap(),
                b.stats.into_iter().next().unwrap(),
            );
            let summed = EmaStats {
                counts: sa.counts + sb.counts,
                sums: sa.sums + sb.sums,
                candidates: Tensor::cat(vec![sa.candidates, sb.candidates], 0),
            };
            let mut r1 = QuantRng::seed_from_u64(step);
            let mut r2 = QuantRng::seed_from_u64(step);
            let rep1 = whole.apply_stats(out.stats, &mut r1).unwrap();
            let rep2 = halves.apply_stats(vec![summed], &mut r2).unwrap();
            let restarted = |r: quantizers::StatsReport<B>| r.restarted_codes.map(floats);
            assert_eq!(restarted(rep1), restarted(rep2));
            for (name, p, q) in [
                (
                    "cluster_size",
                    floats(whole.cluster_size.val()),
                    floats(halves.cluster_size.val()),
                ),
                (
                    "embed_avg",
                    floats(whole.embed_avg.val()),
                    floats(halves.embed_avg.val()),
                ),
                (
                    "codebook",
                    floats(whole.codebook.val()),
                    floats(halves.codebook.val()),
                ),
            ] {
                check_close(
                    &format!("{distance:?} step {step} {name}"),
                    &q,
                    &p,
                    1e-6,
                    1e-5,
                )
                .unwrap();
            }
        }
    }
}

#[test]
fn dead_codes_are_restarted_from_batch_vectors_deterministically() {
    let (n, d, k) = (64, 4, 256);
    let cfg = ema_vq(d, k, 0.9, Distance::Euclidean);
    let x = tensor2(randn(n * d, 51), [n, d]);
    let run = |seed: u64| {
        let mut vq = cfg.init::<B>(&device()).unwrap();
        let out = vq.quantize(x.clone(), Mode::Train);
        let report = vq
            .apply_stats(out.stats, &mut QuantRng::seed_from_u64(seed))
            .unwrap();
        (
            report,
            floats(vq.codebook.val()),
            floats(vq.cluster_size.val()),
        )
    };
    let (report, codebook, sizes) = run(3);
    let restarted_codes = floats(report.restarted_codes.expect("restart configured"))[0] as usize;
    // counts start at 1, decay 0.8: unused codes fall to 0.8 < 0.9 and are restarted.
    assert!(restarted_codes > k / 2, "{restarted_codes}");
    let batch = floats(x.clone());
    let restarted = sizes.iter().filter(|s| (**s - 0.9).abs() < 1e-6).count();
    assert_eq!(restarted, restarted_codes);
    for (c, s) in codebook.chunks(d).zip(&sizes) {
        if (*s - 0.9).abs() < 1e-6 {
            assert!(
                batch.chunks(d).any(|row| row == c),
                "restarted code {c:?} is not a batch vector"
            );
        }
    }
    assert_eq!(run(3).1, codebook, "same seed, same restart");
    assert_ne!(run(4).1, codebook, "another seed, another restart");

    // With more batch vectors than codes, the restarted codes are distinct batch vectors.
    let n = 512;
    let x = tensor2(randn(n * d, 52), [n, d]);
    let mut vq = cfg.init::<B>(&device()).unwrap();
    let out = vq.quantize(x.clone(), Mode::Train);
    vq.apply_stats(out.stats, &mut QuantRng::seed_from_u64(5))
        .unwrap();
    let (codebook, sizes, batch) = (
        floats(vq.codebook.val()),
        floats(vq.cluster_size.val()),
        floats(x),
    );
    let mut placed: Vec<&[f32]> = codebook
        .chunks(d)
        .zip(&sizes)
        .filter(|(_, s)| (**s - 0.9).abs() < 1e-6)
        .map(|(c, _)| c)
        .collect();
    assert!(placed.len() > k / 4, "{} restarted", placed.len());
    assert!(placed.iter().all(|c| batch.chunks(d).any(|row| row == *c)));
    let count = placed.len();
    placed.sort_by(|a, b| a.partial_cmp(b).unwrap());
    placed.dedup();
    assert_eq!(placed.len(), count, "a batch vector placed twice");
}

#[test]
fn decode_round_trips_in_eval_mode() {
    let n = 300;
    let vq_cos = {
        let mut c = VqConfig::new(16, 64);
        c.distance = Distance::Cosine;
        c.codebook_dim = Some(4); // factorized, ViT-VQGAN style
        QuantizerConfig::Vq(c)
    };
    let configs = vec![
        (16, vq_cos),
        (
            16,
            QuantizerConfig::Residual(ResidualConfig {
                layers: vec![QuantizerConfig::Vq(VqConfig::new(16, 64))],
                depth: Some(4),
            }),
        ),
        (12, QuantizerConfig::Lfq(LfqConfig::new(12))),
        (
            4,
            QuantizerConfig::Fsq(FsqConfig {
                levels: vec![8, 5, 5, 5],
            }),
        ),
        (
            6,
            QuantizerConfig::Residual(ResidualConfig {
                layers: vec![
                    QuantizerConfig::Lfq(LfqConfig::new(6)),
                    QuantizerConfig::Lfq(LfqConfig::new(6)),
                ],
                depth: None,
            }),
        ),
        (
            3,
            QuantizerConfig::Residual(ResidualConfig {
                layers: vec![QuantizerConfig::Fsq(FsqConfig {
                    levels: vec![8, 6, 5],
                })],
                depth: Some(3),
            }),
        ),
    ];
    for (d, cfg) in configs {
        let q = cfg.init::<B>(&device()).unwrap();
        let x = tensor2(randn(n * d, 61), [n, d]);
        let out = q.quantize(x, Mode::Eval);
        assert_eq!(out.indices.dims(), [n, q.num_levels()]);
        let decoded = q.decode(out.indices.clone());
        assert_eq!(floats(decoded), floats(out.quantized.clone()), "{cfg:?}");
        // Indices are within the codebook.
        assert!(
            ints(out.indices)
                .iter()
                .all(|i| *i >= 0 && (*i as usize) < q.codebook_size())
        );
    }
}

#[test]
fn lfq_and_fsq_indices_are_a_bijection_over_all_codes() {
    // Every code decodes to a point that quantizes back to the same index.
    let lfq = QuantizerConfig::Lfq(LfqConfig::new(8))
        .init::<B>(&device())
        .unwrap();
    let fsq = QuantizerConfig::Fsq(FsqConfig {
        levels: vec![8, 6, 5],
    })
    .init::<B>(&device())
    .unwrap();
    for q in [lfq, fsq] {
        let k = q.codebook_size();
        let all = Tensor::<B, 1, Int>::arange(0..k as i64, &device()).reshape([k, 1]);
        let codes = q.decode(all.clone());
        // FSQ needs the pre-image of the code: atanh inverts the tanh bound well enough at grid points.
        let back = q.quantize(codes.clone(), Mode::Eval);
        if q.input_dim() == 8 {
            assert_eq!(ints(back.indices), ints(all));
        } else {
            assert_eq!(floats(back.quantized.clone()).len(), k * 3);
            let again = q.decode(back.indices.clone());
            assert_eq!(floats(again), floats(back.quantized));
        }
    }
}

#[test]
fn chunked_search_equals_brute_force() {
    // 8192 x 4096 scores exceed the 4 Mi budget: several blocks.
    let (n, d, k) = (8192, 4, 4096);
    let x = randn(n * d, 71);
    let c = randn(k * d, 72);
    let got = ints(nearest(
        tensor2(x.clone(), [n, d]),
        tensor2(c.clone(), [k, d]),
        Distance::Euclidean,
    ));
    let mut mismatches = 0;
    for i in (0..n).step_by(7) {
        let xi = &x[i * d..(i + 1) * d];
        let dist = |j: usize| -> f64 {
            (0..d)
                .map(|t| (xi[t] as f64 - c[j * d + t] as f64).powi(2))
                .sum()
        };
        let best = (0..k).min_by(|a, b| dist(*a).total_cmp(&dist(*b))).unwrap();
        if got[i] as usize != best && (dist(got[i] as usize) - dist(best)).abs() > 1e-5 {
            mismatches += 1;
        }
    }
    assert_eq!(mismatches, 0);
}

#[test]
fn learnable_codebook_gets_codebook_loss_gradient_and_legacy_swaps_beta() {
    let (n, d, k) = (50, 8, 16);
    for legacy in [true, false] {
        let mut cfg = VqConfig::new(d, k);
        cfg.codebook = CodebookLearning::Learnable { beta: 0.25, legacy };
        let vq = cfg.init::<B>(&device()).unwrap();
        let x = tensor2(randn(n * d, 81), [n, d]).require_grad();
        let out = vq.quantize(x.clone(), Mode::Train);
        let commit = out.loss_value("commitment").unwrap();
        let codebook = out.loss_value("codebook").unwrap();
        // Both terms have the same unweighted value mean((x - q)^2).
        let (wc, wb) = if legacy { (1.0, 0.25) } else { (0.25, 1.0) };
        assert!((commit / wc - codebook / wb).abs() < 1e-6 * (commit / wc).abs().max(1.0));
        let grads = out.loss().backward();
        let gc = vq
            .codebook
            .grad(&grads)
            .expect("learnable codebook gets a gradient");
        assert!(floats(gc).iter().any(|v| *v != 0.0));
    }
    // An EMA codebook is not trained by gradient.
    let vq = VqConfig::new(d, k).init::<B>(&device()).unwrap();
    let x = tensor2(randn(n * d, 82), [n, d]).require_grad();
    let out = vq.quantize(x.clone(), Mode::Train);
    let grads = (out.loss() + out.quantized.sum()).backward();
    assert!(vq.codebook.grad(&grads).is_none());
    assert!(x.grad(&grads).is_some());
}

#[test]
fn kmeans_init_finds_the_clusters() {
    let (d, k, per) = (2, 4, 100);
    let centers = [[5.0f32, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]];
    let noise = randn(k * per * d, 91);
    let mut pts = Vec::new();
    for (i, c) in centers.iter().enumerate() {
        for j in 0..per {
            let o = (i * per + j) * d;
            pts.extend([c[0] + 0.1 * noise[o], c[1] + 0.1 * noise[o + 1]]);
        }
    }
    let mut cfg = VqConfig::new(d, k);
    cfg.kmeans_init = true;
    let mut vq = cfg.init::<B>(&device()).unwrap();
    assert!(vq.needs_init());
    vq.init_from_batch(
        tensor2(pts.clone(), [k * per, d]),
        &mut QuantRng::seed_from_u64(0),
    );
    assert!(!vq.needs_init());
    // Lloyd's fixed point: every used code is the mean of the points nearest to it, and the
    // counts cover the batch. (Random starts may merge clusters, as in the reference.)
    let codes = floats(vq.codebook.val());
    let bins = floats(vq.cluster_size.val());
    assert_eq!(bins.iter().sum::<f32>(), (k * per) as f32);
    let assign = ints(nearest(
        tensor2(pts.clone(), [k * per, d]),
        vq.codebook.val(),
        Distance::Euclidean,
    ));
    for j in 0..k {
        let members: Vec<&[f32]> = pts
            .chunks(d)
            .zip(&assign)
            .filter(|(_, a)| **a as usize == j)
            .map(|(p, _)| p)
            .collect();
        assert_eq!(members.len() as f32, bins[j]);
        if !members.is_empty() {
            for t in 0..d {
                let mean = members.iter().map(|p| p[t]).sum::<f32>() / members.len() as f32;
                assert!(
                    (mean - codes[j * d + t]).abs() < 1e-3,
                    "code {j} is not its cluster's mean"
                );
            }
        }
    }
    // Each code sits on a cluster center (or between merged ones), far better than random codes.
    let err = vq
        .quantize(tensor2(pts, [k * per, d]), Mode::Eval)
        .usage
        .to_host()
        .2;
    assert!(err < 30.0, "k-means quantization error {err}");
}

#[test]
fn config_from_toml_with_clear_errors() {
    let cfg: QuantizerConfig = toml::from_str(
        r#"
        kind = "vq"
        dim = 32
        codebook_size = 1024
        distance = "cosine"
        estimator = "rotation_unscaled"
        codebook = { kind = "ema", decay = 0.99 }
        dead_code_threshold = 2.0
        "#,
    )
    .unwrap();
    let QuantizerConfig::Vq(vq) = &cfg else {
        panic!("vq expected")
    };
    assert_eq!(vq.estimator, Estimator::RotationUnscaled);
    assert_eq!(
        vq.codebook,
        CodebookLearning::Ema {
            decay: 0.99,
            eps: 1e-5,
            init_cluster_size: 1.0
        }
    );
    cfg.validate().unwrap();

    let err = toml::from_str::<QuantizerConfig>(
        "kind = \"vq\"\ndim = 4\ncodebook_size = 8\ncodebok_dim = 2\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("codebok_dim"), "{err}");
    let bad = QuantizerConfig::Vq(VqConfig {
        codebook: CodebookLearning::Ema {
            decay: 1.5,
            eps: 1e-5,
            init_cluster_size: 1.0,
        },
        ..VqConfig::new(4, 8)
    });
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("codebook.decay"), "{err}");
    let stack = QuantizerConfig::Residual(ResidualConfig {
        layers: vec![
            QuantizerConfig::Vq(VqConfig::new(4, 8)),
            QuantizerConfig::Fsq(FsqConfig {
                levels: vec![5, 5, 5],
            }),
        ],
        depth: None,
    });
    let err = stack.validate().unwrap_err().to_string();
    assert!(err.contains("layers[1]"), "{err}");
    let mixed = QuantizerConfig::Residual(ResidualConfig {
        layers: vec![
            QuantizerConfig::Vq(VqConfig::new(4, 8)),
            QuantizerConfig::Vq(VqConfig::new(4, 16)),
        ],
        depth: None,
    });
    let err = mixed.validate().unwrap_err().to_string();
    assert!(
        err.contains("layers[1]") && err.contains("same number of codes"),
        "{err}"
    );
}

#[test]
fn latent_layouts_round_trip() {
    let img = Tensor::<B, 4>::from_data(
        TensorData::new(randn(2 * 3 * 4 * 5, 101), [2, 3, 4, 5]),
        &device(),
    );
    let rows = shapes::flatten_image(img.clone());
    assert_eq!(rows.dims(), [40, 3]);
    // Row (b=1, h=2, w=3) holds that pixel's channels.
    let v = floats(img.clone());
    let r = floats(rows.clone().narrow(0, 20 + 2 * 5 + 3, 1));
    assert_eq!(
        r,
        (0..3)
            .map(|c| v[((3 + c) * 4 + 2) * 5 + 3])
            .collect::<Vec<_>>()
    );
    assert_eq!(floats(shapes::unflatten_image(rows, [2, 4, 5])), v);
    let vid = Tensor::<B, 5>::from_data(
        TensorData::new(randn(2 * 3 * 2 * 4 * 5, 102), [2, 3, 2, 4, 5]),
        &device(),
    );
    let rows = shapes::flatten_video(vid.clone());
    assert_eq!(rows.dims(), [80, 3]);
    assert_eq!(
        floats(shapes::unflatten_video(rows, [2, 2, 4, 5])),
        floats(vid)
    );
    let tok =
        Tensor::<B, 3>::from_data(TensorData::new(randn(2 * 7 * 3, 103), [2, 7, 3]), &device());
    assert_eq!(
        floats(shapes::unflatten_tokens(
            shapes::flatten_tokens(tok.clone()),
            [2, 7]
        )),
        floats(tok)
    );
}
