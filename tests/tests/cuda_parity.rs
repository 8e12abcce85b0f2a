//! CUDA against CPU on the same random inputs (feature `cuda`).
//!
//! Every test first opens `cuda:0`; when no device can be initialised it prints
//! `skipped: <reason>` and returns, so the suite passes on a machine that has libcuda but no GPU
//! (scripts/ci-cuda-check.sh runs it against the stub driver and requires every test to say so;
//! without the feature, `cuda_parity_skipped.rs` reports the suite as ignored, with the reason).
//! (A `--features cuda` test binary needs `libcuda.so.1` just to start: CI builds it with
//! `--no-run` and starts it with the stub on `LD_LIBRARY_PATH`; scripts/run-gpu-bundle.sh runs it on
//! the GPU machine.)
//!
//! * engine level (ops dispatched on `Device::Cuda(0)`): elementwise with broadcasting, unary maps,
//!   sums/means, matmul (batched, shared B), permute/concat/split, and every gradient through the
//!   tape (`loss = sum(out * R)`), compared with the same graph on the CPU in f32;
//! * engine level, second phase: conv2d (stride, padding, dilation, groups, with and without
//!   bias), max/global-average pool, batch norm (train and eval, running statistics updated in
//!   place with copy-on-write), bilinear resize (both align_corners, up and down), L2 normalise,
//!   log-softmax, cross-entropy with ignore (and all ignored), dropout (same seed, same mask), the
//!   pixel contrastive loss (every mode x form, the two-view pair loss in both forms, all ignored,
//!   the channel limit);
//! * nn on CUDA: SGD steps (plain, momentum + weight decay, Nesterov) and gradient clipping
//!   against the CPU, and a small segmentation network (conv/BN/ReLU/max-pool/dilated grouped
//!   conv/dropout/image pooling/1x1 head/bilinear upsampling/cross-entropy) moved with
//!   `nn::to_device`: loss, every parameter gradient, and the parameters and running statistics
//!   after a clipped SGD step;
//! * kernel level (`kernels::cuda` wrappers against `kernels::cpu` on the same slices) for the
//!   families the engine dispatches in a second phase: conv2d (stride, padding, dilation, groups),
//!   max/global-average pool, batch norm, bilinear resize (both align_corners), L2 normalise,
//!   log-softmax, cross-entropy with ignore, and the fused contrastive loss (both forms, partners).
//!
//! Tolerances are for f32: `|gpu - cpu| <= atol + rtol |cpu|` with rtol 1e-4 (2e-3 for long
//! reductions / GEMMs whose summation order differs, 2e-2 for TF32).
#![cfg(feature = "cuda")]

use engine::{ops, DType, Device, Rng, Tape, Tensor};
use kernels::cpu;
use kernels::cuda::{self as kc, CudaBuf, CudaDevice};

fn gpu() -> Option<&'static CudaDevice> {
    match kc::device_count() {
        Ok(0) => {
            println!("skipped: no CUDA device");
            None
        }
        Ok(_) => match kc::device(0) {
            Ok(d) => Some(d),
            Err(e) => {
                println!("skipped: cannot open cuda:0: {e}");
                None
            }
        },
        Err(e) => {
            println!("skipped: CUDA driver unavailable: {e}");
            None
        }
    }
}

macro_rules! require_gpu {
    () => {
        match gpu() {
            Some(d) => d,
            None => return,
        }
    };
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let tol = atol + rtol * w.abs();
        assert!(
            !(err > tol) && g.is_nan() == w.is_nan(),
            "{what}: element {i}: cuda {g} vs cpu {w} (|err| {err} > {tol})"
        );
        if err > worst.1 {
            worst = (i, err);
        }
    }
    println!("{what}: max |err| {:.3e} at {} ({} elements)", worst.1, worst.0, got.len());
}

fn randv(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn rand_t(dims: &[usize], rng: &mut Rng) -> Tensor {
    Tensor::randn(dims.to_vec(), 1.0, DType::F32, rng)
}

fn positive_t(dims: &[usize], rng: &mut Rng) -> Tensor {
    Tensor::rand_uniform(dims.to_vec(), 0.5, 2.0, DType::F32, rng)
}

fn cuda(t: &Tensor) -> Tensor {
    t.to_device(Device::Cuda(0)).expect("host to device copy")
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().expect("device to host copy")
}

/// Run `f` on CPU copies and on CUDA copies of `inputs`, compare outputs and the gradients of
/// `sum(out * R)` with respect to every input.
fn parity<F>(name: &str, inputs: &[Tensor], rtol: f32, f: F)
where
    F: Fn(&[Tensor]) -> engine::Result<Tensor>,
{
    parity_tol(name, inputs, rtol, 1e-5, f)
}

/// [`parity`] with an absolute tolerance `atol` (for results that are long sums, whose rounding
/// error scales with the size of the terms rather than with the result).
fn parity_tol<F>(name: &str, inputs: &[Tensor], rtol: f32, atol: f32, f: F)
where
    F: Fn(&[Tensor]) -> engine::Result<Tensor>,
{
    let run = |dev: Device| -> (Vec<f32>, Vec<Vec<f32>>) {
        let tape = Tape::new();
        let xs: Vec<Tensor> = inputs.iter().map(|t| tape.watch(&t.to_device(dev).unwrap())).collect();
        let out = f(&xs).unwrap_or_else(|e| panic!("{name} on {dev}: {e}"));
        assert_eq!(out.device(), dev, "{name}: output device");
        let mut rng = Rng::new(99);
        let r = Tensor::randn(out.dims().to_vec(), 1.0, DType::F32, &mut rng).to_device(dev).unwrap();
        let loss = ops::sum_all(&ops::mul(&out, &r).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap_or_else(|e| panic!("{name} backward on {dev}: {e}"));
        let gs = xs.iter().map(|x| grads.get(x).map(host).unwrap_or_default()).collect();
        (host(&out), gs)
    };
    let (yc, gc) = run(Device::Cpu);
    let (yg, gg) = run(Device::Cuda(0));
    assert_close(&format!("{name} forward"), &yg, &yc, rtol, atol);
    for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
        assert_close(&format!("{name} d input {i}"), a, b, rtol, atol);
    }
}

#[test]
fn device_copies_round_trip_f32_and_f64() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(1);
    for dt in [DType::F32, DType::F64] {
        let t = Tensor::randn(vec![3, 5, 7], 1.0, dt, &mut rng);
        let g = t.to_device(Device::Cuda(0)).unwrap();
        assert_eq!((g.device(), g.dtype()), (Device::Cuda(0), dt));
        assert_eq!(g.to_vec_f64().unwrap(), t.to_vec_f64().unwrap(), "{dt:?} round trip is exact");
    }
}

#[test]
fn f64_ops_on_cuda_are_a_clear_error() {
    let _dev = require_gpu!();
    let t = Tensor::ones(vec![4], DType::F64).to_device(Device::Cuda(0)).unwrap();
    let e = ops::exp(&t).unwrap_err().to_string();
    assert!(e.contains("f32"), "{e}");
    let c = Tensor::ones(vec![4], DType::F32);
    let e = ops::add(&c, &Tensor::ones(vec![4], DType::F32).to_device(Device::Cuda(0)).unwrap()).unwrap_err();
    assert!(e.to_string().contains("device"), "{e}");
}

