//! Dropout.

use crate::{Ctx, Error, Layer, Module, Result, Visitor};
use engine::Tensor;

/// `nn.Dropout(p)`: in training mode zero each element with probability `p` (mask drawn from
/// [`Ctx::rng`]) and scale the rest by `1/(1-p)`; identity in eval mode.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    /// Drop probability in `[0, 1)`.
    pub p: f64,
}

impl Dropout {
    /// Checks `0 <= p < 1`.
    pub fn new(p: f64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::config("Dropout", format!("p = {p} is outside [0, 1)")));
        }
        Ok(Dropout { p })
    }
}

impl Module for Dropout {
    fn visit(&mut self, _: &mut Visitor<'_>) {}
}

impl Layer for Dropout {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        Ok(engine::ops::dropout(x, self.p, ctx.training, &mut ctx.rng)?)
    }
}
