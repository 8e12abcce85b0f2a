//! Gradient checks (f64, central differences, seeded quickcheck) for batch norm, bilinear resize,
//! L2 normalisation, log-softmax, cross-entropy and dropout, plus their argument validation.

use engine::{ops, DType, LabelMap, Rng, Tape, Tensor};
use segnet_tests::{arbitrary_via_rng, gc, property, rand_dims, rand_t, shrink_dims, Case};

/// A random `[N, C, H, W]` shape plus a seed for everything else the property draws.
#[derive(Clone, Debug)]
struct Nchw {
    d: Vec<usize>,
    seed: u64,
}
impl Case for Nchw {
    fn from_rng(rng: &mut Rng) -> Self {
        let d = vec![1 + rng.below(3), 1 + rng.below(4), 1 + rng.below(4), 1 + rng.below(5)];
        Nchw { d, seed: rng.next_u64() }
    }
    fn smaller(&self) -> Vec<Self> {
        shrink_dims(&self.d).into_iter().map(|d| Nchw { d, seed: self.seed }).collect()
    }
}
arbitrary_via_rng!(Nchw);

/// A shape of rank 2..=4 for the channel-axis ops (`[N, C, ...]`).
#[derive(Clone, Debug)]
struct Channels {
    d: Vec<usize>,
    seed: u64,
}
impl Case for Channels {
    fn from_rng(rng: &mut Rng) -> Self {
        let r = 2 + rng.below(3);
        Channels { d: rand_dims(rng, r, 4), seed: rng.next_u64() }
    }
    fn smaller(&self) -> Vec<Self> {
        shrink_dims(&self.d).into_iter().map(|d| Channels { d, seed: self.seed }).collect()
    }
}
arbitrary_via_rng!(Channels);

fn bn_case(c: &Nchw, training: bool) -> Result<(), String> {
    bn_case_then(c, training, false)
}

/// [`bn_case`], with the ReLU fused (`batch_norm2d_relu`) when `relu`.
fn bn_case_then(c: &Nchw, training: bool, relu: bool) -> Result<(), String> {
    let mut rng = Rng::new(c.seed);
    let ch = c.d[1];
    // Spread the values so each channel's batch variance is well away from 0.
    let x = ops::affine(&rand_t(&c.d, &mut rng), 2.0, 0.3).unwrap();
    let w = ops::affine(&rand_t(&[ch], &mut rng), 1.0, 0.2).unwrap();
    let b = rand_t(&[ch], &mut rng);
    let rm0 = rand_t(&[ch], &mut rng);
    let rv0 = ops::affine(&rand_t(&[ch], &mut rng), 0.4, 1.0).unwrap();
    let momentum = rng.uniform();
    let eps = [1e-5, 1e-3, 0.1][rng.below(3)];
    let affine = rng.uniform() < 0.7;
    // Fresh running statistics on every evaluation: the training forward mutates them.
    let f = |xs: &[Tensor]| {
        let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
        let (w, b) = if affine { (Some(&xs[1]), Some(&xs[2])) } else { (None, None) };
        if relu {
            ops::batch_norm2d_relu(&xs[0], w, b, &mut rm, &mut rv, training, momentum, eps)
        } else {
            ops::batch_norm2d(&xs[0], w, b, &mut rm, &mut rv, training, momentum, eps)
        }
    };
    let inputs = if affine { vec![x, w, b] } else { vec![x] };
    gc(f, &inputs).map_err(|e| format!("training={training} affine={affine} eps={eps} relu={relu}: {e}"))
}

#[test]
fn grad_batch_norm2d() {
    property("grad_batch_norm2d_train", 40, |c: &Nchw| {
        if c.d[0] * c.d[2] * c.d[3] < 2 {
            return Ok(()); // training needs two values per channel
        }
        bn_case(c, true)
    });
    property("grad_batch_norm2d_eval", 30, |c: &Nchw| bn_case(c, false));
}

#[test]
fn grad_batch_norm2d_relu() {
    property("grad_batch_norm2d_relu_train", 40, |c: &Nchw| {
        if c.d[0] * c.d[2] * c.d[3] < 2 {
            return Ok(()); // training needs two values per channel
        }
        bn_case_then(c, true, true)
    });
    property("grad_batch_norm2d_relu_eval", 30, |c: &Nchw| bn_case_then(c, false, true));
}

