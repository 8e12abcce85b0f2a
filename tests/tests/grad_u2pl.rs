//! Gradient checks (f64, central differences, seeded quickcheck) of the two ops of U2PL's
//! contrastive term: `gather_pixels` (anchors out of a feature map, repeats allowed) and
//! `info_nce` (anchors against their own positive + negative keys; `info_nce_indexed`, the keys as
//! rows of a shared bank, repeats allowed), plus their validation and a hand-computed value.

use engine::{ops, DType, Rng, Tensor};
use segnet_tests::{arbitrary_via_rng, gc, property, rand_t, shrink_dims, unit_rows, Case};

/// `[N, C, H, W]` plus a seed for the indices.
#[derive(Clone, Debug)]
struct Map {
    d: Vec<usize>,
    m: usize,
    seed: u64,
}
impl Case for Map {
    fn from_rng(rng: &mut Rng) -> Self {
        let d = vec![1 + rng.below(3), 1 + rng.below(4), 1 + rng.below(4), 1 + rng.below(4)];
        Map { d, m: rng.below(12), seed: rng.next_u64() }
    }
    fn smaller(&self) -> Vec<Self> {
        let mut v: Vec<Self> = shrink_dims(&self.d).into_iter().map(|d| Map { d, ..self.clone() }).collect();
        if self.m > 0 {
            v.push(Map { m: self.m - 1, ..self.clone() });
        }
        v
    }
}
arbitrary_via_rng!(Map);

#[test]
fn grad_gather_pixels() {
    property("grad_gather_pixels", 60, |c: &Map| {
        let mut rng = Rng::new(c.seed);
        let x = rand_t(&c.d, &mut rng);
        let pixels = c.d[0] * c.d[2] * c.d[3];
        // Repeats are likely with few pixels: their gradients must add up.
        let idx: Vec<usize> = (0..c.m).map(|_| rng.below(pixels)).collect();
        gc(|xs| ops::gather_pixels(&xs[0], &idx), &[x])
    });
}

#[test]
fn gather_pixels_picks_channel_vectors_and_validates() {
    // x[n, c, p] = 100 n + 10 c + p on [2, 3, 2x2].
    let v: Vec<f64> = (0..24).map(|i| (100 * (i / 12) + 10 * (i / 4 % 3) + i % 4) as f64).collect();
    let x = Tensor::from_f64_vec(v, vec![2, 3, 2, 2], DType::F64);
    let y = ops::gather_pixels(&x, &[5, 0, 5]).unwrap();
    assert_eq!(y.dims(), [3, 3]);
    assert_eq!(y.to_vec_f64().unwrap(), [101., 111., 121., 0., 10., 20., 101., 111., 121.]);
    assert!(ops::gather_pixels(&x, &[8]).unwrap_err().to_string().contains("out of range"));
    assert!(ops::gather_pixels(&Tensor::zeros([3], DType::F64), &[0]).is_err());
    assert_eq!(ops::gather_pixels(&x, &[]).unwrap().dims(), [0, 3]);
}

/// Rows, keys per row, dims, unit-normalised or raw, temperature.
#[derive(Clone, Debug)]
struct Nce {
    m: usize,
    k: usize,
    d: usize,
    unit: bool,
    tau: f64,
    seed: u64,
}
impl Case for Nce {
    fn from_rng(rng: &mut Rng) -> Self {
        Nce {
            m: 1 + rng.below(5),
            k: 1 + rng.below(6),
            d: 1 + rng.below(5),
            unit: rng.uniform() < 0.5,
            tau: [0.07, 0.5, 1.0, 2.0][rng.below(4)],
            seed: rng.next_u64(),
        }
    }
    fn smaller(&self) -> Vec<Self> {
        let mut v = Vec::new();
        for (i, x) in [self.m, self.k, self.d].into_iter().enumerate() {
            if x > 1 {
                let mut c = self.clone();
                *[&mut c.m, &mut c.k, &mut c.d][i] -= 1;
                v.push(c);
            }
        }
        v
    }
}
arbitrary_via_rng!(Nce);

#[test]
fn grad_info_nce() {
    property("grad_info_nce", 60, |c: &Nce| {
        let mut rng = Rng::new(c.seed);
        let mut a = rand_t(&[c.m, c.d], &mut rng);
        let mut k = rand_t(&[c.m, c.k, c.d], &mut rng);
        if c.unit {
            (a, k) = (unit_rows(&a, c.d), unit_rows(&k, c.d));
        }
        // Both inputs are checked: the anchors (what U2PL trains) and the keys.
        gc(|xs| ops::info_nce(&xs[0], &xs[1], c.tau), &[a, k]).map_err(|e| format!("tau {}: {e}", c.tau))
    });
}

