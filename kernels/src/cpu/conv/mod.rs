//! 2-D convolution kernels (NCHW, grouped, strided, padded, dilated) as tiled gather + GEMM.
//!
//! Shapes: `x: [N, C_in, H, W]`, `w: [C_out, C_in/G, kH, kW]`, `y: [N, C_out, OH, OW]` with
//! `OH = floor((H + 2 p - d (kH - 1) - 1) / s) + 1` (PyTorch), likewise for `OW`.
//!
//! ```text
//! y[n, o, oy, ox]  = b[o] + sum_{c, ky, kx} w[o, c, ky, kx] x[n, g C_in/G + c, oy s - p + ky d, ox s - p + kx d]
//! dx[n, i, iy, ix] = sum_{o in group, ky, kx : (iy + p - ky d) = oy s} w[o, c, ky, kx] gy[n, o, oy, ox]
//! dw[o, c, ky, kx] = sum_{n, oy, ox} gy[n, o, oy, ox] x[n, ., oy s - p + ky d, ox s - p + kx d]
//! db[o]            = sum_{n, oy, ox} gy[n, o, oy, ox]
//! ```
//! (taps that land in the zero padding contribute nothing).
//!
//! **One gather-conv engine for `y` and `dx`.** Both are "for each destination pixel, sum over taps
//! of a matrix times a source pixel found by an affine map": `y` gathers `x` through
//! `i = o s - p + k d`, `dx` gathers `gy` through `o = (i + p - k d) / s` (only where divisible),
//! which is col2im written as a gather, so parallel tiles never write the same element. The
//! destination is cut into tiles of about [`TILE_PIX`] pixels; a tile's `im2col` block (taps x
//! channels x pixels) is built in a per-thread scratch buffer reused across calls and multiplied by
//! the repacked weights `[rows][tap][channel]`. In f32 on AVX2 + FMA CPUs (the training path) the
//! weights are packed once per call into the micro-kernel's row panels and the block is gathered
//! straight into its column slabs ([`crate::cpu::packed_gemm`]), every run of consecutive live taps
//! one segment of one GEMM; otherwise (f64, other CPUs) `matrixmultiply` runs one GEMM per run.
//!
//! **Skipping taps in the padding.** Along each axis the destination coordinates are split at the
//! points where a tap starts or stops landing inside the source, so within a 2-D region the set of
//! live taps is fixed; taps that are dead in a whole tile are left out of its GEMM (a 3x3 conv with
//! dilation 18 on 33x33 has only 40% live taps). Regions narrower than a few pixels are merged into
//! a neighbour (computing some zeros is cheaper than a tiny GEMM). For `dx` of a strided conv the
//! destination is also split by phase (`i mod s`): within a phase the live taps are fixed again and
//! the gather is contiguous.
//!
//! **Special cases.** A 1x1, stride-1, unpadded conv needs no gather: the GEMM reads the source
//! planes directly. Depthwise convs (one input and one output channel per group) use a direct
//! loop instead of 1-row GEMMs. On the packed f32 path, 3x3 stride-1 padding-1 convs with many
//! channels on large maps (the decoder's) compute `y`, `dx` and `dw` by Winograd F(4x4, 3x3) (36
//! multiplies per 4 x 4 output tile and channel pair instead of 144) or, for `y` and `dx` where
//! 4 x 4 tiles fit the map poorly, F(2x2, 3x3) (16 per 2 x 2 tile instead of 36). Dilated stride-1 convs on
//! small maps with many more source channels than outputs (ASPP's forward) run one GEMM per tap
//! over all its live pixels instead of one per small region. Stride-1 convs with few source
//! channels (ResNet's layers 1-2) compute `y` and `dx` directly from a zero-padded copy of
//! the source, the micro-kernel reading each tap's shifted run in place (no im2col gather).
//!
//! **dw** runs the forward tiling and accumulates `gy_tile (rows x pix) col_tile^T` into a
//! per-chunk partial sum (on the packed path `gy_tile` is packed as the left operand and each run's
//! im2col rows are gathered transposed into slabs); chunks are fixed by the problem (balanced by a
//! deterministic cost) and reduced in chunk order. On the packed path, convs with few pixels per
//! input channel (the 17 x 17 maps of the late layers and ASPP) instead run one GEMM per tap over
//! all the pixels where it lands inside the input, split by blocks of `dw` (`weight_grad_taps.rs`):
//! no partial sums, and long products instead of a few dozen pixels per dilated region.
//! **db** sums each channel over `n` then pixels in order.
//!
//! Work is split over (image, group, tile) units whose boundaries depend only on the shapes, and
//! every output element is produced by one unit with a fixed summation order, so results are
//! bit-identical from run to run.
//!
//! **Files.** `mod.rs` (this file): the geometry, the tuning constants and the public entry points,
//! which validate the shapes and hand over to `engine.rs` (the gather-conv engine for `y` and `dx`,
//! and its serial GEMM), `per_tap.rs` (one GEMM per tap for the forward of dilated convs on small
//! maps), `direct.rs` (`y` and `dx` read in place from a padded source), `winograd.rs` (F(4x4, 3x3) and F(2x2, 3x3) for `y`, `dx` and `dw`; its transforms on 16 lanes in
//! `winograd_avx512.rs`), `weight_grad.rs` (`dw` and `db`), `weight_grad_taps.rs` (the per-tap
//! `dw`) or, for depthwise convs, `depthwise.rs` (direct loops). Both the engine and `dw` build on
//! `tiling.rs` (live-tap segments and tile plans) and `gather.rs` (im2col as a gather through a
//! per-tile tap offset table, on AVX-512 as a few masked shifted loads per slab or one masked
//! gather per transposed slab row, each next to its scalar reference; pixel gathers, per-thread
//! scratch).

