//! 3x3, stride-1, padding-1 convs by Winograd's minimal filtering F(m x m, 3 x 3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016), on the packed f32 path, for
//! m = 2 ([`F2`]) and m = 4 ([`F4`]).
//!
//! The output is cut into m x m tiles; tile `(ty, tx)` reads the `(m + 2) x (m + 2)` input patch
//! `d` at rows `m ty - 1 ..` and columns `m tx - 1 ..` (zeros outside), and
//!
//! ```text
//! y_tile[o] = A^T [ sum_c (G g[o, c] G^T) ⊙ (B^T d[c] B) ] A
//! ```
//!
//! (the cross-correlation CNNs call convolution), with the matrices of [`F2`] and [`F4`]. For each
//! of the `(m + 2)^2` elements `xi` of the transform domain, the sum over input channels is one
//! GEMM: `M_xi (c_out x tiles) = U_xi (c_out x c_in) V_xi (c_in x tiles)` with `U = G g G^T` (the
//! transformed weights, packed once per call) and `V = B^T d B` (the transformed patches, built per
//! block of tiles straight in slab layout). Per tile and channel pair that is 16 multiplies for 4
//! outputs (F2) or 36 for 16 (F4) instead of 9 per output: 2.25x or 4x fewer; the transforms cost a
//! few dozen adds per tile and channel, next to `(m + 2)^2 c_out` products. F4's transforms have
//! larger coefficients (up to 8) and ones f32 rounds (1/6, 1/24): against the f64 definition its
//! `y` was off by up to 2.4e-5 relative with 300 input channels (the test's bound there is 5e-4),
//! where F2 was exact on the same inputs.
//!
//! The input gradient of such a conv is the same conv of `gy` with the weights transposed over
//! channels and rotated by 180 degrees, so `dx` runs through here too. The weight gradient
//! follows from the same identity by the chain rule: `y_tile = A^T M A` with `M = sum_c U[o, c] ⊙
//! V[c]`, so
//!
//! ```text
//! dL/dg[o, c] = G^T [ sum_tiles (A gy_tile[o] A^T) ⊙ (B^T d[c] B) ] G
//! ```
//!
//! (`gy_tile` the tile's m x m output gradient, zero past the border): per `xi` one GEMM
//! `P_xi (c_out x c_in) += W_xi (c_out x tiles) V_xi^T (tiles x c_in)` with `W = A gy A^T`, summed
//! over every tile of every image, then `dw = G^T P G`; the same 2.25x or 4x fewer multiplies.
//! The sums run in a fixed order per output element (channels or tiles, then the fixed
//! transform), whatever the thread count.

use super::gather::{with_scratch, zero_slab_padding};
#[cfg(target_arch = "x86_64")]
use super::winograd_avx2;
#[cfg(target_arch = "x86_64")]
use super::winograd_avx512::{transform_channel_patches, TileLanes};
use super::Conv2dGeom;
#[cfg(not(target_arch = "x86_64"))]
use crate::cpu::packed_gemm::slab_index;
use crate::cpu::packed_gemm::{self, slab_len, KSeg, Kernel, PackedA, MR, NR};
use crate::cpu::parallel::{zeros, SendPtr};
use rayon::prelude::*;

/// Fewest input and output channels for this path: with fewer, the per-`xi` GEMMs are too short
/// (their `k` is `c_in`, against `9 c_in` for the direct conv) to gain from the fewer multiplies
/// (at 64 and 128 channels they ran 1.2-1.6x slower than the direct conv).
const MIN_CHANNELS: usize = 256;
/// Fewest output pixels per image (a 32 x 32 map): fewer leave the GEMMs short in `n` as well.
const MIN_PIXELS: usize = 1024;

/// One minimal filtering algorithm F(M x M, 3 x 3): output tiles of `M x M`, input patches of
/// `T x T` (`T = M + 2`), `E = T^2` elements in the transform domain.
pub(super) trait Minimal<const M: usize, const T: usize, const E: usize> {
    /// `B^T` (`T x T`): `V = B^T d B`.
    #[cfg_attr(not(test), allow(dead_code))] // the definition: the tests check the written-out transforms
    const BT: [[f32; T]; T];
    /// `G` (`T x 3`): `U = G g G^T`.
    #[cfg_attr(not(test), allow(dead_code))] // the definition: the tests check the written-out transforms
    const G: [[f32; 3]; T];
    /// `A^T` (`M x T`): `y = A^T M A`.
    #[cfg_attr(not(test), allow(dead_code))] // the definition: the tests check the written-out transforms
    const AT: [[f32; T]; M];
    /// Most output tiles per task. Each of the `E` GEMMs of a task reads all of its `U_xi`
    /// (`c_out x c_in`, 256 KiB at 256 channels) for this many tiles, so fewer tiles make them
    /// bandwidth-bound; a task's `V_xi` and `M_xi` are as large again.
    const TILES: usize;
    /// Most tiles per block of the weight gradient, whose `E` GEMMs have this `k` and write all
    /// of `P` (`E c_out c_in` floats) once per block.
    const DW_TILES: usize;

