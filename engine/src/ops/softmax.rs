//! Log-softmax over channels. TO BE WRITTEN.

use crate::{Error, Result, Tensor};

/// `y = x - log(sum_c exp(x_c))` over axis 1 of `[N, C, ...]`.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let _ = x;
    Err(Error::invalid("log_softmax", "not implemented yet"))
}
