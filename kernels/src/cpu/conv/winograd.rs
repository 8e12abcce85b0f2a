//! 3x3, stride-1, padding-1 convs by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016), on the packed f32 path.
//!
//! The output is cut into 2 x 2 tiles; tile `(ty, tx)` reads the 4 x 4 input patch `d` at rows
//! `2 ty - 1 ..` and columns `2 tx - 1 ..` (zeros outside), and
//!
//! ```text
//! y_tile[o] = A^T [ sum_c (G g[o, c] G^T) ⊙ (B^T d[c] B) ] A
//!
//!       [1  0 -1  0]       [ 1    0    0 ]
//! B^T = [0  1  1  0]   G = [1/2  1/2  1/2]   A^T = [1 1  1  0]
//!       [0 -1  1  0]       [1/2 -1/2  1/2]         [0 1 -1 -1]
//!       [0  1  0 -1]       [ 0    0    1 ]
//! ```
//!
//! (the cross-correlation CNNs call convolution). For each of the 16 elements `xi` of the 4 x 4
//! transform domain, the sum over input channels is one GEMM: `M_xi (c_out x tiles) = U_xi (c_out x
//! c_in) V_xi (c_in x tiles)` with `U = G g G^T` (the transformed weights, packed once per call) and
//! `V = B^T d B` (the transformed patches, built per block of tiles straight in slab layout). Per
//! tile and channel pair that is 16 multiplies for 4 outputs instead of 36 (2.25x fewer); the
//! transforms cost a few dozen adds per tile and channel, next to `16 c_out` products.
//!
//! The input gradient of such a conv is the same conv of `gy` with the weights transposed over
//! channels and rotated by 180 degrees, so `dx` runs through here too. The weight gradient follows
//! from the same identity by the chain rule: `y_tile = A^T M A` with `M = sum_c U[o, c] ⊙ V[c]`, so
//!
//! ```text
//! dL/dg[o, c] = G^T [ sum_tiles (A gy_tile[o] A^T) ⊙ (B^T d[c] B) ] G
//! ```
//!
//! (`gy_tile` the tile's 2 x 2 output gradient, zero past the border): per `xi` one GEMM
//! `P_xi (c_out x c_in) += W_xi (c_out x tiles) V_xi^T (tiles x c_in)` with `W = A gy A^T`, summed
//! over every tile of every image, then `dw = G^T P G`; the same 2.25x fewer multiplies.
//! The sums run in a fixed order per output element (channels or tiles, then the fixed
//! transform), whatever the thread count.

use super::gather::{with_scratch, zero_slab_padding};
#[cfg(target_arch = "x86_64")]
use super::winograd_avx512::{transform_channel_patches, TileLanes};
use super::Conv2dGeom;
use crate::cpu::packed_gemm::{self, slab_index, slab_len, KSeg, Kernel, PackedA, MR, NR};
use crate::cpu::parallel::SendPtr;
use rayon::prelude::*;

/// Most output tiles per task. Each of the 16 GEMMs of a task reads all of its `U_xi` (`c_out x
/// c_in`, 256 KiB at 256 channels) for this many tiles, so fewer tiles make them bandwidth-bound
/// (64 tiles ran at half the direct conv's speed); a task's `V_xi` and `M_xi` are as large again.
const TILES: usize = 256;
/// Fewest input and output channels for this path: with fewer, the per-`xi` GEMMs are too short
/// (their `k` is `c_in`, against `9 c_in` for the direct conv) to gain from the fewer multiplies
/// (at 64 and 128 channels they ran 1.2-1.6x slower than the direct conv).
const MIN_CHANNELS: usize = 256;
/// Fewest output tiles per image (a 32 x 32 map): fewer leave the GEMMs short in `n` as well.
const MIN_TILES: usize = 256;

