//! Bilinear resize (both `align_corners` conventions) and nearest resize for label maps, matching
//! `F.interpolate` exactly.
//!
//! **Bilinear** (`[N, C, H, W] -> [N, C, OH, OW]`). Along each axis an output index `dst` reads
//! the source coordinate
//! * `align_corners = true`: `src = dst (in - 1) / (out - 1)`, and `src = 0` when `out == 1`;
//! * `align_corners = false`: `src = max((dst + 0.5) in / out - 0.5, 0)` (half-pixel centres,
//!   clamped at 0 like PyTorch),
//!
//! computed in the element type, then `i0 = floor(src)`, `i1 = min(i0 + 1, in - 1)`,
//! `l1 = src - i0`, `l0 = 1 - l1`. Forward:
//! `y[i, j] = l0h (l0w x[h0, w0] + l1w x[h0, w1]) + l1h (l0w x[h1, w0] + l1w x[h1, w1])`.
//! Up- and downsampling use the same two-tap rule (no antialiasing, as `F.interpolate`'s default).
//! Backward: the transpose, `dx[h?, w?] += l?h l?w g[i, j]` over the four taps of every output
//! pixel, done per plane serially (deterministic). Nothing is saved but the sizes: the taps are
//! recomputed from them.
//!
//! **Nearest** (labels, no gradient), two rules ([`NearestRule`]):
//! * [`resize_nearest_labels`] (`NearestRule::Floor`): `src = min(floor(dst in / out), in - 1)` in
//!   f32, PyTorch's `mode="nearest"` rule (with its exact shortcuts for equal and doubled sizes);
//! * [`resize_nearest_labels_align_corners`] (`NearestRule::AlignCorners`): TensorFlow's
//!   `resize_nearest_neighbor(align_corners=True)`, `src = min(roundf(dst (in - 1) / (out - 1)), in - 1)`
//!   (`src = 0` when `out == 1`; `roundf` = `floor(x + 0.5)` here). It reads the source pixel
//!   nearest to the position the bilinear `align_corners = true` resize samples, so a label map
//!   resized this way stays aligned with features resized by `resize_bilinear(.., true)` (the floor
//!   rule drifts by up to one source pixel towards the far edge). The contrastive loss's labels use it.
//!
//! On `Device::Cuda` (feature `cuda`, f32) the bilinear forward and backward run
//! `kernels::cuda::resize` with the same f32 taps (the backward as a deterministic gather).
//! Label maps are host data, so the nearest resize always runs on the host.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, LabelMap, Result, Shape, Tensor};
pub use kernels::cpu::resize::NearestRule;
use kernels::cpu::resize::{bilinear_backward, bilinear_forward, linear_taps, nearest_gather, ResizeDims};

const OP: &str = "resize_bilinear";

fn check_sizes(op: &'static str, what: &str, ih: usize, iw: usize, out_hw: [usize; 2]) -> Result<()> {
    if ih == 0 || iw == 0 || out_hw[0] == 0 || out_hw[1] == 0 {
        return Err(Error::invalid(
            op,
            format!("{what} spatial size {ih}x{iw} and output size {}x{} must all be >= 1", out_hw[0], out_hw[1]),
        ));
    }
    Ok(())
}

/// Bilinear resize of `[N, C, H, W]` to `[N, C, out_h, out_w]`, matching
/// `F.interpolate(mode="bilinear", align_corners=...)`. See the module docs for the index rules
/// and the backward. Errors: `x` not 4-D, or an empty input or output size.
pub fn resize_bilinear(x: &Tensor, out_hw: [usize; 2], align_corners: bool) -> Result<Tensor> {
    if x.rank() != 4 {
        return Err(Error::shape(OP, format!("expected a 4-D [N, C, H, W] input, got {}", x.shape())));
    }
    let (n, c, ih, iw) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    check_sizes(OP, &format!("input {}", x.shape()), ih, iw, out_hw)?;
    let d = ResizeDims { planes: n * c, ih, iw, oh: out_hw[0], ow: out_hw[1] };
    let out_shape = Shape(vec![n, c, d.oh, d.ow]);
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = x.device() {
        let xb = crate::cuda::buf(x, OP)?;
        let mut y = crate::cuda::alloc(xb.device(), out_shape.numel())?;
        kernels::cuda::resize::bilinear_forward(d, align_corners, xb, &mut y)?;
        let out = crate::cuda::wrap(y, out_shape.0);
        return record(OP, &[x], out, || {
            Box::new(ResizeBilinearBackward { d, align_corners, in_shape: x.shape().clone() })
        });
    }
    let out = with_dtype!(x.dtype(), T, {
        let (th, tw) = (linear_taps::<T>(ih, d.oh, align_corners), linear_taps::<T>(iw, d.ow, align_corners));
        let mut y = kernels::cpu::parallel::zeros::<T>(out_shape.numel());
        bilinear_forward(x.cpu_slice::<T>(OP)?, d, &th, &tw, &mut y);
        Tensor::from_cpu(T::wrap(y), out_shape)
    });
    record(OP, &[x], out, || Box::new(ResizeBilinearBackward { d, align_corners, in_shape: x.shape().clone() }))
}