#[test]
fn grad_info_nce_through_gather_pixels() {
    // The composition the U2PL objective builds: sampled pixels of a map against fixed keys.
    property("grad_info_nce_through_gather_pixels", 30, |c: &Map| {
        let mut rng = Rng::new(c.seed);
        let x = rand_t(&c.d, &mut rng);
        let pixels = c.d[0] * c.d[2] * c.d[3];
        let idx: Vec<usize> = (0..c.m.max(1)).map(|_| rng.below(pixels)).collect();
        let keys = rand_t(&[idx.len(), 3, c.d[1]], &mut rng);
        gc(|xs| ops::info_nce(&ops::gather_pixels(&xs[0], &idx)?, &keys, 0.5), &[x])
    });
}

#[test]
fn info_nce_value_and_validation() {
    // One row, D = 1: a = 1, keys [1, -1], tau 0.5: logits [2, -2], loss = log(1 + e^-4).
    let a = Tensor::from_f64_vec(vec![1.0], vec![1, 1], DType::F64);
    let k = Tensor::from_f64_vec(vec![1.0, -1.0], vec![1, 2, 1], DType::F64);
    let l = ops::info_nce(&a, &k, 0.5).unwrap().item().unwrap();
    assert!((l - (1.0 + (-4f64).exp()).ln()).abs() < 1e-12, "{l}");
    // Only the positive: the loss is exactly 0.
    let k1 = Tensor::from_f64_vec(vec![0.3], vec![1, 1, 1], DType::F64);
    assert_eq!(ops::info_nce(&a, &k1, 0.5).unwrap().item().unwrap(), 0.0);
    // No rows: 0, not NaN.
    let (a0, k0) = (Tensor::zeros([0, 4], DType::F64), Tensor::zeros([0, 3, 4], DType::F64));
    assert_eq!(ops::info_nce(&a0, &k0, 0.5).unwrap().item().unwrap(), 0.0);
    assert!(ops::info_nce(&a, &k, 0.0).unwrap_err().to_string().contains("tau"));
    assert!(ops::info_nce(&a, &Tensor::zeros([1, 2, 3], DType::F64), 0.5).is_err());
    assert!(ops::info_nce(&a, &Tensor::zeros([1, 0, 1], DType::F64), 0.5).is_err());
    assert!(ops::info_nce(&a, &Tensor::zeros([1, 2, 1], DType::F32), 0.5).is_err());
}

/// The parallel, lane-split op against the plain loop of its definition (f64 throughout), on
/// more rows than one task takes and a `D` that is not a multiple of the four lanes: loss and both
/// gradients.
#[test]
fn info_nce_matches_the_plain_loop() {
    let (m, k, d, tau) = (150, 7, 13, 0.5);
    let mut rng = Rng::new(21);
    let (a, keys) = (rand_t(&[m, d], &mut rng), rand_t(&[m, k, d], &mut rng));
    let tape = engine::Tape::new();
    let (at, kt) = (tape.watch(&a), tape.watch(&keys));
    let loss = ops::info_nce(&at, &kt, tau).unwrap();
    let got = loss.item().unwrap();
    let grads = tape.backward(&loss).unwrap();
    let (ga, gk) = (grads.get(&at).unwrap().to_vec_f64().unwrap(), grads.get(&kt).unwrap().to_vec_f64().unwrap());
    let (av, kv) = (a.to_vec_f64().unwrap(), keys.to_vec_f64().unwrap());
    let (mut want, mut wa, mut wk) = (0.0, vec![0.0; m * d], vec![0.0; m * k * d]);
    for r in 0..m {
        let l: Vec<f64> =
            (0..k).map(|j| (0..d).map(|t| av[r * d + t] * kv[(r * k + j) * d + t]).sum::<f64>() / tau).collect();
        let lse = l.iter().map(|v| v.exp()).sum::<f64>().ln();
        want += (lse - l[0]) / m as f64;
        for j in 0..k {
            let c = ((l[j] - lse).exp() - if j == 0 { 1.0 } else { 0.0 }) / (m as f64 * tau);
            for t in 0..d {
                wa[r * d + t] += c * kv[(r * k + j) * d + t];
                wk[(r * k + j) * d + t] = c * av[r * d + t];
            }
        }
    }
    assert!((got - want).abs() < 1e-12 * want.abs(), "loss {got} vs {want}");
    for (what, g, w) in [("anchors", &ga, &wa), ("keys", &gk, &wk)] {
        let scale = w.iter().fold(0f64, |s, v| s.max(v.abs()));
        let bad = g.iter().zip(w.iter()).position(|(x, y)| (x - y).abs() > 1e-12 * scale);
        assert_eq!(bad, None, "{what} gradient differs from the plain loop");
    }
}