    /// The `T x T` input patch of tile `t` (of a `tw`-wide tile grid) from one `h x w` plane: rows
    /// `M ty - 1 ..` and columns `M tx - 1 ..`, zeros outside (padding 1).
    #[inline(always)]
    fn patch(plane: &[f32], (h, w): (usize, usize), tw: usize, t: usize) -> [[f32; T]; T] {
        let (y0, x0) = ((t / tw) * M, (t % tw) * M);
        std::array::from_fn(|i| {
            std::array::from_fn(|k| match ((y0 + i).checked_sub(1), (x0 + k).checked_sub(1)) {
                (Some(iy), Some(ix)) if iy < h && ix < w => plane[iy * w + ix],
                _ => 0.0,
            })
        })
    }

    /// `B^T v`, written out (the matrices above are the definition; the tests check the two agree).
    fn bt<O: Ops>(o: O, v: [O::V; T]) -> [O::V; T];
    /// `A^T v`, written out.
    fn at<O: Ops>(o: O, v: [O::V; T]) -> [O::V; M];
    /// `G v` for a 3-vector, written out.
    fn g(v: [f32; 3]) -> [f32; T];
    /// `A v` for an `M`-vector (`A` is `T x M`), written out.
    fn a(v: [f32; M]) -> [f32; T];
    /// `G^T v` for a `T`-vector, written out.
    fn gt(v: [f32; T]) -> [f32; 3];

    /// The `M x M` output-gradient tile `t` from one `h x w` plane, zeros past the border.
    #[inline(always)]
    fn grad_tile(plane: &[f32], (h, w): (usize, usize), tw: usize, t: usize) -> [[f32; M]; M] {
        let (y0, x0) = ((t / tw) * M, (t % tw) * M);
        let mut e = [[0.0; M]; M];
        for (i, row) in e.iter_mut().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                if y0 + i < h && x0 + k < w {
                    *v = plane[(y0 + i) * w + x0 + k];
                }
            }
        }
        e
    }

    /// `W = A e A^T` of one output-gradient tile `e`, as `w[T i + j]` (the gradient of the loss
    /// with respect to the tile's product `M`, since `y_tile = A^T M A`).
    #[inline(always)]
    fn grad_transform(e: [[f32; M]; M]) -> [f32; E] {
        // cols[q] = A times column q of e; row i of W is A times row i of A e.
        let mut cols = [[0.0; T]; M];
        for (q, col) in cols.iter_mut().enumerate() {
            let mut c = [0.0; M];
            for (i, v) in c.iter_mut().enumerate() {
                *v = e[i][q];
            }
            *col = Self::a(c);
        }
        let mut out = [0.0; E];
        for i in 0..T {
            let mut r = [0.0; M];
            for (q, v) in r.iter_mut().enumerate() {
                *v = cols[q][i];
            }
            out[T * i..T * i + T].copy_from_slice(&Self::a(r));
        }
        out
    }

    /// `G^T m G` of one `T x T` gradient `m` of `U = G g G^T`: the gradient of the 3 x 3 filter,
    /// as `g[3 ky + kx]`.
    fn filter_grad_transform(m: [f32; E]) -> [f32; 9] {
        let mut cols = [[0.0; 3]; T];
        for (j, col) in cols.iter_mut().enumerate() {
            let mut c = [0.0; T];
            for (i, v) in c.iter_mut().enumerate() {
                *v = m[T * i + j];
            }
            *col = Self::gt(c);
        }
        let mut out = [0.0; 9];
        for ky in 0..3 {
            let mut r = [0.0; T];
            for (j, v) in r.iter_mut().enumerate() {
                *v = cols[j][ky];
            }
            out[3 * ky..3 * ky + 3].copy_from_slice(&Self::gt(r));
        }
        out
    }

    /// `U = G g G^T` of one 3 x 3 filter `g[ky][kx]`, as `u[T i + j]`.
    fn filter_transform(g: [[f32; 3]; 3]) -> [f32; E] {
        // cols[kx] = column kx of G g; row i of U is G times row i of G g.
        let cols = [0, 1, 2].map(|kx| Self::g([g[0][kx], g[1][kx], g[2][kx]]));
        let mut u = [0.0; E];
        for i in 0..T {
            u[T * i..T * i + T].copy_from_slice(&Self::g([cols[0][i], cols[1][i], cols[2][i]]));
        }
        u
    }

    /// `V = B^T d B` of one patch, as `v[T i + j]`.
    ///
    /// (Plain loops rather than `array::from_fn`: its closures are not always inlined, and the
    /// 16-lane callers need every step inlined into their AVX-512 code.)
    #[inline(always)]
    fn patch_transform<O: Ops>(d: [[O::V; T]; T], o: O) -> [O::V; E] {
        // p = B^T d, column by column; then row i of V is B^T times row i of p.
        let mut p = d;
        for j in 0..T {
            let mut col = [d[0][j]; T];
            for (i, e) in col.iter_mut().enumerate() {
                *e = d[i][j];
            }
            let col = Self::bt(o, col);
            for (i, row) in p.iter_mut().enumerate() {
                row[j] = col[i];
            }
        }
        let mut v = [d[0][0]; E];
        for (i, row) in p.iter().enumerate() {
            v[T * i..T * i + T].copy_from_slice(&Self::bt(o, *row));
        }
        v
    }

    /// `Y = A^T m A` of one `T x T` product tile `m[T i + j]`, as `y[a][b]`.
    #[inline(always)]
    fn output_transform<O: Ops>(m: [O::V; E], o: O) -> [[O::V; M]; M] {
        // q = A^T m (M x T), column by column; then row a of Y is A^T times row a of q.
        let mut q = [[m[0]; T]; M];
        for j in 0..T {
            let mut col = [m[0]; T];
            for (i, e) in col.iter_mut().enumerate() {
                *e = m[T * i + j];
            }
            let col = Self::at(o, col);
            for (a, row) in q.iter_mut().enumerate() {
                row[j] = col[a];
            }
        }
        let mut y = [[m[0]; M]; M];
        for (a, row) in q.iter().enumerate() {
            y[a] = Self::at(o, *row);
        }
        y
    }
}

