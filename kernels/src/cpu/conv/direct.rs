//! `y` and `dx` of stride-1 convs with few source channels, with no im2col gather: the micro-kernel
//! reads `B` in place from a zero-padded copy of the source (the packed f32 path: the 12 x 32
//! AVX-512 micro-kernel, or the 6 x 16 AVX2 one, which give every element the same chain).
//!
//! ```text
//! y[n, o, y, x] = b[o] + sum_t sum_c W_t[o, c] xp[n, c, y + dy_t + top, x + dx_t + left]
//! ```
//! where `xp` is the source with `top`/`left`/`bottom`/`right` rows and columns of zeros, enough
//! for every live tap's shift `(dy_t, dx_t)` (`dx` is the same with the transposed weights and the
//! opposite shifts). Lay the destination out on the padded row pitch `wp`, "wide" pixel
//! `j = y wp + x`: then tap `t` of channel `c` is the padded plane read from the constant offset
//! `(dy_t + top) wp + dx_t + left`, a contiguous run, so a `6 x 32` (or `12 x 32`) block of the
//! destination is `sum_t sum_c` of a broadcast weight times 32 consecutive floats of `xp`, with no
//! copy into slabs. The `wp - ow` wide columns past each row's end are computed and dropped.
//!
//! The tiled path gathers every `B` element once per tile and feeds it to `m` rows of `A`: with
//! 64 destination rows (ResNet's layer 1) the gather took a third as long as the GEMM itself
//! (29 % of a one-thread 64 -> 64 3x3 on 33 x 33 against 57 % in the micro-kernel). Here the
//! padded copy is one pass over the source per conv; the cost is the dropped columns (6 % on a
//! 33-wide map, 18 % on a 9-wide one), which [`plan`] bounds.
//!
//! Each destination element is one chain of fused multiply-adds, from zero: live taps in order,
//! channels in order; then the bias is added. A fixed order, whatever the thread count (not the
//! tiled path's order: it sums `K` in blocks of `KC`, so the two differ in rounding).

use super::engine::GatherConv;
use super::gather::with_scratch;
use super::tiling::Axis;
use crate::cpu::packed_gemm::avx2;
use crate::cpu::packed_gemm::avx512::{micro_runs, BLayout, Run};
use crate::cpu::packed_gemm::{self, as_f32, meter, Kernel, PackedA, MR, NR};
use crate::cpu::parallel::SendPtr;
use rayon::prelude::*;

/// Most source channels: with more, each gathered value feeds enough rows of `A` that the tiled
/// path's gather is cheap, and its `KC` blocks keep `B` in L1 where this path's reads would not.
const MAX_CHANNELS: usize = 128;
/// Wide columns per unit of work (two slabs per micro-kernel call, eight calls per row block).
const UNIT_COLS: usize = 8 * 2 * NR;
/// Destination rows per unit of work.
const UNIT_ROWS: usize = 16 * MR;

/// The padding and the shifted offsets of the live taps, for a pair of shift axes.
pub(super) struct Padded {
    top: usize,
    left: usize,
    hp: usize,
    wp: usize,
    /// `(tap, offset)` of each live tap in order: `offset = (dy + top) wp + dx + left`.
    taps: Vec<(usize, usize)>,
}

impl Padded {
    fn new(ymap: &Axis, xmap: &Axis, (sh, sw): (usize, usize), (oh, ow): (usize, usize)) -> Padded {
        let live = |a: &Axis| (0..a.off.len()).filter_map(|t| a.shift(t).map(|(_, off)| (t, off))).collect::<Vec<_>>();
        let (ly, lx) = (live(ymap), live(xmap));
        let pads = |l: &[(usize, isize)], src: usize, dst: usize| {
            let lo = l.iter().map(|&(_, o)| (-o).max(0)).max().unwrap_or(0) as usize;
            let hi = l.iter().map(|&(_, o)| (dst as isize - src as isize + o).max(0)).max().unwrap_or(0) as usize;
            (lo, hi)
        };
        let ((top, bottom), (left, right)) = (pads(&ly, sh, oh), pads(&lx, sw, ow));
        let wp = sw + left + right;
        let kw = xmap.off.len();
        let taps = ly
            .iter()
            .flat_map(|&(ty, oy)| {
                lx.iter().map(move |&(tx, ox)| {
                    (ty * kw + tx, ((oy + top as isize) as usize) * wp + (ox + left as isize) as usize)
                })
            })
            .collect();
        Padded { top, left, hp: sh + top + bottom, wp, taps }
    }
}

/// The padded layout when `y` or `dx` takes this path (`None` otherwise): f32 on the packed
/// micro-kernels (AVX2 + FMA at least), one group, stride 1 (every tap a shift), more than one
/// tap, at most [`MAX_CHANNELS`] source channels, and the padded row at most a quarter wider than
/// the destination's (the dropped columns' share).
pub(super) fn plan(
    ymap: &Axis,
    xmap: &Axis,
    src_hw: (usize, usize),
    out_hw: (usize, usize),
    c_src: usize,
    groups: usize,
) -> Option<Padded> {
    if !packed_gemm::available() {
        return None;
    }
    if groups != 1
        || !ymap.is_shift()
        || !xmap.is_shift()
        || ymap.off.len() * xmap.off.len() < 2
        || c_src > MAX_CHANNELS
    {
        return None;
    }
    let p = Padded::new(ymap, xmap, src_hw, out_hw);
    (!p.taps.is_empty() && 4 * p.wp <= 5 * out_hw.1).then_some(p)
}

