//! The Winograd transforms of `winograd.rs` on 8 lanes at once (AVX2), for the CPUs whose GEMMs
//! run the 256-bit micro-kernel.
//!
//! On AVX2 the scalar transforms (per tile and channel: a patch read with a border check, ~400
//! scalar adds and multiplies for F(4x4, 3x3), 36 results stored one by one into 36 slabs) took
//! about 40 % of a one-thread decoder conv (256 -> 256 on 2 x 33 x 33; the GEMMs 46 %). Here one
//! register holds one element of the transform for 8 tiles (or 8 channels). AVX2's gathers are
//! slower than plain loads on the CPUs measured (the weight packing by 8-lane gathers ran slower
//! than its scalar loop), so the lanes' patches are read as the scalar code reads them, into a
//! small staging block whose `T x T` rows of 8 floats are then loaded as vectors; the transforms
//! are the scalar code's very adds and multiplies (so results are bit-identical, tested), and
//! the `E` results land as 8-float runs of slab rows. The output transform loads its inputs as
//! vectors and writes each lane's `M x M` outputs through the same border check as the scalar code.

use super::winograd::{Minimal, Ops};
use crate::cpu::packed_gemm::slab_index;
use std::arch::x86_64::*;

/// Lanes per register.
const LANES: usize = 8;

/// One lane's `T x T` input patch: inside the plane (its first element and the row pitch: read
/// without a border check, which was most of the staging's time), or read by [`Minimal::patch`].
enum Patch<const T: usize> {
    Inside(*const f32, usize),
    Border([[f32; T]; T]),
}

/// Patch of tile `t` (of a `tw`-wide grid of `M x M` tiles) of one `h x w` plane, as
/// [`Minimal::patch`] reads it.
#[inline(always)]
fn patch_of<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
    plane: &[f32],
    (h, w): (usize, usize),
    tw: usize,
    t: usize,
) -> Patch<T> {
    let (y0, x0) = ((t / tw) * M, (t % tw) * M);
    if y0 >= 1 && x0 >= 1 && y0 - 1 + T <= h && x0 - 1 + T <= w {
        Patch::Inside(plane[(y0 - 1) * w + x0 - 1..].as_ptr(), w)
    } else {
        Patch::Border(W::patch(plane, (h, w), tw, t))
    }
}

/// `V = B^T d B` of up to 8 patches (`patch(l)` for lane `l < count`, zeros past it), element
/// `xi` of each lane in lane order.
///
/// # Safety
/// AVX2 present; every [`Patch::Inside`] addresses `T` rows of `T` floats.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn lanes_transform<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
    count: usize,
    patch: impl Fn(usize) -> Patch<T>,
) -> [__m256; E] {
    let mut stage = [[[0f32; LANES]; T]; T];
    for l in 0..count {
        match patch(l) {
            Patch::Inside(src, w) => {
                // Rows of T floats, `w` apart from `src`: no border to check.
                for (i, srow) in stage.iter_mut().enumerate() {
                    for (k, s) in srow.iter_mut().enumerate() {
                        s[l] = *src.add(i * w + k);
                    }
                }
            }
            Patch::Border(p) => {
                for (srow, prow) in stage.iter_mut().zip(&p) {
                    for (s, &e) in srow.iter_mut().zip(prow) {
                        s[l] = e;
                    }
                }
            }
        }
    }
    // Plain loops (not `array::from_fn`, whose closures would not be AVX2 code).
    let mut d = [[_mm256_setzero_ps(); T]; T];
    for (drow, srow) in d.iter_mut().zip(&stage) {
        for (e, s) in drow.iter_mut().zip(srow) {
            *e = _mm256_loadu_ps(s.as_ptr());
        }
    }
    W::patch_transform(d, Ops8)
}

/// `V_xi` of tiles `t0 .. t0 + count` (`count <= 8`, of a `tw`-wide grid over `h x w` planes) for
/// every channel: columns `j0 .. j0 + 8` of row `c` of each `V_xi` (`cin x tiles` in slab layout,
/// `v_len` floats apart, at `v`) from plane `c` of `x`; columns past `count` get zeros.
///
/// # Safety
/// AVX2 present; `x` holds `cin` planes of `h x w`; `j0` is a multiple of 8 and `v` addresses
/// these slab columns of every `V_xi` (whole slabs of 16), which nothing else touches meanwhile.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn transform_patches<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
    x: &[f32],
    (h, w): (usize, usize),
    tw: usize,
    (t0, count): (usize, usize),
    cin: usize,
    j0: usize,
    v: *mut f32,
    v_len: usize,
) {
    debug_assert!(count <= LANES && j0.is_multiple_of(LANES) && x.len() >= cin * h * w);
    let plane = h * w;
    for c in 0..cin {
        let xc = &x[c * plane..][..plane];
        let vv = lanes_transform::<M, T, E, W>(count, |l| patch_of::<M, T, E, W>(xc, (h, w), tw, t0 + l));
        let at = slab_index(cin, c, j0);
        for (xi, e) in vv.iter().enumerate() {
            _mm256_storeu_ps(v.add(xi * v_len + at), *e);
        }
    }
}

