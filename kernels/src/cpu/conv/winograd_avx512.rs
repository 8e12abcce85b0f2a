//! The Winograd transforms of `winograd.rs` on 16 lanes at once (AVX-512), for the CPUs whose
//! GEMMs run the 512-bit micro-kernel.
//!
//! With the 512-bit GEMMs the scalar transforms (a 4 x 4 patch read element by element with a
//! border check, 16 results scattered one by one) took about as long as the 16 GEMMs. Here one
//! register holds one element of the transform for 16 tiles (or 16 channels): the patch elements
//! are masked gathers (the mask is the zero padding), the transforms are the scalar code's very
//! adds and multiplies on vectors (so results are bit-identical, tested), and the 16 results land
//! as whole slab rows. The output transform scatters its four outputs per tile through a mask of
//! the pixels inside the plane.

use super::gather::ChannelLanes;
use super::winograd::Minimal;
use crate::cpu::packed_gemm::{lane_mask, slab_index};
use std::arch::x86_64::*;

/// Up to 16 tiles of one image (lane `l` = tile `t0 + l` of a `tw`-wide grid over an `h x w`
/// plane) for F(M x M, 3 x 3): where their `T x T` patches and `M x M` outputs lie, and which
/// elements are inside.
pub(super) struct TileLanes<const M: usize, const T: usize> {
    /// Plane offset of each lane's patch element (0, 0): `(M ty - 1) w + M tx - 1` (may be
    /// negative; those elements are masked off).
    base: [i32; 16],
    /// Per patch row `i` / column `k`: lanes whose row `M ty - 1 + i` / column `M tx - 1 + k` is
    /// inside the plane (and that are tiles at all).
    row_in: [u16; T],
    col_in: [u16; T],
    w: i32,
}

impl<const M: usize, const T: usize> TileLanes<M, T> {
    /// Tiles `t0 .. t0 + count` (`count <= 16`) of a plane of `h x w` with `tw` tiles per row.
    pub(super) fn new(t0: usize, count: usize, (h, w): (usize, usize), tw: usize) -> TileLanes<M, T> {
        debug_assert!(count <= 16 && h * w < i32::MAX as usize);
        let mut lanes = TileLanes { base: [0; 16], row_in: [0; T], col_in: [0; T], w: w as i32 };
        for l in 0..count {
            let (ty, tx) = ((t0 + l) / tw, (t0 + l) % tw);
            let (y0, x0) = ((M * ty) as i32 - 1, (M * tx) as i32 - 1);
            lanes.base[l] = y0 * w as i32 + x0;
            for i in 0..T {
                if (0..h as i32).contains(&(y0 + i as i32)) {
                    lanes.row_in[i] |= 1 << l;
                }
                if (0..w as i32).contains(&(x0 + i as i32)) {
                    lanes.col_in[i] |= 1 << l;
                }
            }
        }
        lanes
    }

