//! L2 normalisation over the channel axis. TO BE WRITTEN.

use crate::{Error, Result, Tensor};

/// `y = x / max(||x||_2, eps)` over axis 1 of `[N, C, ...]` (like `F.normalize(x, dim=1, eps=eps)`).
pub fn l2_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let _ = (x, eps);
    Err(Error::invalid("l2_normalize", "not implemented yet"))
}