/// True when `g` is a conv this file computes and one it computes faster than the gather-GEMM:
/// [`fits`], with at least [`MIN_CHANNELS`] channels in and out and [`MIN_TILES`] tiles per image.
/// In DeepLabV3+ that is the decoder's two 3x3 convs at stride 4.
pub(super) fn applies(g: &Conv2dGeom) -> bool {
    fits(g) && g.c_in >= MIN_CHANNELS && g.c_out >= MIN_CHANNELS && g.h.div_ceil(2) * g.w.div_ceil(2) >= MIN_TILES
}

/// True when `g` has the shape F(2x2, 3x3) computes here: 3x3, stride 1, dilation 1, padding 1,
/// one group (the output is then the input's size).
fn fits(g: &Conv2dGeom) -> bool {
    (g.kh, g.kw) == (3, 3) && g.stride == [1, 1] && g.dilation == [1, 1] && g.padding == [1, 1] && g.groups == 1
}

/// `y = conv(x, w) + b` (`w: [c_out][c_in][3][3]`) for a geometry that [`fits`]; `y` is overwritten.
pub(super) fn forward(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let filter = |o: usize, c: usize| {
        let f = &w[(o * g.c_in + c) * 9..][..9];
        [[f[0], f[1], f[2]], [f[3], f[4], f[5]], [f[6], f[7], f[8]]]
    };
    conv(g, x, filter, bias, y);
}

/// `dx` from `gy` for a geometry that [`fits`]: the same-size 3x3 conv of `gy` with `w[o][c]`
/// rotated by 180 degrees, from channel `o` to channel `c`. `dx` is overwritten.
pub(super) fn input_grad(g: &Conv2dGeom, w: &[f32], gy: &[f32], dx: &mut [f32]) {
    let gt = Conv2dGeom { c_in: g.c_out, c_out: g.c_in, ..*g };
    let filter = |c: usize, o: usize| {
        let f = &w[(o * g.c_in + c) * 9..][..9];
        [[f[8], f[7], f[6]], [f[5], f[4], f[3]], [f[2], f[1], f[0]]]
    };
    conv(&gt, gy, filter, None, dx);
}

