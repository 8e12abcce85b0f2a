//! Gradient check (f64, central differences, seeded quickcheck) of DenseCL's new op,
//! `info_nce_queue` (anchors against their own positive and a shared queue of negatives), its
//! agreement with `info_nce` on the equivalent per-row key tensor, a hand value and validation;
//! and the dense term as the objective composes it (`gather_pixels` of the unit dense map).

use engine::{ops, DType, Rng, Tensor};
use segnet_tests::{arbitrary_via_rng, gc, property, rand_t, unit_rows, Case};

/// Rows, negatives, dims, unit-normalised or raw, temperature.
#[derive(Clone, Debug)]
struct Q {
    m: usize,
    k: usize,
    d: usize,
    unit: bool,
    tau: f64,
    seed: u64,
}
impl Case for Q {
    fn from_rng(rng: &mut Rng) -> Self {
        Q {
            m: 1 + rng.below(5),
            k: rng.below(6),
            d: 1 + rng.below(5),
            unit: rng.uniform() < 0.5,
            tau: [0.07, 0.2, 1.0, 2.0][rng.below(4)],
            seed: rng.next_u64(),
        }
    }
    fn smaller(&self) -> Vec<Self> {
        let mut v = Vec::new();
        if self.m > 1 {
            v.push(Q { m: self.m - 1, ..self.clone() });
        }
        if self.k > 0 {
            v.push(Q { k: self.k - 1, ..self.clone() });
        }
        if self.d > 1 {
            v.push(Q { d: self.d - 1, ..self.clone() });
        }
        v
    }
}
arbitrary_via_rng!(Q);

fn inputs(c: &Q) -> (Tensor, Tensor, Tensor) {
    let mut rng = Rng::new(c.seed);
    let (mut q, mut p, mut n) =
        (rand_t(&[c.m, c.d], &mut rng), rand_t(&[c.m, c.d], &mut rng), rand_t(&[c.k, c.d], &mut rng));
    if c.unit {
        (q, p, n) = (unit_rows(&q, c.d), unit_rows(&p, c.d), unit_rows(&n, c.d));
    }
    (q, p, n)
}

#[test]
fn grad_info_nce_queue() {
    property("grad_info_nce_queue", 60, |c: &Q| {
        let (q, p, n) = inputs(c);
        // All three inputs are checked (DenseCL trains only the anchors; the others are keys).
        gc(|xs| ops::info_nce_queue(&xs[0], &xs[1], &xs[2], c.tau), &[q, p, n])
            .map_err(|e| format!("tau {}: {e}", c.tau))
    });
}

#[test]
fn info_nce_queue_equals_info_nce_with_the_queue_repeated_per_row() {
    property("info_nce_queue_vs_info_nce", 40, |c: &Q| {
        let (q, p, n) = inputs(c);
        let (pv, nv) = (p.to_vec_f64().unwrap(), n.to_vec_f64().unwrap());
        let mut keys = Vec::new();
        for m in 0..c.m {
            keys.extend_from_slice(&pv[m * c.d..(m + 1) * c.d]);
            keys.extend_from_slice(&nv);
        }
        let keys = Tensor::from_f64_vec(keys, vec![c.m, 1 + c.k, c.d], DType::F64);
        let a = ops::info_nce_queue(&q, &p, &n, c.tau).unwrap().item().unwrap();
        let b = ops::info_nce(&q, &keys, c.tau).unwrap().item().unwrap();
        if (a - b).abs() <= 1e-12 * b.abs().max(1.0) {
            Ok(())
        } else {
            Err(format!("{a} vs {b}"))
        }
    });
}

#[test]
fn grad_info_nce_queue_through_the_dense_map() {
    // The dense term: every cell of a unit-normalised [N, D, S, S] map against fixed positives
    // and a fixed queue.
    let mut rng = Rng::new(3);
    let x = rand_t(&[2, 3, 2, 2], &mut rng);
    let idx: Vec<usize> = (0..8).collect();
    let pos = unit_rows(&rand_t(&[8, 3], &mut rng), 3);
    let neg = unit_rows(&rand_t(&[5, 3], &mut rng), 3);
    gc(
        |xs| {
            let z = ops::l2_normalize(&xs[0], 1e-12)?;
            ops::info_nce_queue(&ops::gather_pixels(&z, &idx)?, &pos, &neg, 0.2)
        },
        &[x],
    )
    .unwrap();
}

#[test]
fn info_nce_queue_value_and_validation() {
    // One row, D = 1: q = 1, positive 1, negatives [-1, 0], tau 0.5: logits [2, -2, 0],
    // loss = log(1 + e^-4 + e^-2).
    let q = Tensor::from_f64_vec(vec![1.0], vec![1, 1], DType::F64);
    let p = Tensor::from_f64_vec(vec![1.0], vec![1, 1], DType::F64);
    let n = Tensor::from_f64_vec(vec![-1.0, 0.0], vec![2, 1], DType::F64);
    let l = ops::info_nce_queue(&q, &p, &n, 0.5).unwrap().item().unwrap();
    assert!((l - (1.0 + (-4f64).exp() + (-2f64).exp()).ln()).abs() < 1e-12, "{l}");
    // No negatives: exactly 0. No rows: 0, not NaN.
    let n0 = Tensor::zeros([0, 1], DType::F64);
    assert_eq!(ops::info_nce_queue(&q, &p, &n0, 0.5).unwrap().item().unwrap(), 0.0);
    let (q0, p0) = (Tensor::zeros([0, 1], DType::F64), Tensor::zeros([0, 1], DType::F64));
    assert_eq!(ops::info_nce_queue(&q0, &p0, &n, 0.5).unwrap().item().unwrap(), 0.0);
    assert!(ops::info_nce_queue(&q, &p, &n, 0.0).unwrap_err().to_string().contains("tau"));
    assert!(ops::info_nce_queue(&q, &p, &Tensor::zeros([2, 3], DType::F64), 0.5).is_err());
    assert!(ops::info_nce_queue(&q, &Tensor::zeros([2, 1], DType::F64), &n, 0.5).is_err());
    assert!(ops::info_nce_queue(&q, &p, &Tensor::zeros([2, 1], DType::F32), 0.5).is_err());
}
