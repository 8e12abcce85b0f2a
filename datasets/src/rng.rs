//! A tiny deterministic RNG (SplitMix64).
//!
//! Why our own: results must repeat bit-for-bit across platforms, crate versions and thread timings
//! (resume and the loader's determinism depend on it), and every sample needs an independent stream
//! derived from (seed, epoch, index) without shared state. SplitMix64 is 10 lines, passes BigCrush,
//! and its seeding function doubles as a good hash for deriving streams.

/// SplitMix64 generator. Cheap to create, so make one per sample rather than sharing.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a strong 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded directly.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// An independent stream for a tuple of identifiers, e.g. `(seed, [epoch, index])`.
    /// Each component is folded through the mixer so nearby tuples give unrelated streams.
    pub fn derive(seed: u64, parts: &[u64]) -> Self {
        let mut h = mix(seed ^ GOLDEN);
        for &p in parts {
            h = mix(h ^ mix(p.wrapping_add(GOLDEN)));
        }
        Rng { state: h }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in [0, 1) with 24 bits of precision (exactly representable in f32).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }

    /// Uniform integer in [0, n); `n == 0` returns 0. Uses Lemire's multiply-shift (bias < 2^-32
    /// for the sizes we use, which is irrelevant for augmentation and subset choice).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform integer in [lo, hi] (inclusive); returns `lo` when `hi < lo`.
    pub fn range_inclusive(&mut self, lo: usize, hi: usize) -> usize {
        if hi < lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.f32() < p
    }

    /// In-place Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_different_parts_differ() {
        let a: Vec<u64> = (0..8).map(|_| Rng::derive(7, &[1, 2]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = Rng::derive(7, &[1, 2]);
        let mut y = Rng::derive(7, &[2, 1]);
        assert_ne!(x.next_u64(), y.next_u64());
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut r = Rng::new(42);
        let mut counts = [0usize; 10];
        for _ in 0..100_000 {
            let v = r.below(10);
            counts[v] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "counts {counts:?}");
        }
        let f = (0..10_000).map(|_| r.f32()).fold(0.0f32, f32::max);
        assert!(f < 1.0);
    }
}
