//! Gradient checks (f64, central differences) for the elementwise, reduction, shape and matmul ops.

use engine::ops;
use engine::{Rng, Tensor};
use segnet_tests::{arbitrary_via_rng, gc, property, rand_away_from_zero, rand_dims, rand_t, shrink_dims, Case};

/// Two shapes that broadcast together: a full shape and a version of it with some dims set to 1
/// (and possibly leading dims dropped), in random order.
#[derive(Clone, Debug)]
struct Broadcast {
    a: Vec<usize>,
    b: Vec<usize>,
    seed: u64,
}
impl Case for Broadcast {
    fn from_rng(rng: &mut Rng) -> Self {
        let r = 1 + rng.below(4);
        let full = rand_dims(rng, r, 4);
        let mut other: Vec<usize> = full.iter().map(|&d| if rng.uniform() < 0.5 { 1 } else { d }).collect();
        let drop = rng.below(other.len() + 1);
        other.drain(..drop);
        let (a, b) = if rng.uniform() < 0.5 { (full, other) } else { (other, full) };
        Broadcast { a, b, seed: rng.next_u64() }
    }
    fn smaller(&self) -> Vec<Self> {
        let mut v = Vec::new();
        if self.a.len() == self.b.len() {
            for i in 0..self.a.len() {
                if self.a[i] > 1 && self.b[i] > 1 {
                    let mut c = self.clone();
                    c.a[i] -= 1;
                    c.b[i] -= 1;
                    v.push(c);
                }
            }
        }
        v
    }
}
arbitrary_via_rng!(Broadcast);

fn binary_prop(
    f: fn(&Tensor, &Tensor) -> engine::Result<Tensor>,
    positive_b: bool,
) -> impl Fn(&Broadcast) -> Result<(), String> + Clone {
    move |c: &Broadcast| {
        let mut rng = Rng::new(c.seed);
        let a = rand_t(&c.a, &mut rng);
        let b =
            if positive_b { ops::affine(&rand_t(&c.b, &mut rng), 0.5, 1.5).unwrap() } else { rand_t(&c.b, &mut rng) };
        gc(|x| f(&x[0], &x[1]), &[a, b])
    }
}

#[test]
fn grad_add() {
    property("grad_add", 40, binary_prop(ops::add, false));
}
#[test]
fn grad_sub() {
    property("grad_sub", 40, binary_prop(ops::sub, false));
}
#[test]
fn grad_mul() {
    property("grad_mul", 40, binary_prop(ops::mul, false));
}
#[test]
fn grad_div() {
    property("grad_div", 40, binary_prop(ops::div, true));
}

/// One random shape.
#[derive(Clone, Debug)]
struct OneShape {
    d: Vec<usize>,
    seed: u64,
}
impl Case for OneShape {
    fn from_rng(rng: &mut Rng) -> Self {
        let r = 1 + rng.below(4);
        OneShape { d: rand_dims(rng, r, 5), seed: rng.next_u64() }
    }
    fn smaller(&self) -> Vec<Self> {
        shrink_dims(&self.d).into_iter().map(|d| OneShape { d, seed: self.seed }).collect()
    }
}
arbitrary_via_rng!(OneShape);

fn unary_prop(
    f: fn(&Tensor) -> engine::Result<Tensor>,
    domain: fn(&[usize], &mut Rng) -> Tensor,
) -> impl Fn(&OneShape) -> Result<(), String> + Clone {
    move |c: &OneShape| {
        let mut rng = Rng::new(c.seed);
        gc(|x| f(&x[0]), &[domain(&c.d, &mut rng)])
    }
}

#[test]
fn grad_neg() {
    property("grad_neg", 20, unary_prop(ops::neg, rand_t));
}
#[test]
fn grad_exp() {
    property("grad_exp", 20, unary_prop(ops::exp, rand_t));
}
#[test]
fn grad_log() {
    property("grad_log", 20, unary_prop(ops::log, |d, r| ops::affine(&rand_t(d, r), 0.4, 0.6).unwrap()));
}
#[test]
fn grad_sqrt() {
    property("grad_sqrt", 20, unary_prop(ops::sqrt, |d, r| ops::affine(&rand_t(d, r), 0.4, 0.6).unwrap()));
}
#[test]
fn grad_relu() {
    // Inputs kept at least 0.05 from the kink at 0 (finite differences use h = 1e-6).
    property("grad_relu", 20, unary_prop(ops::relu, |d, r| rand_away_from_zero(d, 0.05, r)));
}
#[test]
fn grad_affine() {
    property("grad_affine", 20, unary_prop(|x| ops::affine(x, -1.7, 0.3), rand_t));
}