#[test]
fn elementwise_binary_with_broadcasting() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(2);
    for (a, b) in [
        (vec![2, 3, 4, 5], vec![2, 3, 4, 5]),
        (vec![2, 3, 4, 5], vec![3, 1, 5]),
        (vec![4, 1], vec![1, 6]),
        (vec![7], vec![]),
    ] {
        let (x, y, yp) = (rand_t(&a, &mut rng), rand_t(&b, &mut rng), positive_t(&b, &mut rng));
        parity("add", &[x.clone(), y.clone()], 1e-5, |t| ops::add(&t[0], &t[1]));
        parity("sub", &[x.clone(), y.clone()], 1e-5, |t| ops::sub(&t[0], &t[1]));
        parity("mul", &[x.clone(), y.clone()], 1e-5, |t| ops::mul(&t[0], &t[1]));
        parity("div", &[x.clone(), yp], 1e-4, |t| ops::div(&t[0], &t[1]));
    }
}

#[test]
fn elementwise_unary() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(3);
    let x = rand_t(&[3, 17, 33], &mut rng);
    let p = positive_t(&[3, 17, 33], &mut rng);
    parity("neg", &[x.clone()], 1e-6, |t| ops::neg(&t[0]));
    parity("exp", &[x.clone()], 1e-5, |t| ops::exp(&t[0]));
    parity("log", &[p.clone()], 1e-5, |t| ops::log(&t[0]));
    parity("sqrt", &[p], 1e-5, |t| ops::sqrt(&t[0]));
    parity("relu", &[x.clone()], 1e-6, |t| ops::relu(&t[0]));
    parity("affine", &[x], 1e-5, |t| ops::affine(&t[0], -1.5, 0.25));
}

#[test]
fn sums_and_means_over_axis_sets() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(4);
    let x = rand_t(&[3, 4, 50, 7], &mut rng);
    for axes in [vec![0], vec![1], vec![3], vec![0, 2], vec![1, 2, 3], vec![0, 1, 2, 3]] {
        for keep in [false, true] {
            let a = axes.clone();
            parity("sum", &[x.clone()], 2e-4, move |t| ops::sum(&t[0], &a, keep));
            let a = axes.clone();
            parity("mean", &[x.clone()], 2e-4, move |t| ops::mean(&t[0], &a, keep));
        }
    }
    let big = rand_t(&[300_000], &mut rng);
    parity("sum_all", &[big], 1e-3, |t| ops::sum_all(&t[0]));
}

#[test]
fn matmul_batched_shared_and_edges() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(5);
    for (a, b) in [
        (vec![1, 1], vec![1, 1]),
        (vec![65, 33], vec![33, 70]),
        (vec![3, 17, 130], vec![3, 130, 9]),
        (vec![2, 4, 40, 64], vec![64, 48]),
    ] {
        let (x, y) = (rand_t(&a, &mut rng), rand_t(&b, &mut rng));
        parity("matmul", &[x, y], 2e-3, |t| ops::matmul(&t[0], &t[1]));
    }
}

#[test]
fn matmul_tf32_path() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(6);
    let (x, y) = (rand_t(&[2, 96, 200], &mut rng), rand_t(&[2, 200, 80], &mut rng));
    kc::set_tf32(true);
    let got = host(&ops::matmul(&cuda(&x), &cuda(&y)).unwrap());
    kc::set_tf32(false);
    let want = host(&ops::matmul(&x, &y).unwrap());
    // TF32 keeps 10 mantissa bits: about 1e-3 relative per product, k = 200 terms of size ~1.
    assert_close("matmul tf32", &got, &want, 2e-2, 0.15);
}

#[test]
fn shape_ops() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(7);
    let x = rand_t(&[2, 3, 4, 5], &mut rng);
    parity("permute", &[x.clone()], 0.0, |t| ops::permute(&t[0], &[2, 0, 3, 1]));
    parity("transpose", &[x.clone()], 0.0, |t| ops::transpose(&t[0], 1, 3));
    parity("reshape", &[x.clone()], 0.0, |t| ops::reshape(&t[0], &[6, 20]));
    let y = rand_t(&[2, 5, 4, 5], &mut rng);
    parity("concat", &[x.clone(), y], 0.0, |t| ops::concat(&[&t[0], &t[1]], 1));
    parity("split", &[x], 0.0, |t| {
        let p = ops::split(&t[0], &[1, 3], 2)?;
        ops::add(&ops::mul(&p[0], &p[0])?, &ops::sum(&p[1], &[2], true)?)
    });
}

// ---- engine level, second phase: the remaining op families dispatched on cuda:0 ----

#[test]
fn engine_conv2d_forward_and_gradients() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(20);
    let cases = [
        // x dims, c_out, kernel, stride, padding, dilation, groups, bias
        ([2, 3, 9, 11], 4, [3, 3], [1, 1], [1, 1], [1, 1], 1, true),
        ([1, 4, 13, 10], 6, [3, 2], [2, 1], [2, 0], [2, 3], 2, false),
        ([2, 6, 8, 8], 6, [3, 3], [1, 1], [2, 2], [2, 2], 6, true),
        ([3, 5, 7, 6], 7, [1, 1], [1, 1], [0, 0], [1, 1], 1, true),
        ([1, 8, 17, 17], 4, [5, 5], [3, 2], [2, 1], [1, 1], 4, false),
    ];
    for (xd, c_out, k, stride, padding, dilation, groups, bias) in cases {
        let x = rand_t(&xd, &mut rng);
        let w = rand_t(&[c_out, xd[1] / groups, k[0], k[1]], &mut rng);
        let b = rand_t(&[c_out], &mut rng);
        let p = ops::Conv2dParams { stride, padding, dilation, groups };
        let name = format!("conv2d {xd:?} w {:?} {p:?} bias {bias}", w.dims());
        if bias {
            parity_tol(&name, &[x, w, b], 2e-3, 1e-3, move |t| ops::conv2d(&t[0], &t[1], Some(&t[2]), p));
        } else {
            parity_tol(&name, &[x, w], 2e-3, 1e-3, move |t| ops::conv2d(&t[0], &t[1], None, p));
        }
    }
}

#[test]
fn engine_pools() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(21);
    for (xd, kernel, stride, padding) in [
        ([2, 3, 9, 10], [3, 3], [2, 2], [1, 1]),
        ([1, 4, 8, 8], [2, 2], [2, 2], [0, 0]),
        ([3, 1, 7, 5], [3, 2], [1, 2], [1, 0]),
    ] {
        let x = rand_t(&xd, &mut rng);
        parity("max_pool2d", &[x.clone()], 1e-5, move |t| ops::max_pool2d(&t[0], kernel, stride, padding));
        parity("global_avg_pool2d", &[x], 1e-4, |t| ops::global_avg_pool2d(&t[0]));
    }
}