impl<T: crate::Float> GatherConv<'_, T> {
    /// Overwrite `out` by the direct products (`p`: the layout from [`plan`]; `pa`: the packed
    /// weights of the one group, all taps, `A(r, tap c_src + c)`).
    ///
    /// # Safety
    /// `T` is f32, the CPU has AVX2 + FMA ([`plan`] gave `p`; AVX-512F where the kernel choice says
    /// so); `out` addresses the whole destination and nothing else touches it meanwhile.
    pub(super) unsafe fn run_direct(&self, p: &Padded, pa: &PackedA, out: *mut f32) {
        let (m, c_src, n) = (self.m, self.c_src, self.n);
        let (oh, ow) = self.out_hw;
        let (sh, sw) = self.src_hw;
        let src = as_f32(self.src).expect("packed conv path on f32 only");
        let bias = self.bias.map(|b| as_f32(b).expect("packed conv path on f32 only"));
        let pitch = p.hp * p.wp;
        // Micro-kernel blocks: 12 x 32 on AVX-512, 6 x 16 on AVX2 (the same chain per element).
        let wide_kernel = packed_gemm::kernel() == Kernel::Avx512;
        let (block_rows, block_cols) = if wide_kernel { (2 * MR, 2 * NR) } else { (MR, NR) };
        // Wide columns per image, and the farthest any micro-kernel load reaches past a plane's start.
        let wide = (oh - 1) * p.wp + ow;
        let reach = p.taps.iter().map(|&(_, o)| o).max().unwrap_or(0) + wide.next_multiple_of(2 * NR);
        let len = (n * c_src * pitch).max((n * c_src - 1) * pitch + reach);
        with_scratch::<f32, _>(len, |xp| {
            let xp = &mut xp[..len];
            xp[n * c_src * pitch..].fill(0.0);
            xp[..n * c_src * pitch].par_chunks_mut(pitch).zip(src.par_chunks(sh * sw)).for_each(|(dst, s)| {
                dst[..p.top * p.wp].fill(0.0);
                for (y, row) in s.chunks_exact(sw).enumerate() {
                    let d = &mut dst[(p.top + y) * p.wp..][..p.wp];
                    d[..p.left].fill(0.0);
                    d[p.left..p.left + sw].copy_from_slice(row);
                    d[p.left + sw..].fill(0.0);
                }
                dst[(p.top + sh) * p.wp..].fill(0.0);
            });
            let xp: &[f32] = xp;
            let (col_blocks, row_blocks) = (wide.div_ceil(UNIT_COLS), m.div_ceil(UNIT_ROWS));
            let optr = SendPtr(out);
            (0..n * col_blocks * row_blocks).into_par_iter().for_each(|u| {
                let (img, rest) = (u / (col_blocks * row_blocks), u % (col_blocks * row_blocks));
                let (cb, rb) = (rest / row_blocks, rest % row_blocks);
                let (j0, j1) = (cb * UNIT_COLS, ((cb + 1) * UNIT_COLS).min(wide));
                let (r0, r1) = (rb * UNIT_ROWS, ((rb + 1) * UNIT_ROWS).min(m));
                let cols = j1 - j0;
                let xi = xp.as_ptr().add(img * c_src * pitch);
                let k = p.taps.len() * c_src;
                let shape = || {
                    // Useful pixels: the unit's wide columns that are inside a row.
                    let useful = (j0..j1).filter(|j| j % p.wp < ow).count();
                    (meter::Shape { kind: "direct", m, k, n: oh * ow }, 2.0 * ((r1 - r0) * useful * k) as f64)
                };
                meter::span(shape, || {
                    with_scratch::<f32, _>((r1 - r0) * cols, |tmp| {
                        for q in (j0..j1).step_by(block_cols) {
                            let w = (j1 - q).min(block_cols);
                            for r in (r0..r1).step_by(block_rows) {
                                let rows = (r1 - r).min(block_rows);
                                // SAFETY: the CPU has the chosen kernel's features (the caller's contract,
                                // and the kernel choice); the panels of rows r.. exist
                                // (rows past m are the last panel's zero padding); every load lies in
                                // `xp` (`len` covers `reach`); the block of `tmp` is inside it.
                                // Tap t of channel c: panel column t c_src + c, B row c at offset
                                // `off` of the padded planes, one run per live tap.
                                let b = xi.add(q);
                                let runs = p.taps.iter().map(|&(t, off)| Run {
                                    a_col: t * c_src,
                                    b: b.wrapping_add(off),
                                    len: c_src,
                                });
                                let (panel, c) = (
                                    pa.panels().as_ptr().add(r * pa.k),
                                    tmp.as_mut_ptr().add((r - r0) * cols + (q - j0)),
                                );
                                if wide_kernel {
                                    let b = BLayout { row_step: pitch, half_step: NR };
                                    micro_runs(runs, panel, pa.k * MR, b, c, cols, rows, w, false);
                                } else {
                                    avx2::micro_runs(runs, panel, pitch, c, cols, rows, w, false);
                                }
                            }
                        }
                        // The destination rows' pixels inside this unit's wide columns, plus the bias.
                        for r in r0..r1 {
                            let v = bias.map_or(0.0, |b| b[r]);
                            let plane = optr.ptr().add((img * m + r) * oh * ow);
                            let t = &tmp[(r - r0) * cols..][..cols];
                            for y in j0 / p.wp..=(j1 - 1) / p.wp {
                                let (a, b) = ((y * p.wp).max(j0), (y * p.wp + ow).min(j1));
                                if a >= b {
                                    continue;
                                }
                                // SAFETY: this unit alone writes rows r0..r1 of image img at these pixels.
                                let d = std::slice::from_raw_parts_mut(plane.add(y * ow + a - y * p.wp), b - a);
                                for (dv, &tv) in d.iter_mut().zip(&t[a - j0..b - j0]) {
                                    *dv = tv + v;
                                }
                            }
                        }
                    })
                });
            });
        });
    }
}