/// `dw` from `x` and `gy` for a geometry that [`fits`] (`dw: [c_out][c_in][3][3]`, overwritten).
///
/// The tiles of all images are taken in equal blocks of at most [`TILES`]; per block the patches
/// and the output-gradient tiles are transformed (in parallel over channels), then the 16 GEMMs
/// run in parallel over `xi`, each adding into its own `P_xi`: no partial sums, and the order of
/// every sum is fixed by the shapes.
pub(super) fn weight_grad(g: &Conv2dGeom, x: &[f32], gy: &[f32], dw: &mut [f32]) {
    debug_assert!(fits(g));
    let (cin, cout, (h, w)) = (g.c_in, g.c_out, (g.h, g.w));
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let per_image = th * tw;
    let total = g.n * per_image;
    let plane = h * w;
    // P, as [xi][o][c].
    let mut p = vec![0.0f32; 16 * cout * cin];
    let blocks = total.div_ceil(TILES);
    let mut wt: Vec<PackedA> = (0..16).map(|_| PackedA::pack(0, 0, |_, _| 0.0)).collect();
    let mut v: Vec<f32> = Vec::new();
    for b in 0..blocks {
        let (t0, t1) = (b * total / blocks, (b + 1) * total / blocks);
        let nt = t1 - t0;
        let tile = |j: usize| ((t0 + j) / per_image, (t0 + j) % per_image);
        // V_xi^T (tiles x cin) in slab layout, one task per slab of NR channels.
        let v_len = slab_len(nt, cin);
        v.resize(16 * v_len, 0.0);
        let vptr = SendPtr(v.as_mut_ptr());
        (0..cin.div_ceil(NR)).into_par_iter().for_each(|q| {
            let cs = q * NR..cin.min((q + 1) * NR);
            #[cfg(target_arch = "x86_64")]
            if packed_gemm::kernel() == Kernel::Avx512 {
                for j in 0..nt {
                    let (n, t) = tile(j);
                    let xn = &x[n * cin * plane..][..cin * plane];
                    // SAFETY: AVX-512F present; slab q of every V_xi belongs to this task alone.
                    unsafe {
                        transform_channel_patches(xn, (h, w), tw, t, cs.start, cs.len(), (j, nt), vptr.ptr(), v_len)
                    };
                }
                return;
            }
            for j in 0..nt {
                let (n, t) = tile(j);
                for c in cs.clone() {
                    let d = patch(&x[(n * cin + c) * plane..][..plane], (h, w), tw, t);
                    for (xi, &e) in patch_transform(d, Scalar).iter().enumerate() {
                        // SAFETY: slab q of every V_xi belongs to this task alone.
                        unsafe { *vptr.ptr().add(xi * v_len + slab_index(nt, j, c)) = e };
                    }
                }
            }
        });
        for vx in v.chunks_mut(v_len) {
            zero_slab_padding(vx, nt, cin);
        }
        // W_xi (cout x tiles) in the micro-kernel's row panels, one task per panel of MR rows.
        let wptrs: Vec<SendPtr<f32>> = wt.iter_mut().map(|a| SendPtr(a.panels_mut(cout, nt).as_mut_ptr())).collect();
        (0..cout.div_ceil(MR)).into_par_iter().for_each(|pi| {
            for r in 0..(cout - pi * MR).min(MR) {
                let o = pi * MR + r;
                for j in 0..nt {
                    let (n, t) = tile(j);
                    let e = grad_transform(grad_tile(&gy[(n * cout + o) * plane..][..plane], (h, w), tw, t));
                    for (xi, &val) in e.iter().enumerate() {
                        // SAFETY: panel pi of every W_xi belongs to this task alone.
                        unsafe { *wptrs[xi].ptr().add((pi * nt + j) * MR + r) = val };
                    }
                }
            }
        });
        let whole = [KSeg { a_k0: 0, b_k0: 0, len: nt }];
        p.par_chunks_mut(cout * cin).zip(wt.par_iter()).enumerate().for_each(|(xi, (px, wx))| {
            packed_gemm::gemm(wx, &whole, &v[xi * v_len..][..v_len], nt, cin, px, cin, b > 0);
        });
    }
    dw.par_chunks_mut(cin * 9).enumerate().for_each(|(o, dwo)| {
        for c in 0..cin {
            let m: [f32; 16] = std::array::from_fn(|xi| p[(xi * cout + o) * cin + c]);
            dwo[c * 9..][..9].copy_from_slice(&filter_grad_transform(m));
        }
    });
}

/// The 4 x 4 input patch of tile `t` (of a `tw`-wide tile grid) from one `h x w` plane: rows
/// `2 ty - 1 ..` and columns `2 tx - 1 ..`, zeros outside (padding 1).
#[inline(always)]
pub(super) fn patch(plane: &[f32], (h, w): (usize, usize), tw: usize, t: usize) -> [[f32; 4]; 4] {
    let (y0, x0) = ((t / tw) * 2, (t % tw) * 2);
    std::array::from_fn(|i| {
        std::array::from_fn(|k| match ((y0 + i).checked_sub(1), (x0 + k).checked_sub(1)) {
            (Some(iy), Some(ix)) if iy < h && ix < w => plane[iy * w + ix],
            _ => 0.0,
        })
    })
}

/// The 2 x 2 output-gradient tile `t` from one `h x w` plane, zeros past the border.
#[inline(always)]
fn grad_tile(plane: &[f32], (h, w): (usize, usize), tw: usize, t: usize) -> [[f32; 2]; 2] {
    let (y0, x0) = ((t / tw) * 2, (t % tw) * 2);
    std::array::from_fn(|i| {
        std::array::from_fn(|k| if y0 + i < h && x0 + k < w { plane[(y0 + i) * w + x0 + k] } else { 0.0 })
    })
}

/// The adds and subtracts of the patch and output transforms, on one value (`f32`) or on one
/// value of each of 16 tiles (an AVX-512 register, `winograd_avx512.rs`): one definition of the
/// arithmetic for both, so their results are the same bit for bit.
pub(super) trait Ops: Copy {
    type V: Copy;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
}

