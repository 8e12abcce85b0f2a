//! The projection head of the contrastive pretraining stage.

use crate::{Conv2d, ConvOptions, Ctx, Layer, Module, ReLU, Result, Sequential, Visitor};
use engine::{Rng, Tensor};

/// Three 1x1 convolutions (ReLU after the first two) followed by unit L2 normalisation over
/// channels: `normalize(conv3(relu(conv2(relu(conv1(x))))))`, as in Zhao et al.
///
/// State names match a PyTorch `nn.Sequential(conv, ReLU, conv, ReLU, conv)`: `0.weight`,
/// `0.bias`, `2.weight`, `2.bias`, `4.weight`, `4.bias` under the head's prefix.
pub struct ProjectionHead {
    net: Sequential,
    /// Floor of the norm in the normalisation (`F.normalize`'s default 1e-12).
    pub eps: f64,
}

impl ProjectionHead {
    /// `in_channels -> hidden -> hidden -> out_channels` (the paper uses 256 for both), with biases.
    pub fn new(in_channels: usize, hidden: usize, out_channels: usize, rng: &mut Rng) -> Result<ProjectionHead> {
        let o = ConvOptions::new().bias(true);
        let net = Sequential::new()
            .with(Conv2d::with_options(in_channels, hidden, 1, o, rng)?)
            .with(ReLU)
            .with(Conv2d::with_options(hidden, hidden, 1, o, rng)?)
            .with(ReLU)
            .with(Conv2d::with_options(hidden, out_channels, 1, o, rng)?);
        Ok(ProjectionHead { net, eps: 1e-12 })
    }
}

impl Module for ProjectionHead {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        // No extra name level: the head *is* the Sequential, as in the PyTorch layout.
        self.net.visit(v);
    }
}

impl Layer for ProjectionHead {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = self.net.forward(x, ctx)?;
        Ok(engine::ops::l2_normalize(&h, self.eps)?)
    }
}
