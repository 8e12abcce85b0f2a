//! Shared helpers for the workspace tests.
//!
//! Property tests here are quickcheck properties over small random cases ([`Case`] types that
//! implement `quickcheck::Arbitrary`, with shrinking). CI must never flake, so [`property`] runs
//! each property on a fixed, seeded sequence of cases; on failure it shrinks the case with
//! quickcheck's `shrink` and reports the smallest failing one. Set `SEGNET_QC_RANDOM=N` to also run
//! N unseeded quickcheck trials when exploring.

use engine::{DType, Rng, Tensor};
use quickcheck::{Arbitrary, Gen};
use std::fmt::Debug;

pub use engine::gradcheck::{check as gradcheck, Config as GradConfig};

pub mod contrastive_ref;

/// A random test case that can be built from a seeded generator.
pub trait Case: Arbitrary + Debug {
    /// Draw a case.
    fn from_rng(rng: &mut Rng) -> Self;
    /// Strictly smaller variants of this case, for shrinking (default: none).
    fn smaller(&self) -> Vec<Self> {
        Vec::new()
    }
}

/// Implement `quickcheck::Arbitrary` for a [`Case`] type by seeding our generator from quickcheck's.
#[macro_export]
macro_rules! arbitrary_via_rng {
    ($t:ty) => {
        impl quickcheck::Arbitrary for $t {
            fn arbitrary(g: &mut quickcheck::Gen) -> Self {
                <$t as $crate::Case>::from_rng(&mut engine::Rng::new(<u64 as quickcheck::Arbitrary>::arbitrary(g)))
            }
            fn shrink(&self) -> Box<dyn Iterator<Item = Self>> {
                Box::new(self.smaller().into_iter())
            }
        }
    };
}

/// Run `prop` on `cases` cases drawn by quickcheck from a generator seeded with a hash of `name`
/// (so CI never flakes). Panics with the smallest failing case found by shrinking. With
/// `SEGNET_QC_RANDOM=N`, N more cases are drawn from an unseeded generator.
pub fn property<C, F>(name: &str, cases: usize, prop: F)
where
    C: Case,
    F: Fn(&C) -> Result<(), String>,
{
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let extra = std::env::var("SEGNET_QC_RANDOM").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    let mut seeded = Gen::from_size_and_seed(8, seed);
    let mut random = Gen::new(8);
    for i in 0..cases + extra {
        let case = if i < cases { C::arbitrary(&mut seeded) } else { C::arbitrary(&mut random) };
        if let Err(msg) = prop(&case) {
            let (small, small_msg) = shrink_failure(case, msg, &prop);
            panic!("{name}: property failed (case {i}), smallest failing case:\n{small:#?}\n{small_msg}");
        }
    }
}

fn shrink_failure<C: Case, F: Fn(&C) -> Result<(), String>>(mut case: C, mut msg: String, prop: &F) -> (C, String) {
    'outer: for _ in 0..100 {
        for smaller in case.shrink() {
            if let Err(m) = prop(&smaller) {
                case = smaller;
                msg = m;
                continue 'outer;
            }
        }
        break;
    }
    (case, msg)
}

/// A random f64 tensor with entries in `[-1, 1)`.
pub fn rand_t(dims: &[usize], rng: &mut Rng) -> Tensor {
    Tensor::rand_uniform(dims.to_vec(), -1.0, 1.0, DType::F64, rng)
}

/// `t` viewed as rows of `d` values, each scaled to unit L2 norm (norm floored at 1e-3): unit
/// features for losses that expect them.
pub fn unit_rows(t: &Tensor, d: usize) -> Tensor {
    let v = t.to_vec_f64().unwrap();
    let out: Vec<f64> = v
        .chunks(d)
        .flat_map(|r| {
            let n = r.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-3);
            r.iter().map(move |x| x / n).collect::<Vec<_>>()
        })
        .collect();
    Tensor::from_f64_vec(out, t.dims().to_vec(), DType::F64)
}

/// A random f64 tensor whose entries are at least `gap` away from 0 (for kinks like ReLU).
pub fn rand_away_from_zero(dims: &[usize], gap: f64, rng: &mut Rng) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            let m = gap + (1.0 - gap) * rng.uniform();
            if rng.uniform() < 0.5 {
                -m
            } else {
                m
            }
        })
        .collect();
    Tensor::from_f64_vec(v, dims.to_vec(), DType::F64)
}

/// Random dims: `rank` dims each in `1..=max`.
pub fn rand_dims(rng: &mut Rng, rank: usize, max: usize) -> Vec<usize> {
    (0..rank).map(|_| 1 + rng.below(max)).collect()
}

/// Shrink a dims vector: each dim > 1 reduced by one (one candidate per dim).
pub fn shrink_dims(d: &[usize]) -> Vec<Vec<usize>> {
    (0..d.len())
        .filter(|&i| d[i] > 1)
        .map(|i| {
            let mut s = d.to_vec();
            s[i] -= 1;
            s
        })
        .collect()
}

/// Gradient-check `f` at `inputs` with the default config, as a property result.
pub fn gc<F: Fn(&[Tensor]) -> engine::Result<Tensor>>(f: F, inputs: &[Tensor]) -> Result<(), String> {
    gradcheck(f, inputs, &GradConfig::default())
}
