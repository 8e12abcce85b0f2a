//! The projection head of the contrastive pretraining stage.

use crate::{BatchNorm2d, Conv2d, ConvOptions, Ctx, Error, Layer, Module, ReLU, Result, Sequential, Visitor};
use engine::{Rng, Tensor};

/// The projection head of Zhao et al.'s official code (`projection_head` in google-research
/// `supervised_pixel_contrastive_loss`): `layers - 1` hidden layers, each a 1x1 convolution
/// without bias, batch norm and ReLU, then a final 1x1 convolution with bias and no activation,
/// then unit L2 normalisation over channels:
///
/// `h_0 = x`, `h_k = relu(BN_k(W_k h_{k-1}))` for `k = 1 .. layers - 1`,
/// `z = W_L h_{L-1} + b_L`, `out = z / max(||z||_2, eps)` (norm over channels, per pixel).
///
/// Batch norm follows the layer's context like every other: batch statistics (and a running-
/// statistics update) in training mode. The paper uses 3 layers of 256 channels
/// ([`ProjectionHead::DEFAULT_LAYERS`]).
///
/// State names match a PyTorch `nn.Sequential(conv, BN, ReLU, conv, BN, ReLU, conv)` under the
/// head's prefix; for 3 layers: `0.weight`, `1.{weight,bias,running_mean,running_var,num_batches_tracked}`,
/// `3.weight`, `4.*`, `6.weight`, `6.bias` (the ReLUs take indices 2 and 5 and hold nothing).
pub struct ProjectionHead {
    net: Sequential,
    layers: usize,
    /// Floor of the norm in the normalisation (`F.normalize`'s default 1e-12).
    pub eps: f64,
}

impl ProjectionHead {
    /// Layers of the paper's head.
    pub const DEFAULT_LAYERS: usize = 3;

    /// `in_channels -> hidden -> hidden -> out_channels` with [`Self::DEFAULT_LAYERS`] layers (the
    /// paper uses 256 for both widths).
    pub fn new(in_channels: usize, hidden: usize, out_channels: usize, rng: &mut Rng) -> Result<ProjectionHead> {
        Self::with_layers(in_channels, hidden, out_channels, Self::DEFAULT_LAYERS, rng)
    }

    /// A head of `layers >= 1` 1x1 convolutions: `layers - 1` hidden conv (no bias) + BN + ReLU
    /// layers of `hidden` channels, then the final conv (with bias) to `out_channels`.
    pub fn with_layers(
        in_channels: usize,
        hidden: usize,
        out_channels: usize,
        layers: usize,
        rng: &mut Rng,
    ) -> Result<ProjectionHead> {
        if layers == 0 {
            return Err(Error::config("ProjectionHead", "needs at least one layer (the final 1x1 convolution)"));
        }
        let mut net = Sequential::new();
        let mut c = in_channels;
        for _ in 1..layers {
            net.push(Conv2d::with_options(c, hidden, 1, ConvOptions::new(), rng)?);
            net.push(BatchNorm2d::new(hidden));
            net.push(ReLU);
            c = hidden;
        }
        net.push(Conv2d::with_options(c, out_channels, 1, ConvOptions::new().bias(true), rng)?);
        Ok(ProjectionHead { net, layers, eps: 1e-12 })
    }

    /// Number of 1x1 convolutions.
    pub fn layers(&self) -> usize {
        self.layers
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