/// Batch norm on `dev`: output, gradients of `sum(y * R)` for (x, w, b), running mean and var.
fn batch_norm_run(dev: Device, x: &Tensor, w: &Tensor, b: &Tensor, training: bool) -> [Vec<f32>; 6] {
    let tape = Tape::new();
    let xs: Vec<Tensor> = [x, w, b].iter().map(|t| tape.watch(&t.to_device(dev).unwrap())).collect();
    let c = x.dim(1);
    let stat = |f: fn(usize) -> f64| Tensor::from_f64_vec((0..c).map(f).collect(), vec![c], DType::F32);
    let mut rm = stat(|i| 0.1 * i as f64 - 0.2).to_device(dev).unwrap();
    let mut rv = stat(|i| 0.5 + 0.25 * i as f64).to_device(dev).unwrap();
    let y = ops::batch_norm2d(&xs[0], Some(&xs[1]), Some(&xs[2]), &mut rm, &mut rv, training, 0.1, 1e-5).unwrap();
    assert_eq!((y.device(), rm.device(), rv.device()), (dev, dev, dev), "batch_norm2d devices");
    let r = Tensor::randn(y.dims().to_vec(), 1.0, DType::F32, &mut Rng::new(98)).to_device(dev).unwrap();
    let grads = tape.backward(&ops::sum_all(&ops::mul(&y, &r).unwrap()).unwrap()).unwrap();
    let g = |i: usize| host(grads.get(&xs[i]).expect("gradient"));
    [host(&y), g(0), g(1), g(2), host(&rm), host(&rv)]
}

#[test]
fn engine_batch_norm_train_eval_running_stats() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(22);
    for xd in [[3, 5, 7, 11], [2, 4, 1, 1], [4, 16, 9, 9]] {
        let x = Tensor::randn(xd.to_vec(), 2.0, DType::F32, &mut rng);
        let x = ops::affine(&x, 1.0, 0.5).unwrap();
        let (w, b) = (rand_t(&[xd[1]], &mut rng), rand_t(&[xd[1]], &mut rng));
        for training in [true, false] {
            let cpu = batch_norm_run(Device::Cpu, &x, &w, &b, training);
            let gpu = batch_norm_run(Device::Cuda(0), &x, &w, &b, training);
            let names = ["y", "dx", "dw", "db", "running_mean", "running_var"];
            for ((name, g), c) in names.iter().zip(&gpu).zip(&cpu) {
                // Per-channel sums: error relative to the largest entry (dx of a 2-value channel
                // is zero up to rounding, hence the absolute floor).
                let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert_close(&format!("batch_norm2d {xd:?} train {training} {name}"), g, c, 1e-3, 1e-4 * scale + 1e-5);
            }
        }
    }
}

#[test]
fn engine_batch_norm_running_update_is_copy_on_write() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(23);
    let x = cuda(&rand_t(&[2, 3, 4, 4], &mut rng));
    let mut rm = cuda(&Tensor::zeros(vec![3], DType::F32));
    let mut rv = cuda(&Tensor::ones(vec![3], DType::F32));
    // A tape that saved the running mean (eval mode), then a training step that updates it.
    let tape = Tape::new();
    let xw = tape.watch(&x);
    let y_eval = ops::batch_norm2d(&xw, None, None, &mut rm, &mut rv, false, 0.5, 1e-5).unwrap();
    let (saved_mean, saved_var) = (rm.clone(), rv.clone());
    ops::batch_norm2d(&x, None, None, &mut rm, &mut rv, true, 0.5, 1e-5).unwrap();
    assert_eq!(host(&saved_mean), vec![0.0; 3], "a clone of the running mean was written through");
    assert_eq!(host(&saved_var), vec![1.0; 3], "a clone of the running var was written through");
    assert!(host(&rm).iter().any(|&v| v != 0.0), "running mean was not updated: {:?}", host(&rm));
    // The eval backward still sees the old statistics: dx = g / sqrt(1 + eps).
    let gx = tape.backward(&ops::sum_all(&y_eval).unwrap()).unwrap();
    let want = 1.0 / (1.0f32 + 1e-5).sqrt();
    assert_close("bn eval dx after update", &host(gx.get(&xw).unwrap()), &vec![want; x.numel()], 1e-6, 0.0);
}

#[test]
fn engine_resize_bilinear_both_conventions() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(24);
    for (xd, out) in
        [([2, 3, 5, 7], [13, 17]), ([1, 2, 33, 33], [129, 129]), ([2, 2, 16, 12], [7, 5]), ([1, 1, 1, 4], [3, 9])]
    {
        let x = rand_t(&xd, &mut rng);
        for align in [false, true] {
            parity(&format!("resize_bilinear {xd:?} -> {out:?} align {align}"), &[x.clone()], 1e-4, move |t| {
                ops::resize_bilinear(&t[0], out, align)
            });
        }
    }
}

#[test]
fn engine_l2_normalize_and_log_softmax() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(25);
    for xd in [vec![2, 6, 5, 4], vec![4, 9], vec![1, 32, 3, 3]] {
        let x = rand_t(&xd, &mut rng);
        parity(&format!("l2_normalize {xd:?}"), &[x.clone()], 1e-4, |t| ops::l2_normalize(&t[0], 1e-12));
        parity(&format!("log_softmax {xd:?}"), &[x], 1e-4, |t| ops::log_softmax(&t[0]));
    }
}

#[test]
fn engine_cross_entropy_with_ignore() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(26);
    let (n, c, h, w) = (2, 5, 6, 7);
    let x = Tensor::randn(vec![n, c, h, w], 3.0, DType::F32, &mut rng);
    let data: Vec<u8> = (0..n * h * w).map(|i| if i % 4 == 0 { 255 } else { rng.below(c) as u8 }).collect();
    let labels = engine::LabelMap::new(n, h, w, data).unwrap();
    parity("cross_entropy", &[x.clone()], 1e-4, |t| ops::cross_entropy(&t[0], &labels, 255));
    // Every pixel ignored: loss 0 and a zero gradient on both devices.
    let none = engine::LabelMap::new(n, h, w, vec![255; n * h * w]).unwrap();
    let tape = Tape::new();
    let xg = tape.watch(&cuda(&x));
    let loss = ops::cross_entropy(&xg, &none, 255).unwrap();
    assert_eq!((loss.device(), loss.item().unwrap()), (Device::Cuda(0), 0.0));
    let g = tape.backward(&loss).unwrap();
    assert!(host(g.get(&xg).unwrap()).iter().all(|&v| v == 0.0), "all-ignored gradient is not zero");
}

/// Unit-normalised f32 features `[b, d, h, w]` (normalised over `d`), as the projection head gives.
fn unit_features(dims: [usize; 4], rng: &mut Rng) -> Tensor {
    let [b, d, h, w] = dims;
    let hw = h * w;
    let mut f = randv(b * d * hw, rng);
    for img in 0..b {
        for p in 0..hw {
            let n: f32 = (0..d).map(|k| f[(img * d + k) * hw + p].powi(2)).sum::<f32>().sqrt();
            (0..d).for_each(|k| f[(img * d + k) * hw + p] /= n);
        }
    }
    Tensor::from_vec(f, dims.to_vec()).unwrap()
}

/// Labels `b x h x w` over `classes` with about 10% ignored (255).
fn contrastive_labels(b: usize, h: usize, w: usize, classes: usize, rng: &mut Rng) -> engine::LabelMap {
    let data = (0..b * h * w).map(|_| if rng.uniform() < 0.1 { 255 } else { rng.below(classes) as u8 }).collect();
    engine::LabelMap::new(b, h, w, data).unwrap()
}