/// F(2x2, 3x3): interpolation points 0, 1, -1 and infinity.
///
/// ```text
///       [1  0 -1  0]       [ 1    0    0 ]
/// B^T = [0  1  1  0]   G = [1/2  1/2  1/2]   A^T = [1 1  1  0]
///       [0 -1  1  0]       [1/2 -1/2  1/2]         [0 1 -1 -1]
///       [0  1  0 -1]       [ 0    0    1 ]
/// ```
pub(super) struct F2;

impl Minimal<2, 4, 16> for F2 {
    const BT: [[f32; 4]; 4] = [[1., 0., -1., 0.], [0., 1., 1., 0.], [0., -1., 1., 0.], [0., 1., 0., -1.]];
    const G: [[f32; 3]; 4] = [[1., 0., 0.], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0., 0., 1.]];
    const AT: [[f32; 4]; 2] = [[1., 1., 1., 0.], [0., 1., -1., -1.]];
    /// 64 tiles ran at half the direct conv's speed.
    const TILES: usize = 256;
    const DW_TILES: usize = 256;

    #[inline(always)]
    fn bt<O: Ops>(o: O, v: [O::V; 4]) -> [O::V; 4] {
        [o.sub(v[0], v[2]), o.add(v[1], v[2]), o.sub(v[2], v[1]), o.sub(v[1], v[3])]
    }
    #[inline(always)]
    fn at<O: Ops>(o: O, v: [O::V; 4]) -> [O::V; 2] {
        [o.add(o.add(v[0], v[1]), v[2]), o.sub(o.sub(v[1], v[2]), v[3])]
    }
    fn g(v: [f32; 3]) -> [f32; 4] {
        [v[0], 0.5 * (v[0] + v[1] + v[2]), 0.5 * (v[0] - v[1] + v[2]), v[2]]
    }
    #[inline(always)]
    fn a(v: [f32; 2]) -> [f32; 4] {
        [v[0], v[0] + v[1], v[0] - v[1], -v[1]]
    }
    fn gt(v: [f32; 4]) -> [f32; 3] {
        [v[0] + 0.5 * (v[1] + v[2]), 0.5 * (v[1] - v[2]), 0.5 * (v[1] + v[2]) + v[3]]
    }
}

/// F(4x4, 3x3): interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray's matrices).
///
/// ```text
///       [4  0 -5  0  1  0]       [ 1/4    0     0  ]
///       [0 -4 -4  1  1  0]       [-1/6  -1/6  -1/6 ]         [1 1  1 1  1 0]
/// B^T = [0  4 -4 -1  1  0]   G = [-1/6   1/6  -1/6 ]   A^T = [0 1 -1 2 -2 0]
///       [0 -2 -1  2  1  0]       [1/24  1/12   1/6 ]         [0 1  1 4  4 0]
///       [0  2 -1 -2  1  0]       [1/24 -1/12   1/6 ]         [0 1 -1 8 -8 1]
///       [0  4  0 -5  0  1]       [  0     0     1  ]
/// ```
pub(super) struct F4;

impl Minimal<4, 6, 36> for F4 {
    const BT: [[f32; 6]; 6] = [
        [4., 0., -5., 0., 1., 0.],
        [0., -4., -4., 1., 1., 0.],
        [0., 4., -4., -1., 1., 0.],
        [0., -2., -1., 2., 1., 0.],
        [0., 2., -1., -2., 1., 0.],
        [0., 4., 0., -5., 0., 1.],
    ];
    const G: [[f32; 3]; 6] = [
        [1. / 4., 0., 0.],
        [-1. / 6., -1. / 6., -1. / 6.],
        [-1. / 6., 1. / 6., -1. / 6.],
        [1. / 24., 1. / 12., 1. / 6.],
        [1. / 24., -1. / 12., 1. / 6.],
        [0., 0., 1.],
    ];
    const AT: [[f32; 6]; 4] =
        [[1., 1., 1., 1., 1., 0.], [0., 1., -1., 2., -2., 0.], [0., 1., 1., 4., 4., 0.], [0., 1., -1., 8., -8., 1.]];
    const TILES: usize = 64;
    const DW_TILES: usize = 128;

