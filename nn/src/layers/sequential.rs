//! A chain of layers.

use crate::{Ctx, Layer, Module, Result, Visitor};
use engine::Tensor;

/// `nn.Sequential`: applies its layers in order; children are named `"0"`, `"1"`, ... as in
/// PyTorch, so `downsample.0.weight` / `downsample.1.running_mean` come out right.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Layer + Send>>,
}

impl Sequential {
    /// An empty chain.
    pub fn new() -> Sequential {
        Sequential::default()
    }
    /// Append a layer (builder style).
    pub fn with(mut self, layer: impl Layer + Send + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }
    /// Append a layer.
    pub fn push(&mut self, layer: impl Layer + Send + 'static) {
        self.layers.push(Box::new(layer));
    }
    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    /// True when empty (forward is then the identity).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            v.child(&i.to_string(), l);
        }
    }
}

impl Layer for Sequential {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &mut self.layers {
            h = l.forward(&h, ctx)?;
        }
        Ok(h)
    }
}
