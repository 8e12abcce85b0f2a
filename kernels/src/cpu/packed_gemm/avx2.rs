//! The AVX2 + FMA micro-kernel of the packed GEMM: one `6 x 16` block of `C`, or `6 x 8` when the
//! slab has at most 8 live columns.

use super::avx512::Run;
use super::{KSeg, MR, NR};
use std::arch::x86_64::*;

/// `C[0..rows, 0..w] = [C +] sum over segments of A_panel[:, a_k0..] B_slab[b_k0.., :]`.
///
/// Per step `l`: two loads of `B` (16 floats), six broadcasts of `A` (one panel column), twelve
/// fused multiply-adds into the twelve accumulators. The padded rows of a short panel are zeros,
/// so all six rows are computed and only `rows` stored; the last `16 - w` columns are masked.
/// A slab with `w <= 8` (the last of a tile whose pixel count leaves at most 8 over a multiple of
/// 16: a 9 x 9 map's 81 pixels end on a slab of 1) runs the left half only, six multiply-adds per
/// step: every element still gets the same chain of multiply-adds, so the results are the same.
///
/// # Safety
/// AVX2 + FMA present; `panel + (a_k0 + l) MR + r` and `slab + (b_k0 + l) NR + j` readable for
/// every segment, `l < len`, `r < 6`, `j < 16`; `C` writable for `rows` rows of stride `ldc`, `w` columns.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn micro(
    segs: &[KSeg],
    panel: *const f32,
    slab: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    w: usize,
    accumulate: bool,
) {
    let runs = segs.iter().map(|s| Run { a_col: s.a_k0, b: slab.wrapping_add(s.b_k0 * NR), len: s.len });
    micro_runs(runs, panel, NR, c, ldc, rows, w, accumulate)
}

/// [`micro`] over any runs, row `l` of a run's `B` at `b + l row_step` (16 floats): packed slabs
/// (`row_step` 16) or a conv source read in place (`conv/direct.rs`: `row_step` the channel
/// plane). The same chain of multiply-adds per element as [`micro`] (runs in order, rows of a run
/// in order, from zero; then `C` added once).
///
/// # Safety
/// AVX2 + FMA present; `panel + (a_col + l) MR + r` readable for every run, `l < len`, `r < 6`;
/// `b + l row_step + j` for `j < 16` (`j < 8` when `w <= 8`); `C` as in [`micro`].
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_runs(
    runs: impl Iterator<Item = Run>,
    panel: *const f32,
    row_step: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    w: usize,
    accumulate: bool,
) {
    if w <= NR / 2 {
        block::<1>(runs, panel, row_step, c, ldc, rows, w, accumulate)
    } else {
        block::<2>(runs, panel, row_step, c, ldc, rows, w, accumulate)
    }
}

/// [`micro_runs`] on `H` 8-column halves: `6 x H` accumulators.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn block<const H: usize>(
    runs: impl Iterator<Item = Run>,
    panel: *const f32,
    row_step: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    w: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); H]; MR];
    for run in runs {
        let mut ap = panel.add(run.a_col * MR);
        let mut bp = run.b;
        for _ in 0..run.len {
            let mut b = [_mm256_setzero_ps(); H];
            for (h, bh) in b.iter_mut().enumerate() {
                *bh = _mm256_loadu_ps(bp.add(8 * h));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(r));
                for h in 0..H {
                    row[h] = _mm256_fmadd_ps(av, b[h], row[h]);
                }
            }
            ap = ap.add(MR);
            bp = bp.wrapping_add(row_step);
        }
    }
    // The same store as the contrastive tile kernel's (`contrastive/tile_gemm.rs`). Sharing it as a
    // helper over slices of the accumulators cost both kernels ~40 % of their speed (measured), so
    // each keeps its own copy.
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let masks: [__m256i; H] =
        std::array::from_fn(|h| _mm256_cmpgt_epi32(_mm256_set1_epi32(w.saturating_sub(8 * h).min(8) as i32), lanes));
    for (r, row) in acc.iter().enumerate().take(rows) {
        let cr = c.add(r * ldc);
        for h in 0..H {
            let mut v = row[h];
            if w >= 8 * (h + 1) {
                if accumulate {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(cr.add(8 * h)));
                }
                _mm256_storeu_ps(cr.add(8 * h), v);
            } else {
                if accumulate {
                    v = _mm256_add_ps(v, _mm256_maskload_ps(cr.add(8 * h), masks[h]));
                }
                _mm256_maskstore_ps(cr.add(8 * h), masks[h], v);
            }
        }
    }
}
