//! The AVX-512 micro-kernel of the packed GEMM: one `6 x 32` block of `C` from two adjacent slabs.
//!
//! The operands keep the layouts of the AVX2 kernel (`avx2.rs`): panels of [`MR`] rows of `A`,
//! slabs of [`NR`] = 16 columns of `B`. One 16-float slab row fills one 512-bit register, so the
//! kernel reads the same row `l` of two neighbouring slabs (`slab` and `slab + slab_stride`) and
//! keeps a `6 x 32` block of `C` in twelve registers: twelve independent chains, enough to cover
//! the FMA latency on two 512-bit pipes. Each element of `C` is the same chain of fused
//! multiply-adds as in the AVX2 kernel (segments in order, `l` in order, from zero; then `C` added
//! once), so the two kernels give bit-identical results (tested).

use super::{lane_mask, KSeg, MR, NR};
use std::arch::x86_64::*;

/// `C[0..rows, 0..w] = [C +] sum over segments of A_panel[:, a_k0..] B[b_k0.., cols]`, where
/// columns `0..16` are slab 0 (at `slab`) and `16..32` slab 1 (at `slab + slab_stride`).
///
/// With `w <= 16` only slab 0 is read (six accumulators: the last, odd slab of a row). Padded rows
/// of a short panel are zeros, so all six rows are computed and only `rows` stored; columns past
/// `w` are masked off.
///
/// # Safety
/// AVX-512F present; `panel + (a_k0 + l) MR + r` readable for every segment, `l < len`, `r < 6`;
/// `slab + (b_k0 + l) NR + j` for `j < 16`, and when `w > 16` also `slab + slab_stride + ...`;
/// `C` writable for `rows` rows of stride `ldc`, `w` columns.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn micro(
    segs: &[KSeg],
    panel: *const f32,
    panel_stride: usize,
    slab: *const f32,
    slab_stride: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    w: usize,
    accumulate: bool,
) {
    let runs = segs.iter().map(|s| Run { a_col: s.a_k0, b: slab.wrapping_add(s.b_k0 * NR), len: s.len });
    let b = BLayout { row_step: NR, half_step: slab_stride };
    micro_runs(runs, panel, panel_stride, b, c, ldc, rows, w, accumulate)
}

/// One run of the product: panel columns `a_col .. a_col + len` times `len` rows of `B`, the first
/// at `b`.
#[derive(Clone, Copy)]
pub(crate) struct Run {
    pub a_col: usize,
    pub b: *const f32,
    pub len: usize,
}

/// Where `B`'s elements lie relative to a run's `b`: row `l`, column `16 h + j` at
/// `b + l row_step + h half_step + j`. Packed slabs: `row_step` 16, `half_step` the slab stride; a
/// conv source read in place (`conv/direct.rs`): `row_step` the channel plane, `half_step` 16.
#[derive(Clone, Copy)]
pub(crate) struct BLayout {
    pub row_step: usize,
    pub half_step: usize,
}

/// [`micro`] over any runs and `B` layout: `C[0..rows, 0..w] = [C +] sum over runs of
/// A_panel[:, a_col..] B_run`, the same chain of fused multiply-adds per element (runs in order,
/// rows of a run in order, from zero; then `C` added once).
///
/// # Safety
/// AVX-512F present; `panel + (a_col + l) MR + r` (and `+ panel_stride` when `rows > 6`) readable for
/// every run, `l < len`, `r < 6`; `b + l row_step + j` for `j < 16` (and `+ half_step` when
/// `w > 16`); `C` as in [`micro`].
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_runs(
    runs: impl Iterator<Item = Run>,
    panel: *const f32,
    panel_stride: usize,
    b: BLayout,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    w: usize,
    accumulate: bool,
) {
    debug_assert!(w <= 2 * NR && rows <= 2 * MR);
    match (rows > MR, w > NR) {
        (true, true) => block::<2, 2>(runs, panel, panel_stride, b, c, ldc, rows, w, accumulate),
        (true, false) => block::<2, 1>(runs, panel, panel_stride, b, c, ldc, rows, w, accumulate),
        (false, true) => block::<1, 2>(runs, panel, panel_stride, b, c, ldc, rows, w, accumulate),
        (false, false) => block::<1, 1>(runs, panel, panel_stride, b, c, ldc, rows, w, accumulate),
    }
}

/// [`micro_runs`] on `P` panels (6 P rows) and `S` 16-column halves: `6 P x S` accumulators.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn block<const P: usize, const S: usize>(
    runs: impl Iterator<Item = Run>,
    panel: *const f32,
    panel_stride: usize,
    bl: BLayout,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    w: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); S]; 12];
    for run in runs {
        let mut ap = panel.add(run.a_col * MR);
        let mut bp = run.b;
        for _ in 0..run.len {
            let mut b = [_mm512_setzero_ps(); S];
            for (j, bj) in b.iter_mut().enumerate() {
                *bj = _mm512_loadu_ps(bp.add(j * bl.half_step));
            }
            for pi in 0..P {
                for r in 0..MR {
                    let av = _mm512_set1_ps(*ap.add(pi * panel_stride + r));
                    for j in 0..S {
                        acc[pi * MR + r][j] = _mm512_fmadd_ps(av, b[j], acc[pi * MR + r][j]);
                    }
                }
            }
            ap = ap.add(MR);
            bp = bp.add(bl.row_step);
        }
    }
    let masks: [__mmask16; S] = std::array::from_fn(|j| lane_mask(w.saturating_sub(j * NR)));
    for (r, row) in acc.iter().enumerate().take(rows.min(P * MR)) {
        let cr = c.add(r * ldc);
        for j in 0..S {
            if masks[j] == 0 {
                continue;
            }
            let mut v = row[j];
            if accumulate {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(masks[j], cr.add(j * NR)));
            }
            _mm512_mask_storeu_ps(cr.add(j * NR), masks[j], v);
        }
    }
}