/// [`Ops`] on plain `f32`.
#[derive(Clone, Copy)]
pub(super) struct Scalar;

impl Ops for Scalar {
    type V = f32;
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
}

/// `B^T v` (and, applied to the rows of `B^T d`, the right factor `B`).
#[inline(always)]
fn bt<O: Ops>(o: O, v: [O::V; 4]) -> [O::V; 4] {
    [o.sub(v[0], v[2]), o.add(v[1], v[2]), o.sub(v[2], v[1]), o.sub(v[1], v[3])]
}

/// `G v` for a 3-vector.
#[inline(always)]
fn gv(v: [f32; 3]) -> [f32; 4] {
    [v[0], 0.5 * (v[0] + v[1] + v[2]), 0.5 * (v[0] - v[1] + v[2]), v[2]]
}

/// `A^T v`.
#[inline(always)]
fn at<O: Ops>(o: O, v: [O::V; 4]) -> [O::V; 2] {
    [o.add(o.add(v[0], v[1]), v[2]), o.sub(o.sub(v[1], v[2]), v[3])]
}

/// `A v` for a 2-vector (`A` is 4 x 2).
#[inline(always)]
fn av(v: [f32; 2]) -> [f32; 4] {
    [v[0], v[0] + v[1], v[0] - v[1], -v[1]]
}

/// `G^T v` for a 4-vector.
#[inline(always)]
fn gtv(v: [f32; 4]) -> [f32; 3] {
    [v[0] + 0.5 * (v[1] + v[2]), 0.5 * (v[1] - v[2]), 0.5 * (v[1] + v[2]) + v[3]]
}

/// `W = A e A^T` of one 2 x 2 output-gradient tile `e`, as `w[4 i + j]` (the gradient of the loss
/// with respect to the tile's product `M`, since `y_tile = A^T M A`).
fn grad_transform(e: [[f32; 2]; 2]) -> [f32; 16] {
    let cols: [[f32; 4]; 2] = std::array::from_fn(|q| av([e[0][q], e[1][q]]));
    let mut out = [0.0; 16];
    for i in 0..4 {
        out[4 * i..4 * i + 4].copy_from_slice(&av([cols[0][i], cols[1][i]]));
    }
    out
}

/// `G^T m G` of one 4 x 4 gradient `m` of `U = G g G^T`: the gradient of the 3 x 3 filter, as
/// `g[3 ky + kx]`.
fn filter_grad_transform(m: [f32; 16]) -> [f32; 9] {
    let cols: [[f32; 3]; 4] = std::array::from_fn(|j| gtv([m[j], m[4 + j], m[8 + j], m[12 + j]]));
    let mut out = [0.0; 9];
    for ky in 0..3 {
        out[3 * ky..3 * ky + 3].copy_from_slice(&gtv([cols[0][ky], cols[1][ky], cols[2][ky], cols[3][ky]]));
    }
    out
}

/// `U = G g G^T` of one 3 x 3 filter `g[ky][kx]`, as `u[4 i + j]`.
fn filter_transform(g: [[f32; 3]; 3]) -> [f32; 16] {
    let cols: [[f32; 4]; 3] = std::array::from_fn(|kx| gv([g[0][kx], g[1][kx], g[2][kx]]));
    let mut u = [0.0; 16];
    for i in 0..4 {
        let row = gv([cols[0][i], cols[1][i], cols[2][i]]);
        u[4 * i..4 * i + 4].copy_from_slice(&row);
    }
    u
}

/// `V = B^T d B` of one 4 x 4 patch, as `v[4 i + j]`.
#[inline(always)]
pub(super) fn patch_transform<O: Ops>(d: [[O::V; 4]; 4], o: O) -> [O::V; 16] {
    let cols: [[O::V; 4]; 4] = std::array::from_fn(|j| bt(o, [d[0][j], d[1][j], d[2][j], d[3][j]]));
    let rows: [[O::V; 4]; 4] = std::array::from_fn(|i| bt(o, [cols[0][i], cols[1][i], cols[2][i], cols[3][i]]));
    std::array::from_fn(|xi| rows[xi / 4][xi % 4])
}