/// The fused op gives bit for bit what `relu(batch_norm2d(x))` gives: output, running statistics
/// and the gradients of `x`, weight and bias, in f32, in both modes, on maps large enough for
/// several rayon tasks and the kernels' 8-lane loops with a remainder.
#[test]
fn batch_norm2d_relu_is_bit_identical_to_batch_norm_then_relu() {
    let mut rng = Rng::new(11);
    let dims = [3, 5, 7, 9];
    let x = rand_t(&dims, &mut rng).to_dtype(DType::F32).unwrap();
    let w = ops::affine(&rand_t(&[5], &mut rng), 1.0, 0.2).unwrap().to_dtype(DType::F32).unwrap();
    let b = ops::affine(&rand_t(&[5], &mut rng), 0.5, 0.1).unwrap().to_dtype(DType::F32).unwrap();
    let g = rand_t(&dims, &mut rng).to_dtype(DType::F32).unwrap();
    for training in [true, false] {
        let run = |fused: bool| {
            let (mut rm, mut rv) = (Tensor::zeros([5], DType::F32), Tensor::ones([5], DType::F32));
            let tape = Tape::new();
            let (xw, ww, bw) = (tape.watch(&x), tape.watch(&w), tape.watch(&b));
            let y = if fused {
                ops::batch_norm2d_relu(&xw, Some(&ww), Some(&bw), &mut rm, &mut rv, training, 0.1, 1e-5)
            } else {
                ops::batch_norm2d(&xw, Some(&ww), Some(&bw), &mut rm, &mut rv, training, 0.1, 1e-5)
                    .and_then(|t| ops::relu(&t))
            }
            .unwrap();
            let loss = ops::sum(&ops::mul(&y, &g).unwrap(), &[0, 1, 2, 3], false).unwrap();
            let grads = tape.backward(&loss).unwrap();
            let bits = |t: &Tensor| t.to_vec_f32().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            let grad = |t: &Tensor| bits(grads.get(t).expect("a gradient"));
            [bits(&y), bits(&rm), bits(&rv), grad(&xw), grad(&ww), grad(&bw)]
        };
        let (fused, twice) = (run(true), run(false));
        let zeros = fused[0].iter().filter(|&&v| v == 0).count();
        assert!(zeros > 0 && zeros < fused[0].len(), "the ReLU must cut some values and keep others");
        for (k, what) in ["y", "running_mean", "running_var", "dx", "dw", "db"].iter().enumerate() {
            assert_eq!(fused[k], twice[k], "training={training}: {what} differs");
        }
    }
}

#[test]
fn batch_norm_updates_running_stats_and_validates() {
    let mut rng = Rng::new(3);
    let x = rand_t(&[2, 3, 2, 2], &mut rng);
    let (mut rm, mut rv) = (Tensor::zeros([3], DType::F64), Tensor::ones([3], DType::F64));
    let rm_before = rm.clone();
    ops::batch_norm2d(&x, None, None, &mut rm, &mut rv, true, 0.5, 1e-5).unwrap();
    let xv = x.to_vec_f64().unwrap();
    for c in 0..3 {
        let v: Vec<f64> = (0..2).flat_map(|n| xv[(n * 3 + c) * 4..][..4].to_vec()).collect();
        let mean = v.iter().sum::<f64>() / 8.0;
        let unbiased = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / 7.0;
        let (m, var) = (rm.to_vec_f64().unwrap()[c], rv.to_vec_f64().unwrap()[c]);
        assert!((m - 0.5 * mean).abs() < 1e-14 && (var - (0.5 + 0.5 * unbiased)).abs() < 1e-14);
    }
    assert_eq!(rm_before.to_vec_f64().unwrap(), vec![0.0; 3], "a clone of the running stats must not change");
    let bad = |x: &Tensor, w: Option<&Tensor>, training, momentum, eps| {
        let (mut rm, mut rv) = (Tensor::zeros([3], DType::F64), Tensor::ones([3], DType::F64));
        ops::batch_norm2d(x, w, None, &mut rm, &mut rv, training, momentum, eps).is_err()
    };
    assert!(bad(&rand_t(&[2, 3, 4], &mut rng), None, true, 0.1, 1e-5), "3-D input");
    assert!(bad(&x, Some(&Tensor::ones([4], DType::F64)), true, 0.1, 1e-5), "weight of the wrong size");
    assert!(bad(&x, Some(&Tensor::ones([3], DType::F32)), true, 0.1, 1e-5), "weight of another dtype");
    assert!(bad(&x, None, true, 1.5, 1e-5), "momentum > 1");
    assert!(bad(&x, None, true, 0.1, -1.0), "negative eps");
    assert!(bad(&rand_t(&[1, 3, 1, 1], &mut rng), None, true, 0.1, 1e-5), "one value per channel");
    assert!(!bad(&rand_t(&[1, 3, 1, 1], &mut rng), None, false, 0.1, 1e-5), "eval accepts one value");
}

