//! L2 normalisation over the channel axis, like `F.normalize(x, p=2, dim=1, eps=eps)`.
//!
//! For `x: [N, C, ...]`, per pixel (every index of the non-channel axes):
//! `norm = sqrt(sum_c x_c^2)`, `d = max(norm, eps)`, `y = x / d`.
//!
//! Backward, with `g` the output gradient:
//! * `norm >= eps` (the norm is the denominator): `dx = (g - y sum_c(g_c y_c)) / norm`;
//! * `norm < eps` (the clamp is active, the denominator is the constant `eps`): `dx = g / eps`.
//!
//! At `norm == eps` the norm branch is taken, like PyTorch's `clamp_min` backward (which passes
//! the gradient where `input >= min`). Saved for backward: the output `y` (shared with the
//! returned tensor) and the per-pixel norms (`N * prod(spatial)` values).
//!
//! On `Device::Cuda` (feature `cuda`, f32) forward and backward run `kernels::cuda::normalize`
//! (one thread per pixel), saving the same `y` and norms on the device.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};
use kernels::cpu::softmax::{channel_dot, channel_l2_norm, l2_normalize_backward, l2_normalize_forward, ChannelDims};

const OP: &str = "l2_normalize";

/// The `[N, C, S]` view of a tensor with at least two dims (`S` = product of the rest).
pub(crate) fn channel_dims(op: &'static str, x: &Tensor) -> Result<ChannelDims> {
    if x.rank() < 2 {
        return Err(Error::shape(op, format!("expected at least 2 dims [N, C, ...], got {}", x.shape())));
    }
    Ok(ChannelDims { n: x.dim(0), c: x.dim(1), s: x.dims()[2..].iter().product() })
}

/// `y = x / max(||x||_2, eps)` over axis 1 of `[N, C, ...]` (like `F.normalize(x, dim=1, eps=eps)`).
/// See the module docs for the gradient. Errors: fewer than 2 dims, or `eps` negative or not finite.
pub fn l2_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let d = channel_dims(OP, x)?;
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::invalid(OP, format!("eps must be finite and >= 0, got {eps}")));
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = x.device() {
        use crate::cuda::{alloc, buf, wrap};
        let xb = buf(x, OP)?;
        let (mut y, mut norm) = (alloc(xb.device(), x.numel())?, alloc(xb.device(), d.pixels())?);
        kernels::cuda::normalize::l2_normalize_forward(d.n, d.c, d.s, eps as f32, xb, &mut y, &mut norm)?;
        let out = wrap(y, x.dims().to_vec());
        let saved_y = out.clone();
        let norm = wrap(norm, vec![d.pixels()]);
        return record(OP, &[x], out, || Box::new(L2NormalizeBackward { y: saved_y, norm, eps, d }));
    }
    with_dtype!(x.dtype(), T, {
        let xs = x.cpu_slice::<T>(OP)?;
        let mut norm = vec![T::ZERO; d.pixels()];
        channel_l2_norm(xs, d, &mut norm);
        let mut y = vec![T::ZERO; xs.len()];
        l2_normalize_forward(xs, &norm, T::from_f64(eps), d, &mut y);
        let out = Tensor::from_cpu(T::wrap(y), x.shape().clone());
        let saved_y = out.clone();
        record(OP, &[x], out, || {
            Box::new(L2NormalizeBackward {
                y: saved_y,
                norm: Tensor::from_cpu(T::wrap(norm), Shape(vec![d.pixels()])),
                eps,
                d,
            })
        })
    })
}

/// Saves the output and the per-pixel norms.
struct L2NormalizeBackward {
    y: Tensor,
    norm: Tensor,
    eps: f64,
    d: ChannelDims,
}

impl Backward for L2NormalizeBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn saved_bytes(&self) -> usize {
        self.y.nbytes() + self.norm.nbytes()
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        if g.dims() != self.y.dims() {
            return Err(Error::shape(OP, format!("gradient {} vs output {}", g.shape(), self.y.shape())));
        }
        #[cfg(feature = "cuda")]
        if let crate::Device::Cuda(_) = g.device() {
            use crate::cuda::{alloc, buf, wrap};
            let (gb, d) = (buf(g, OP)?, self.d);
            let mut dx = alloc(gb.device(), g.numel())?;
            let (yb, nb) = (buf(&self.y, OP)?, buf(&self.norm, OP)?);
            kernels::cuda::normalize::l2_normalize_backward(d.n, d.c, d.s, self.eps as f32, gb, yb, nb, &mut dx)?;
            return Ok(vec![Some(wrap(dx, self.y.dims().to_vec()))]);
        }
        with_dtype!(g.dtype(), T, {
            let (gs, ys) = (g.cpu_slice::<T>(OP)?, self.y.cpu_slice::<T>(OP)?);
            let mut gy = vec![T::ZERO; self.d.pixels()];
            channel_dot(gs, ys, self.d, &mut gy);
            let mut dx = vec![T::ZERO; gs.len()];
            l2_normalize_backward(gs, ys, self.norm.cpu_slice::<T>(OP)?, &gy, T::from_f64(self.eps), self.d, &mut dx);
            Ok(vec![Some(Tensor::from_cpu(T::wrap(dx), self.y.shape().clone()))])
        })
    }
}
