//! Vectorisable `exp` and `ln` for the contrastive loss's elementwise loops.
//!
//! The row and tile loops apply `exp` to every score; the standard library's scalar `expf` blocks
//! vectorisation, so f32 uses branch-free Cephes polynomials (about 1 ulp). f64 (gradient checks)
//! uses the standard library.

use super::features::TileOps;
use crate::Float;

/// Elementwise transcendental functions used in the row loops. f32 uses polynomial versions that
/// the compiler can vectorise (about 1 ulp); f64 (gradient checks) uses the standard library.
pub trait FastMath: Float + TileOps {
    /// Below this, a shifted sum of exponentials may have lost terms to underflow: the tiled pass
    /// hands such an anchor to the exact per-row path (see the module docs of `contrastive`).
    const SUM_FLOOR: Self;
    /// `e^x`; exactly 0 below the smallest normal result, and finite (clamped) above.
    fn exp_fast(self) -> Self;
    /// `ln x` for positive finite `x`.
    fn ln_fast(self) -> Self;
}

impl FastMath for f64 {
    // e^-600: terms more than ~100 below the largest still sum far above f64's underflow (e^-708).
    const SUM_FLOOR: f64 = 2.65e-261;
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn ln_fast(self) -> f64 {
        self.ln()
    }
}

impl FastMath for f32 {
    // e^-40: with at most a few million terms the largest is >= e^-55, and the terms lost to
    // underflow (< e^-87) weigh < 1e-10 of the sum.
    const SUM_FLOOR: f32 = 4.25e-18;
    /// Cephes `expf`: `e^x = 2^n e^r`, `|r| <= ln2/2`, degree-6 polynomial for `e^r`.
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer in the low bits.
        let x = self.clamp(-87.0, 88.0);
        let t = x * std::f32::consts::LOG2_E + MAGIC;
        let n = t - MAGIC;
        let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let mut p = 1.987_569_1e-4f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 5e-1;
        let er = p * r * r + r + 1.0;
        let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
        let pow2 = f32::from_bits(((ni + 127) << 23) as u32);
        if self < -87.0 {
            0.0
        } else {
            er * pow2
        }
    }

    /// Cephes `logf` for positive normal `x`.
    #[inline(always)]
    fn ln_fast(self) -> f32 {
        let bits = self.to_bits();
        let mut e = ((bits >> 23) & 0xff) as i32 - 127;
        let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000); // in [1, 2)
        if m > std::f32::consts::SQRT_2 {
            m *= 0.5;
            e += 1;
        }
        let x = m - 1.0;
        let z = x * x;
        let mut y = 7.037_683_6e-2f32;
        y = y * x - 1.151_461e-1;
        y = y * x + 1.167_699_9e-1;
        y = y * x - 1.242_014_1e-1;
        y = y * x + 1.424_932_3e-1;
        y = y * x - 1.666_805_8e-1;
        y = y * x + 2.000_071_4e-1;
        y = y * x - 2.499_999_4e-1;
        y = y * x + 3.333_333e-1;
        y = y * x * z;
        let ef = e as f32;
        y += ef * -2.121_944_4e-4;
        y += -0.5 * z;
        x + y + ef * 0.693_359_4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_ln_match_std() {
        let mut worst: f32 = 0.0;
        let mut x = -86.0f32;
        while x < 87.0 {
            let (a, b) = (x.exp_fast(), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "exp rel err {worst}");
        assert_eq!((-200.0f32).exp_fast(), 0.0);
        assert_eq!(f32::NEG_INFINITY.exp_fast(), 0.0);
        assert!(f32::INFINITY.exp_fast().is_finite());
        let mut worst: f32 = 0.0;
        let mut y = 1e-30f32;
        while y < 1e30 {
            let (a, b) = (y.ln_fast(), y.ln());
            worst = worst.max((a - b).abs() / b.abs().max(1.0));
            y *= 1.37;
        }
        assert!(worst < 4e-7, "ln err {worst}");
    }
}