    /// `V = B^T d B` of the 16 lanes' patches of `plane` (`h x w` floats), element `xi` of each
    /// lane in lane order; lanes without a tile are zeros.
    #[target_feature(enable = "avx512f")]
    unsafe fn patch_transform<const E: usize, W: Minimal<M, T, E>>(&self, plane: &[f32]) -> [__m512; E] {
        let base = _mm512_loadu_si512(self.base.as_ptr().cast());
        // Plain loops (not `array::from_fn`, whose closures would not be AVX-512 code).
        let mut d = [[_mm512_setzero_ps(); T]; T];
        for (i, row) in d.iter_mut().enumerate() {
            for (k, e) in row.iter_mut().enumerate() {
                let idx = _mm512_add_epi32(base, _mm512_set1_epi32(i as i32 * self.w + k as i32));
                let mask = self.row_in[i] & self.col_in[k];
                // SAFETY: unmasked lanes index inside the plane (checked when the lanes were made).
                *e = unsafe { _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, idx, plane.as_ptr()) };
            }
        }
        W::patch_transform(d, VecOps)
    }

    /// `V_xi` of these tiles for every channel: row `c` of slab `j0 / 16` of each `V_xi` (`cin x
    /// tiles` in slab layout, `v_len` floats apart, at `v`) from plane `c` of `x`.
    ///
    /// # Safety
    /// AVX-512F present; `x` holds `cin` planes of the `h x w` the lanes were made for; `j0` is a
    /// multiple of 16 and `v` addresses 16 such slab blocks that nothing else touches meanwhile.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_patches<const E: usize, W: Minimal<M, T, E>>(
        &self,
        x: &[f32],
        plane: usize,
        cin: usize,
        j0: usize,
        v: *mut f32,
        v_len: usize,
    ) {
        for c in 0..cin {
            let vv = self.patch_transform::<E, W>(&x[c * plane..][..plane]);
            let at = slab_index(cin, c, j0);
            for (xi, e) in vv.iter().enumerate() {
                _mm512_storeu_ps(v.add(xi * v_len + at), *e);
            }
        }
    }

    /// `Y = A^T M A + bias` of these tiles (lanes `j0 ..` of the block's `nt` columns of each
    /// `M_xi`, `cout x nt` at `m[xi cout nt ..]`) into the `cout` output planes at `y`, the outputs
    /// past the border left out.
    ///
    /// # Safety
    /// AVX-512F present; `y` addresses `cout` whole planes (`plane` floats each) whose pixels of
    /// these tiles nothing else touches meanwhile.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn transform_outputs<const E: usize, W: Minimal<M, T, E>>(
        &self,
        m: &[f32],
        cout: usize,
        nt: usize,
        j0: usize,
        bias: Option<&[f32]>,
        y: *mut f32,
        plane: usize,
    ) {
        let count = (nt - j0).min(16);
        let lanes = lane_mask(count);
        assert!(m.len() >= E * cout * nt, "winograd: M too short");
        let base = _mm512_loadu_si512(self.base.as_ptr().cast());
        for o in 0..cout {
            // SAFETY: lanes < count read columns j0 .. nt of row o of each M_xi.
            let mut mv = [_mm512_setzero_ps(); E];
            for (xi, e) in mv.iter_mut().enumerate() {
                // SAFETY: as above.
                *e = unsafe { _mm512_maskz_loadu_ps(lanes, m.as_ptr().add((xi * cout + o) * nt + j0)) };
            }
            let out = W::output_transform(mv, VecOps);
            let b = _mm512_set1_ps(bias.map_or(0.0, |b| b[o]));
            // Output (qy, qx) of a tile is patch element (qy + 1, qx + 1).
            for (qy, row) in out.iter().enumerate() {
                for (qx, val) in row.iter().enumerate() {
                    let (i, k) = (qy + 1, qx + 1);
                    let idx = _mm512_add_epi32(base, _mm512_set1_epi32(i as i32 * self.w + k as i32));
                    _mm512_mask_i32scatter_ps::<4>(
                        y.add(o * plane),
                        self.row_in[i] & self.col_in[k],
                        idx,
                        _mm512_add_ps(*val, b),
                    );
                }
            }
        }
    }
}

/// For the weight gradient, whose `V_xi^T` (`tiles x cin`) slabs run over channels: the patches of
/// tile `t` in the 16 channels `c0 ..` (`count` of them, lane `l` = plane `c0 + l` of `x`),
/// transformed, into row `j` of channel slab `c0 / 16` of each `V_xi^T` (`nt` rows, `v_len` floats
/// apart, at `v`); lanes past `count` are zeros (the slab padding).
///
/// # Safety
/// AVX-512F present; `x` holds the image's `c0 + count` planes of `h x w`; `c0` is a multiple of
/// 16 and the written rows belong to the caller alone.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn transform_channel_patches<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
    x: &[f32],
    (h, w): (usize, usize),
    tw: usize,
    t: usize,
    c0: usize,
    count: usize,
    (j, nt): (usize, usize),
    v: *mut f32,
    v_len: usize,
) {
    let plane = h * w;
    debug_assert!(
        count <= 16 && c0.is_multiple_of(16) && x.len() >= (c0 + count) * plane && 16 * plane < i32::MAX as usize
    );
    let planes = &x[c0 * plane..];
    let (y0, x0) = ((M * (t / tw)) as isize - 1, (M * (t % tw)) as isize - 1);
    let chans = ChannelLanes::new(plane, count);
    let mut d = [[_mm512_setzero_ps(); T]; T];
    for (i, row) in d.iter_mut().enumerate() {
        for (k, e) in row.iter_mut().enumerate() {
            let (iy, ix) = (y0 + i as isize, x0 + k as isize);
            if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                // SAFETY: the lanes read pixel (iy, ix) of planes c0 .. c0 + count.
                *e = unsafe { chans.gather(planes.as_ptr(), iy as usize * w + ix as usize) };
            }
        }
    }
    let at = slab_index(nt, j, c0);
    for (xi, e) in W::patch_transform(d, VecOps).iter().enumerate() {
        _mm512_storeu_ps(v.add(xi * v_len + at), *e);
    }
}