/// Loss and the feature gradients of `f(features)` (a scalar) on `dev`, with `g = 1.7` seeded into
/// the backward through `loss * 1.7` so the scale reaches the kernel.
fn contrastive_run<F>(dev: Device, inputs: &[Tensor], f: &F) -> (f64, Vec<Vec<f32>>)
where
    F: Fn(&[Tensor]) -> engine::Result<Tensor>,
{
    let tape = Tape::new();
    let xs: Vec<Tensor> = inputs.iter().map(|t| tape.watch(&t.to_device(dev).unwrap())).collect();
    let loss = f(&xs).unwrap_or_else(|e| panic!("contrastive on {dev}: {e}"));
    assert_eq!((loss.device(), loss.dims()), (dev, &[][..]), "loss: device and rank");
    let scaled = ops::affine(&loss, 1.7, 0.0).unwrap();
    let grads = tape.backward(&scaled).unwrap();
    (loss.item().unwrap(), xs.iter().map(|x| host(grads.get(x).expect("feature gradient"))).collect())
}

/// Loss within `1e-4` relative and gradients within `2e-3` relative + `1e-3 max|grad|` (the kernel-level
/// contrastive test's f32 tolerances: every gradient entry is a sum over the whole bag).
fn contrastive_parity<F>(name: &str, inputs: &[Tensor], f: F)
where
    F: Fn(&[Tensor]) -> engine::Result<Tensor>,
{
    let (lc, gc) = contrastive_run(Device::Cpu, inputs, &f);
    let (lg, gg) = contrastive_run(Device::Cuda(0), inputs, &f);
    assert!(lc > 0.0, "{name}: the CPU loss is {lc}; the case tests nothing");
    assert!((lg - lc).abs() <= 1e-4 * lc.abs() + 1e-5, "{name} loss: cuda {lg} vs cpu {lc}");
    println!("{name} loss: cuda {lg} vs cpu {lc}");
    for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
        let gmax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(gmax > 0.0, "{name}: CPU gradient {i} is zero");
        assert_close(&format!("{name} d features {i}"), a, b, 2e-3, 1e-3 * gmax);
    }
}

#[test]
fn engine_pixel_contrastive_loss_every_mode_and_form() {
    use ops::{ContrastiveConfig, ContrastiveForm, ContrastiveMode};
    let _dev = require_gpu!();
    let mut rng = Rng::new(28);
    let dims = [3, 16, 9, 11];
    let f = unit_features(dims, &mut rng);
    let labels = contrastive_labels(dims[0], dims[2], dims[3], 4, &mut rng);
    for mode in [ContrastiveMode::WithinImage, ContrastiveMode::CrossImage, ContrastiveMode::Batch] {
        for form in [ContrastiveForm::PerPositive, ContrastiveForm::SupCon] {
            // Batch mode samples 120 of about 267 valid pixels: the sample must agree across devices.
            let cfg =
                ContrastiveConfig { tau: 0.1, mode, form, classes: 4, max_pixels: 120, seed: 5, ..Default::default() };
            contrastive_parity(&format!("pixel_contrastive_loss {mode:?} {form:?}"), &[f.clone()], |t| {
                ops::pixel_contrastive_loss(&t[0], &labels, &cfg)
            });
        }
    }
}

#[test]
fn engine_pixel_contrastive_loss_pair_both_forms() {
    use ops::{ContrastiveConfig, ContrastiveForm};
    let _dev = require_gpu!();
    let mut rng = Rng::new(29);
    let dims = [2, 12, 8, 10];
    let (fa, fb) = (unit_features(dims, &mut rng), unit_features(dims, &mut rng));
    let la = contrastive_labels(dims[0], dims[2], dims[3], 3, &mut rng);
    let lb = contrastive_labels(dims[0], dims[2], dims[3], 3, &mut rng);
    for form in [ContrastiveForm::PerPositive, ContrastiveForm::SupCon] {
        let cfg = ContrastiveConfig { tau: 0.07, form, classes: 3, ..Default::default() };
        contrastive_parity(&format!("pixel_contrastive_loss_pair {form:?}"), &[fa.clone(), fb.clone()], |t| {
            ops::pixel_contrastive_loss_pair(&t[0], &la, &t[1], &lb, &cfg)
        });
    }
}

#[test]
fn engine_pixel_contrastive_loss_edges() {
    use ops::{ContrastiveConfig, ContrastiveForm};
    let _dev = require_gpu!();
    let mut rng = Rng::new(30);
    let f = cuda(&unit_features([2, 8, 4, 5], &mut rng));
    // Every pixel ignored: loss 0 and a zero gradient, both forms.
    let none = engine::LabelMap::new(2, 4, 5, vec![255; 40]).unwrap();
    for form in [ContrastiveForm::PerPositive, ContrastiveForm::SupCon] {
        let cfg = ContrastiveConfig { form, classes: 2, ..Default::default() };
        let tape = Tape::new();
        let x = tape.watch(&f);
        let loss = ops::pixel_contrastive_loss(&x, &none, &cfg).unwrap();
        assert_eq!((loss.device(), loss.item().unwrap()), (Device::Cuda(0), 0.0));
        let g = tape.backward(&loss).unwrap();
        assert!(host(g.get(&x).unwrap()).iter().all(|&v| v == 0.0), "all-ignored gradient is not zero");
    }
    // Too many channels for the shared-memory tile: an error naming the limit, not a failed launch.
    let d = kc::contrastive::MAX_CHANNELS + 1;
    let wide = cuda(&Tensor::ones(vec![1, d, 1, 2], DType::F32));
    let two = engine::LabelMap::new(1, 1, 2, vec![0, 1]).unwrap();
    let cfg = ContrastiveConfig { classes: 2, ..Default::default() };
    let err = ops::pixel_contrastive_loss(&wide, &two, &cfg).unwrap_err().to_string();
    assert!(err.contains("channels") && err.contains(&kc::contrastive::MAX_CHANNELS.to_string()), "{err}");
    // The two views on different devices.
    let cpu_view = Tensor::ones(vec![2, 8, 4, 5], DType::F32);
    let labels = contrastive_labels(2, 4, 5, 2, &mut rng);
    assert!(ops::pixel_contrastive_loss_pair(&f, &labels, &cpu_view, &labels, &cfg).is_err());
}

#[test]
fn engine_dropout_same_seed_same_mask() {
    let _dev = require_gpu!();
    let mut rng = Rng::new(27);
    let x = rand_t(&[3, 4, 17, 9], &mut rng);
    // Each run draws its mask from a fresh generator with the same seed: identical masks.
    parity("dropout", &[x.clone()], 0.0, |t| ops::dropout(&t[0], 0.3, true, &mut Rng::new(5)));
    // The generator advances by the same amount on both devices.
    let (mut a, mut b) = (Rng::new(6), Rng::new(6));
    ops::dropout(&x, 0.5, true, &mut a).unwrap();
    ops::dropout(&cuda(&x), 0.5, true, &mut b).unwrap();
    assert_eq!(a.uniform(), b.uniform(), "dropout consumed a different number of draws on cuda");
    let kept =
        host(&ops::dropout(&cuda(&x), 0.5, true, &mut Rng::new(8)).unwrap()).iter().filter(|&&v| v != 0.0).count();
    assert!(kept > x.numel() / 3 && kept < 2 * x.numel() / 3, "kept {kept} of {}", x.numel());
}

