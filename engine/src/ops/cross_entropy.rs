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
