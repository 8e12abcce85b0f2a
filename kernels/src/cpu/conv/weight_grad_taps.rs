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
use super::gather::{transpose_16x16, transposed_run, ChannelLanes};
use super::gather::{with_scratch, zero_slab_padding};
use super::Conv2dGeom;
use crate::cpu::packed_gemm::{self, lane_mask, slab_len, KSeg, PackedA, KC, MR, NR};
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

/// One task: rows `rows` x columns `cols` of every tap's GEMM in group `group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TapTask {
    group: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    /// Which (group, row block) it belongs to: the tasks of one can share its packed `gy`.
    unit: usize,
}

/// Most input channels per task of a conv with several taps: the task keeps its block of `dw`
/// for all taps (`rows x taps x 64` floats, 576 KiB at 256 rows and 9 taps) in L2 until it is
/// written out.
const TAP_COLS: usize = 64;

/// The tasks of the per-tap `dw`, or `None` when the tiled path suits the conv better. Depends
/// only on the shapes.
pub(super) fn tap_tasks(g: &Conv2dGeom) -> Option<Vec<TapTask>> {
    let (cig, cog, taps) = (g.cig(), g.cog(), g.taps());
    let (oh, ow) = g.ohw();
    if cig < MIN_CIG || g.n * oh * ow > MAX_PIXELS_PER_CHANNEL * cig {
        return None;
    }
    let row_blocks = (cog / MIN_ROWS).max(1);
    if g.groups * taps * cig.div_ceil(COLS) * row_blocks < MIN_TASKS {
        return None;
    }
    // Row blocks of whole panels, as even as possible.
    let panels = cog.div_ceil(MR);
    let row_range =
        |b: usize| ((b * panels / row_blocks) * MR).min(cog)..(((b + 1) * panels / row_blocks) * MR).min(cog);
    // One tap: column blocks as even as possible. Several: blocks of TAP_COLS (whole slabs).
    let cols: Vec<Range<usize>> = if taps == 1 {
        let blocks = cig.div_ceil(COLS);
        (0..blocks).map(|b| b * cig / blocks..(b + 1) * cig / blocks).collect()
    } else {
        // Narrower blocks (whole slabs) where TAP_COLS would leave fewer than MIN_TASKS.
        let width = TAP_COLS.min((cig.div_ceil(MIN_TASKS * g.groups * row_blocks)).next_multiple_of(NR));
        (0..cig).step_by(width).map(|c0| c0..(c0 + width).min(cig)).collect()
    };
    let mut tasks = Vec::new();
    for group in 0..g.groups {
        for rb in 0..row_blocks {
            let unit = group * row_blocks + rb;
            for c in &cols {
                tasks.push(TapTask { group, rows: row_range(rb), cols: c.clone(), unit });
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

/// The output rows and columns where tap `tap` lands inside the input.
fn live_rect(g: &Conv2dGeom, tap: usize) -> (Range<usize>, Range<usize>) {
    let (oh, ow) = g.ohw();
    let (ky, kx) = (tap / g.kw, tap % g.kw);
    let ys = live_range(g.h, oh, ky, g.stride[0], g.padding[0], g.dilation[0]);
    let xs = live_range(g.w, ow, kx, g.stride[1], g.padding[1], g.dilation[1]);
    (ys, xs)
}

/// `dw` (`[c_out][cig][taps]`, overwritten) from `x` and `gy` by the `tasks` of [`tap_tasks`].
///
/// A task computes its block of `dw` for every tap. With several taps it stages the block as
/// `[row][tap][column]` (each tap's GEMM writes a plain row-major block) in a per-thread buffer
/// that stays in cache, and then interleaves it into `dw`: `dw` is written once, by one task per
/// block. (Staging all of `dw` and transposing it at the end read and wrote the multi-megabyte
/// `dw` three more times, a fifth of layer 4's `dw`, more inside a step, where nothing is in cache.)
///
/// With several taps, or a single tap over several column blocks, each (group, row block) first
/// packs its rows of `gy` over all pixels once, as the left operand, and every tap multiplies its
/// live pixels' columns of it (one segment per output row). With one tap and one or two column
/// blocks, packing each task's `K` blocks just before they are used (L2-resident) was faster
/// (layer 4's 512 -> 2048 1x1 `dw` 6.1-6.6 ms against 7.4 prepacked).
pub(super) fn weight_grad_taps(g: &Conv2dGeom, tasks: &[TapTask], x: &[f32], gy: &[f32], dw: &mut [f32]) {
    let mut firsts: Vec<&TapTask> = Vec::new();
    for t in tasks {
        if firsts.last().is_none_or(|f| f.unit != t.unit) {
            firsts.push(t);
        }
    }
    debug_assert!(firsts.iter().enumerate().all(|(i, t)| t.unit == i), "units numbered in task order");
    let share = g.taps() > 1 || tasks.len() >= SHARE_MIN_COL_BLOCKS * firsts.len();
    let packs: Vec<PackedA> = if share { firsts.par_iter().map(|t| pack_gy(g, t, gy)).collect() } else { Vec::new() };
    // Each tap's live pixels (and, with a shared `A`, their segments of it), once for all tasks.
    let live = LiveTaps {
        pixels: (0..g.taps()).map(|tap| live_pixels(g, tap)).collect(),
        segments: if share { (0..g.taps()).map(|tap| live_segments(g, tap)).collect() } else { Vec::new() },
    };
    let dw_ptr = SendPtr(dw.as_mut_ptr());
    tasks.par_iter().for_each(|t| {
        // SAFETY: the tasks' (row, column) blocks of `dw` are disjoint and inside it.
        unsafe { run_task(g, t, x, gy, packs.get(t.unit), &live, dw_ptr.ptr()) };
    });
}

/// Per tap: its live pixels ([`live_pixels`]) and, where `gy` is packed whole, their segments of
/// it ([`live_segments`]; empty otherwise).
struct LiveTaps {
    pixels: Vec<Vec<(usize, usize)>>,
    segments: Vec<Vec<KSeg>>,
}

/// The live pixels of tap `tap` (images, then rows, then columns), each as its offsets in `gy`'s
/// and in `x`'s image blocks.
fn live_pixels(g: &Conv2dGeom, tap: usize) -> Vec<(usize, usize)> {
    let (oh, ow) = g.ohw();
    let (plane, oplane) = (g.h * g.w, oh * ow);
    let (ky, kx) = (tap / g.kw, tap % g.kw);
    let (ys, xs) = live_rect(g, tap);
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

/// The live pixels of tap `tap` as segments of the columns of [`pack_gy`]'s `A` (all pixels,
/// images then rows then columns), one per live output row (merged where rows run on), against
/// consecutive rows of `B` (the order of [`live_pixels`]).
fn live_segments(g: &Conv2dGeom, tap: usize) -> Vec<KSeg> {
    let (oh, ow) = g.ohw();
    let (ys, xs) = live_rect(g, tap);
    let mut segs: Vec<KSeg> = Vec::new();
    let mut b_k0 = 0;
    for n in 0..g.n {
        for oy in ys.clone() {
            let a_k0 = (n * oh + oy) * ow + xs.start;
            match segs.last_mut() {
                Some(s) if s.a_k0 + s.len == a_k0 => s.len += xs.len(),
                _ => segs.push(KSeg { a_k0, b_k0, len: xs.len() }),
            }
            b_k0 += xs.len();
        }
    }
    segs
}

/// `A(o, l) = gy[image l / (oh ow), row o of the task's rows, pixel l % (oh ow)]` over all pixels
/// of all images, packed.
fn pack_gy(g: &Conv2dGeom, t: &TapTask, gy: &[f32]) -> PackedA {
    let oplane = g.ohw().0 * g.ohw().1;
    let row0 = t.group * g.cog() + t.rows.start;
    PackedA::pack(t.rows.len(), g.n * oplane, |o, l| gy[((l / oplane) * g.c_out + row0 + o) * oplane + l % oplane])
}

/// One task: for each tap, gather the tap's sources at its live pixels (the task's columns)
/// transposed into slabs as `B` and multiply by those pixels' columns of the unit's packed `gy`
/// (`shared`; or else those pixels of `gy` packed here, [`KC`] at a time), into the task's block
/// of `dw` (one tap), or into the staging block that is then interleaved into `dw` (several).
///
/// # Safety
/// `dw` must address all of `dw`, and nothing else may touch the task's block of it meanwhile.
unsafe fn run_task(
    g: &Conv2dGeom,
    t: &TapTask,
    x: &[f32],
    gy: &[f32],
    shared: Option<&PackedA>,
    live: &LiveTaps,
    dw: *mut f32,
) {
    let (cig, cog, taps) = (g.cig(), g.cog(), g.taps());
    let (plane, oplane) = (g.h * g.w, g.ohw().0 * g.ohw().1);
    let (m, cols) = (t.rows.len(), t.cols.len());
    let row0 = t.group * cog + t.rows.start;
    let gy_rows = &gy[row0 * oplane..];
    let x_cols = &x[(t.group * cig + t.cols.start) * plane..];
    // B holds one tap's live pixels: all of them with a shared `A`, else one K block.
    let bk = if shared.is_some() { g.n * oplane } else { KC };
    let staged = if taps > 1 { m * taps * cols } else { 0 };
    let mut own = PackedA::pack(0, 0, |_, _| 0.0);
    with_scratch::<f32, _>(slab_len(bk, cols) + staged, |buf| {
        let (slab_buf, stage) = buf.split_at_mut(slab_len(bk, cols));
        for tap in 0..taps {
            // Where this tap's block goes: `dw` itself ([c_out][cig]) for one tap, else the stage.
            let (c, ldc) = if taps == 1 {
                (dw.add(row0 * cig + t.cols.start), cig)
            } else {
                (stage.as_mut_ptr().add(tap * cols), taps * cols)
            };
            let offs = &live.pixels[tap];
            let k = offs.len();
            if k == 0 {
                // The tap never lands inside the input: its block of dw is zero.
                for r in 0..m {
                    std::slice::from_raw_parts_mut(c.add(r * ldc), cols).fill(0.0);
                }
                continue;
            }
            match shared {
                Some(a) => {
                    debug_assert_eq!((a.m, a.k), (m, g.n * oplane));
                    let slabs = &mut slab_buf[..slab_len(k, cols)];
                    gather_columns(x_cols, plane, cols, offs, slabs);
                    packed_gemm::gemm_to(a, &live.segments[tap], slabs, k, cols, c, ldc, false);
                }
                None => {
                    for l0 in (0..k).step_by(KC) {
                        let kb = (k - l0).min(KC);
                        let slabs = &mut slab_buf[..slab_len(kb, cols)];
                        gather_columns(x_cols, plane, cols, &offs[l0..l0 + kb], slabs);
                        own.repack(m, kb, |o, l| gy_rows[o * oplane + offs[l0 + l].0]);
                        let seg = [KSeg { a_k0: 0, b_k0: 0, len: kb }];
                        packed_gemm::gemm_to(&own, &seg, slabs, kb, cols, c, ldc, l0 > 0);
                    }
                }
            }
        }
        if taps > 1 {
            interleave_taps(stage, m, taps, cols, dw.add((row0 * cig + t.cols.start) * taps), cig * taps);
        }
    });
}

/// `dw[r][c][tap] = stage[r][tap][c]` for `r < rows`, `c < cols`: the staged block of every tap
/// interleaved into `dw`'s rows (`ld` apart; each row's block is `cols x taps` contiguous floats).
/// On AVX-512 with at most 16 taps, [`interleave_taps_avx512`]; this loop is its reference.
///
/// # Safety
/// `stage` must hold `rows x taps x cols` floats; `dw` must address `rows` rows of stride `ld`
/// with `cols taps` writable floats each.
unsafe fn interleave_taps(stage: &[f32], rows: usize, taps: usize, cols: usize, dw: *mut f32, ld: usize) {
    #[cfg(target_arch = "x86_64")]
    if taps <= NR && packed_gemm::kernel() == packed_gemm::Kernel::Avx512 {
        // SAFETY: AVX-512F present (the kernel choice says so); the caller's bounds.
        return interleave_taps_avx512(stage, rows, taps, cols, dw, ld);
    }
    interleave_taps_scalar(stage, rows, taps, cols, dw, ld)
}

/// [`interleave_taps`] one float at a time.
///
/// # Safety
/// As [`interleave_taps`].
unsafe fn interleave_taps_scalar(stage: &[f32], rows: usize, taps: usize, cols: usize, dw: *mut f32, ld: usize) {
    for (r, src) in stage.chunks_exact(taps * cols).take(rows).enumerate() {
        let dst = std::slice::from_raw_parts_mut(dw.add(r * ld), cols * taps);
        for (c, out) in dst.chunks_exact_mut(taps).enumerate() {
            for (tap, v) in out.iter_mut().enumerate() {
                *v = src[tap * cols + c];
            }
        }
    }
}

/// [`interleave_taps`] 16 channels at a time: the taps' runs of 16 channels are loaded as rows of
/// a 16 x 16 block (rows past `taps` zero), transposed in registers ([`transpose_16x16`]), and
/// each channel's `taps` values stored with one masked store. The scalar loop spent a fifth of
/// layer 4's `dw` here (one float per load and store, 36 bytes apart).
///
/// # Safety
/// AVX-512F present, `taps <= 16`; as [`interleave_taps`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn interleave_taps_avx512(stage: &[f32], rows: usize, taps: usize, cols: usize, dw: *mut f32, ld: usize) {
    use std::arch::x86_64::*;
    debug_assert!(taps <= NR && stage.len() >= rows * taps * cols);
    let tap_mask = lane_mask(taps);
    for r in 0..rows {
        let src = stage.as_ptr().add(r * taps * cols);
        let dst = dw.add(r * ld);
        for c0 in (0..cols).step_by(NR) {
            let nch = (cols - c0).min(NR);
            let mut block = [_mm512_setzero_ps(); NR];
            for (tap, v) in block.iter_mut().enumerate().take(taps) {
                // SAFETY: channels c0 .. c0 + nch of the tap's run, inside the stage.
                *v = _mm512_maskz_loadu_ps(lane_mask(nch), src.add(tap * cols + c0));
            }
            for (i, v) in transpose_16x16(block).iter().enumerate().take(nch) {
                // SAFETY: channel c0 + i's `taps` floats, inside the row's block.
                _mm512_mask_storeu_ps(dst.add((c0 + i) * taps), tap_mask, *v);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 interleave against the scalar loop and the definition, on ragged channel blocks
    /// (5, 37), one tap and sixteen, rows wider than the block (the floats between must stay).
    #[test]
    fn interleave_matches_the_definition() {
        for (taps, cols) in [(9, 64), (9, 37), (1, 5), (16, 20), (3, 16), (9, 1)] {
            let rows = 3;
            let ld = cols * taps + 7;
            let stage: Vec<f32> = (0..rows * taps * cols).map(|i| i as f32 + 0.5).collect();
            let mut got = vec![-1.0f32; rows * ld];
            let mut want = got.clone();
            // SAFETY: `stage` holds rows x taps x cols; each buffer holds `rows` rows of `ld`.
            unsafe { interleave_taps(&stage, rows, taps, cols, got.as_mut_ptr(), ld) };
            for r in 0..rows {
                for c in 0..cols {
                    for t in 0..taps {
                        want[r * ld + c * taps + t] = stage[(r * taps + t) * cols + c];
                    }
                }
            }
            assert_eq!(got, want, "taps {taps}, cols {cols}");
            let mut scalar = vec![-1.0f32; rows * ld];
            // SAFETY: as above.
            unsafe { interleave_taps_scalar(&stage, rows, taps, cols, scalar.as_mut_ptr(), ld) };
            assert_eq!(scalar, want, "scalar: taps {taps}, cols {cols}");
        }
    }
}