// ---- nn on CUDA: optimiser, clipping, a small network ----

struct TwoParams {
    w: nn::Param,
    b: nn::Param,
}

impl nn::Module for TwoParams {
    fn visit(&mut self, v: &mut nn::Visitor<'_>) {
        v.param("w", &mut self.w);
        v.param("b", &mut self.b);
    }
}

fn two_params(rng: &mut Rng) -> TwoParams {
    TwoParams {
        w: nn::Param::new(rand_t(&[4, 3, 3, 3], rng), nn::ParamKind::Weight),
        b: nn::Param::new(rand_t(&[4], rng), nn::ParamKind::Bias),
    }
}

#[test]
fn sgd_steps_and_clipping_match_the_cpu() {
    let _dev = require_gpu!();
    let configs = [
        nn::SgdConfig { momentum: 0.0, ..Default::default() },
        nn::SgdConfig { momentum: 0.9, weight_decay: 1e-2, dampening: 0.1, nesterov: false },
        nn::SgdConfig { momentum: 0.9, weight_decay: 4e-5, dampening: 0.0, nesterov: true },
    ];
    for cfg in configs {
        let groups = nn::ParamGroups { lr_mult: vec![("b".into(), 10.0)], no_decay_norm_and_bias: true };
        let mut cpu_m = two_params(&mut Rng::new(30));
        let mut gpu_m = two_params(&mut Rng::new(30));
        nn::to_device(&mut gpu_m, Device::Cuda(0)).unwrap();
        assert_eq!((gpu_m.w.value.device(), gpu_m.b.value.device()), (Device::Cuda(0), Device::Cuda(0)));
        let mut cpu_opt = nn::Sgd::new(cfg).unwrap().with_groups(groups.clone());
        let mut gpu_opt = nn::Sgd::new(cfg).unwrap().with_groups(groups);
        let mut rng = Rng::new(31);
        for step in 0..3 {
            let (gw, gb) = (rand_t(&[4, 3, 3, 3], &mut rng), rand_t(&[4], &mut rng));
            let (mut cg, mut gg) = (nn::Grads::new(), nn::Grads::new());
            cg.insert(&cpu_m.w, gw.clone());
            cg.insert(&cpu_m.b, gb.clone());
            gg.insert(&gpu_m.w, cuda(&gw));
            gg.insert(&gpu_m.b, cuda(&gb));
            // Clip on step 1 only (max norm below the norm of 112 unit normals).
            if step == 1 {
                let (nc, ng) = (nn::clip_grad_norm(&mut cg, 2.0).unwrap(), nn::clip_grad_norm(&mut gg, 2.0).unwrap());
                assert!((nc - ng).abs() <= 1e-5 * nc, "grad norm: cuda {ng} vs cpu {nc}");
                let after = nn::grad_norm(&gg).unwrap();
                assert!((after - 2.0).abs() < 1e-4, "clipped norm on cuda {after}");
            }
            assert_eq!(cpu_opt.step(&mut cpu_m, &cg, 0.05).unwrap(), gpu_opt.step(&mut gpu_m, &gg, 0.05).unwrap());
            assert_eq!(gpu_m.w.value.device(), Device::Cuda(0), "the parameter left the device");
            let what = format!("sgd {cfg:?} step {step}");
            assert_close(&format!("{what} w"), &host(&gpu_m.w.value), &host(&cpu_m.w.value), 1e-5, 1e-6);
            assert_close(&format!("{what} b"), &host(&gpu_m.b.value), &host(&cpu_m.b.value), 1e-5, 1e-6);
            for (name, buf) in cpu_opt.momentum_buffers() {
                let gbuf = &gpu_opt.momentum_buffers()[name];
                assert_close(&format!("{what} momentum {name}"), &host(gbuf), &host(buf), 1e-5, 1e-6);
            }
        }
    }
}

/// A small DeepLab-flavoured network: strided conv stem, BN, ReLU, max pool, a dilated grouped
/// conv block, dropout, image pooling added back, a 1x1 classifier with bias.
struct TinySeg {
    trunk: nn::Sequential,
    head: nn::Conv2d,
}

impl nn::Module for TinySeg {
    fn visit(&mut self, v: &mut nn::Visitor<'_>) {
        v.child("trunk", &mut self.trunk);
        v.child("head", &mut self.head);
    }
}

fn tiny_seg(classes: usize) -> TinySeg {
    let mut rng = Rng::new(40);
    let o = nn::ConvOptions::new();
    let trunk = nn::Sequential::new()
        .with(nn::Conv2d::with_options(3, 8, 3, o.stride(2).padding(1), &mut rng).unwrap())
        .with(nn::BatchNorm2d::new(8))
        .with(nn::ReLU)
        .with(nn::MaxPool2d::new(3, 2, 1))
        .with(nn::Conv2d::with_options(8, 8, 3, o.padding(2).dilation(2).groups(2), &mut rng).unwrap())
        .with(nn::BatchNorm2d::new(8))
        .with(nn::ReLU)
        .with(nn::Dropout::new(0.2).unwrap());
    let head = nn::Conv2d::with_options(8, classes, 1, o.bias(true), &mut rng).unwrap();
    TinySeg { trunk, head }
}

/// One training step: loss, gradients by parameter name, then clip + SGD; returns the loss, the
/// gradients and the state (parameters and buffers) after the step, all on the host.
type Named = Vec<(String, Vec<f32>)>;

fn tiny_seg_step(model: &mut TinySeg, x: &Tensor, labels: &engine::LabelMap) -> (f64, Named, Named) {
    use nn::Layer;
    let mut ctx = nn::Ctx::train(Rng::new(41));
    let f = model.trunk.forward(x, &mut ctx).unwrap();
    let f = ops::add(&f, &ops::global_avg_pool2d(&f).unwrap()).unwrap();
    let logits = model.head.forward(&f, &mut ctx).unwrap();
    let logits = ops::resize_bilinear(&logits, [x.dim(2), x.dim(3)], false).unwrap();
    let loss = nn::CrossEntropyLoss::new(255).forward(&logits, labels).unwrap();
    let value = loss.item().unwrap();
    let mut grads = ctx.backward(&loss).unwrap();
    let mut per_param = Vec::new();
    nn::for_each_param(model, |name, p| {
        per_param.push((name.to_string(), host(grads.get(p).expect("every parameter has a gradient"))))
    });
    nn::clip_grad_norm(&mut grads, 0.5).unwrap();
    let mut opt = nn::Sgd::new(nn::SgdConfig { momentum: 0.9, weight_decay: 1e-4, ..Default::default() }).unwrap();
    opt.step(model, &grads, 0.1).unwrap();
    let mut state = Vec::new();
    nn::visit_all(model, |name, slot| match slot {
        nn::Slot::Param(p) => state.push((name.to_string(), host(&p.value))),
        nn::Slot::Buffer(t) => state.push((name.to_string(), host(t))),
        nn::Slot::Count(_) => {}
    });
    (value, per_param, state)
}