mod depthwise;
#[cfg(target_arch = "x86_64")]
mod direct;
mod engine;
mod gather;
mod per_tap;
mod tiling;
mod weight_grad;
mod weight_grad_taps;
mod weight_panels;
mod winograd;
#[cfg(target_arch = "x86_64")]
mod winograd_avx2;
#[cfg(target_arch = "x86_64")]
mod winograd_avx512;

#[cfg(test)]
mod tests;

use crate::Float;

/// Destination pixels per gather/GEMM tile for `y` and `dx`.
const TILE_PIX: usize = 256;
/// Pixels per tile for `dw` (its GEMM's inner dimension, so bigger is better).
const DW_TILE_PIX: usize = 512;
/// Target number of partial sums for `dw` (over all groups).
const DW_CHUNKS: usize = 4;
/// Regions narrower than this (in coordinates along x / y) are merged with a neighbour.
const MIN_SPAN_X: usize = 4;
const MIN_SPAN_Y: usize = 2;

/// Sizes and hyperparameters of one convolution. The caller validates them (see [`Self::out_hw`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// PyTorch's output length `floor((len + 2 p - d (k - 1) - 1) / s) + 1`, or `None` when the
/// (dilated) kernel does not fit in the padded input or `s == 0`.
pub fn conv_out_len(len: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    let padded = len.checked_add(2 * p)?;
    if s == 0 || padded < span {
        return None;
    }
    Some((padded - span) / s + 1)
}

impl Conv2dGeom {
    /// `(OH, OW)`, or `None` if the kernel does not fit.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let oh = conv_out_len(self.h, self.kh, self.stride[0], self.padding[0], self.dilation[0])?;
        let ow = conv_out_len(self.w, self.kw, self.stride[1], self.padding[1], self.dilation[1])?;
        Some((oh, ow))
    }
    fn ohw(&self) -> (usize, usize) {
        self.out_hw().expect("conv2d kernel called with an invalid geometry")
    }
    fn cig(&self) -> usize {
        self.c_in / self.groups
    }
    fn cog(&self) -> usize {
        self.c_out / self.groups
    }
    fn taps(&self) -> usize {
        self.kh * self.kw
    }
    fn check(&self, x_len: usize, w_len: usize, y_len: usize) {
        let (oh, ow) = self.ohw();
        assert!(self.groups > 0 && self.cig() * self.groups == self.c_in && self.cog() * self.groups == self.c_out);
        assert_eq!(x_len, self.n * self.c_in * self.h * self.w, "conv2d: x length");
        assert_eq!(w_len, self.c_out * self.cig() * self.taps(), "conv2d: w length");
        assert_eq!(y_len, self.n * self.c_out * oh * ow, "conv2d: y length");
    }
    fn is_depthwise(&self) -> bool {
        self.cig() == 1 && self.cog() == 1
    }
}

/// `y = conv(x, w) + b`. `y` is fully overwritten.
pub fn conv2d_forward<T: Float>(g: &Conv2dGeom, x: &[T], w: &[T], bias: Option<&[T]>, y: &mut [T]) {
    g.check(x.len(), w.len(), y.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), g.c_out, "conv2d: bias length");
    }
    engine::forward(g, x, w, bias, y);
}

/// `dx` from `gy` (the gradient of `y`). `dx` is fully overwritten.
pub fn conv2d_backward_input<T: Float>(g: &Conv2dGeom, w: &[T], gy: &[T], dx: &mut [T]) {
    g.check(dx.len(), w.len(), gy.len());
    engine::input_grad(g, w, gy, dx);
}

/// `db[o] = sum_{n, pixels} gy[n, o, .]`. `db` is overwritten.
pub fn conv2d_backward_bias<T: Float>(g: &Conv2dGeom, gy: &[T], db: &mut [T]) {
    let (oh, ow) = g.ohw();
    assert_eq!(gy.len(), g.n * g.c_out * oh * ow, "conv2d: gy length");
    assert_eq!(db.len(), g.c_out, "conv2d: db length");
    weight_grad::bias_grad(g, gy, db);
}

/// `dw` from `x` and `gy`. `dw` is fully overwritten.
pub fn conv2d_backward_weight<T: Float>(g: &Conv2dGeom, x: &[T], gy: &[T], dw: &mut [T]) {
    g.check(x.len(), dw.len(), gy.len());
    weight_grad::weight_grad(g, x, gy, dw);
}