/// Bilinear resize between two random sizes in 1..=9 (non-square), checked in both directions so
/// every case covers an upsample and a downsample (or equal sizes) per axis.
#[derive(Clone, Debug)]
struct Resize {
    n: usize,
    c: usize,
    a: [usize; 2],
    b: [usize; 2],
    seed: u64,
}
impl Case for Resize {
    fn from_rng(rng: &mut Rng) -> Self {
        let s = |rng: &mut Rng| 1 + rng.below(9);
        Resize {
            n: 1 + rng.below(2),
            c: 1 + rng.below(3),
            a: [s(rng), s(rng)],
            b: [s(rng), s(rng)],
            seed: rng.next_u64(),
        }
    }
    fn smaller(&self) -> Vec<Self> {
        let mut v = Vec::new();
        for k in 0..2 {
            for which in 0..2 {
                let mut c = self.clone();
                let dim = if which == 0 { &mut c.a[k] } else { &mut c.b[k] };
                if *dim > 1 {
                    *dim -= 1;
                    v.push(c);
                }
            }
        }
        v
    }
}
arbitrary_via_rng!(Resize);

#[test]
fn grad_resize_bilinear() {
    property("grad_resize_bilinear", 60, |c: &Resize| {
        let mut rng = Rng::new(c.seed);
        for (from, to) in [(c.a, c.b), (c.b, c.a)] {
            for align in [false, true] {
                let x = rand_t(&[c.n, c.c, from[0], from[1]], &mut rng);
                gc(|x| ops::resize_bilinear(&x[0], to, align), &[x])
                    .map_err(|e| format!("{from:?} -> {to:?} align_corners={align}: {e}"))?;
            }
        }
        Ok(())
    });
}