/// `Y = A^T m A` of one 4 x 4 product tile, as `y[2 i + j]`.
#[inline(always)]
pub(super) fn output_transform<O: Ops>(m: [O::V; 16], o: O) -> [O::V; 4] {
    let cols: [[O::V; 2]; 4] = std::array::from_fn(|j| at(o, [m[j], m[4 + j], m[8 + j], m[12 + j]]));
    let r0 = at(o, [cols[0][0], cols[1][0], cols[2][0], cols[3][0]]);
    let r1 = at(o, [cols[0][1], cols[1][1], cols[2][1], cols[3][1]]);
    [r0[0], r0[1], r1[0], r1[1]]
}

/// `y = conv3x3(x, w) + b` for a geometry that [`fits`], where `filter(o, c)` is the 3 x 3
/// filter from input channel `c` to output channel `o`. `y` is fully overwritten.
fn conv(
    g: &Conv2dGeom,
    x: &[f32],
    filter: impl Fn(usize, usize) -> [[f32; 3]; 3] + Sync,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    debug_assert!(fits(g));
    let (cin, cout, (h, w)) = (g.c_in, g.c_out, (g.h, g.w));
    // Padding 1 and a 3x3 kernel keep the size: the output is h x w.
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let per_image = th * tw;
    // U, staged as [xi][o][c], then packed per xi into the micro-kernel's row panels.
    let mut staged = vec![0.0f32; 16 * cout * cin];
    let sptr = SendPtr(staged.as_mut_ptr());
    (0..cout).into_par_iter().for_each(|o| {
        for c in 0..cin {
            let u = filter_transform(filter(o, c));
            for (xi, &v) in u.iter().enumerate() {
                // SAFETY: each o writes only its own [xi][o][..] rows.
                unsafe { *sptr.ptr().add((xi * cout + o) * cin + c) = v };
            }
        }
    });
    let packed: Vec<PackedA> = (0..16)
        .map(|xi| {
            let u = &staged[xi * cout * cin..][..cout * cin];
            PackedA::pack_panels(cout, cin, |p, rows, panel| {
                for r in 0..rows {
                    for (c, &v) in u[(p * MR + r) * cin..][..cin].iter().enumerate() {
                        panel[c * MR + r] = v;
                    }
                }
            })
        })
        .collect();
    drop(staged);
    // Blocks of equal size (within one tile), so the tasks balance over the threads.
    let blocks = per_image.div_ceil(TILES);
    let yptr = SendPtr(y.as_mut_ptr());
    (0..g.n * blocks).into_par_iter().for_each(|u| {
        let (n, b) = (u / blocks, u % blocks);
        let tiles = b * per_image / blocks..(b + 1) * per_image / blocks;
        let xn = &x[n * cin * h * w..][..cin * h * w];
        // SAFETY: each (image, block) unit writes only its own tiles' pixels of image n.
        unsafe { block(&packed, xn, (h, w), tw, tiles, bias, yptr.ptr().add(n * cout * h * w), cout) };
    });
}

