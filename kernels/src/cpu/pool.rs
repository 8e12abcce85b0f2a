//! Pooling kernels over NCHW planes: max pooling (with argmax for the backward) and global
//! average pooling.
//!
//! ```text
//! max:  y[p, oy, ox] = max_{ky, kx} x[p, oy s - pad + ky, ox s - pad + kx]   (padding is -inf)
//!       dx[p, a] = sum over windows whose argmax is a of gy          (first max in scan order)
//! gap:  y[p] = (1 / HW) sum_i x[p, i];   dx[p, i] = gy[p] / HW
//! ```
//! `p` indexes the `N * C` planes. Work is split per plane (fixed), so results do not depend on
//! the thread count.

use crate::cpu::parallel::sum_in_order;
use crate::Float;
use rayon::prelude::*;

/// Sizes and hyperparameters of a max pool; validated by the caller (see [`pool_out_len`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeom {
    /// Number of planes (`N * C`).
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

/// PyTorch's `floor((len + 2 p - k) / s) + 1` (ceil_mode false), or `None` if the window does not
/// fit or `s == 0`.
pub fn pool_out_len(len: usize, k: usize, s: usize, p: usize) -> Option<usize> {
    let padded = len.checked_add(2 * p)?;
    if s == 0 || k == 0 || padded < k {
        return None;
    }
    Some((padded - k) / s + 1)
}

impl Pool2dGeom {
    /// `(OH, OW)`, or `None` if the window does not fit.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        Some((
            pool_out_len(self.h, self.kernel[0], self.stride[0], self.padding[0])?,
            pool_out_len(self.w, self.kernel[1], self.stride[1], self.padding[1])?,
        ))
    }
}

/// Max pool forward: writes `y` and, for each output, the index (`iy * W + ix` within its plane)
/// of the first maximum in row-major window order. NaN wins (as in PyTorch).
pub fn max_pool2d_forward<T: Float>(g: &Pool2dGeom, x: &[T], y: &mut [T], argmax: &mut [u32]) {
    let (oh, ow) = g.out_hw().expect("max_pool2d kernel called with an invalid geometry");
    let (plane, oplane) = (g.h * g.w, oh * ow);
    assert_eq!(x.len(), g.planes * plane, "max_pool2d: x length");
    assert_eq!(y.len(), g.planes * oplane, "max_pool2d: y length");
    assert_eq!(argmax.len(), y.len(), "max_pool2d: argmax length");
    assert!(plane <= u32::MAX as usize, "max_pool2d: plane too large for u32 indices");
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    y.par_chunks_mut(oplane).zip(argmax.par_chunks_mut(oplane)).enumerate().for_each(|(p, (yp, ap))| {
        let xp = &x[p * plane..][..plane];
        for oy in 0..oh {
            // Window rows clipped to the input: -inf padding never wins (a window always holds
            // at least one real element when padding <= kernel / 2).
            let y0 = (oy * sh).saturating_sub(ph);
            let y1 = (oy * sh + kh).saturating_sub(ph).min(g.h);
            for ox in 0..ow {
                let x0 = (ox * sw).saturating_sub(pw);
                let x1 = (ox * sw + kw).saturating_sub(pw).min(g.w);
                let mut best = T::NEG_INFINITY;
                let mut arg = (y0 * g.w + x0) as u32;
                for iy in y0..y1 {
                    let row = &xp[iy * g.w..][..g.w];
                    for (ix, &v) in row.iter().enumerate().take(x1).skip(x0) {
                        #[allow(clippy::eq_op)]
                        let nan = v != v;
                        if v > best || nan {
                            best = v;
                            arg = (iy * g.w + ix) as u32;
                            if nan {
                                break;
                            }
                        }
                    }
                    #[allow(clippy::eq_op)]
                    if best != best {
                        break;
                    }
                }
                yp[oy * ow + ox] = best;
                ap[oy * ow + ox] = arg;
            }
        }
    });
}

/// Max pool backward: `dx` (overwritten) receives each `gy` at its window's argmax.
pub fn max_pool2d_backward<T: Float>(g: &Pool2dGeom, argmax: &[u32], gy: &[T], dx: &mut [T]) {
    let (oh, ow) = g.out_hw().expect("max_pool2d kernel called with an invalid geometry");
    let (plane, oplane) = (g.h * g.w, oh * ow);
    assert_eq!(dx.len(), g.planes * plane, "max_pool2d: dx length");
    assert_eq!(gy.len(), g.planes * oplane, "max_pool2d: gy length");
    assert_eq!(argmax.len(), gy.len(), "max_pool2d: argmax length");
    dx.par_chunks_mut(plane).enumerate().for_each(|(p, dp)| {
        dp.fill(T::ZERO);
        let (gp, ap) = (&gy[p * oplane..][..oplane], &argmax[p * oplane..][..oplane]);
        for (&gv, &a) in gp.iter().zip(ap) {
            dp[a as usize] += gv;
        }
    });
}

/// Global average pool forward: `y[p] = mean(x[p, :])` over planes of `hw` elements.
pub fn global_avg_pool_forward<T: Float>(hw: usize, x: &[T], y: &mut [T]) {
    assert_eq!(x.len(), y.len() * hw, "global_avg_pool2d: lengths");
    let inv = T::ONE / T::from_usize(hw);
    y.par_iter_mut().enumerate().with_min_len(16).for_each(|(p, v)| {
        *v = sum_in_order(&x[p * hw..][..hw]) * inv;
    });
}

/// Global average pool backward: `dx[p, i] = gy[p] / hw` (overwritten).
pub fn global_avg_pool_backward<T: Float>(hw: usize, gy: &[T], dx: &mut [T]) {
    assert_eq!(dx.len(), gy.len() * hw, "global_avg_pool2d: lengths");
    let inv = T::ONE / T::from_usize(hw);
    dx.par_chunks_mut(hw).zip(gy.par_iter()).with_min_len(16).for_each(|(d, &g)| d.fill(g * inv));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pool_picks_first_max_and_routes_gradient_there() {
        // 1 plane 3x4, kernel 2, stride 2, padding 1 -> 2x3 windows.
        let x = [1.0, 5.0, 5.0, 0.0, 2.0, -1.0, 7.0, 7.0, 3.0, 3.0, 0.0, 9.0];
        let g = Pool2dGeom { planes: 1, h: 3, w: 4, kernel: [2, 2], stride: [2, 2], padding: [1, 1] };
        assert_eq!(g.out_hw(), Some((2, 3)));
        let mut y = [0.0; 6];
        let mut a = [0u32; 6];
        max_pool2d_forward(&g, &x, &mut y, &mut a);
        assert_eq!(y, [1.0, 5.0, 0.0, 3.0, 7.0, 9.0]);
        assert_eq!(a, [0, 1, 3, 8, 6, 11]);
        let mut dx = [0.0; 12];
        max_pool2d_backward(&g, &a, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &mut dx);
        assert_eq!(dx, [1.0, 2.0, 0.0, 3.0, 0.0, 0.0, 5.0, 0.0, 4.0, 0.0, 0.0, 6.0]);
    }
}