#[test]
fn tiny_segmentation_network_step_matches_the_cpu() {
    let _dev = require_gpu!();
    let classes = 4;
    let mut rng = Rng::new(42);
    let (n, h, w) = (2, 32, 28);
    let x = rand_t(&[n, 3, h, w], &mut rng);
    let data: Vec<u8> = (0..n * h * w).map(|i| if i % 7 == 0 { 255 } else { rng.below(classes) as u8 }).collect();
    let labels = engine::LabelMap::new(n, h, w, data).unwrap();
    let mut cpu_model = tiny_seg(classes);
    let mut gpu_model = tiny_seg(classes);
    nn::to_device(&mut gpu_model, Device::Cuda(0)).unwrap();
    let (lc, gc, sc) = tiny_seg_step(&mut cpu_model, &x, &labels);
    let (lg, gg, sg) = tiny_seg_step(&mut gpu_model, &cuda(&x), &labels);
    println!("tiny segnet loss: cuda {lg} cpu {lc}");
    assert!((lc - lg).abs() <= 1e-4 * lc.abs(), "loss: cuda {lg} vs cpu {lc}");
    assert_eq!(gg.len(), gc.len());
    for ((name, g), (_, c)) in gg.iter().zip(&gc) {
        let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_close(&format!("tiny segnet d {name}"), g, c, 5e-3, 2e-3 * scale);
    }
    assert_eq!(sg.len(), sc.len());
    for ((name, g), (_, c)) in sg.iter().zip(&sc) {
        assert_close(&format!("tiny segnet after step {name}"), g, c, 1e-4, 1e-5);
    }
}

// ---- kernel level: kernels::cuda against kernels::cpu on the same slices ----

fn up(dev: &'static CudaDevice, v: &[f32]) -> CudaBuf {
    dev.upload(v).unwrap()
}
fn down(b: &CudaBuf, n: usize) -> Vec<f32> {
    b.to_vec::<f32>(n).unwrap()
}

#[test]
fn conv2d_forward_and_gradients() {
    let dev = require_gpu!();
    let mut rng = Rng::new(8);
    let cases = [
        // n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups
        (2, 3, 9, 11, 4, 3, 3, [1, 1], [1, 1], [1, 1], 1),
        (1, 4, 13, 10, 6, 3, 2, [2, 1], [2, 0], [2, 3], 2),
        (2, 6, 8, 8, 6, 3, 3, [1, 1], [2, 2], [2, 2], 6),
        (3, 5, 7, 6, 7, 1, 1, [1, 1], [0, 0], [1, 1], 1),
        (1, 8, 17, 17, 4, 5, 5, [3, 2], [2, 1], [1, 1], 4),
    ];
    for (n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups) in cases {
        let g = cpu::conv::Conv2dGeom { n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups };
        let (oh, ow) = g.out_hw().unwrap();
        let x = randv(n * c_in * h * w, &mut rng);
        let wt = randv(c_out * (c_in / groups) * kh * kw, &mut rng);
        let b = randv(c_out, &mut rng);
        let gy = randv(n * c_out * oh * ow, &mut rng);
        let mut y = vec![0.0; gy.len()];
        cpu::conv::conv2d_forward(&g, &x, &wt, Some(&b), &mut y);
        let (dx_, dw_, db_) =
            (dev.alloc(x.len() * 4).unwrap(), dev.alloc(wt.len() * 4).unwrap(), dev.alloc(c_out * 4).unwrap());
        let (mut dx_, mut dw_, mut db_) = (dx_, dw_, db_);
        let (xd, wd, bd, gyd) = (up(dev, &x), up(dev, &wt), up(dev, &b), up(dev, &gy));
        let mut yd = dev.alloc(y.len() * 4).unwrap();
        kc::conv::conv2d_forward(&g, &xd, &wd, Some(&bd), &mut yd).unwrap();
        assert_close(&format!("conv2d fwd {g:?}"), &down(&yd, y.len()), &y, 2e-3, 1e-4);
        let mut dx = vec![0.0; x.len()];
        cpu::conv::conv2d_backward_input(&g, &wt, &gy, &mut dx);
        kc::conv::conv2d_backward_input(&g, &wd, &gyd, &mut dx_).unwrap();
        assert_close("conv2d dx", &down(&dx_, dx.len()), &dx, 2e-3, 1e-4);
        let mut dw = vec![0.0; wt.len()];
        cpu::conv::conv2d_backward_weight(&g, &x, &gy, &mut dw);
        kc::conv::conv2d_backward_weight(&g, &xd, &gyd, &mut dw_).unwrap();
        assert_close("conv2d dw", &down(&dw_, dw.len()), &dw, 2e-3, 1e-3);
        let mut db = vec![0.0; c_out];
        cpu::conv::conv2d_backward_bias(&g, &gy, &mut db);
        kc::conv::conv2d_backward_bias(&g, &gyd, &mut db_).unwrap();
        assert_close("conv2d db", &down(&db_, c_out), &db, 2e-3, 1e-3);
    }
}

#[test]
fn pools_forward_and_backward() {
    let dev = require_gpu!();
    let mut rng = Rng::new(9);
    for (planes, h, w, kernel, stride, padding) in
        [(6, 9, 10, [3, 3], [2, 2], [1, 1]), (4, 8, 8, [2, 2], [2, 2], [0, 0]), (3, 7, 5, [3, 2], [1, 2], [1, 0])]
    {
        let g = cpu::pool::Pool2dGeom { planes, h, w, kernel, stride, padding };
        let (oh, ow) = g.out_hw().unwrap();
        let x = randv(planes * h * w, &mut rng);
        let gy = randv(planes * oh * ow, &mut rng);
        let (mut y, mut am) = (vec![0.0; gy.len()], vec![0u32; gy.len()]);
        cpu::pool::max_pool2d_forward(&g, &x, &mut y, &mut am);
        let mut dx = vec![0.0; x.len()];
        cpu::pool::max_pool2d_backward(&g, &am, &gy, &mut dx);
        let (xd, gyd) = (up(dev, &x), up(dev, &gy));
        let (mut yd, mut amd, mut dxd) =
            (dev.alloc(y.len() * 4).unwrap(), dev.alloc(am.len() * 4).unwrap(), dev.alloc(x.len() * 4).unwrap());
        kc::pool::max_pool2d_forward(&g, &xd, &mut yd, &mut amd).unwrap();
        assert_close("max_pool2d fwd", &down(&yd, y.len()), &y, 0.0, 0.0);
        assert_eq!(amd.to_vec::<u32>(am.len()).unwrap(), am, "max_pool2d argmax");
        kc::pool::max_pool2d_backward(&g, &amd, &gyd, &mut dxd).unwrap();
        assert_close("max_pool2d bwd", &down(&dxd, dx.len()), &dx, 1e-6, 1e-6);
        let (mut gap, mut gapd) = (vec![0.0; planes], dev.alloc(planes * 4).unwrap());
        cpu::pool::global_avg_pool_forward(h * w, &x, &mut gap);
        kc::pool::global_avg_pool_forward(planes, h * w, &xd, &mut gapd).unwrap();
        assert_close("global_avg_pool fwd", &down(&gapd, planes), &gap, 1e-4, 1e-6);
        let (mut dgap, mut dgapd) = (vec![0.0; x.len()], dev.alloc(x.len() * 4).unwrap());
        let gp = &gy[..planes];
        cpu::pool::global_avg_pool_backward(h * w, gp, &mut dgap);
        kc::pool::global_avg_pool_backward(planes, h * w, &up(dev, gp), &mut dgapd).unwrap();
        assert_close("global_avg_pool bwd", &down(&dgapd, x.len()), &dgap, 1e-6, 1e-7);
    }
}

