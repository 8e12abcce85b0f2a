//! `y` and `dx` of dilated stride-1 convs on small maps, as one GEMM per tap (the packed f32 path).
//!
//! ```text
//! y[n, o, p] = b[o] + sum_t sum_c W_t[o, c] x[n, c, p + shift_t]     for p in P_t
//! ```
//! where `P_t` is the rectangle of destination pixels whose tap `t` lands inside the source (and
//! `dx` is the same with the transposed weights and the opposite shifts). The tiled path cuts the
//! destination into regions with a fixed set of live taps; ASPP's dilation-6 and -12 convs on a
//! 17 x 17 map leave nine regions of 25-36 pixels, so each tile's GEMM has two or three 16-column
//! slabs, mostly part-filled, and the gather walks short runs per slab: the forward ran at ~40 % of
//! the GEMM's speed. Per tap the product is instead one GEMM over all of `P_t` in every image (121 to
//! 578 columns): `C_t = A_t B_t` with `A_t` the tap's columns of the packed weights and `B_t` the
//! shifted source window gathered once (whole rows of the window, copied as runs), then added into
//! the destination. Every destination element starts at the bias and adds the taps' products in tap
//! order, each summed over channels in order: a fixed order, whatever the thread count.

use super::engine::GatherConv;
use super::gather::{with_scratch, zero_slab_padding};
use super::tiling::{Axis, Segment};
use crate::cpu::packed_gemm::{self, as_f32, slab_len, KSeg, PackedA, NR};
use crate::cpu::parallel::SendPtr;
use crate::Float;
use rayon::prelude::*;

/// Most destination pixels (all images) for this path: a tap's `B` (`c_src x pixels`) stays a few MB.
const MAX_PIXELS: usize = 1280;
/// Fewest source channels: each gathered value then feeds at least this many products per row of `A`.
const MIN_CHANNELS: usize = 256;

/// True when the conv takes this path: stride 1 on both axes (the live pixels of a tap are a
/// rectangle, its source a shifted window), the tiled plan cut into more than one region (dead
/// taps somewhere: otherwise the tiles are whole and fast), a small destination, many source
/// channels, and at least twice as many source channels as destination rows `m`. Each tap's `C_t`
/// (`m x pixels`) is written, read and added once per tap, which a short `K` does not pay for:
/// ASPP's input gradients (`m` = 2048, `K` = 256) ran 15-25 % slower here than tiled, layer 4's d2
/// 3x3 (512 -> 512) 5-10 %, while ASPP's d6 forward (`K` = 2048, `m` = 256) ran 25 % faster.
pub(super) fn applies(
    ymap: &Axis,
    xmap: &Axis,
    ys: &[Segment],
    xs: &[Segment],
    pixels: usize,
    c_src: usize,
    m: usize,
) -> bool {
    ymap.is_shift()
        && xmap.is_shift()
        && ys.len() * xs.len() > 1
        && pixels <= MAX_PIXELS
        && c_src >= MIN_CHANNELS
        && c_src >= 2 * m
}

