//! Depthwise convs (one input and one output channel per group): direct loops instead of 1-row
//! GEMMs, for `y` / `dx` (a [`GatherConv`] with `m = c_src = 1`) and for `dw`.
//!
//! They walk the same live-tap [`Segment`]s as the tiled path, so taps in the padding are skipped
//! here too; each output plane (`y`, `dx`) or channel (`dw`) is one parallel task with a fixed
//! summation order.

use super::engine::GatherConv;
use super::tiling::Segment;
use super::Conv2dGeom;
use crate::Float;
use rayon::prelude::*;

impl<T: Float> GatherConv<'_, T> {
    /// One input and one output channel per group: a direct loop per plane, taps outermost so the
    /// inner loop is a contiguous (or strided) row update.
    pub(super) fn run_depthwise(&self, out: &mut [T], ys: &[Segment], xs: &[Segment], taps: usize) {
        let (oh, ow) = self.out_hw;
        let (sh, sw) = self.src_hw;
        let (oplane, splane) = (oh * ow, sh * sw);
        let kw = self.xmap.off.len();
        out.par_chunks_mut(oplane).enumerate().for_each(|(plane_idx, dst)| {
            let ch = plane_idx % self.groups;
            let src = &self.src[plane_idx * splane..][..splane];
            let wt = &self.a[ch * taps..][..taps];
            dst.fill(self.bias.map_or(T::ZERO, |b| b[ch]));
            for yseg in ys {
                for xseg in xs {
                    for ty in &yseg.taps {
                        for tx in &xseg.taps {
                            let wv = wt[ty.tap * kw + tx.tap];
                            for j in ty.ja..ty.jb {
                                let iy = ty.src0 + (j - ty.ja) * yseg.src_step;
                                let srow = &src[iy * sw..][..sw];
                                let drow = yseg.coord(j) * ow;
                                for q in tx.ja..tx.jb {
                                    let ix = tx.src0 + (q - tx.ja) * xseg.src_step;
                                    dst[drow + xseg.coord(q)] += wv * srow[ix];
                                }
                            }
                        }
                    }
                }
            }
        });
    }
}

/// Depthwise `dw[c][tap] = sum_n sum_pixels gy[n, c, .] x[n, c, map(., tap)]`, one task per channel.
pub(super) fn depthwise_weight_grad<T: Float>(
    g: &Conv2dGeom,
    ys: &[Segment],
    xs: &[Segment],
    x: &[T],
    gy: &[T],
    dw: &mut [T],
) {
    let (oh, ow) = g.ohw();
    let (plane, oplane, taps, kw, ch) = (g.h * g.w, oh * ow, g.taps(), g.kw, g.c_in);
    dw.par_chunks_mut(taps).enumerate().for_each(|(c, dwc)| {
        for (t, v) in dwc.iter_mut().enumerate() {
            let (ky, kx) = (t / kw, t % kw);
            let mut s = T::ZERO;
            for n in 0..g.n {
                let src = &x[(n * ch + c) * plane..][..plane];
                let gp = &gy[(n * ch + c) * oplane..][..oplane];
                for yseg in ys {
                    let Some(ty) = yseg.taps.iter().find(|s| s.tap == ky) else { continue };
                    for xseg in xs {
                        let Some(tx) = xseg.taps.iter().find(|s| s.tap == kx) else { continue };
                        for j in ty.ja..ty.jb {
                            let iy = ty.src0 + (j - ty.ja) * yseg.src_step;
                            let orow = yseg.coord(j) * ow;
                            for q in tx.ja..tx.jb {
                                let ix = tx.src0 + (q - tx.ja) * xseg.src_step;
                                s += gp[orow + xseg.coord(q)] * src[iy * g.w + ix];
                            }
                        }
                    }
                }
            }
            *v = s;
        }
    });
}
