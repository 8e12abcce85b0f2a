//! The AVX2 + FMA micro-kernel of the packed GEMM: one `6 x 16` block of `C`.

use super::{KSeg, MR, NR};
use std::arch::x86_64::*;

/// `C[0..rows, 0..w] = [C +] sum over segments of A_panel[:, a_k0..] B_slab[b_k0.., :]`.
///
/// Per step `l`: two loads of `B` (16 floats), six broadcasts of `A` (one panel column), twelve
/// fused multiply-adds into the twelve accumulators. The padded rows of a short panel are zeros,
/// so all six rows are computed and only `rows` stored; the last `16 - w` columns are masked.
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
    let mut lo = [_mm256_setzero_ps(); MR];
    let mut hi = [_mm256_setzero_ps(); MR];
    for s in segs {
        let mut ap = panel.add(s.a_k0 * MR);
        let mut bp = slab.add(s.b_k0 * NR);
        for _ in 0..s.len {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for r in 0..MR {
                let av = _mm256_broadcast_ss(&*ap.add(r));
                lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
                hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
    }
    // The same store as the contrastive tile kernel's (`contrastive/tile_gemm.rs`). Sharing it as a
    // helper over slices of the accumulators cost both kernels ~40 % of their speed (measured), so
    // each keeps its own copy.
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(w.min(8) as i32), lanes);
    let m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(w.saturating_sub(8) as i32), lanes);
    for r in 0..rows {
        let cr = c.add(r * ldc);
        let (mut v0, mut v1) = (lo[r], hi[r]);
        if w == NR {
            if accumulate {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cr));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cr.add(8)));
            }
            _mm256_storeu_ps(cr, v0);
            _mm256_storeu_ps(cr.add(8), v1);
        } else {
            if accumulate {
                v0 = _mm256_add_ps(v0, _mm256_maskload_ps(cr, m0));
                v1 = _mm256_add_ps(v1, _mm256_maskload_ps(cr.add(8), m1));
            }
            _mm256_maskstore_ps(cr, m0, v0);
            _mm256_maskstore_ps(cr.add(8), m1, v1);
        }
    }
}
