//! Dropout. TO BE WRITTEN.

use crate::{Error, Result, Rng, Tensor};

/// In training mode zero each element with probability `p` and scale the rest by `1/(1-p)`;
/// identity in eval mode.
pub fn dropout(x: &Tensor, p: f64, training: bool, rng: &mut Rng) -> Result<Tensor> {
    let _ = (x, p, training, rng);
    Err(Error::invalid("dropout", "not implemented yet"))
}
