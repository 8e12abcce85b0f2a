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

#[cfg(target_arch = "x86_64")]
use super::gather::{transposed_run, ChannelLanes};
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
/// Fewest column blocks per (group, tap, row block) for its `gy` to be packed once and shared.
const SHARE_MIN_COL_BLOCKS: usize = 4;
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
    /// Which (group, tap, row block) it belongs to: the tasks of one can share its packed `gy`.
    unit: usize,
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
                let unit = (group * taps + tap) * row_blocks + rb;
                for cb in 0..col_blocks {
                    tasks.push(TapTask { group, tap, rows: row_range(rb), cols: col_range(cb), unit });
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
///
/// Where a (group, tap, row block) has several column blocks, it first packs its rows of `gy` at
/// the tap's live pixels once, as the left operand over all of `K`, and its tasks share it
/// (packing it per task repeated it 8 times for ASPP and took ~4 % of a step); then every task
/// gathers its columns of `B` and multiplies.
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
    let mut firsts: Vec<&TapTask> = Vec::new();
    for t in tasks {
        if firsts.last().is_none_or(|f| f.unit != t.unit) {
            firsts.push(t);
        }
    }
    debug_assert!(firsts.iter().enumerate().all(|(i, t)| t.unit == i), "units numbered in task order");
    // Shared only where a unit has several column blocks: with one or two, packing each task's `K`
    // blocks just before they are used (L2-resident) was faster (layer 4's 512 -> 2048 1x1 `dw`
    // 6.1-6.6 ms against 7.4 prepacked; ASPP's d6 `dw`, 8 column blocks, 25 against 21 ms).
    let share = tasks.len() >= SHARE_MIN_COL_BLOCKS * firsts.len();
    let packs: Vec<PackedA> = if share { firsts.par_iter().map(|t| pack_gy(g, t, gy)).collect() } else { Vec::new() };
    let optr = SendPtr(out.as_mut_ptr());
    tasks.par_iter().for_each(|t| {
        let row0 = t.group * cog + t.rows.start;
        // SAFETY: the tasks' (row, tap, column) blocks are disjoint and inside `out`.
        let c = unsafe { optr.ptr().add((row0 * taps + t.tap) * cig + t.cols.start) };
        unsafe { run_task(g, t, x, gy, packs.get(t.unit), c, taps * cig) };
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

/// The live pixels `P_t` of task `t`'s tap (images, then rows, then columns), each as its offsets
/// in `gy`'s and in `x`'s image blocks.
fn live_pixels(g: &Conv2dGeom, t: &TapTask) -> Vec<(usize, usize)> {
    let (oh, ow) = g.ohw();
    let (plane, oplane) = (g.h * g.w, oh * ow);
    let (ky, kx) = (t.tap / g.kw, t.tap % g.kw);
    let ys = live_range(g.h, oh, ky, g.stride[0], g.padding[0], g.dilation[0]);
    let xs = live_range(g.w, ow, kx, g.stride[1], g.padding[1], g.dilation[1]);
    let mut offs = Vec::with_capacity(g.n * ys.len() * xs.len());
    for n in 0..g.n {
        for oy in ys.clone() {
            for ox in xs.clone() {
                let iy = oy * g.stride[0] + ky * g.dilation[0] - g.padding[0];
                let ix = ox * g.stride[1] + kx * g.dilation[1] - g.padding[1];
                offs.push((n * g.c_out * oplane + oy * ow + ox, n * g.c_in * plane + iy * g.w + ix));
            }
        }
    }
    offs
}

/// `A(o, l) = gy[row o of the task's rows, pixel l of P_t]` over all of `P_t`, packed.
fn pack_gy(g: &Conv2dGeom, t: &TapTask, gy: &[f32]) -> PackedA {
    let oplane = g.ohw().0 * g.ohw().1;
    let offs = live_pixels(g, t);
    let gy_rows = &gy[(t.group * g.cog() + t.rows.start) * oplane..];
    PackedA::pack(t.rows.len(), offs.len(), |o, l| gy_rows[o * oplane + offs[l].0])
}

/// One task's GEMM, `K` in blocks of [`KC`] pixels: gather the tap's sources of those pixels (the
/// task's columns) transposed into slabs as `B`, multiply by those columns of the unit's packed
/// `gy` (`shared`, or else those pixels of `gy` packed here), and accumulate into `C` (`rows x
/// cols`, row stride `ldc`).
///
/// # Safety
/// `c` must address the task's `rows x cols` block (stride `ldc`) and nothing else may touch it.
unsafe fn run_task(
    g: &Conv2dGeom,
    t: &TapTask,
    x: &[f32],
    gy: &[f32],
    shared: Option<&PackedA>,
    c: *mut f32,
    ldc: usize,
) {
    let (plane, oplane) = (g.h * g.w, g.ohw().0 * g.ohw().1);
    let (m, cols) = (t.rows.len(), t.cols.len());
    let offs = live_pixels(g, t);
    let k = offs.len();
    debug_assert!(shared.is_none_or(|a| (a.m, a.k) == (m, k)));
    let gy_rows = &gy[(t.group * g.cog() + t.rows.start) * oplane..];
    let x_cols = &x[(t.group * g.cig() + t.cols.start) * plane..];
    if k == 0 {
        // The tap never lands inside the input: its block of dw is zero.
        for r in 0..m {
            std::slice::from_raw_parts_mut(c.add(r * ldc), cols).fill(0.0);
        }
        return;
    }
    let mut own = PackedA::pack(0, 0, |_, _| 0.0);
    with_scratch::<f32, _>(slab_len(KC, cols), |slab_buf| {
        for l0 in (0..k).step_by(KC) {
            let kb = (k - l0).min(KC);
            let slabs = &mut slab_buf[..slab_len(kb, cols)];
            gather_columns(x_cols, plane, cols, &offs[l0..l0 + kb], slabs);
            let (a, seg) = match shared {
                Some(a) => (a, [KSeg { a_k0: l0, b_k0: 0, len: kb }]),
                None => {
                    own.repack(m, kb, |o, l| gy_rows[o * oplane + offs[l0 + l].0]);
                    (&own, [KSeg { a_k0: 0, b_k0: 0, len: kb }])
                }
            };
            packed_gemm::gemm_to(a, &seg, slabs, kb, cols, c, ldc, l0 > 0);
        }
    });
}

/// `B(l, j) = x_cols[j plane + offs[l].1]` for `l < offs.len()`, `j < cols`, in slabs (the
/// padding columns zeroed): pixel `l`'s values in channels `j` are one slab row per 16 channels.
fn gather_columns(x_cols: &[f32], plane: usize, cols: usize, offs: &[(usize, usize)], slabs: &mut [f32]) {
    let kb = offs.len();
    assert!(slabs.len() >= slab_len(kb, cols), "per-tap dw: slabs too short");
    assert!(offs.iter().all(|&(_, xo)| cols == 0 || (cols - 1) * plane + xo < x_cols.len()), "per-tap dw: source");
    #[cfg(target_arch = "x86_64")]
    {
        let max_off = offs.iter().map(|&(_, xo)| xo).max().unwrap_or(0);
        if packed_gemm::kernel() == packed_gemm::Kernel::Avx512 && NR * plane + max_off < i32::MAX as usize {
            // SAFETY: AVX-512F present (the kernel choice says so); bounds asserted above.
            return unsafe { gather_columns_avx512(x_cols, plane, cols, offs, slabs) };
        }
    }
    for j in 0..cols {
        let src = &x_cols[j * plane..];
        let base = (j / NR) * kb * NR + j % NR;
        for (l, &(_, xo)) in offs.iter().enumerate() {
            slabs[base + l * NR] = src[xo];
        }
    }
    zero_slab_padding(slabs, kb, cols);
}

/// [`gather_columns`] as whole slab rows (the scalar loop stores one float per row, 64 bytes
/// apart): where 16 pixels in a row read 16 consecutive source elements (a run of an image row at
/// stride 1), the 16 channels' runs are loaded as plain vectors and transposed in registers;
/// elsewhere each pixel is one masked 16-channel gather (which alone took 3.5 % of the R50 step's
/// samples).
///
/// # Safety
/// AVX-512F present; `x_cols` holds `cols` planes and `offs` lie inside a plane, in increasing
/// order; `slabs` holds the block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_columns_avx512(x_cols: &[f32], plane: usize, cols: usize, offs: &[(usize, usize)], slabs: &mut [f32]) {
    use std::arch::x86_64::_mm512_storeu_ps;
    let kb = offs.len();
    debug_assert!(offs.windows(2).all(|w| w[0].1 < w[1].1), "per-tap dw: offsets in increasing order");
    // Increasing offsets 15 apart over 16 pixels are consecutive.
    let run_at = |l: usize| l + NR <= kb && offs[l + NR - 1].1 == offs[l].1 + NR - 1;
    for q in 0..cols.div_ceil(NR) {
        let nch = (cols - q * NR).min(NR);
        // Lanes past the channel count are zeros: the slab padding.
        let chans = ChannelLanes::new(plane, nch);
        let src = x_cols.as_ptr().add(q * NR * plane);
        let dst = slabs.as_mut_ptr().add(q * kb * NR);
        let mut l = 0;
        while l < kb {
            if run_at(l) {
                // SAFETY: channels < cols, elements xo .. xo + 16 of their planes (the run's
                // offsets, inside the plane); rows l .. l + 16 of the slab inside `slabs`.
                transposed_run(src.add(offs[l].1), plane, nch, dst.add(l * NR));
                l += NR;
            } else {
                _mm512_storeu_ps(dst.add(l * NR), chans.gather(src, offs[l].1));
                l += 1;
            }
        }
    }
}