/// One block of tiles of one image: transform its patches, run the 16 GEMMs, transform back into `y`.
///
/// # Safety
/// `y` must address the image's `c_out` output planes, whose pixels of these tiles nothing else touches.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    packed: &[PackedA],
    x: &[f32],
    (h, w): (usize, usize),
    tw: usize,
    tiles: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    y: *mut f32,
    cout: usize,
) {
    let cin = packed[0].k;
    let nt = tiles.len();
    let v_len = slab_len(cin, nt);
    with_scratch::<f32, _>(16 * v_len + 16 * cout * nt, |buf| {
        let (v, m) = buf.split_at_mut(16 * v_len);
        // On AVX-512 CPUs the transforms run on 16 tiles per register (one lane set per slab).
        #[cfg(target_arch = "x86_64")]
        let lanes: Option<Vec<TileLanes>> = (packed_gemm::kernel() == Kernel::Avx512).then(|| {
            (0..nt).step_by(NR).map(|j0| TileLanes::new(tiles.start + j0, (nt - j0).min(NR), (h, w), tw)).collect()
        });
        #[cfg(not(target_arch = "x86_64"))]
        let lanes: Option<Vec<()>> = None;
        // V_xi (cin x tiles) in slab layout; every live column is written below, and only the
        // last slab's padding columns are zeroed (scratch holds whatever the last user left; the
        // 16-lane transform writes the padding as zeros itself).
        match &lanes {
            #[cfg(target_arch = "x86_64")]
            Some(lanes) => {
                for (l, lane) in lanes.iter().enumerate() {
                    // SAFETY: AVX-512F present (the kernel choice says so); `x` holds the image's
                    // `cin` planes; slab block l of every V_xi is inside `v`.
                    unsafe { lane.transform_patches(x, h * w, cin, l * NR, v.as_mut_ptr(), v_len) };
                }
            }
            _ => {
                for c in 0..cin {
                    let plane = &x[c * h * w..][..h * w];
                    for (j, t) in tiles.clone().enumerate() {
                        for (xi, &e) in patch_transform(patch(plane, (h, w), tw, t), Scalar).iter().enumerate() {
                            v[xi * v_len + slab_index(cin, c, j)] = e;
                        }
                    }
                }
                for vx in v.chunks_mut(v_len) {
                    zero_slab_padding(vx, cin, nt);
                }
            }
        }
        let whole = [KSeg { a_k0: 0, b_k0: 0, len: cin }];
        for xi in 0..16 {
            let (vx, mx) = (&v[xi * v_len..][..v_len], &mut m[xi * cout * nt..][..cout * nt]);
            packed_gemm::gemm(&packed[xi], &whole, vx, cin, nt, mx, nt, false);
        }
        match &lanes {
            #[cfg(target_arch = "x86_64")]
            Some(lanes) => {
                for (l, lane) in lanes.iter().enumerate() {
                    // SAFETY: as above; the caller owns these tiles' pixels of the `cout` planes at `y`.
                    unsafe { lane.transform_outputs(m, cout, nt, l * NR, bias, y, h * w) };
                }
            }
            _ => {
                for o in 0..cout {
                    let b = bias.map_or(0.0, |b| b[o]);
                    let yo = y.add(o * h * w);
                    for (j, t) in tiles.clone().enumerate() {
                        let mt: [f32; 16] = std::array::from_fn(|xi| m[(xi * cout + o) * nt + j]);
                        let out = output_transform(mt, Scalar);
                        let (y0, x0) = ((t / tw) * 2, (t % tw) * 2);
                        for (q, &val) in out.iter().enumerate() {
                            let (oy, ox) = (y0 + q / 2, x0 + q % 2);
                            if oy < h && ox < w {
                                *yo.add(oy * w + ox) = val + b;
                            }
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms alone: `A^T [(G g G^T) ⊙ (B^T d B)] A` is the 2 x 2 correlation of `d` with `g`.
    #[test]
    fn one_tile_equals_the_direct_correlation() {
        let g: [[f32; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| (3 * i + j) as f32 * 0.25 - 1.0));
        let d: [[f32; 4]; 4] = std::array::from_fn(|i| std::array::from_fn(|j| ((5 * i + 3 * j) % 7) as f32 - 2.5));
        let (u, v) = (filter_transform(g), patch_transform(d, Scalar));
        let y = output_transform(std::array::from_fn(|xi| u[xi] * v[xi]), Scalar);
        for (q, &got) in y.iter().enumerate() {
            let (oy, ox) = (q / 2, q % 2);
            let want: f32 = (0..3)
                .flat_map(|ky| (0..3).map(move |kx| (ky, kx)))
                .map(|(ky, kx)| g[ky][kx] * d[oy + ky][ox + kx])
                .sum();
            assert!((got - want).abs() < 1e-4, "output {q}: {got} vs {want}");
        }
    }
}