    #[inline(always)]
    fn bt<O: Ops>(o: O, v: [O::V; 6]) -> [O::V; 6] {
        let (p12, m12) = (o.add(v[1], v[2]), o.sub(v[1], v[2]));
        let (p34, m34) = (o.add(v[3], v[4]), o.sub(v[4], v[3]));
        let (m42, m31) = (o.sub(v[4], v[2]), o.sub(v[3], v[1]));
        [
            o.add(o.sub(o.mul(v[0], 4.0), o.mul(v[2], 5.0)), v[4]),
            o.sub(p34, o.mul(p12, 4.0)),
            o.add(m34, o.mul(m12, 4.0)),
            o.add(m42, o.mul(m31, 2.0)),
            o.sub(m42, o.mul(m31, 2.0)),
            o.add(o.sub(o.mul(v[1], 4.0), o.mul(v[3], 5.0)), v[5]),
        ]
    }
    #[inline(always)]
    fn at<O: Ops>(o: O, v: [O::V; 6]) -> [O::V; 4] {
        let (p12, m12) = (o.add(v[1], v[2]), o.sub(v[1], v[2]));
        let (p34, m34) = (o.add(v[3], v[4]), o.sub(v[3], v[4]));
        [
            o.add(o.add(v[0], p12), p34),
            o.add(m12, o.mul(m34, 2.0)),
            o.add(p12, o.mul(p34, 4.0)),
            o.add(o.add(m12, o.mul(m34, 8.0)), v[5]),
        ]
    }
    // `g` and `gt` run once per channel pair and call: products with the reciprocals (a division
    // costs several times a product; these took 16 % of a one-thread decoder forward as divisions).
    fn g(v: [f32; 3]) -> [f32; 6] {
        const SIXTH: f32 = 1.0 / 6.0;
        let (a, b) = (v[0] + v[2], v[0] * 0.25 + v[2]);
        [
            v[0] * 0.25,
            -(a + v[1]) * SIXTH,
            -(a - v[1]) * SIXTH,
            (b + v[1] * 0.5) * SIXTH,
            (b - v[1] * 0.5) * SIXTH,
            v[2],
        ]
    }
    #[inline(always)]
    fn a(v: [f32; 4]) -> [f32; 6] {
        let (p02, p13) = (v[0] + v[2], v[1] + v[3]);
        let (q02, q13) = (v[0] + 4.0 * v[2], 2.0 * v[1] + 8.0 * v[3]);
        [v[0], p02 + p13, p02 - p13, q02 + q13, q02 - q13, v[3]]
    }
    fn gt(v: [f32; 6]) -> [f32; 3] {
        const SIXTH: f32 = 1.0 / 6.0;
        let (p12, m21, p34, m34) = (v[1] + v[2], v[2] - v[1], v[3] + v[4], v[3] - v[4]);
        [v[0] * 0.25 - p12 * SIXTH + p34 * (1.0 / 24.0), m21 * SIXTH + m34 * (1.0 / 12.0), (p34 - p12) * SIXTH + v[5]]
    }
}

/// True when `g` is a conv this file computes and one it computes faster than the gather-GEMM:
/// [`fits`], with at least [`MIN_CHANNELS`] channels in and out and [`MIN_PIXELS`] output pixels
/// per image. In DeepLabV3+ that is the decoder's two 3x3 convs at stride 4.
pub(super) fn applies(g: &Conv2dGeom) -> bool {
    fits(g) && g.c_in >= MIN_CHANNELS && g.c_out >= MIN_CHANNELS && g.h * g.w >= MIN_PIXELS
}

/// True when `g` has the shape F(m x m, 3x3) computes here: 3x3, stride 1, dilation 1, padding 1,
/// one group (the output is then the input's size).
fn fits(g: &Conv2dGeom) -> bool {
    (g.kh, g.kw) == (3, 3) && g.stride == [1, 1] && g.dilation == [1, 1] && g.padding == [1, 1] && g.groups == 1
}

/// `y = conv(x, w) + b` (`w: [c_out][c_in][3][3]`) for a geometry that [`fits`]; `y` is overwritten.
pub(super) fn forward(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    if f4_pays(g) {
        forward_with::<4, 6, 36, F4>(g, x, w, bias, y)
    } else {
        forward_with::<2, 4, 16, F2>(g, x, w, bias, y)
    }
}