#[test]
fn batch_norm_train_eval_and_backward() {
    let dev = require_gpu!();
    let mut rng = Rng::new(10);
    let d = cpu::batchnorm::BnDims { n: 3, c: 5, hw: 77 };
    let total = d.n * d.c * d.hw;
    let x: Vec<f32> = randv(total, &mut rng).iter().map(|v| 2.0 * v + 0.5).collect();
    let (w, b, g) = (randv(d.c, &mut rng), randv(d.c, &mut rng), randv(total, &mut rng));
    let eps = 1e-5f32;
    let mut y = vec![0.0; total];
    let stats = cpu::batchnorm::bn_train_forward(&x, d, Some(&w), Some(&b), eps, cpu::batchnorm::Then::Nothing, &mut y);
    let (xd, wd, bd, gd) = (up(dev, &x), up(dev, &w), up(dev, &b), up(dev, &g));
    let c4 = d.c * 4;
    let (mut mean, mut var) = (dev.alloc(c4).unwrap(), dev.alloc(c4).unwrap());
    let (mut inv, mut scale, mut shift) = (dev.alloc(c4).unwrap(), dev.alloc(c4).unwrap(), dev.alloc(c4).unwrap());
    kc::batchnorm::bn_stats(&xd, d, &mut mean, &mut var).unwrap();
    kc::batchnorm::bn_scale_shift(d.c, eps, &mean, &var, Some(&wd), Some(&bd), &mut inv, &mut scale, &mut shift)
        .unwrap();
    let mut yd = dev.alloc(total * 4).unwrap();
    kc::batchnorm::bn_apply(&xd, d, &scale, &shift, &mut yd).unwrap();
    assert_close("bn mean", &down(&mean, d.c), &stats.iter().map(|s| s.0).collect::<Vec<_>>(), 1e-4, 1e-5);
    assert_close("bn var", &down(&var, d.c), &stats.iter().map(|s| s.1).collect::<Vec<_>>(), 1e-4, 1e-5);
    assert_close("bn train fwd", &down(&yd, total), &y, 1e-4, 1e-4);
    // Running statistics: momentum 0.1 from (0, 1).
    let (mut rm, mut rv) = (up(dev, &vec![0.0; d.c]), up(dev, &vec![1.0; d.c]));
    kc::batchnorm::bn_running_update(d, 0.1, &mean, &var, &mut rm, &mut rv).unwrap();
    let m = d.per_channel() as f32;
    let want_rv: Vec<f32> = stats.iter().map(|s| 0.9 + 0.1 * s.1 * m / (m - 1.0)).collect();
    assert_close("bn running var", &down(&rv, d.c), &want_rv, 1e-4, 1e-6);
    assert_close("bn running mean", &down(&rm, d.c), &stats.iter().map(|s| 0.1 * s.0).collect::<Vec<_>>(), 1e-4, 1e-6);
    // Backward in both modes.
    let inv_h: Vec<f32> = stats.iter().map(|s| 1.0 / (s.1 + eps).sqrt()).collect();
    let mean_h: Vec<f32> = stats.iter().map(|s| s.0).collect();
    for mode in [cpu::batchnorm::BnMode::Train, cpu::batchnorm::BnMode::Eval] {
        let mut dx = vec![0.0; total];
        let sums = cpu::batchnorm::bn_backward(&g, &x, d, &mean_h, &inv_h, Some(&w), mode, None, Some(&mut dx));
        let (mut sg, mut sgx, mut dxd) =
            (dev.alloc(c4).unwrap(), dev.alloc(c4).unwrap(), dev.alloc(total * 4).unwrap());
        kc::batchnorm::bn_backward(&gd, &xd, d, &mean, &inv, Some(&wd), mode, &mut sg, &mut sgx, Some(&mut dxd))
            .unwrap();
        assert_close("bn db", &down(&sg, d.c), &sums.iter().map(|s| s.0).collect::<Vec<_>>(), 1e-3, 1e-4);
        assert_close("bn dw", &down(&sgx, d.c), &sums.iter().map(|s| s.1).collect::<Vec<_>>(), 1e-3, 1e-4);
        assert_close(&format!("bn dx {mode:?}"), &down(&dxd, total), &dx, 1e-3, 1e-4);
    }
}

#[test]
fn bilinear_both_align_conventions() {
    let dev = require_gpu!();
    let mut rng = Rng::new(11);
    for (ih, iw, oh, ow) in [(5, 7, 13, 17), (33, 33, 129, 129), (16, 12, 7, 5), (1, 4, 3, 9)] {
        for align in [false, true] {
            let d = cpu::resize::ResizeDims { planes: 3, ih, iw, oh, ow };
            let (th, tw) =
                (cpu::resize::linear_taps::<f32>(ih, oh, align), cpu::resize::linear_taps::<f32>(iw, ow, align));
            let x = randv(3 * ih * iw, &mut rng);
            let g = randv(3 * oh * ow, &mut rng);
            let (mut y, mut dx) = (vec![0.0; g.len()], vec![0.0; x.len()]);
            cpu::resize::bilinear_forward(&x, d, &th, &tw, &mut y);
            cpu::resize::bilinear_backward(&g, d, &th, &tw, &mut dx);
            let (mut yd, mut dxd) = (dev.alloc(y.len() * 4).unwrap(), dev.alloc(x.len() * 4).unwrap());
            kc::resize::bilinear_forward(d, align, &up(dev, &x), &mut yd).unwrap();
            kc::resize::bilinear_backward(d, align, &up(dev, &g), &mut dxd).unwrap();
            assert_close(&format!("bilinear fwd {d:?} {align}"), &down(&yd, y.len()), &y, 1e-5, 1e-6);
            assert_close(&format!("bilinear bwd {d:?} {align}"), &down(&dxd, x.len()), &dx, 1e-4, 1e-5);
        }
    }
}