/// Saves nothing but the sizes and the convention.
struct ResizeBilinearBackward {
    d: ResizeDims,
    align_corners: bool,
    in_shape: Shape,
}

impl Backward for ResizeBilinearBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        let d = self.d;
        if g.numel() != d.planes * d.oh * d.ow {
            return Err(Error::shape(OP, format!("gradient {} does not match output {}x{}", g.shape(), d.oh, d.ow)));
        }
        #[cfg(feature = "cuda")]
        if let crate::Device::Cuda(_) = g.device() {
            let gb = crate::cuda::buf(g, OP)?;
            let mut dx = crate::cuda::alloc(gb.device(), self.in_shape.numel())?;
            kernels::cuda::resize::bilinear_backward(d, self.align_corners, gb, &mut dx)?;
            return Ok(vec![Some(crate::cuda::wrap(dx, self.in_shape.dims().to_vec()))]);
        }
        with_dtype!(g.dtype(), T, {
            let th = linear_taps::<T>(d.ih, d.oh, self.align_corners);
            let tw = linear_taps::<T>(d.iw, d.ow, self.align_corners);
            let mut dx = kernels::cpu::parallel::zeros::<T>(self.in_shape.numel());
            bilinear_backward(g.cpu_slice::<T>(OP)?, d, &th, &tw, &mut dx);
            Ok(vec![Some(Tensor::from_cpu(T::wrap(dx), self.in_shape.clone()))])
        })
    }
}

/// Nearest-neighbour resize of a label map (no gradient), matching `F.interpolate(mode="nearest")`
/// (`NearestRule::Floor`): `out[i, j] = in[min(floor(i h / out_h), h - 1), min(floor(j w / out_w), w - 1)]`.
/// Errors: an empty input or output size.
pub fn resize_nearest_labels(labels: &LabelMap, out_hw: [usize; 2]) -> Result<LabelMap> {
    resize_nearest_labels_with(labels, out_hw, NearestRule::Floor, "resize_nearest_labels")
}

/// Nearest-neighbour resize of a label map (no gradient), matching TensorFlow's
/// `tf.compat.v1.image.resize_nearest_neighbor(align_corners=True)` (`NearestRule::AlignCorners`):
/// `out[i, j] = in[min(roundf(i (h - 1) / (out_h - 1)), h - 1), ...]` with the ratio in f32 and
/// index 0 along an axis of output size 1; the pixel nearest to the bilinear
/// `align_corners = true` sample position (see the module docs). Errors: an empty input or output size.
pub fn resize_nearest_labels_align_corners(labels: &LabelMap, out_hw: [usize; 2]) -> Result<LabelMap> {
    resize_nearest_labels_with(labels, out_hw, NearestRule::AlignCorners, "resize_nearest_labels_align_corners")
}

fn resize_nearest_labels_with(
    labels: &LabelMap,
    out_hw: [usize; 2],
    rule: NearestRule,
    op: &'static str,
) -> Result<LabelMap> {
    check_sizes(op, &format!("label map {}x{}x{}", labels.n, labels.h, labels.w), labels.h, labels.w, out_hw)?;
    if labels.data.len() != labels.n * labels.h * labels.w {
        return Err(Error::shape(
            op,
            format!("{} labels for {}x{}x{}", labels.data.len(), labels.n, labels.h, labels.w),
        ));
    }
    let d = ResizeDims { planes: labels.n, ih: labels.h, iw: labels.w, oh: out_hw[0], ow: out_hw[1] };
    let mut out = vec![0u8; d.planes * d.oh * d.ow];
    nearest_gather(&labels.data, d, rule, &mut out);
    LabelMap::new(labels.n, d.oh, d.ow, out)
}
