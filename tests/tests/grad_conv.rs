//! conv2d: gradient checks (f64, central differences) over random shapes and hyperparameters,
//! the forward against a direct 7-loop definition, larger cases that exercise the kernel's tiling
//! and tap skipping, and argument validation.

use engine::ops::{self, Conv2dParams};
use engine::{DType, Error, Rng, Tensor};
use segnet_tests::{arbitrary_via_rng, gc, property, rand_t, Case};

#[derive(Clone, Debug)]
struct Conv {
    n: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    p: Conv2dParams,
    bias: bool,
    seed: u64,
}

impl Conv {
    fn valid(&self) -> bool {
        (0..2).all(|i| {
            let len = [self.h, self.w][i] + 2 * self.p.padding[i];
            len > self.p.dilation[i] * (self.k[i] - 1)
        })
    }
}

impl Case for Conv {
    fn from_rng(rng: &mut Rng) -> Self {
        loop {
            let groups = 1 + rng.below(3);
            let depthwise = rng.uniform() < 0.2;
            let (c_in, c_out) = if depthwise {
                (groups, groups)
            } else {
                (groups * (1 + rng.below(6 / groups)), groups * (1 + rng.below(6 / groups)))
            };
            let c = Conv {
                n: 1 + rng.below(2),
                c_in,
                c_out,
                h: 1 + rng.below(9),
                w: 1 + rng.below(9),
                k: [1 + rng.below(3), 1 + rng.below(3)],
                p: Conv2dParams {
                    stride: [1 + rng.below(2), 1 + rng.below(2)],
                    padding: [rng.below(3), rng.below(3)],
                    dilation: [1 + rng.below(3), 1 + rng.below(3)],
                    groups,
                },
                bias: rng.uniform() < 0.5,
                seed: rng.next_u64(),
            };
            if c.valid() {
                return c;
            }
        }
    }
    fn smaller(&self) -> Vec<Self> {
        let mut v = Vec::new();
        let mut push = |f: &dyn Fn(&mut Conv)| {
            let mut c = self.clone();
            f(&mut c);
            if c.valid() {
                v.push(c);
            }
        };
        if self.n > 1 {
            push(&|c| c.n -= 1);
        }
        if self.h > 1 {
            push(&|c| c.h -= 1);
        }
        if self.w > 1 {
            push(&|c| c.w -= 1);
        }
        if self.bias {
            push(&|c| c.bias = false);
        }
        for i in 0..2 {
            if self.p.padding[i] > 0 {
                push(&|c| c.p.padding[i] -= 1);
            }
            if self.p.dilation[i] > 1 {
                push(&|c| c.p.dilation[i] -= 1);
            }
            if self.p.stride[i] > 1 {
                push(&|c| c.p.stride[i] -= 1);
            }
        }
        v
    }
}
arbitrary_via_rng!(Conv);

/// Random x, w and (optional) b for a case.
fn inputs(c: &Conv) -> Vec<Tensor> {
    let mut rng = Rng::new(c.seed);
    let mut v = vec![
        rand_t(&[c.n, c.c_in, c.h, c.w], &mut rng),
        rand_t(&[c.c_out, c.c_in / c.p.groups, c.k[0], c.k[1]], &mut rng),
    ];
    if c.bias {
        v.push(rand_t(&[c.c_out], &mut rng));
    }
    v
}

fn run(c: &Conv, x: &[Tensor]) -> engine::Result<Tensor> {
    ops::conv2d(&x[0], &x[1], x.get(2), c.p)
}

/// `y` by the definition: a plain loop over every output, channel and tap.
fn naive(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: &Conv2dParams) -> Vec<f64> {
    let (xd, wd) = (x.dims().to_vec(), w.dims().to_vec());
    let (xv, wv) = (x.to_vec_f64().unwrap(), w.to_vec_f64().unwrap());
    let bv = b.map(|b| b.to_vec_f64().unwrap());
    let (n, c_in, h, wi) = (xd[0], xd[1], xd[2], xd[3]);
    let (c_out, cig, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
    let out = |len: usize, k: usize, i: usize| (len + 2 * p.padding[i] - p.dilation[i] * (k - 1) - 1) / p.stride[i] + 1;
    let (oh, ow) = (out(h, kh, 0), out(wi, kw, 1));
    let cog = c_out / p.groups;
    let mut y = Vec::with_capacity(n * c_out * oh * ow);
    for ni in 0..n {
        for o in 0..c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bv.as_ref().map_or(0.0, |b| b[o]);
                    for c in 0..cig {
                        let ci = (o / cog) * cig + c;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize - p.padding[0] as isize;
                                let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize - p.padding[1] as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wi {
                                    s += wv[((o * cig + c) * kh + ky) * kw + kx]
                                        * xv[((ni * c_in + ci) * h + iy as usize) * wi + ix as usize];
                                }
                            }
                        }
                    }
                    y.push(s);
                }
            }
        }
    }
    y
}

fn forward_matches_naive(c: &Conv) -> Result<(), String> {
    let x = inputs(c);
    let y = run(c, &x).map_err(|e| e.to_string())?;
    let want = naive(&x[0], &x[1], x.get(2), &c.p);
    let got = y.to_vec_f64().unwrap();
    if got.len() != want.len() {
        return Err(format!("output shape {:?} has {} elements, expected {}", y.dims(), got.len(), want.len()));
    }
    for (i, (a, e)) in got.iter().zip(&want).enumerate() {
        if (a - e).abs() > 1e-12 * (1.0 + e.abs()) {
            return Err(format!("y[{i}] = {a} but the definition gives {e}"));
        }
    }
    Ok(())
}