#[test]
fn resize_rejects_bad_sizes_and_keeps_identity() {
    let mut rng = Rng::new(5);
    let x = rand_t(&[1, 2, 3, 4], &mut rng);
    assert!(ops::resize_bilinear(&x, [0, 4], false).is_err());
    assert!(ops::resize_bilinear(&rand_t(&[2, 3, 4], &mut rng), [3, 4], false).is_err());
    for align in [false, true] {
        let y = ops::resize_bilinear(&x, [3, 4], align).unwrap();
        assert_eq!(y.to_vec_f64().unwrap(), x.to_vec_f64().unwrap(), "same size is the identity");
    }
    let lm = LabelMap::new(1, 2, 2, vec![0, 1, 2, 3]).unwrap();
    assert!(ops::resize_nearest_labels(&lm, [3, 0]).is_err());
    assert_eq!(
        ops::resize_nearest_labels(&lm, [4, 4]).unwrap().data,
        vec![0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    );
    // TF align_corners=True: 2 -> 4 reads round(dst / 3) = 0, 0, 1, 1 per axis; 2 -> 3 reads
    // round(dst / 2) = 0, 1 (a tie, rounded up), 1.
    assert!(ops::resize_nearest_labels_align_corners(&lm, [0, 3]).is_err());
    assert_eq!(
        ops::resize_nearest_labels_align_corners(&lm, [4, 3]).unwrap().data,
        vec![0, 1, 1, 0, 1, 1, 2, 3, 3, 2, 3, 3]
    );
    // 4x8 -> 2x2: the corners (floor would read rows 0, 2 and columns 0, 4).
    let lm = LabelMap::new(1, 4, 8, (0..32).collect()).unwrap();
    assert_eq!(ops::resize_nearest_labels_align_corners(&lm, [2, 2]).unwrap().data, vec![0, 7, 24, 31]);
    assert_eq!(ops::resize_nearest_labels(&lm, [2, 2]).unwrap().data, vec![0, 4, 16, 20]);
}

/// Per-pixel norm of `[N, C, S]` data.
fn pixel_norms(v: &[f64], d: &[usize]) -> Vec<f64> {
    let (n, c, s) = (d[0], d[1], d[2..].iter().product::<usize>());
    (0..n * s).map(|p| (0..c).map(|ch| v[((p / s) * c + ch) * s + p % s].powi(2)).sum::<f64>().sqrt()).collect()
}

#[test]
fn grad_l2_normalize() {
    property("grad_l2_normalize", 40, |c: &Channels| {
        let mut rng = Rng::new(c.seed);
        // Half the cases use an eps large enough that some pixels are clamped.
        let eps = if rng.uniform() < 0.5 { 1e-12 } else { 0.3 + 0.5 * rng.uniform() };
        let mut v = rand_t(&c.d, &mut rng).to_vec_f64().unwrap();
        // Keep every pixel's norm at least 10% away from the kink at norm == eps.
        let (n, ch, s) = (c.d[0], c.d[1], c.d[2..].iter().product::<usize>());
        for (p, nrm) in pixel_norms(&v, &c.d).into_iter().enumerate() {
            let target = if nrm < eps { nrm.min(0.9 * eps) } else { nrm.max(1.1 * eps) };
            let k = if nrm > 0.0 { target / nrm } else { 1.0 };
            for cc in 0..ch {
                v[((p / s) * ch + cc) * s + p % s] *= k;
            }
        }
        let _ = n;
        let x = Tensor::from_f64_vec(v, c.d.clone(), DType::F64);
        gc(|x| ops::l2_normalize(&x[0], eps), &[x]).map_err(|e| format!("eps={eps}: {e}"))
    });
}

#[test]
fn grad_log_softmax() {
    property("grad_log_softmax", 40, |c: &Channels| {
        let mut rng = Rng::new(c.seed);
        gc(|x| ops::log_softmax(&x[0]), &[ops::affine(&rand_t(&c.d, &mut rng), 3.0, 0.0).unwrap()])
    });
}

#[test]
fn log_softmax_is_stable_for_large_logits() {
    let x = Tensor::from_f64_vec(vec![1000.0, -1000.0, 0.0, 999.0, 0.0, 5.0], [1, 3, 2], DType::F64);
    let y = ops::log_softmax(&x).unwrap().to_vec_f64().unwrap();
    assert!(y.iter().all(|v| v.is_finite()), "{y:?}");
    // Pixel 0 is (1000, 0, 0), pixel 1 is (-1000, 999, 5).
    assert!(y[0].abs() < 1e-12 && (y[2] + 1000.0).abs() < 1e-9 && (y[1] + 1999.0).abs() < 1e-9, "{y:?}");
    for p in 0..2 {
        let total: f64 = [y[p], y[2 + p], y[4 + p]].iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "pixel {p}: softmax sums to {total}");
    }
}

/// Random labels in `0..C`, with `ignore_frac` of the pixels set to 255.
fn rand_labels(d: &[usize], ignore_frac: f64, rng: &mut Rng) -> LabelMap {
    let data = (0..d[0] * d[2] * d[3])
        .map(|_| if rng.uniform() < ignore_frac { 255 } else { rng.below(d[1]) as u8 })
        .collect();
    LabelMap::new(d[0], d[2], d[3], data).unwrap()
}

#[test]
fn grad_cross_entropy() {
    property("grad_cross_entropy", 40, |c: &Nchw| {
        let mut rng = Rng::new(c.seed);
        let labels = rand_labels(&c.d, 0.3, &mut rng);
        let x = ops::affine(&rand_t(&c.d, &mut rng), 3.0, 0.0).unwrap();
        gc(|x| ops::cross_entropy(&x[0], &labels, 255), &[x])
    });
    // Every pixel ignored: loss 0, gradient exactly 0 (checked numerically too).
    property("grad_cross_entropy_all_ignored", 10, |c: &Nchw| {
        let mut rng = Rng::new(c.seed);
        let labels = rand_labels(&c.d, 1.0, &mut rng);
        let x = rand_t(&c.d, &mut rng);
        let tape = engine::Tape::new();
        let xw = tape.watch(&x);
        let loss = ops::cross_entropy(&xw, &labels, 255).map_err(|e| e.to_string())?;
        if loss.item().unwrap() != 0.0 {
            return Err(format!("all-ignored loss {}", loss.item().unwrap()));
        }
        let g = tape.backward(&loss).map_err(|e| e.to_string())?;
        if g.get(&xw).unwrap().to_vec_f64().unwrap().iter().any(|&v| v != 0.0) {
            return Err("all-ignored gradient is not zero".into());
        }
        gc(|x| ops::cross_entropy(&x[0], &labels, 255), &[x])
    });
}