/// `Y = A^T M A + bias` of tiles `t0 .. t0 + count` (`count <= 8`; columns `j0 ..` of the block's
/// `nt` columns of each `M_xi`, `cout x nt` at `m[xi cout nt ..]`) into the `cout` output planes
/// of `h x w` at `y`, the outputs past the border left out.
///
/// # Safety
/// AVX2 present; `y` addresses `cout` whole planes whose pixels of these tiles nothing else
/// touches meanwhile.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn transform_outputs<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
    m: &[f32],
    cout: usize,
    nt: usize,
    (j0, t0, count): (usize, usize, usize),
    (h, w): (usize, usize),
    tw: usize,
    bias: Option<&[f32]>,
    y: *mut f32,
) {
    assert!(count <= LANES && j0 + count <= nt && m.len() >= E * cout * nt, "winograd: M too short");
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let load = _mm256_cmpgt_epi32(_mm256_set1_epi32(count as i32), lanes);
    for o in 0..cout {
        let mut mv = [_mm256_setzero_ps(); E];
        for (xi, e) in mv.iter_mut().enumerate() {
            // SAFETY: lanes < count read columns j0 .. j0 + count <= nt of row o of M_xi (inside `m`).
            *e = _mm256_maskload_ps(m.as_ptr().add((xi * cout + o) * nt + j0), load);
        }
        let out = W::output_transform(mv, Ops8);
        let mut stage = [[[0f32; LANES]; M]; M];
        for (srow, orow) in stage.iter_mut().zip(&out) {
            for (s, e) in srow.iter_mut().zip(orow) {
                _mm256_storeu_ps(s.as_mut_ptr(), *e);
            }
        }
        let b = bias.map_or(0.0, |b| b[o]);
        let yo = y.add(o * h * w);
        for l in 0..count {
            let t = t0 + l;
            let (y0, x0) = ((t / tw) * M, (t % tw) * M);
            for (qy, srow) in stage.iter().enumerate() {
                for (qx, s) in srow.iter().enumerate() {
                    let (oy, ox) = (y0 + qy, x0 + qx);
                    if oy < h && ox < w {
                        *yo.add(oy * w + ox) = s[l] + b;
                    }
                }
            }
        }
    }
}

/// For the weight gradient, whose `V_xi^T` (`tiles x cin`) slabs run over channels: the patches of
/// tile `t` in the 8 channels `c0 ..` (`count` of them, lane `l` = plane `c0 + l` of `x`),
/// transformed, into row `j` of the channel columns `c0 .. c0 + 8` of each `V_xi^T` (`nt` rows,
/// `v_len` floats apart, at `v`); lanes past `count` are zeros (the slab padding).
///
/// # Safety
/// AVX2 present; `x` holds the image's `c0 + count` planes of `h x w`; `c0` is a multiple of 8
/// and the written rows belong to the caller alone.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn transform_channel_patches<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
    x: &[f32],
    (h, w): (usize, usize),
    tw: usize,
    t: usize,
    (c0, count): (usize, usize),
    (j, nt): (usize, usize),
    v: *mut f32,
    v_len: usize,
) {
    let plane = h * w;
    debug_assert!(count <= LANES && c0.is_multiple_of(LANES) && x.len() >= (c0 + count) * plane);
    let vv = lanes_transform::<M, T, E, W>(count, |l| {
        patch_of::<M, T, E, W>(&x[(c0 + l) * plane..][..plane], (h, w), tw, t)
    });
    let at = slab_index(nt, j, c0);
    for (xi, e) in vv.iter().enumerate() {
        _mm256_storeu_ps(v.add(xi * v_len + at), *e);
    }
}

/// The arithmetic of the transforms on 8-lane vectors ([`Ops`]).
#[derive(Clone, Copy)]
struct Ops8;