#[test]
fn grad_conv2d() {
    // dx, dw and db (when present) against central differences.
    property("grad_conv2d", 120, |c: &Conv| gc(|x| run(c, x), &inputs(c)));
}

#[test]
fn conv2d_forward_matches_definition() {
    property("conv2d_forward_matches_definition", 200, forward_matches_naive);
}

/// Larger than one kernel tile, with taps in the padding skipped (dilation like ASPP), phases of a
/// strided input gradient, a 1x1 conv read straight by the GEMM, and depthwise.
fn big_cases() -> Vec<Conv> {
    let p = |s: usize, pad: usize, d: usize, groups: usize| Conv2dParams {
        stride: [s, s],
        padding: [pad, pad],
        dilation: [d, d],
        groups,
    };
    let c = |c_in, c_out, h, w, k, p, seed| Conv { n: 2, c_in, c_out, h, w, k, p, bias: true, seed };
    vec![
        c(3, 4, 33, 33, [3, 3], p(1, 12, 12, 1), 1),
        c(2, 3, 33, 31, [3, 3], p(1, 18, 18, 1), 2),
        c(4, 4, 29, 30, [3, 3], p(2, 1, 1, 2), 3),
        c(3, 2, 40, 41, [1, 1], p(1, 0, 1, 1), 4),
        c(3, 5, 21, 23, [1, 1], p(2, 0, 1, 1), 5),
        c(4, 4, 26, 25, [3, 3], p(1, 6, 6, 4), 6),
        c(3, 3, 19, 17, [3, 3], p(2, 2, 2, 3), 7),
        c(2, 4, 24, 24, [7, 7], p(2, 3, 1, 2), 8),
    ]
}

#[test]
fn conv2d_big_cases_match_definition_and_gradients() {
    for c in big_cases() {
        forward_matches_naive(&c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        gc(|x| run(&c, x), &inputs(&c)).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

#[test]
fn conv2d_only_computes_requested_gradients() {
    let c = &big_cases()[0];
    let x = inputs(c);
    let tape = engine::Tape::new();
    let w = tape.watch(&x[1]);
    let y = ops::conv2d(&x[0], &w, None, c.p).unwrap();
    let g = tape.backward(&ops::sum_all(&y).unwrap()).unwrap();
    assert_eq!(g.get(&w).unwrap().dims(), x[1].dims());
    assert_eq!(g.len(), 1);
}

#[test]
fn conv2d_f32_agrees_with_f64() {
    for c in big_cases() {
        let x = inputs(&c);
        let y64 = run(&c, &x).unwrap().to_vec_f64().unwrap();
        let x32: Vec<Tensor> = x.iter().map(|t| t.to_dtype(DType::F32).unwrap()).collect();
        let y32 = run(&c, &x32).unwrap().to_vec_f64().unwrap();
        for (a, b) in y32.iter().zip(&y64) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{c:?}: f32 {a} vs f64 {b}");
        }
    }
}

#[test]
fn conv2d_rejects_bad_arguments() {
    let x = Tensor::zeros([1, 4, 5, 5], DType::F64);
    let w = Tensor::zeros([6, 2, 3, 3], DType::F64);
    let g2 = Conv2dParams { groups: 2, ..Default::default() };
    assert!(ops::conv2d(&x, &w, None, g2).is_ok());
    let is_shape = |r: engine::Result<Tensor>| matches!(r, Err(Error::Shape { op: "conv2d", .. }));
    let is_invalid = |r: engine::Result<Tensor>| matches!(r, Err(Error::Invalid { op: "conv2d", .. }));
    // weight in-channels != C_in / groups
    assert!(is_shape(ops::conv2d(&x, &w, None, Conv2dParams::default())));
    // channels not divisible by groups
    assert!(is_shape(ops::conv2d(&x, &w, None, Conv2dParams { groups: 3, ..Default::default() })));
    // bias length
    assert!(is_shape(ops::conv2d(&x, &w, Some(&Tensor::zeros([5], DType::F64)), g2)));
    // not 4-D
    assert!(is_shape(ops::conv2d(&Tensor::zeros([4, 5, 5], DType::F64), &w, None, g2)));
    // zero stride / dilation / groups
    assert!(is_invalid(ops::conv2d(&x, &w, None, Conv2dParams { stride: [0, 1], ..g2 })));
    assert!(is_invalid(ops::conv2d(&x, &w, None, Conv2dParams { dilation: [1, 0], ..g2 })));
    assert!(is_invalid(ops::conv2d(&x, &w, None, Conv2dParams { groups: 0, ..g2 })));
    // dilated kernel larger than the padded input
    assert!(is_invalid(ops::conv2d(&x, &w, None, Conv2dParams { dilation: [3, 3], ..g2 })));
    assert!(ops::conv2d(&x, &w, None, Conv2dParams { dilation: [3, 3], padding: [1, 1], ..g2 }).is_ok());
    // mixed dtypes
    assert!(matches!(
        ops::conv2d(&x, &w.to_dtype(DType::F32).unwrap(), None, g2),
        Err(Error::DType { op: "conv2d", .. })
    ));
    let msg = ops::conv2d(&x, &w, None, Conv2dParams::default()).unwrap_err().to_string();
    assert!(msg.contains("[6, 2, 3, 3]") && msg.contains("[1, 4, 5, 5]"), "error should name the shapes: {msg}");
}
