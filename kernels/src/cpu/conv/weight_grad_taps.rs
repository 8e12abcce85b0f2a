//! `dw` on the packed f32 path as one GEMM per tap, for convs whose weights outweigh their pixels.
//!
//! ```text
//! dw[o, c, t] = sum_{n, p in P_t} gy[n, o, p] x[n, c, src_t(p)]
//! ```
//! where `P_t` is the rectangle of output pixels whose tap `t` lands inside the input. Per tap this
//! is one GEMM with `M` = output channels, `N` = input channels and `K` = the pixels of `P_t` over
//! all images. The tiled path (`weight_grad.rs`) instead adds one tile's few hundred pixels at a
//! time into per-chunk partial sums: on the small maps of the late layers (17 x 17 at output
//! stride 16, cut by a dilated conv's taps into nine regions of ~30 pixels) every tile then reads
//! and writes a multi-megabyte `dw` for a few dozen products per element, and the partials
//! (four copies of `dw`) are zeroed, faulted in and reduced. Here `K` is long, each block of `dw` is
//! produced by one task from start to end (no partial sums, no reduction), and the sum over `K`
//! runs in a fixed order (images, then rows, then columns), so results do not depend on threads.
//!
//! The tiled path stays for convs with few input channels or many pixels per weight (the stem, the
//! early layers, the decoder at stride 4): there the partial sums are cheap next to the products, and
//! splitting `dw` by taps and blocks would repeat the packing of `gy` ([`tap_tasks`] decides).

use super::gather::{with_scratch, zero_slab_padding};
use super::Conv2dGeom;
use crate::cpu::packed_gemm::{self, slab_len, KSeg, PackedA, KC, MR, NR};
use crate::cpu::parallel::SendPtr;
use rayon::prelude::*;
use std::ops::Range;

/// Most input channels (GEMM columns) per task: a `KC x 256` block of `B` is 256 KiB, L2-resident.
const COLS: usize = 256;
/// Fewest output channels (GEMM rows) per task when rows are split: every gathered input value is
/// then reused at least this often, so repeating the gather per row block stays cheap.
const MIN_ROWS: usize = 256;
/// Fewest input channels for this path: fewer fill a 16-column slab poorly (the stem has 3).
const MIN_CIG: usize = 32;
/// Fewest tasks for this path (else the tiled path's pixel chunks parallelise better).
const MIN_TASKS: usize = 4;
/// Most pixels (over all images) per input channel for this path. Here each tap's task repacks its
/// pixels of `gy`, which the tiled path packs once per tile for all taps; with many pixels per
/// weight that costs more than the partial sums save (the decoder's 3x3 convs at 65 x 65 have ~30
/// pixels per channel and ran 10-40 % slower per tap; the 17 x 17 maps of the late layers have 0.3-2).
const MAX_PIXELS_PER_CHANNEL: usize = 16;

/// One task: rows `rows` x columns `cols` of tap `tap`'s GEMM in group `group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TapTask {
    group: usize,
    tap: usize,
    rows: Range<usize>,
    cols: Range<usize>,
}

/// The tasks of the per-tap `dw`, or `None` when the tiled path suits the conv better. Depends
/// only on the shapes.
pub(super) fn tap_tasks(g: &Conv2dGeom) -> Option<Vec<TapTask>> {
    let (cig, cog, taps) = (g.cig(), g.cog(), g.taps());
    let (oh, ow) = g.ohw();
    if cig < MIN_CIG || g.n * oh * ow > MAX_PIXELS_PER_CHANNEL * cig {
        return None;
    }
    let col_blocks = cig.div_ceil(COLS);
    let row_blocks = (cog / MIN_ROWS).max(1);
    if g.groups * taps * col_blocks * row_blocks < MIN_TASKS {
        return None;
    }
    // Row blocks of whole panels, as even as possible.
    let panels = cog.div_ceil(MR);
    let row_range =
        |b: usize| ((b * panels / row_blocks) * MR).min(cog)..(((b + 1) * panels / row_blocks) * MR).min(cog);
    let col_range = |b: usize| b * cig / col_blocks..(b + 1) * cig / col_blocks;
    let mut tasks = Vec::new();
    for group in 0..g.groups {
        for tap in 0..taps {
            for rb in 0..row_blocks {
                for cb in 0..col_blocks {
                    tasks.push(TapTask { group, tap, rows: row_range(rb), cols: col_range(cb) });
                }
            }
        }
    }
    Some(tasks)
}

/// Output coordinates `[lo, hi)` along one axis where kernel offset `k` lands inside the input
/// (`i = o s - p + k d` in `[0, in_len)`); empty when it never does.
fn live_range(in_len: usize, out_len: usize, k: usize, s: usize, p: usize, d: usize) -> Range<usize> {
    let live = |o: usize| (o * s + k * d).checked_sub(p).is_some_and(|i| i < in_len);
    let lo = (0..out_len).find(|&o| live(o)).unwrap_or(out_len);
    let hi = (lo..out_len).find(|&o| !live(o)).unwrap_or(out_len);
    lo..hi
}

