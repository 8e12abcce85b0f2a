//! Log-softmax over the channel axis of `[N, C, ...]`.
//!
//! Forward, per pixel: `lse = max_c x_c + ln sum_c exp(x_c - max_c x_c)` (stable for any
//! magnitude), `y_c = x_c - lse`. Backward: `dx_c = g_c - softmax_c sum_k g_k` with
//! `softmax = exp(y)`. Saved for backward: the output `y` only (shared with the returned tensor).
//!
//! On `Device::Cuda` (feature `cuda`, f32) both directions run `kernels::cuda::softmax` (one
//! thread per pixel, the same stable formula).

use crate::ops::normalize::channel_dims;
use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Tensor};
use kernels::cpu::softmax::{channel_logsumexp, channel_sum, log_softmax_backward, log_softmax_forward, ChannelDims};

const OP: &str = "log_softmax";

/// `y = x - log(sum_c exp(x_c))` over axis 1 of `[N, C, ...]`. Errors: fewer than 2 dims.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let d = channel_dims(OP, x)?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = x.device() {
        let xb = crate::cuda::buf(x, OP)?;
        let mut y = crate::cuda::alloc(xb.device(), x.numel())?;
        kernels::cuda::softmax::log_softmax_forward(d.n, d.c, d.s, xb, &mut y)?;
        let out = crate::cuda::wrap(y, x.dims().to_vec());
        let saved_y = out.clone();
        return record(OP, &[x], out, || Box::new(LogSoftmaxBackward { y: saved_y, d }));
    }
    with_dtype!(x.dtype(), T, {
        let xs = x.cpu_slice::<T>(OP)?;
        let mut lse = vec![T::ZERO; d.pixels()];
        channel_logsumexp(xs, d, &mut lse);
        let mut y = vec![T::ZERO; xs.len()];
        log_softmax_forward(xs, &lse, d, &mut y);
        let out = Tensor::from_cpu(T::wrap(y), x.shape().clone());
        let saved_y = out.clone();
        record(OP, &[x], out, || Box::new(LogSoftmaxBackward { y: saved_y, d }))
    })
}

/// Saves the output.
struct LogSoftmaxBackward {
    y: Tensor,
    d: ChannelDims,
}

impl Backward for LogSoftmaxBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn saved_bytes(&self) -> usize {
        self.y.nbytes()
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
            let (gb, d) = (crate::cuda::buf(g, OP)?, self.d);
            let mut dx = crate::cuda::alloc(gb.device(), g.numel())?;
            kernels::cuda::softmax::log_softmax_backward(d.n, d.c, d.s, gb, crate::cuda::buf(&self.y, OP)?, &mut dx)?;
            return Ok(vec![Some(crate::cuda::wrap(dx, self.y.dims().to_vec()))]);
        }
        with_dtype!(g.dtype(), T, {
            let gs = g.cpu_slice::<T>(OP)?;
            let mut gsum = vec![T::ZERO; self.d.pixels()];
            channel_sum(gs, self.d, &mut gsum);
            let mut dx = vec![T::ZERO; gs.len()];
            log_softmax_backward(gs, self.y.cpu_slice::<T>(OP)?, &gsum, self.d, &mut dx);
            Ok(vec![Some(Tensor::from_cpu(T::wrap(dx), self.y.shape().clone()))])
        })
    }
}
