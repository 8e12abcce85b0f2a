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
    debug_assert!(w <= 2 * NR && rows <= 2 * MR);
    match (rows > MR, w > NR) {
        (true, true) => block::<2, 2>(segs, panel, panel_stride, slab, slab_stride, c, ldc, rows, w, accumulate),
        (true, false) => block::<2, 1>(segs, panel, panel_stride, slab, slab_stride, c, ldc, rows, w, accumulate),
        (false, true) => block::<1, 2>(segs, panel, panel_stride, slab, slab_stride, c, ldc, rows, w, accumulate),
        (false, false) => block::<1, 1>(segs, panel, panel_stride, slab, slab_stride, c, ldc, rows, w, accumulate),
    }
}

/// [`micro`] on `P` panels (6 P rows) and `S` slabs (16 S columns): `6 P x S` accumulators.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn block<const P: usize, const S: usize>(
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
    let mut acc = [[_mm512_setzero_ps(); S]; 12];
    for s in segs {
        let mut ap = panel.add(s.a_k0 * MR);
        let mut bp = slab.add(s.b_k0 * NR);
        for _ in 0..s.len {
            let mut b = [_mm512_setzero_ps(); S];
            for (j, bj) in b.iter_mut().enumerate() {
                *bj = _mm512_loadu_ps(bp.add(j * slab_stride));
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
            bp = bp.add(NR);
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