#[test]
fn grad_sum() {
    property("grad_sum", 30, |c: &OneShape| {
        let mut rng = Rng::new(c.seed);
        let axes: Vec<usize> = (0..c.d.len()).filter(|_| rng.uniform() < 0.5).collect();
        let keep = rng.uniform() < 0.5;
        gc(|x| ops::sum(&x[0], &axes, keep), &[rand_t(&c.d, &mut rng)])?;
        gc(|x| ops::sum_all(&x[0]), &[rand_t(&c.d, &mut rng)])
    });
}
#[test]
fn grad_mean() {
    property("grad_mean", 30, |c: &OneShape| {
        let mut rng = Rng::new(c.seed);
        let axes: Vec<usize> = (0..c.d.len()).filter(|_| rng.uniform() < 0.5).collect();
        let keep = rng.uniform() < 0.5;
        gc(|x| ops::mean(&x[0], &axes, keep), &[rand_t(&c.d, &mut rng)])?;
        gc(|x| ops::mean_all(&x[0]), &[rand_t(&c.d, &mut rng)])
    });
}
#[test]
fn grad_reshape() {
    property("grad_reshape", 20, |c: &OneShape| {
        let mut rng = Rng::new(c.seed);
        let n: usize = c.d.iter().product();
        // Multiply by a tracked op afterwards so a wrong backward shape would be caught.
        gc(|x| ops::exp(&ops::reshape(&x[0], &[n, usize::MAX])?), &[rand_t(&c.d, &mut rng)])
    });
}
#[test]
fn grad_permute() {
    property("grad_permute", 30, |c: &OneShape| {
        let mut rng = Rng::new(c.seed);
        let mut perm: Vec<usize> = (0..c.d.len()).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        gc(|x| ops::permute(&x[0], &perm), &[rand_t(&c.d, &mut rng)])
    });
}

#[test]
fn grad_concat() {
    property("grad_concat", 30, |c: &OneShape| {
        let mut rng = Rng::new(c.seed);
        let axis = rng.below(c.d.len());
        let mut d2 = c.d.clone();
        d2[axis] = 1 + rng.below(3);
        let (a, b) = (rand_t(&c.d, &mut rng), rand_t(&d2, &mut rng));
        gc(|x| ops::concat(&[&x[0], &x[1], &x[0]], axis), &[a, b])
    });
}
#[test]
fn grad_split() {
    property("grad_split", 30, |c: &OneShape| {
        let mut rng = Rng::new(c.seed);
        let axis = rng.below(c.d.len());
        let mut d = c.d.clone();
        d[axis] += 2;
        let first = 1 + rng.below(d[axis] - 1);
        let sizes = [first, d[axis] - first];
        // Recombine the pieces in swapped order so each piece's backward is exercised.
        gc(
            |x| {
                let p = ops::split(&x[0], &sizes, axis)?;
                ops::concat(&[&p[1], &ops::exp(&p[0])?], axis)
            },
            &[rand_t(&d, &mut rng)],
        )
    });
}

#[derive(Clone, Debug)]
struct Mm {
    batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    shared_b: bool,
    seed: u64,
}
impl Case for Mm {
    fn from_rng(rng: &mut Rng) -> Self {
        let r = rng.below(3);
        Mm {
            batch: rand_dims(rng, r, 3),
            m: 1 + rng.below(6),
            k: 1 + rng.below(6),
            n: 1 + rng.below(6),
            shared_b: rng.uniform() < 0.3,
            seed: rng.next_u64(),
        }
    }
}
arbitrary_via_rng!(Mm);

#[test]
fn grad_matmul() {
    property("grad_matmul", 40, |c: &Mm| {
        let mut rng = Rng::new(c.seed);
        let mut ad = c.batch.clone();
        ad.extend([c.m, c.k]);
        let mut bd = if c.shared_b { vec![] } else { c.batch.clone() };
        bd.extend([c.k, c.n]);
        gc(|x| ops::matmul(&x[0], &x[1]), &[rand_t(&ad, &mut rng), rand_t(&bd, &mut rng)])
    });
}

/// Gradients summed over several uses of one tensor (added in place when the running sum is not
/// shared): `loss = sum((x + w) c) + sum(x d) + sum(relu(x) e)`. `add`'s backward hands the same
/// gradient buffer to `x` and `w`, so summing into `x`'s must not change `w`'s.
#[test]
fn gradients_of_a_reused_tensor_sum_without_touching_shared_buffers() {
    let mut rng = Rng::new(5);
    let dims = [3, 4, 50, 70]; // several in-place tasks
    let (x, w) = (rand_t(&dims, &mut rng), rand_t(&dims, &mut rng));
    let (c, d, e) = (rand_t(&dims, &mut rng), rand_t(&dims, &mut rng), rand_t(&dims, &mut rng));
    let tape = engine::Tape::new();
    let (xt, wt) = (tape.watch(&x), tape.watch(&w));
    let all = [0, 1, 2, 3];
    let a = ops::sum(&ops::mul(&ops::add(&xt, &wt).unwrap(), &c).unwrap(), &all, false).unwrap();
    let b = ops::sum(&ops::mul(&xt, &d).unwrap(), &all, false).unwrap();
    let r = ops::sum(&ops::mul(&ops::relu(&xt).unwrap(), &e).unwrap(), &all, false).unwrap();
    let loss = ops::add(&ops::add(&a, &b).unwrap(), &r).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let gx = grads.get(&xt).unwrap().to_vec_f64().unwrap();
    let gw = grads.get(&wt).unwrap().to_vec_f64().unwrap();
    let (xv, cv, dv, ev) =
        (x.to_vec_f64().unwrap(), c.to_vec_f64().unwrap(), d.to_vec_f64().unwrap(), e.to_vec_f64().unwrap());
    for i in 0..xv.len() {
        let want_x = cv[i] + dv[i] + if xv[i] > 0.0 { ev[i] } else { 0.0 };
        assert!((gx[i] - want_x).abs() < 1e-12, "dx[{i}] {} vs {want_x}", gx[i]);
        assert_eq!(gw[i], cv[i], "dw[{i}] changed by the sum into dx");
    }
}