impl<T: Float> GatherConv<'_, T> {
    /// Overwrite `out` by the per-tap products (`packed`: each group's packed weights, tap-major).
    ///
    /// # Safety
    /// `T` is f32 (the packed path); `out` addresses the whole destination and nothing else
    /// touches it meanwhile.
    pub(super) unsafe fn run_per_tap(&self, packed: &[PackedA], out: *mut f32) {
        let (m, c_src) = (self.m, self.c_src);
        let (oh, ow) = self.out_hw;
        let (sh, sw) = self.src_hw;
        let (oplane, splane) = (oh * ow, sh * sw);
        let src = as_f32(self.src).expect("packed conv path on f32 only");
        let bias = self.bias.map(|b| as_f32(b).expect("packed conv path on f32 only"));
        let planes = self.n * self.groups * m;
        let optr = SendPtr(out);
        (0..planes).into_par_iter().for_each(|pl| {
            let v = bias.map_or(0.0, |b| b[pl % (self.groups * m)]);
            // SAFETY: each task fills its own plane.
            std::slice::from_raw_parts_mut(optr.ptr().add(pl * oplane), oplane).fill(v);
        });
        let kw = self.xmap.off.len();
        let threads = rayon::current_num_threads().max(1);
        for ty in 0..self.ymap.off.len() {
            for tx in 0..kw {
                let (Some((yr, dy)), Some((xr, dx))) = (self.ymap.shift(ty), self.xmap.shift(tx)) else {
                    continue;
                };
                let tap = ty * kw + tx;
                let npix = yr.len() * xr.len();
                let cols = self.n * npix;
                let b_len = slab_len(c_src, cols);
                with_scratch::<f32, _>(b_len + m * cols, |buf| {
                    let (b, c) = buf.split_at_mut(b_len);
                    for (g, pa) in packed.iter().enumerate() {
                        // B_t (c_src x cols, slabs): the shifted window of each image, row by row.
                        let bp = SendPtr(b.as_mut_ptr());
                        let channel_slabs = c_src.div_ceil(NR);
                        (0..self.n * channel_slabs).into_par_iter().for_each(|u| {
                            let (img, q) = (u / channel_slabs, u % channel_slabs);
                            let plane0 = (img * self.groups + g) * c_src;
                            for ch in q * NR..(c_src.min((q + 1) * NR)) {
                                let sp = &src[(plane0 + ch) * splane..][..splane];
                                let mut j = img * npix;
                                for y in yr.clone() {
                                    let row = ((y as isize + dy) as usize) * sw;
                                    let run = &sp[(row as isize + xr.start as isize + dx) as usize..][..xr.len()];
                                    // SAFETY: this task alone writes row `ch` of its image's columns.
                                    write_row_run(bp.ptr(), c_src, ch, j, run);
                                    j += xr.len();
                                }
                            }
                        });
                        zero_slab_padding(b, c_src, cols);
                        // C_t = A_t B_t in column blocks of whole slab pairs, in parallel.
                        let slabs = cols.div_ceil(NR);
                        let per = slabs.div_ceil(2 * threads).next_multiple_of(2).max(2);
                        let seg = [KSeg { a_k0: tap * c_src, b_k0: 0, len: c_src }];
                        let cp = SendPtr(c.as_mut_ptr());
                        let b: &[f32] = b;
                        (0..slabs.div_ceil(per)).into_par_iter().for_each(|blk| {
                            let (q0, q1) = (blk * per, ((blk + 1) * per).min(slabs));
                            let n = (q1 * NR).min(cols) - q0 * NR;
                            // SAFETY: each task writes its own columns of C_t.
                            packed_gemm::gemm_to(
                                pa,
                                &seg,
                                &b[q0 * c_src * NR..],
                                c_src,
                                n,
                                cp.ptr().add(q0 * NR),
                                cols,
                                false,
                            );
                        });
                        // out[img, g m + o, P_t] += C_t[o, img's columns].
                        let c: &[f32] = c;
                        (0..self.n * m).into_par_iter().for_each(|u| {
                            let (img, o) = (u / m, u % m);
                            let dst = optr.ptr().add(((img * self.groups + g) * m + o) * oplane);
                            let mut j = o * cols + img * npix;
                            for y in yr.clone() {
                                // SAFETY: each task adds into its own plane.
                                let d = std::slice::from_raw_parts_mut(dst.add(y * ow + xr.start), xr.len());
                                for (dv, &cv) in d.iter_mut().zip(&c[j..j + xr.len()]) {
                                    *dv += cv;
                                }
                                j += xr.len();
                            }
                        });
                    }
                });
            }
        }
    }
}

/// Write `run` into row `l` of a `k`-row slab block at columns `j ..`, crossing slab boundaries.
///
/// # Safety
/// `slabs` holds the block's slabs for columns up to `j + run.len()`; nothing else writes these
/// elements meanwhile.
#[inline]
unsafe fn write_row_run(slabs: *mut f32, k: usize, l: usize, mut j: usize, mut run: &[f32]) {
    while !run.is_empty() {
        let (q, r) = (j / NR, j % NR);
        let take = (NR - r).min(run.len());
        let dst = slabs.add((q * k + l) * NR + r);
        std::ptr::copy_nonoverlapping(run.as_ptr(), dst, take);
        run = &run[take..];
        j += take;
    }
}
