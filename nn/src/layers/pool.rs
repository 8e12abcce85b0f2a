//! Pooling layers.

use crate::{Ctx, Layer, Module, Result, Visitor};
use engine::Tensor;

/// `nn.MaxPool2d(kernel, stride, padding)` with square windows (padding counts as -inf).
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d {
    /// Window size.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Padding on every side.
    pub padding: usize,
}

impl MaxPool2d {
    /// A square max pool (torchvision ResNet's stem uses `MaxPool2d::new(3, 2, 1)`).
    pub fn new(kernel: usize, stride: usize, padding: usize) -> MaxPool2d {
        MaxPool2d { kernel, stride, padding }
    }
}

impl Module for MaxPool2d {
    fn visit(&mut self, _: &mut Visitor<'_>) {}
}

impl Layer for MaxPool2d {
    fn forward(&mut self, x: &Tensor, _: &mut Ctx) -> Result<Tensor> {
        Ok(engine::ops::max_pool2d(x, [self.kernel; 2], [self.stride; 2], [self.padding; 2])?)
    }
}

/// `nn.AdaptiveAvgPool2d(1)`: mean over H and W, `[N, C, H, W] -> [N, C, 1, 1]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlobalAvgPool2d;

impl Module for GlobalAvgPool2d {
    fn visit(&mut self, _: &mut Visitor<'_>) {}
}

impl Layer for GlobalAvgPool2d {
    fn forward(&mut self, x: &Tensor, _: &mut Ctx) -> Result<Tensor> {
        Ok(engine::ops::global_avg_pool2d(x)?)
    }
}
