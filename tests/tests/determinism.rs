//! Same inputs, same thread count -> bit-identical results: conv2d forward and backward (dx, dw,
//! db) and matmul. The conv kernels fix their work split by the problem shape alone, so they are
//! also checked against a one-thread pool.

use engine::ops::{self, Conv2dParams};
use engine::{DType, Rng, Tape, Tensor};

/// y, dx, dw, db of a conv large enough to be split into many parallel tiles and dw chunks.
fn conv_fwd_bwd(p: Conv2dParams, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    let x = Tensor::randn([2, 16, 33, 33], 1.0, DType::F32, &mut rng);
    let w = Tensor::randn([24, 16 / p.groups, 3, 3], 0.1, DType::F32, &mut rng);
    let b = Tensor::randn([24], 0.1, DType::F32, &mut rng);
    let tape = Tape::new();
    let (xt, wt, bt) = (tape.watch(&x), tape.watch(&w), tape.watch(&b));
    let y = ops::conv2d(&xt, &wt, Some(&bt), p).unwrap();
    let seed_grad = Tensor::randn(y.shape().clone(), 1.0, DType::F32, &mut rng);
    let g = tape.backward_with(&y, &seed_grad).unwrap();
    [&y, g.get(&xt).unwrap(), g.get(&wt).unwrap(), g.get(&bt).unwrap()]
        .iter()
        .map(|t| t.to_vec_f32().unwrap())
        .collect()
}

fn params() -> Vec<Conv2dParams> {
    vec![
        Conv2dParams { padding: [6, 6], dilation: [6, 6], ..Default::default() },
        Conv2dParams { stride: [2, 2], padding: [1, 1], groups: 2, ..Default::default() },
    ]
}

#[test]
fn conv2d_forward_backward_is_bit_identical_across_runs() {
    for p in params() {
        let a = conv_fwd_bwd(p, 11);
        let b = conv_fwd_bwd(p, 11);
        assert!(a == b, "{p:?}: two runs differ");
    }
}

#[test]
fn conv2d_does_not_depend_on_the_thread_count() {
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    for p in params() {
        let a = one.install(|| conv_fwd_bwd(p, 5));
        let b = three.install(|| conv_fwd_bwd(p, 5));
        assert!(a == b, "{p:?}: 1 thread vs 3 threads differ");
    }
}

#[test]
fn matmul_is_bit_identical_across_runs() {
    let run = || {
        let mut rng = Rng::new(3);
        let a = Tensor::randn([2, 300, 200], 1.0, DType::F32, &mut rng);
        let b = Tensor::randn([200, 250], 1.0, DType::F32, &mut rng);
        let tape = Tape::new();
        let (at, bt) = (tape.watch(&a), tape.watch(&b));
        let y = ops::matmul(&at, &bt).unwrap();
        let seed_grad = Tensor::randn(y.shape().clone(), 1.0, DType::F32, &mut rng);
        let g = tape.backward_with(&y, &seed_grad).unwrap();
        [&y, g.get(&at).unwrap(), g.get(&bt).unwrap()].iter().map(|t| t.to_vec_f32().unwrap()).collect::<Vec<_>>()
    };
    assert!(run() == run(), "matmul: two runs differ");
}
