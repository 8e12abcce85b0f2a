//! Pixel-wise cross-entropy with an ignore label, like
//! `F.cross_entropy(logits, labels, ignore_index=ignore, reduction="mean")`.
//!
//! For logits `x: [N, C, H, W]` and labels `t: N x H x W`, the valid pixels are `V = {p : t_p != ignore}`:
//! `loss = (1 / |V|) sum_{p in V} (lse_p - x_{t_p, p})` with `lse_p = log sum_c exp(x_{c, p})`
//! (the stable log-sum-exp). When every pixel is ignored the loss is 0 (PyTorch gives NaN) and
//! the gradient is 0. Backward, with `g` the scalar output gradient:
//! `dx_{c, p} = g (softmax_{c, p} - [c == t_p]) / |V|` for `p in V`, 0 otherwise.
//! Fused: the forward computes the per-pixel `lse` once; saved for backward are the logits
//! (shared with the caller), `lse` (`N H W` values) and the labels. The softmax is recomputed as
//! `exp(x - lse)` in the backward instead of being stored (`N C H W` values).
//!
//! On `Device::Cuda` (feature `cuda`, f32) the labels are uploaded as bytes, one thread per pixel
//! writes its loss and `lse` (`kernels::cuda::softmax`), a fixed-order device reduction sums the
//! pixels with the factor `1 / |V|` (`|V|` counted on the host), and the backward runs the fused
//! `softmax - onehot` kernel with `scale = g / |V|` (the scalar `g` is read back, one sync).

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, LabelMap, Result, Shape, Tensor};
use kernels::cpu::softmax::{channel_logsumexp, cross_entropy_backward, cross_entropy_sum, ChannelDims};

const OP: &str = "cross_entropy";

/// Mean over non-ignored pixels of `-log softmax(logits)[label]`, logits `[N, C, H, W]`, labels
/// `N x H x W`. An all-ignored batch gives 0 (never NaN). Returns a scalar (rank 0).
/// Errors: logits not 4-D, a label map of another size, or a label `>= C` that is not `ignore`.
pub fn cross_entropy(logits: &Tensor, labels: &LabelMap, ignore: u8) -> Result<Tensor> {
    if logits.rank() != 4 {
        return Err(Error::shape(OP, format!("expected 4-D logits [N, C, H, W], got {}", logits.shape())));
    }
    let (n, c, h, w) = (logits.dim(0), logits.dim(1), logits.dim(2), logits.dim(3));
    if (labels.n, labels.h, labels.w) != (n, h, w) || labels.data.len() != n * h * w {
        return Err(Error::shape(
            OP,
            format!("labels {}x{}x{} do not match logits {}", labels.n, labels.h, labels.w, logits.shape()),
        ));
    }
    labels.validate(OP, c, ignore)?;
    let d = ChannelDims { n, c, s: h * w };
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = logits.device() {
        return on_cuda::forward(logits, labels, ignore, d);
    }
    with_dtype!(logits.dtype(), T, {
        let xs = logits.cpu_slice::<T>(OP)?;
        let mut lse = vec![T::ZERO; d.pixels()];
        channel_logsumexp(xs, d, &mut lse);
        let (total, count) = cross_entropy_sum(xs, &lse, &labels.data, ignore, d);
        let loss = if count == 0 { 0.0 } else { total / count as f64 };
        let out = Tensor::from_cpu(T::wrap(vec![T::from_f64(loss)]), Shape(vec![]));
        record(OP, &[logits], out, || {
            Box::new(CrossEntropyBackward {
                logits: logits.detach(),
                lse: Tensor::from_cpu(T::wrap(lse), Shape(vec![d.pixels()])),
                labels: labels.data.clone(),
                ignore,
                count,
                d,
            })
        })
    })
}

/// Saves the logits (shared), the per-pixel log-sum-exp and the labels.
struct CrossEntropyBackward {
    logits: Tensor,
    lse: Tensor,
    labels: Vec<u8>,
    ignore: u8,
    count: usize,
    d: ChannelDims,
}

impl Backward for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn saved_bytes(&self) -> usize {
        self.logits.nbytes() + self.lse.nbytes() + self.labels.len()
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        let gv = g.item()?;
        with_dtype!(self.logits.dtype(), T, {
            let mut dx = vec![T::ZERO; self.logits.numel()];
            if self.count > 0 {
                let scale = T::from_f64(gv / self.count as f64);
                let (xs, lse) = (self.logits.cpu_slice::<T>(OP)?, self.lse.cpu_slice::<T>(OP)?);
                cross_entropy_backward(xs, lse, &self.labels, self.ignore, scale, self.d, &mut dx);
            }
            Ok(vec![Some(Tensor::from_cpu(T::wrap(dx), self.logits.shape().clone()))])
        })
    }
}

/// The f32 CUDA path through `kernels::cuda::softmax` and `kernels::cuda::reduce`.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::OP;
    use crate::cuda::{alloc, buf, wrap, zeros};
    use crate::tape::record;
    use crate::{Backward, LabelMap, Result, Tensor};
    use kernels::cpu::softmax::ChannelDims;
    use kernels::cuda::{softmax as kc, CudaBuf};

    pub(super) fn forward(logits: &Tensor, labels: &LabelMap, ignore: u8, d: ChannelDims) -> Result<Tensor> {
        let xb = buf(logits, OP)?;
        let dev = xb.device();
        let count = labels.data.iter().filter(|&&l| l != ignore).count();
        let labels_dev = dev.upload(&labels.data)?;
        let px = d.pixels();
        let (mut loss_px, mut lse) = (alloc(dev, px)?, alloc(dev, px)?);
        kc::cross_entropy_forward(d.n, d.c, d.s, ignore, xb, &labels_dev, &mut loss_px, &mut lse)?;
        let out = if count == 0 {
            zeros(dev, vec![])?
        } else {
            let mut y = alloc(dev, 1)?;
            kernels::cuda::reduce::sum_axes(&loss_px, &[px], &[true], (1.0 / count as f64) as f32, &mut y)?;
            wrap(y, vec![])
        };
        record(OP, &[logits], out, || {
            Box::new(CrossEntropyBackward { logits: logits.detach(), lse, labels: labels_dev, ignore, count, d })
        })
    }

    /// Saves the logits (shared), the per-pixel log-sum-exp and the labels, all on the device.
    struct CrossEntropyBackward {
        logits: Tensor,
        lse: CudaBuf,
        labels: CudaBuf,
        ignore: u8,
        count: usize,
        d: ChannelDims,
    }

    impl Backward for CrossEntropyBackward {
        fn name(&self) -> &'static str {
            OP
        }
        fn saved_bytes(&self) -> usize {
            self.logits.nbytes() + self.lse.bytes() + self.labels.bytes()
        }
        fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
            if !needs[0] {
                return Ok(vec![None]);
            }
            let xb = buf(&self.logits, OP)?;
            let dims = self.logits.dims().to_vec();
            if self.count == 0 {
                return Ok(vec![Some(zeros(xb.device(), dims)?)]);
            }
            let scale = (g.item()? / self.count as f64) as f32;
            let d = self.d;
            let mut dx = alloc(xb.device(), self.logits.numel())?;
            kc::cross_entropy_backward(d.n, d.c, d.s, self.ignore, scale, xb, &self.labels, &self.lse, &mut dx)?;
            Ok(vec![Some(wrap(dx, dims))])
        }
    }
}