/// True when F4's tile grid covers at most 10 % more pixels than the map (a 65 x 65 map: 9.4 %,
/// 129 x 129: 4.7 %): then F4's 1.78x fewer multiplies than F2 win for `y` and `dx`. On a 33 x 33
/// map (19 %) F2's `dx` ran 15-20 % faster and the forwards were even. (The weight gradient takes
/// F4 on every map: 35-45 % faster than F2's on 33 x 33 and on 65 x 65.)
pub(super) fn f4_pays(g: &Conv2dGeom) -> bool {
    10 * g.h.next_multiple_of(4) * g.w.next_multiple_of(4) <= 11 * g.h * g.w
}

/// [`forward`] by the algorithm `W` (the tests run both).
pub(super) fn forward_with<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
    g: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let filter = |o: usize, c: usize| {
        let f = &w[(o * g.c_in + c) * 9..][..9];
        [[f[0], f[1], f[2]], [f[3], f[4], f[5]], [f[6], f[7], f[8]]]
    };
    conv::<M, T, E, W>(g, x, filter, bias, y);
}

/// `dx` from `gy` for a geometry that [`fits`]: the same-size 3x3 conv of `gy` with `w[o][c]`
/// rotated by 180 degrees, from channel `o` to channel `c`. `dx` is overwritten.
pub(super) fn input_grad(g: &Conv2dGeom, w: &[f32], gy: &[f32], dx: &mut [f32]) {
    if f4_pays(g) {
        input_grad_with::<4, 6, 36, F4>(g, w, gy, dx)
    } else {
        input_grad_with::<2, 4, 16, F2>(g, w, gy, dx)
    }
}

/// [`input_grad`] by the algorithm `W` (the tests run both).
pub(super) fn input_grad_with<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
    g: &Conv2dGeom,
    w: &[f32],
    gy: &[f32],
    dx: &mut [f32],
) {
    let gt = Conv2dGeom { c_in: g.c_out, c_out: g.c_in, ..*g };
    let filter = |c: usize, o: usize| {
        let f = &w[(o * g.c_in + c) * 9..][..9];
        [[f[8], f[7], f[6]], [f[5], f[4], f[3]], [f[2], f[1], f[0]]]
    };
    conv::<M, T, E, W>(&gt, gy, filter, None, dx);
}

/// `dw` from `x` and `gy` for a geometry that [`fits`] (`dw: [c_out][c_in][3][3]`, overwritten).
pub(super) fn weight_grad(g: &Conv2dGeom, x: &[f32], gy: &[f32], dw: &mut [f32]) {
    weight_grad_with::<4, 6, 36, F4>(g, x, gy, dw)
}

/// [`weight_grad`] by the algorithm `W` (the tests run both).
///
/// The tiles of all images are taken in equal blocks of at most [`Minimal::DW_TILES`]; per block
/// the patches and the output-gradient tiles are transformed (in parallel over channels), then the
/// `E` GEMMs run in parallel over `xi`, each adding into its own `P_xi`: no partial sums, and the
/// order of every sum is fixed by the shapes.
pub(super) fn weight_grad_with<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
    g: &Conv2dGeom,
    x: &[f32],
    gy: &[f32],
    dw: &mut [f32],
) {
    debug_assert!(fits(g));
    let (cin, cout, (h, w)) = (g.c_in, g.c_out, (g.h, g.w));
    let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
    let per_image = th * tw;
    let total = g.n * per_image;
    let plane = h * w;
    // P, as [xi][o][c], and the blocks' V: megabytes each, so zeroed by the pool's threads (a
    // serial fill idled a core for a tenth of the call).
    let mut p = zeros::<f32>(E * cout * cin);
    let blocks = total.div_ceil(W::DW_TILES);
    let mut wt: Vec<PackedA> = (0..E).map(|_| PackedA::pack(0, 0, |_, _| 0.0)).collect();
    let mut v: Vec<f32> = zeros(E * slab_len(total.div_ceil(blocks), cin));
    for b in 0..blocks {
        let (t0, t1) = (b * total / blocks, (b + 1) * total / blocks);
        let nt = t1 - t0;
        let tile = |j: usize| ((t0 + j) / per_image, (t0 + j) % per_image);
        // V_xi^T (tiles x cin) in slab layout, one task per slab of NR channels.
        let v_len = slab_len(nt, cin);
        v.resize(E * v_len, 0.0);
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
                        transform_channel_patches::<M, T, E, W>(
                            xn,
                            (h, w),
                            tw,
                            t,
                            cs.start,
                            cs.len(),
                            (j, nt),
                            vptr.ptr(),
                            v_len,
                        )
                    };
                }
                return;
            }
            // Otherwise AVX2 (the packed path's CPUs), 8 channels per register.
            #[cfg(target_arch = "x86_64")]
            for j in 0..nt {
                let (n, t) = tile(j);
                let xn = &x[n * cin * plane..][..cin * plane];
                for c0 in cs.clone().step_by(8) {
                    let chans = (c0, (cs.end - c0).min(8));
                    // SAFETY: AVX2 present (the packed path's CPUs); slab q of every V_xi belongs to
                    // this task alone.
                    unsafe {
                        winograd_avx2::transform_channel_patches::<M, T, E, W>(
                            xn,
                            (h, w),
                            tw,
                            t,
                            chans,
                            (j, nt),
                            vptr.ptr(),
                            v_len,
                        )
                    };
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            for j in 0..nt {
                let (n, t) = tile(j);
                for c in cs.clone() {
                    let d = W::patch(&x[(n * cin + c) * plane..][..plane], (h, w), tw, t);
                    for (xi, &e) in W::patch_transform(d, Scalar).iter().enumerate() {
                        // SAFETY: slab q of every V_xi belongs to this task alone.
                        unsafe { *vptr.ptr().add(xi * v_len + slab_index(nt, j, c)) = e };
                    }
                }
            }
        });
        for vx in v.chunks_mut(v_len) {
            zero_slab_padding(vx, nt, cin);
        }
        // W_xi (cout x tiles) in the micro-kernel's row panels.
        pack_transformed(&mut wt, cout, nt, |o, j| {
            let (n, t) = tile(j);
            W::grad_transform(W::grad_tile(&gy[(n * cout + o) * plane..][..plane], (h, w), tw, t))
        });
        let whole = [KSeg { a_k0: 0, b_k0: 0, len: nt }];
        p.par_chunks_mut(cout * cin).zip(wt.par_iter()).enumerate().for_each(|(xi, (px, wx))| {
            packed_gemm::gemm(wx, &whole, &v[xi * v_len..][..v_len], nt, cin, px, cin, b > 0);
        });
    }
    dw.par_chunks_mut(cin * 9).enumerate().for_each(|(o, dwo)| {
        for c in 0..cin {
            let m: [f32; E] = std::array::from_fn(|xi| p[(xi * cout + o) * cin + c]);
            dwo[c * 9..][..9].copy_from_slice(&W::filter_grad_transform(m));
        }
    });
}