/// A bank of `r` rows and an index drawn from it (repeats likely with few rows).
fn bank_index(c: &Nce, r: usize, rng: &mut Rng) -> Vec<usize> {
    (0..c.m * c.k).map(|_| rng.below(r)).collect()
}

#[test]
fn grad_info_nce_indexed() {
    // Both inputs: the anchors, and the bank rows, whose gradient sums over every use of a row.
    property("grad_info_nce_indexed", 60, |c: &Nce| {
        let mut rng = Rng::new(c.seed);
        let r = 1 + rng.below(2 * c.k);
        let mut a = rand_t(&[c.m, c.d], &mut rng);
        let mut bank = rand_t(&[r, c.d], &mut rng);
        if c.unit {
            (a, bank) = (unit_rows(&a, c.d), unit_rows(&bank, c.d));
        }
        let idx = bank_index(c, r, &mut rng);
        gc(|xs| ops::info_nce_indexed(&xs[0], &xs[1], &idx, c.k, c.tau), &[a, bank])
            .map_err(|e| format!("tau {}, bank {r}, index {idx:?}: {e}", c.tau))
    });
}

/// The indexed op equals `info_nce` on the key tensor its index gathers, bit for bit in f32 (the
/// dot products and sums run in the same order): the loss and the anchors' gradient, and the
/// bank's gradient is the keys' gradient summed over each row's uses.
#[test]
fn info_nce_indexed_equals_info_nce_on_the_gathered_keys() {
    let (m, k, d, r, tau) = (150, 7, 13, 40, 0.5);
    let mut rng = Rng::new(22);
    let a = Tensor::randn([m, d], 1.0, DType::F32, &mut rng);
    let bank = Tensor::randn([r, d], 1.0, DType::F32, &mut rng);
    let idx: Vec<usize> = (0..m * k).map(|_| rng.below(r)).collect();
    let bv = bank.to_vec_f32().unwrap();
    let keys: Vec<f32> = idx.iter().flat_map(|&i| bv[i * d..(i + 1) * d].to_vec()).collect();
    let keys = Tensor::from_vec(keys, vec![m, k, d]).unwrap();
    let run = |x: &Tensor, keys: Option<&Tensor>| {
        let tape = engine::Tape::new();
        let (at, kt) = (tape.watch(x), tape.watch(keys.unwrap_or(&bank)));
        let loss = match keys {
            Some(_) => ops::info_nce(&at, &kt, tau),
            None => ops::info_nce_indexed(&at, &kt, &idx, k, tau),
        }
        .unwrap();
        let grads = tape.backward(&loss).unwrap();
        let g = |t: &Tensor| grads.get(t).unwrap().to_vec_f32().unwrap();
        (loss.to_vec_f32().unwrap(), g(&at), g(&kt))
    };
    let (l1, ga1, gk) = run(&a, Some(&keys));
    let (l2, ga2, gb) = run(&a, None);
    assert_eq!(l1, l2, "loss");
    assert_eq!(ga1, ga2, "anchor gradient");
    let mut want = vec![0f64; r * d];
    for (mj, &i) in idx.iter().enumerate() {
        for t in 0..d {
            want[i * d + t] += gk[mj * d + t] as f64;
        }
    }
    let scale = want.iter().fold(0f64, |s, v| s.max(v.abs()));
    let bad = gb.iter().zip(&want).position(|(x, y)| (*x as f64 - y).abs() > 1e-5 * scale);
    assert_eq!(bad, None, "bank gradient vs the keys' gradient summed per row");
}

#[test]
fn info_nce_indexed_validates_its_index() {
    let a = Tensor::zeros([2, 3], DType::F64);
    let bank = Tensor::zeros([4, 3], DType::F64);
    let err = |idx: &[usize], k: usize| ops::info_nce_indexed(&a, &bank, idx, k, 0.5).unwrap_err().to_string();
    assert!(err(&[0, 1, 2], 2).contains("3 key indices for 2 anchors of 2 keys"), "{}", err(&[0, 1, 2], 2));
    assert!(err(&[0, 1, 4, 2], 2).contains("key index 4 out of range for a bank of 4 rows"));
    assert!(err(&[], 0).contains("K >= 1"));
    assert!(ops::info_nce_indexed(&a, &Tensor::zeros([4, 2], DType::F64), &[0; 4], 2, 0.5).is_err());
    assert!(ops::info_nce_indexed(&a, &bank, &[0; 4], 2, f64::NAN).unwrap_err().to_string().contains("tau"));
    assert_eq!(ops::info_nce_indexed(&a, &bank, &[3, 0, 1, 1], 2, 0.5).unwrap().item().unwrap(), 2f64.ln());
}
