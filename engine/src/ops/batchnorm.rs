//! Batch normalisation over `[N, C, H, W]`. TO BE WRITTEN.

use crate::{Error, Result, Tensor};

/// Batch norm 2-D like PyTorch's `F.batch_norm`. In training mode it normalises with the batch
/// statistics and updates `running_mean`/`running_var` in place with `momentum` (unbiased
/// variance for the running estimate); in eval mode it uses the running statistics.
/// `weight`/`bias`: `[C]` affine parameters (optional).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    training: bool,
    momentum: f64,
    eps: f64,
) -> Result<Tensor> {
    let _ = (x, weight, bias, running_mean, running_var, training, momentum, eps);
    Err(Error::invalid("batch_norm2d", "not implemented yet"))
}