/// The arithmetic of the transforms on 16-lane vectors ([`super::winograd::Ops`]).
#[derive(Clone, Copy)]
pub(super) struct VecOps;

impl super::winograd::Ops for VecOps {
    type V = __m512;
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: only reached from the `avx512f` functions above (the CPU has it).
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: as `add`.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, k: f32) -> __m512 {
        // SAFETY: as `add`.
        unsafe { _mm512_mul_ps(a, _mm512_set1_ps(k)) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::winograd::reference::{outputs, patch_v, val};
    use super::super::winograd::{F2, F4};
    use super::*;
    use crate::cpu::packed_gemm::{avx512_available, slab_len};

    /// The 16-lane patch and output transforms of `W` against the scalar ones, bit for bit, on
    /// 21 channels of a 13 x 11 plane (tiles cut by the border, groups that wrap to the next tile
    /// row, a partial last group, a partial channel slab).
    fn tile_lanes_match<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>() {
        let ((h, w), cin) = ((13usize, 11usize), 21usize);
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        let plane = h * w;
        let x: Vec<f32> = (0..cin * plane).map(|i| val(i + 3)).collect();
        let t0 = 4;
        let nt = th * tw - t0;
        let v_len = slab_len(cin, nt);
        let mut v = vec![f32::NAN; E * v_len];
        let lanes: Vec<TileLanes<M, T>> =
            (0..nt).step_by(16).map(|j0| TileLanes::new(t0 + j0, (nt - j0).min(16), (h, w), tw)).collect();
        for (l, lane) in lanes.iter().enumerate() {
            unsafe { lane.transform_patches::<E, W>(&x, plane, cin, l * 16, v.as_mut_ptr(), v_len) };
        }
        for c in 0..cin {
            for j in 0..nt.next_multiple_of(16) {
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
        for (l, lane) in lanes.iter().enumerate() {
            unsafe { lane.transform_outputs::<E, W>(&m, cout, nt, l * 16, Some(&bias), y.as_mut_ptr(), plane) };
        }
        let want = outputs::<M, T, E, W>(&m, (cout, nt, t0), (h, w), tw, &bias);
        for (i, (g, e)) in y.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), e.to_bits(), "F({M}x{M}) Y: element {i}");
        }
    }

    #[test]
    fn lanes_match_the_scalar_transforms_bit_for_bit() {
        if !avx512_available() {
            eprintln!("skipped: no AVX-512F");
            return;
        }
        tile_lanes_match::<2, 4, 16, F2>();
        tile_lanes_match::<4, 6, 36, F4>();
        channel_lanes_match::<2, 4, 16, F2>();
        channel_lanes_match::<4, 6, 36, F4>();
    }

    /// The weight gradient's channel lanes of `W`: tile by tile, 16 channels then the last 5.
    fn channel_lanes_match<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>() {
        let ((h, w), cin) = ((13usize, 11usize), 21usize);
        let tw = w.div_ceil(M);
        let plane = h * w;
        let x: Vec<f32> = (0..cin * plane).map(|i| val(i + 3)).collect();
        let (t0, nt) = (4, h.div_ceil(M) * tw - 4);
        let vt_len = slab_len(nt, cin);
        let mut vt = vec![f32::NAN; E * vt_len];
        for j in 0..nt {
            for c0 in (0..cin).step_by(16) {
                unsafe {
                    transform_channel_patches::<M, T, E, W>(
                        &x,
                        (h, w),
                        tw,
                        t0 + j,
                        c0,
                        (cin - c0).min(16),
                        (j, nt),
                        vt.as_mut_ptr(),
                        vt_len,
                    )
                };
            }
        }
        for j in 0..nt {
            for c in 0..cin.next_multiple_of(16) {
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
}
