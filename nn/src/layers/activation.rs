//! Parameter-free element-wise layers.

use crate::{Ctx, Layer, Module, Result, Visitor};
use engine::Tensor;

/// `nn.ReLU`: `max(x, 0)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReLU;

impl Module for ReLU {
    fn visit(&mut self, _: &mut Visitor<'_>) {}
}

impl Layer for ReLU {
    fn forward(&mut self, x: &Tensor, _: &mut Ctx) -> Result<Tensor> {
        Ok(x.relu()?)
    }
}

/// `nn.Identity`: returns its input (a placeholder where a layer is optional).
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl Module for Identity {
    fn visit(&mut self, _: &mut Visitor<'_>) {}
}

impl Layer for Identity {
    fn forward(&mut self, x: &Tensor, _: &mut Ctx) -> Result<Tensor> {
        Ok(x.clone())
    }
}
