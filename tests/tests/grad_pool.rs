//! max_pool2d and global_avg_pool2d: gradient checks (f64, central differences) over random
//! shapes and hyperparameters, plus argument validation.

use engine::ops;
use engine::{DType, Error, Rng, Tensor};
use segnet_tests::{arbitrary_via_rng, gc, property, rand_t, Case};

#[derive(Clone, Debug)]
struct Pool {
    dims: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    seed: u64,
}

impl Pool {
    fn valid(&self) -> bool {
        (0..2)
            .all(|i| self.dims[2 + i] + 2 * self.padding[i] >= self.kernel[i] && self.padding[i] <= self.kernel[i] / 2)
    }
}

impl Case for Pool {
    fn from_rng(rng: &mut Rng) -> Self {
        loop {
            let kernel = [1 + rng.below(3), 1 + rng.below(3)];
            let p = Pool {
                dims: [1 + rng.below(2), 1 + rng.below(3), 1 + rng.below(9), 1 + rng.below(9)],
                kernel,
                stride: [1 + rng.below(3), 1 + rng.below(3)],
                padding: [rng.below(kernel[0] / 2 + 1), rng.below(kernel[1] / 2 + 1)],
                seed: rng.next_u64(),
            };
            if p.valid() {
                return p;
            }
        }
    }
    fn smaller(&self) -> Vec<Self> {
        (0..4)
            .filter(|&i| self.dims[i] > 1)
            .map(|i| {
                let mut c = self.clone();
                c.dims[i] -= 1;
                c
            })
            .filter(Pool::valid)
            .collect()
    }
}
arbitrary_via_rng!(Pool);

/// Distinct values 0.1 apart (a random permutation, scaled), so no window has a tie within the
/// finite-difference step and the argmax is stable under perturbation.
fn distinct(dims: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = dims.iter().product();
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * 0.1 - n as f64 * 0.05).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    Tensor::from_f64_vec(v, dims.to_vec(), DType::F64)
}

#[test]
fn grad_max_pool2d() {
    property("grad_max_pool2d", 120, |c: &Pool| {
        let mut rng = Rng::new(c.seed);
        let x = distinct(&c.dims, &mut rng);
        gc(|x| ops::max_pool2d(&x[0], c.kernel, c.stride, c.padding), &[x])
    });
}

#[test]
fn max_pool2d_matches_definition() {
    property("max_pool2d_matches_definition", 120, |c: &Pool| {
        let mut rng = Rng::new(c.seed);
        let x = distinct(&c.dims, &mut rng);
        let y = ops::max_pool2d(&x, c.kernel, c.stride, c.padding).map_err(|e| e.to_string())?;
        let xv = x.to_vec_f64().unwrap();
        let [n, ch, h, w] = c.dims;
        let out = |i: usize| (c.dims[2 + i] + 2 * c.padding[i] - c.kernel[i]) / c.stride[i] + 1;
        let (oh, ow) = (out(0), out(1));
        if y.dims() != [n, ch, oh, ow] {
            return Err(format!("output shape {:?}, expected {:?}", y.dims(), [n, ch, oh, ow]));
        }
        let yv = y.to_vec_f64().unwrap();
        for p in 0..n * ch {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = f64::NEG_INFINITY;
                    for ky in 0..c.kernel[0] {
                        for kx in 0..c.kernel[1] {
                            let iy = (oy * c.stride[0] + ky) as isize - c.padding[0] as isize;
                            let ix = (ox * c.stride[1] + kx) as isize - c.padding[1] as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                m = m.max(xv[(p * h + iy as usize) * w + ix as usize]);
                            }
                        }
                    }
                    let got = yv[(p * oh + oy) * ow + ox];
                    if got != m {
                        return Err(format!("plane {p} ({oy}, {ox}): {got} vs {m}"));
                    }
                }
            }
        }
        Ok(())
    });
}

#[test]
fn max_pool2d_ties_route_gradient_to_first_max() {
    // One 2x2 window, all equal: the whole gradient goes to the first element in scan order.
    let tape = engine::Tape::new();
    let x = tape.watch(&Tensor::ones([1, 1, 2, 2], DType::F64));
    let y = ops::max_pool2d(&x, [2, 2], [2, 2], [0, 0]).unwrap();
    let g = tape.backward(&ops::sum_all(&y).unwrap()).unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec_f64().unwrap(), vec![1.0, 0.0, 0.0, 0.0]);
}

#[test]
fn grad_global_avg_pool2d() {
    property("grad_global_avg_pool2d", 40, |c: &Pool| {
        let mut rng = Rng::new(c.seed);
        gc(|x| ops::global_avg_pool2d(&x[0]), &[rand_t(&c.dims, &mut rng)])?;
        let y = ops::global_avg_pool2d(&rand_t(&c.dims, &mut rng)).map_err(|e| e.to_string())?;
        if y.dims() != [c.dims[0], c.dims[1], 1, 1] {
            return Err(format!("output shape {:?}", y.dims()));
        }
        Ok(())
    });
}

#[test]
fn pools_reject_bad_arguments() {
    let x = Tensor::zeros([1, 2, 5, 5], DType::F64);
    let invalid = |r: engine::Result<Tensor>| matches!(r, Err(Error::Invalid { op: "max_pool2d", .. }));
    assert!(ops::max_pool2d(&x, [3, 3], [2, 2], [1, 1]).is_ok());
    assert!(invalid(ops::max_pool2d(&x, [3, 3], [2, 2], [2, 1])), "padding > kernel / 2");
    assert!(invalid(ops::max_pool2d(&x, [3, 0], [2, 2], [0, 0])));
    assert!(invalid(ops::max_pool2d(&x, [3, 3], [0, 2], [0, 0])));
    assert!(invalid(ops::max_pool2d(&x, [6, 6], [1, 1], [0, 0])), "window larger than the input");
    let bad_rank = Tensor::zeros([2, 5, 5], DType::F64);
    assert!(matches!(ops::max_pool2d(&bad_rank, [2, 2], [2, 2], [0, 0]), Err(Error::Shape { .. })));
    assert!(matches!(ops::global_avg_pool2d(&bad_rank), Err(Error::Shape { op: "global_avg_pool2d", .. })));
}