#[test]
fn cross_entropy_validates_labels_and_sizes() {
    let mut rng = Rng::new(9);
    let x = rand_t(&[1, 3, 2, 2], &mut rng);
    let ok = LabelMap::new(1, 2, 2, vec![0, 2, 255, 1]).unwrap();
    assert!(ops::cross_entropy(&x, &ok, 255).is_ok());
    let out_of_range = LabelMap::new(1, 2, 2, vec![0, 3, 1, 1]).unwrap();
    let err = ops::cross_entropy(&x, &out_of_range, 255).unwrap_err().to_string();
    assert!(err.contains("cross_entropy") && err.contains('3'), "{err}");
    // 255 is a class-range violation when it is not the ignore value.
    assert!(ops::cross_entropy(&x, &ok, 254).is_err());
    let wrong_size = LabelMap::new(1, 2, 3, vec![0; 6]).unwrap();
    assert!(ops::cross_entropy(&x, &wrong_size, 255).is_err());
    assert!(ops::cross_entropy(&rand_t(&[3, 2, 2], &mut rng), &ok, 255).is_err());
}

#[test]
fn grad_dropout() {
    property("grad_dropout", 30, |c: &Channels| {
        let mut rng = Rng::new(c.seed);
        let p = 0.9 * rng.uniform();
        let mask_seed = rng.next_u64();
        let x = rand_t(&c.d, &mut rng);
        // The generator is re-created inside the closure: every evaluation draws the same mask.
        gc(|x| ops::dropout(&x[0], p, true, &mut Rng::new(mask_seed)), &[x]).map_err(|e| format!("p={p}: {e}"))
    });
}

#[test]
fn dropout_eval_identity_and_validation() {
    let mut rng = Rng::new(11);
    let x = rand_t(&[2, 3, 4], &mut rng);
    let before = rng.clone();
    for (p, training) in [(0.5, false), (0.0, true)] {
        let y = ops::dropout(&x, p, training, &mut rng).unwrap();
        assert_eq!(y.to_vec_f64().unwrap(), x.to_vec_f64().unwrap());
    }
    assert_eq!(rng, before, "identity cases do not advance the generator");
    for p in [1.0, -0.1, f64::NAN] {
        assert!(ops::dropout(&x, p, true, &mut rng).is_err(), "p = {p}");
    }
}

#[test]
fn results_are_bit_identical_across_thread_counts() {
    let run = || {
        let mut rng = Rng::new(21);
        let x = Tensor::randn([2, 5, 17, 19], 1.0, DType::F32, &mut rng);
        let (w, b) = (Tensor::randn([5], 1.0, DType::F32, &mut rng), Tensor::randn([5], 1.0, DType::F32, &mut rng));
        let labels = rand_labels(&[2, 5, 17, 19], 0.2, &mut rng);
        let tape = engine::Tape::new();
        let xw = tape.watch(&x);
        let (mut rm, mut rv) = (Tensor::zeros([5], DType::F32), Tensor::ones([5], DType::F32));
        let y = ops::batch_norm2d(&xw, Some(&w), Some(&b), &mut rm, &mut rv, true, 0.1, 1e-5).unwrap();
        let y = ops::resize_bilinear(&y, [23, 11], false).unwrap();
        let y = ops::resize_bilinear(&ops::l2_normalize(&y, 1e-12).unwrap(), [17, 19], true).unwrap();
        let loss = ops::cross_entropy(&ops::log_softmax(&y).unwrap(), &labels, 255).unwrap();
        let g = tape.backward(&loss).unwrap();
        let mut v = g.get(&xw).unwrap().to_vec_f64().unwrap();
        v.extend(rm.to_vec_f64().unwrap());
        v.extend(rv.to_vec_f64().unwrap());
        v.push(loss.item().unwrap());
        v
    };
    let with = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(run);
    let one = with(1);
    for threads in [2, 3, 5] {
        assert!(with(threads).iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads differ");
    }
}