/// Pack `E` matrices of `m x k` at once into `packed[xi]`'s row panels, `A_xi(i, l) = value(i, l)[xi]`
/// (`value` computes one transformed element for all `xi` together): one task per panel of `MR`
/// rows, whose writes to every matrix are sequential (`A(p MR + r, l)` at `(p k + l) MR + r`).
fn pack_transformed<const E: usize>(
    packed: &mut [PackedA],
    m: usize,
    k: usize,
    value: impl Fn(usize, usize) -> [f32; E] + Sync,
) {
    assert_eq!(packed.len(), E, "winograd: one packed matrix per transform element");
    let ptrs: Vec<SendPtr<f32>> = packed.iter_mut().map(|a| SendPtr(a.panels_mut(m, k).as_mut_ptr())).collect();
    (0..m.div_ceil(MR)).into_par_iter().for_each(|p| {
        for l in 0..k {
            for r in 0..(m - p * MR).min(MR) {
                for (xi, &v) in value(p * MR + r, l).iter().enumerate() {
                    // SAFETY: panel p of every matrix belongs to this task alone, and `panels_mut`
                    // sized each for `m x k`.
                    unsafe { *ptrs[xi].ptr().add((p * k + l) * MR + r) = v };
                }
            }
        }
    });
}

/// The adds, subtracts and constant multiplies of the patch and output transforms, on one value (`f32`) or on one
/// value of each of 16 tiles (an AVX-512 register, `winograd_avx512.rs`): one definition of the
/// arithmetic for both, so their results are the same bit for bit.
pub(super) trait Ops: Copy {
    type V: Copy;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a k` for a constant `k` of a transform matrix.
    fn mul(self, a: Self::V, k: f32) -> Self::V;
}

/// [`Ops`] on plain `f32`.
// x86-64 builds run the vector transforms; the tests (the reference) and the portable build use it.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
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
    #[inline(always)]
    fn mul(self, a: f32, k: f32) -> f32 {
        a * k
    }
}

/// `y = conv3x3(x, w) + b` for a geometry that [`fits`], by the algorithm `W`, where `filter(o, c)`
/// is the 3 x 3 filter from input channel `c` to output channel `o`. `y` is fully overwritten.
fn conv<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
    g: &Conv2dGeom,
    x: &[f32],
    filter: impl Fn(usize, usize) -> [[f32; 3]; 3] + Sync,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    debug_assert!(fits(g));
    let (cin, cout, (h, w)) = (g.c_in, g.c_out, (g.h, g.w));
    // Padding 1 and a 3x3 kernel keep the size: the output is h x w.
    let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
    let per_image = th * tw;
    // U straight into each U_xi's row panels (staging U as [xi][o][c] and repacking it took 22 %
    // of a one-thread decoder forward).
    let mut packed: Vec<PackedA> = (0..E).map(|_| PackedA::pack(0, 0, |_, _| 0.0)).collect();
    pack_transformed(&mut packed, cout, cin, |o, c| W::filter_transform(filter(o, c)));
    // Blocks of equal size (within one tile), so the tasks balance over the threads.
    let blocks = per_image.div_ceil(W::TILES);
    let yptr = SendPtr(y.as_mut_ptr());
    (0..g.n * blocks).into_par_iter().for_each(|u| {
        let (n, b) = (u / blocks, u % blocks);
        let tiles = b * per_image / blocks..(b + 1) * per_image / blocks;
        let xn = &x[n * cin * h * w..][..cin * h * w];
        // SAFETY: each (image, block) unit writes only its own tiles' pixels of image n.
        unsafe { block::<M, T, E, W>(&packed, xn, (h, w), tw, tiles, bias, yptr.ptr().add(n * cout * h * w), cout) };
    });
}

/// One block of tiles of one image: transform its patches, run the `E` GEMMs, transform back into `y`.
///
/// # Safety
/// `y` must address the image's `c_out` output planes, whose pixels of these tiles nothing else touches.
#[allow(clippy::too_many_arguments)]
unsafe fn block<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
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
    with_scratch::<f32, _>(E * v_len + E * cout * nt, |buf| {
        let (v, m) = buf.split_at_mut(E * v_len);
        // On AVX-512 CPUs the transforms run on 16 tiles per register (one lane set per slab), on
        // AVX2 ones on 8 (`winograd_avx2.rs`): this path runs only where the packed GEMM does, so
        // an x86-64 CPU here has AVX2 + FMA. The scalar transforms are the portable build's.
        #[cfg(target_arch = "x86_64")]
        let lanes: Option<Vec<TileLanes<M, T>>> = (packed_gemm::kernel() == Kernel::Avx512).then(|| {
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
                    unsafe { lane.transform_patches::<E, W>(x, h * w, cin, l * NR, v.as_mut_ptr(), v_len) };
                }
            }
            #[cfg(target_arch = "x86_64")]
            None => {
                for j0 in (0..nt).step_by(8) {
                    let group = (tiles.start + j0, (nt - j0).min(8));
                    // SAFETY: AVX2 present; `x` holds the image's `cin` planes; columns j0 .. j0 + 8
                    // of every V_xi lie inside `v` (whole slabs of 16).
                    unsafe {
                        winograd_avx2::transform_patches::<M, T, E, W>(
                            x,
                            (h, w),
                            tw,
                            group,
                            cin,
                            j0,
                            v.as_mut_ptr(),
                            v_len,
                        )
                    };
                }
                for vx in v.chunks_mut(v_len) {
                    zero_slab_padding(vx, cin, nt);
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => {
                for c in 0..cin {
                    let plane = &x[c * h * w..][..h * w];
                    for (j, t) in tiles.clone().enumerate() {
                        for (xi, &e) in W::patch_transform(W::patch(plane, (h, w), tw, t), Scalar).iter().enumerate() {
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
        for xi in 0..E {
            let (vx, mx) = (&v[xi * v_len..][..v_len], &mut m[xi * cout * nt..][..cout * nt]);
            packed_gemm::gemm(&packed[xi], &whole, vx, cin, nt, mx, nt, false);
        }
        match &lanes {
            #[cfg(target_arch = "x86_64")]
            Some(lanes) => {
                for (l, lane) in lanes.iter().enumerate() {
                    // SAFETY: as above; the caller owns these tiles' pixels of the `cout` planes at `y`.
                    unsafe { lane.transform_outputs::<E, W>(m, cout, nt, l * NR, bias, y, h * w) };
                }
            }
            #[cfg(target_arch = "x86_64")]
            None => {
                for j0 in (0..nt).step_by(8) {
                    let group = (j0, tiles.start + j0, (nt - j0).min(8));
                    // SAFETY: AVX2 present; the caller owns these tiles' pixels of the `cout` planes at `y`.
                    unsafe { winograd_avx2::transform_outputs::<M, T, E, W>(m, cout, nt, group, (h, w), tw, bias, y) };
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => {
                for o in 0..cout {
                    let b = bias.map_or(0.0, |b| b[o]);
                    let yo = y.add(o * h * w);
                    for (j, t) in tiles.clone().enumerate() {
                        let mt: [f32; E] = std::array::from_fn(|xi| m[(xi * cout + o) * nt + j]);
                        let out = W::output_transform(mt, Scalar);
                        let (y0, x0) = ((t / tw) * M, (t % tw) * M);
                        for (qy, row) in out.iter().enumerate() {
                            for (qx, &val) in row.iter().enumerate() {
                                let (oy, ox) = (y0 + qy, x0 + qx);
                                if oy < h && ox < w {
                                    *yo.add(oy * w + ox) = val + b;
                                }
                            }
                        }
                    }
                }
            }
        }
    });
}

/// What the vector transforms (`winograd_avx2.rs`, `winograd_avx512.rs`) must reproduce bit for
/// bit, by the scalar code: their tests' inputs and expected values.
#[cfg(test)]
pub(super) mod reference {
    use super::{Minimal, Scalar};

    /// The test inputs' values.
    pub(in super::super) fn val(i: usize) -> f32 {
        ((i * 7919 % 2003) as f32 / 2003.0 - 0.5) * 2.0
    }

    /// `V = B^T d B` of tile `t` (of a `tw`-wide grid) of one `h x w` plane; zeros for `None`
    /// (a slab's padding).
    pub(in super::super) fn patch_v<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
        plane: &[f32],
        (h, w): (usize, usize),
        tw: usize,
        t: Option<usize>,
    ) -> [f32; E] {
        t.map_or([0.0; E], |t| W::patch_transform(W::patch(plane, (h, w), tw, t), Scalar))
    }

    /// `Y = A^T M A + bias` of tiles `t0 .. t0 + nt` (column `j` of each `M_xi`, `cout x nt` at
    /// `m[xi cout nt ..]`) into `cout` planes of `h x w`; NaN where no tile output lands.
    pub(in super::super) fn outputs<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>(
        m: &[f32],
        (cout, nt, t0): (usize, usize, usize),
        (h, w): (usize, usize),
        tw: usize,
        bias: &[f32],
    ) -> Vec<f32> {
        let mut want = vec![f32::NAN; cout * h * w];
        for o in 0..cout {
            for j in 0..nt {
                let t = t0 + j;
                let out = W::output_transform(std::array::from_fn(|xi| m[(xi * cout + o) * nt + j]), Scalar);
                let (y0, x0) = ((t / tw) * M, (t % tw) * M);
                for (qy, row) in out.iter().enumerate() {
                    for (qx, &e) in row.iter().enumerate() {
                        let (oy, ox) = (y0 + qy, x0 + qx);
                        if oy < h && ox < w {
                            want[o * h * w + oy * w + ox] = e + bias[o];
                        }
                    }
                }
            }
        }
        want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms alone: `A^T [(G g G^T) ⊙ (B^T d B)] A` is the `M x M` correlation of `d` with `g`.
    fn one_tile<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>() {
        let g: [[f32; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| (3 * i + j) as f32 * 0.25 - 1.0));
        let d: [[f32; T]; T] = std::array::from_fn(|i| std::array::from_fn(|j| ((5 * i + 3 * j) % 7) as f32 - 2.5));
        let (u, v) = (W::filter_transform(g), W::patch_transform(d, Scalar));
        let y = W::output_transform(std::array::from_fn(|xi| u[xi] * v[xi]), Scalar);
        for (oy, row) in y.iter().enumerate() {
            for (ox, &got) in row.iter().enumerate() {
                let want: f32 = (0..3)
                    .flat_map(|ky| (0..3).map(move |kx| (ky, kx)))
                    .map(|(ky, kx)| g[ky][kx] * d[oy + ky][ox + kx])
                    .sum();
                assert!((got - want).abs() < 1e-4, "F({M}x{M}): output ({oy}, {ox}): {got} vs {want}");
            }
        }
    }

    /// The written-out 1-D transforms of `W` are its matrices `B^T`, `A^T` and `G` (in f64).
    fn transforms_are_the_matrices<const M: usize, const T: usize, const E: usize, W: Minimal<M, T, E>>() {
        let v: [f32; T] = std::array::from_fn(|i| [0.75, -1.5, 2.25, 0.5, -3.0, 1.25][i]);
        let product = |rows: &[[f32; T]], v: &[f32; T]| -> Vec<f64> {
            rows.iter().map(|r| r.iter().zip(v).map(|(&k, &x)| k as f64 * x as f64).sum()).collect()
        };
        let close = |got: &[f32], want: &[f64], what: &str| {
            for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                assert!((g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()), "F({M}x{M}) {what}[{i}]: {g} vs {w}");
            }
        };
        close(&W::bt(Scalar, v), &product(&W::BT, &v), "B^T v");
        close(&W::at(Scalar, v), &product(&W::AT, &v), "A^T v");
        let v3 = [0.75f32, -1.5, 2.25];
        let want: Vec<f64> = W::G.iter().map(|r| r.iter().zip(&v3).map(|(&k, &x)| k as f64 * x as f64).sum()).collect();
        close(&W::g(v3), &want, "G v");
        // A = (A^T)^T and G^T.
        let vm: [f32; M] = std::array::from_fn(|i| v[i]);
        let want: Vec<f64> = (0..T).map(|j| (0..M).map(|i| W::AT[i][j] as f64 * vm[i] as f64).sum()).collect();
        close(&W::a(vm), &want, "A v");
        let want: Vec<f64> = (0..3).map(|k| (0..T).map(|j| W::G[j][k] as f64 * v[j] as f64).sum()).collect();
        close(&W::gt(v), &want, "G^T v");
    }

    #[test]
    fn the_written_out_transforms_are_the_matrices() {
        transforms_are_the_matrices::<2, 4, 16, F2>();
        transforms_are_the_matrices::<4, 6, 36, F4>();
    }

    #[test]
    fn one_tile_equals_the_direct_correlation() {
        one_tile::<2, 4, 16, F2>();
        one_tile::<4, 6, 36, F4>();
    }
}