/// `dw` (`[c_out][cig][taps]`, overwritten) from `x` and `gy` by the `tasks` of [`tap_tasks`].
pub(super) fn weight_grad_taps(g: &Conv2dGeom, tasks: &[TapTask], x: &[f32], gy: &[f32], dw: &mut [f32]) {
    let (cig, cog, taps) = (g.cig(), g.cog(), g.taps());
    // Tasks write `[c_out][tap][cig]` (a tap's block is a plain row-major C), which for a 1x1 conv
    // is `dw` itself; otherwise it is transposed into `dw` at the end.
    let mut staged = Vec::new();
    let out: &mut [f32] = if taps == 1 {
        dw
    } else {
        staged = vec![0.0f32; dw.len()];
        &mut staged
    };
    let optr = SendPtr(out.as_mut_ptr());
    tasks.par_iter().for_each(|t| {
        let row0 = t.group * cog + t.rows.start;
        // SAFETY: the tasks' (row, tap, column) blocks are disjoint and inside `out`.
        let c = unsafe { optr.ptr().add((row0 * taps + t.tap) * cig + t.cols.start) };
        unsafe { run_task(g, t, x, gy, c, taps * cig) };
    });
    if taps > 1 {
        dw.par_chunks_mut(cig * taps).zip(staged.par_chunks(taps * cig)).for_each(|(d, s)| {
            for t in 0..taps {
                for c in 0..cig {
                    d[c * taps + t] = s[t * cig + c];
                }
            }
        });
    }
}

/// One task's GEMM, `K` in blocks of [`KC`] pixels: pack those pixels of `gy` (the task's rows)
/// as `A`, gather the tap's sources of those pixels (the task's columns) transposed into slabs as
/// `B`, and accumulate into `C` (`rows x cols`, row stride `ldc`).
///
/// # Safety
/// `c` must address the task's `rows x cols` block (stride `ldc`) and nothing else may touch it.
unsafe fn run_task(g: &Conv2dGeom, t: &TapTask, x: &[f32], gy: &[f32], c: *mut f32, ldc: usize) {
    let (oh, ow) = g.ohw();
    let (cig, cog) = (g.cig(), g.cog());
    let (plane, oplane) = (g.h * g.w, oh * ow);
    let (ky, kx) = (t.tap / g.kw, t.tap % g.kw);
    let ys = live_range(g.h, oh, ky, g.stride[0], g.padding[0], g.dilation[0]);
    let xs = live_range(g.w, ow, kx, g.stride[1], g.padding[1], g.dilation[1]);
    let (rw, per_image) = (xs.len(), ys.len() * xs.len());
    let k = g.n * per_image;
    let (m, cols) = (t.rows.len(), t.cols.len());
    // Pixel `i` of P_t (images, then rows, then columns): its offsets in gy's and x's image blocks.
    let pixel = |i: usize| {
        let (n, r) = (i / per_image, i % per_image);
        let (oy, ox) = (ys.start + r / rw, xs.start + r % rw);
        let iy = oy * g.stride[0] + ky * g.dilation[0] - g.padding[0];
        let ix = ox * g.stride[1] + kx * g.dilation[1] - g.padding[1];
        (n * g.c_out * oplane + oy * ow + ox, n * g.c_in * plane + iy * g.w + ix)
    };
    let gy_rows = &gy[(t.group * cog + t.rows.start) * oplane..];
    let x_cols = &x[(t.group * cig + t.cols.start) * plane..];
    if k == 0 {
        // The tap never lands inside the input: its block of dw is zero.
        for r in 0..m {
            std::slice::from_raw_parts_mut(c.add(r * ldc), cols).fill(0.0);
        }
        return;
    }
    let mut a = PackedA::pack(0, 0, |_, _| 0.0);
    with_scratch::<f32, _>(slab_len(KC, cols), |slab_buf| {
        let mut offs: Vec<(usize, usize)> = Vec::with_capacity(KC);
        for l0 in (0..k).step_by(KC) {
            let kb = (k - l0).min(KC);
            offs.clear();
            offs.extend((l0..l0 + kb).map(pixel));
            a.repack(m, kb, |o, l| gy_rows[o * oplane + offs[l].0]);
            let slabs = &mut slab_buf[..slab_len(kb, cols)];
            for j in 0..cols {
                let src = &x_cols[j * plane..];
                let base = (j / NR) * kb * NR + j % NR;
                for (l, &(_, xo)) in offs.iter().enumerate() {
                    slabs[base + l * NR] = src[xo];
                }
            }
            zero_slab_padding(slabs, kb, cols);
            let whole = [KSeg { a_k0: 0, b_k0: 0, len: kb }];
            packed_gemm::gemm_to(&a, &whole, slabs, kb, cols, c, ldc, l0 > 0);
        }
    });
}