#[test]
fn l2_normalize_log_softmax_cross_entropy() {
    let dev = require_gpu!();
    let mut rng = Rng::new(12);
    let cd = cpu::softmax::ChannelDims { n: 2, c: 7, s: 45 };
    let (len, px) = (cd.n * cd.c * cd.s, cd.n * cd.s);
    let mut x = randv(len, &mut rng);
    x[3] = 0.0; // keep a column tiny is not needed: norms stay well above eps
    let g = randv(len, &mut rng);
    let (xd, gd) = (up(dev, &x), up(dev, &g));
    // L2 normalise.
    let eps = 1e-12f32;
    let (mut norm, mut y, mut gy, mut dx) = (vec![0.0; px], vec![0.0; len], vec![0.0; px], vec![0.0; len]);
    cpu::softmax::channel_l2_norm(&x, cd, &mut norm);
    cpu::softmax::l2_normalize_forward(&x, &norm, eps, cd, &mut y);
    cpu::softmax::channel_dot(&g, &y, cd, &mut gy);
    cpu::softmax::l2_normalize_backward(&g, &y, &norm, &gy, eps, cd, &mut dx);
    let (mut yd, mut nd, mut dxd) =
        (dev.alloc(len * 4).unwrap(), dev.alloc(px * 4).unwrap(), dev.alloc(len * 4).unwrap());
    kc::normalize::l2_normalize_forward(cd.n, cd.c, cd.s, eps, &xd, &mut yd, &mut nd).unwrap();
    kc::normalize::l2_normalize_backward(cd.n, cd.c, cd.s, eps, &gd, &yd, &nd, &mut dxd).unwrap();
    assert_close("l2_normalize fwd", &down(&yd, len), &y, 1e-5, 1e-6);
    assert_close("l2_normalize bwd", &down(&dxd, len), &dx, 1e-4, 1e-5);
    // Log-softmax.
    let (mut lse, mut ls, mut gsum, mut dls) = (vec![0.0; px], vec![0.0; len], vec![0.0; px], vec![0.0; len]);
    cpu::softmax::channel_logsumexp(&x, cd, &mut lse);
    cpu::softmax::log_softmax_forward(&x, &lse, cd, &mut ls);
    cpu::softmax::channel_sum(&g, cd, &mut gsum);
    cpu::softmax::log_softmax_backward(&g, &ls, &gsum, cd, &mut dls);
    let (mut lsd, mut dlsd) = (dev.alloc(len * 4).unwrap(), dev.alloc(len * 4).unwrap());
    kc::softmax::log_softmax_forward(cd.n, cd.c, cd.s, &xd, &mut lsd).unwrap();
    kc::softmax::log_softmax_backward(cd.n, cd.c, cd.s, &gd, &lsd, &mut dlsd).unwrap();
    assert_close("log_softmax fwd", &down(&lsd, len), &ls, 1e-5, 1e-5);
    assert_close("log_softmax bwd", &down(&dlsd, len), &dls, 1e-4, 1e-5);
    // Cross-entropy with ignored pixels.
    let labels: Vec<u8> = (0..px).map(|i| if i % 5 == 0 { 255 } else { (rng.below(cd.c)) as u8 }).collect();
    let (sum, count) = cpu::softmax::cross_entropy_sum(&x, &lse, &labels, 255, cd);
    let ld = dev.upload(&labels).unwrap();
    let (mut lossd, mut lsed) = (dev.alloc(px * 4).unwrap(), dev.alloc(px * 4).unwrap());
    kc::softmax::cross_entropy_forward(cd.n, cd.c, cd.s, 255, &xd, &ld, &mut lossd, &mut lsed).unwrap();
    let gpu_sum: f64 = down(&lossd, px).iter().map(|&v| v as f64).sum();
    assert!((gpu_sum - sum).abs() <= 1e-4 * sum.abs() + 1e-4, "cross_entropy sum: cuda {gpu_sum} vs cpu {sum}");
    let scale = 1.0 / count as f32;
    let mut dce = vec![0.0; len];
    cpu::softmax::cross_entropy_backward(&x, &lse, &labels, 255, scale, cd, &mut dce);
    let mut dced = dev.alloc(len * 4).unwrap();
    kc::softmax::cross_entropy_backward(cd.n, cd.c, cd.s, 255, scale, &xd, &ld, &lsed, &mut dced).unwrap();
    assert_close("cross_entropy bwd", &down(&dced, len), &dce, 1e-4, 1e-7);
}

#[test]
fn dropout_mask_and_fill() {
    let dev = require_gpu!();
    let mut rng = Rng::new(13);
    let x = randv(1000, &mut rng);
    let keep: Vec<u8> = (0..1000).map(|_| (rng.uniform() < 0.7) as u8).collect();
    let mut y = dev.alloc(4000).unwrap();
    kc::elementwise::mask_scale(&up(dev, &x), &dev.upload(&keep).unwrap(), &mut y, 1000, 1.0 / 0.7).unwrap();
    let want: Vec<f32> = x.iter().zip(&keep).map(|(&v, &k)| if k == 1 { v * (1.0 / 0.7f32) } else { 0.0 }).collect();
    assert_close("dropout", &down(&y, 1000), &want, 1e-6, 0.0);
    kc::elementwise::fill(&mut y, 1000, 2.5).unwrap();
    assert!(down(&y, 1000).iter().all(|&v| v == 2.5));
}

#[test]
fn contrastive_loss_both_forms_with_partners() {
    use cpu::contrastive::{backward, forward, Bag, Form, Problem};
    let dev = require_gpu!();
    let mut rng = Rng::new(14);
    let (images, d, hw) = (3usize, 24usize, 150usize);
    // Unit-normalised features [images, d, hw].
    let mut f = randv(images * d * hw, &mut rng);
    for img in 0..images {
        for p in 0..hw {
            let n: f32 = (0..d).map(|k| f[(img * d + k) * hw + p].powi(2)).sum::<f32>().sqrt();
            (0..d).for_each(|k| f[(img * d + k) * hw + p] /= n);
        }
    }
    let labels: Vec<u8> =
        (0..images * hw).map(|_| if rng.uniform() < 0.1 { 255 } else { rng.below(4) as u8 }).collect();
    let bag_of = |img: usize, partner: Option<usize>, group: usize| {
        let items = (0..hw)
            .filter(|&p| labels[img * hw + p] != 255)
            .map(|p| (labels[img * hw + p], (img * hw + p) as u32))
            .collect();
        Bag::from_pixels(items, partner, group)
    };
    let within: Vec<Bag> = (0..images).map(|i| bag_of(i, None, i)).collect();
    let cross: Vec<Bag> = (0..images).map(|i| bag_of(i, Some((i + 1) % images), i)).collect();
    // Images 0 and 1 a pair (mutual partners, one reduction group), image 2 a group of its own.
    let paired = vec![bag_of(0, Some(1), 0), bag_of(1, Some(0), 0), bag_of(2, None, 1)];
    let fd = up(dev, &f);
    for (bags, name) in [(&within, "within"), (&cross, "cross"), (&paired, "paired")] {
        for form in [Form::PerPositive, Form::SupCon] {
            let p = Problem { feats: &f, d, hw, bags, inv_tau: 1.0 / 0.07f32, form };
            let fwd = forward(&p);
            let mut grad = vec![0.0; f.len()];
            backward(&p, &fwd, 1.0, &mut grad);
            let (loss, saved) = kc::contrastive::forward(&fd, d, hw, bags, 1.0 / 0.07, form).unwrap();
            let mut gd = dev.alloc_zeros::<f32>(f.len()).unwrap();
            kc::contrastive::backward(&fd, &saved, 1.0, &mut gd).unwrap();
            assert!(
                (loss - fwd.loss).abs() <= 1e-4 * fwd.loss.abs() + 1e-5,
                "contrastive {name} {form:?} loss: cuda {loss} vs cpu {}",
                fwd.loss
            );
            let gmax = grad.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_close(&format!("contrastive {name} {form:?} grad"), &down(&gd, f.len()), &grad, 2e-3, 1e-3 * gmax);
        }
    }
}

#[test]
fn allocator_reuses_buffers() {
    let dev = require_gpu!();
    let before = dev.pool_stats();
    for _ in 0..10 {
        let _b = dev.alloc(3 << 20).unwrap();
    }
    let after = dev.pool_stats();
    assert!(after.driver_allocs - before.driver_allocs <= 1, "{before:?} -> {after:?}");
    assert!(after.cache_hits - before.cache_hits >= 9, "{before:?} -> {after:?}");
}