impl Ops for Ops8 {
    type V = __m256;
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: only reached from the `avx2` functions above (the CPU has it).
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: as `add`.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, k: f32) -> __m256 {
        // SAFETY: as `add`.
        unsafe { _mm256_mul_ps(a, _mm256_set1_ps(k)) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::winograd::reference::{outputs, patch_v, val};
    use super::super::winograd::{F2, F4};
    use super::*;
    use crate::cpu::packed_gemm::{available, slab_len};

    /// The 8-lane patch and output transforms of `W` against the scalar ones, bit for bit, on 21
    /// channels of a 13 x 11 plane (tiles cut by the border, groups that wrap to the next tile
    /// row, a partial last group).
    fn tile_lanes_match<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>() {
        let ((h, w), cin) = ((13usize, 11usize), 21usize);
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        let plane = h * w;
        let x: Vec<f32> = (0..cin * plane).map(|i| val(i + 3)).collect();
        let t0 = 4;
        let nt = th * tw - t0;
        let v_len = slab_len(cin, nt);
        let mut v = vec![f32::NAN; E * v_len];
        for j0 in (0..nt).step_by(LANES) {
            let count = (nt - j0).min(LANES);
            unsafe {
                transform_patches::<M, T, E, W>(&x, (h, w), tw, (t0 + j0, count), cin, j0, v.as_mut_ptr(), v_len)
            };
        }
        for c in 0..cin {
            for j in 0..nt.next_multiple_of(LANES) {
                let want = patch_v::<M, T, E, W>(&x[c * plane..][..plane], (h, w), tw, (j < nt).then_some(t0 + j));
                for (xi, e) in want.iter().enumerate() {
                    let got = v[xi * v_len + slab_index(cin, c, j)];
                    assert_eq!(got.to_bits(), e.to_bits(), "F({M}x{M}) V: channel {c}, tile {j}, xi {xi}");
                }
            }
        }
        // Outputs: M for 3 output channels, written with a bias, the rest of the planes untouched.
        let cout = 3;
        let m: Vec<f32> = (0..E * cout * nt).map(|i| val(i + 17)).collect();
        let bias = [0.5f32, -1.25, 0.0];
        let mut y = vec![f32::NAN; cout * plane];
        for j0 in (0..nt).step_by(LANES) {
            let count = (nt - j0).min(LANES);
            unsafe {
                transform_outputs::<M, T, E, W>(
                    &m,
                    cout,
                    nt,
                    (j0, t0 + j0, count),
                    (h, w),
                    tw,
                    Some(&bias),
                    y.as_mut_ptr(),
                )
            };
        }
        let want = outputs::<M, T, E, W>(&m, (cout, nt, t0), (h, w), tw, &bias);
        for (i, (g, e)) in y.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), e.to_bits(), "F({M}x{M}) Y: element {i}");
        }
    }

    /// The weight gradient's channel lanes of `W`: tile by tile, 8 channels at a time, the last 5.
    fn channel_lanes_match<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>() {
        let ((h, w), cin) = ((13usize, 11usize), 21usize);
        let tw = w.div_ceil(M);
        let plane = h * w;
        let x: Vec<f32> = (0..cin * plane).map(|i| val(i + 3)).collect();
        let (t0, nt) = (4, h.div_ceil(M) * tw - 4);
        let vt_len = slab_len(nt, cin);
        let mut vt = vec![f32::NAN; E * vt_len];
        for j in 0..nt {
            for c0 in (0..cin).step_by(LANES) {
                let count = (cin - c0).min(LANES);
                unsafe {
                    transform_channel_patches::<M, T, E, W>(
                        &x,
                        (h, w),
                        tw,
                        t0 + j,
                        (c0, count),
                        (j, nt),
                        vt.as_mut_ptr(),
                        vt_len,
                    )
                };
            }
        }
        for j in 0..nt {
            for c in 0..cin.next_multiple_of(LANES) {
                let want = if c < cin {
                    patch_v::<M, T, E, W>(&x[c * plane..][..plane], (h, w), tw, Some(t0 + j))
                } else {
                    [0.0; E]
                };
                for (xi, e) in want.iter().enumerate() {
                    let got = vt[xi * vt_len + slab_index(nt, j, c)];
                    assert_eq!(got.to_bits(), e.to_bits(), "F({M}x{M}) V^T: tile {j}, channel {c}, xi {xi}");
                }
            }
        }
    }

    #[test]
    fn lanes_match_the_scalar_transforms_bit_for_bit() {
        if !available() {
            eprintln!("skipped: no AVX2");
            return;
        }
        tile_lanes_match::<2, 4, 16, F2>();
        tile_lanes_match::<4, 6, 36, F4>();
        channel_lanes_match::<2, 4, 16, F2>();
        channel_lanes_match::<4, 6, 36, F4>();
    }
}
