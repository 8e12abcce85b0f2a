//! Atrous spatial pyramid pooling, as VainF's `ASPP` (DeepLabV3).
//!
//! For `x: [N, Cin, H, W]` and `C` output channels, five parallel branches, each ending in BN + ReLU:
//!
//! ```text
//! convs.0: 1x1 conv Cin -> C
//! convs.1..3: 3x3 conv Cin -> C, dilation r_k, padding r_k (size kept)   r = 6/12/18 (OS16), 12/24/36 (OS8)
//! convs.4: global average pool -> 1x1 conv Cin -> C -> BN -> ReLU -> bilinear back to H x W
//! ```
//!
//! then `concat` along channels (5C) -> `project.0` 1x1 conv 5C -> C -> `project.1` BN -> ReLU ->
//! dropout (0.1). The pooling branch's upsampling from 1x1 is a broadcast; it uses
//! `align_corners = false` like VainF. Index 0 of `convs.4` is the pool (no parameters), hence the
//! names `convs.4.1` (conv) and `convs.4.2` (BN).
//!
//! Like PyTorch, training needs more than one value per channel in the pooling branch's BN, so a
//! training batch must hold at least two images (eval works with one).

use super::blocks::{check_nchw, kaiming_fan_in, ConvBn};
use engine::{Rng, Tensor};
use nn::{ConvOptions, Ctx, Dropout, Layer, Module, Result, Visitor};

/// The ASPP module (state names `convs.{0..4}.*`, `project.{0,1}.*`).
pub struct Aspp {
    /// The 1x1 branch and the three atrous branches.
    branches: Vec<ConvBn>,
    /// The image pooling branch (named from index 1).
    pooling: ConvBn,
    project: ConvBn,
    dropout: Dropout,
    /// The atrous rates of `convs.1..3`.
    pub rates: [usize; 3],
}

impl Aspp {
    /// `in_channels -> out_channels` with the given atrous rates and dropout probability.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        rates: [usize; 3],
        dropout: f64,
        rng: &mut Rng,
    ) -> Result<Aspp> {
        let mut branches = vec![ConvBn::new(in_channels, out_channels, 1, ConvOptions::new(), 0, rng)?];
        for r in rates {
            let o = ConvOptions::new().padding(r).dilation(r);
            branches.push(ConvBn::new(in_channels, out_channels, 3, o, 0, rng)?);
        }
        let pooling = ConvBn::new(in_channels, out_channels, 1, ConvOptions::new(), 1, rng)?;
        let project = ConvBn::new(5 * out_channels, out_channels, 1, ConvOptions::new(), 0, rng)?;
        let mut aspp = Aspp { branches, pooling, project, dropout: Dropout::new(dropout)?, rates };
        for b in aspp.branches.iter_mut().chain([&mut aspp.pooling, &mut aspp.project]) {
            kaiming_fan_in(&mut b.conv, rng);
        }
        Ok(aspp)
    }
}

impl Module for Aspp {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        struct Convs<'a>(&'a mut Aspp);
        impl Module for Convs<'_> {
            fn visit(&mut self, v: &mut Visitor<'_>) {
                for (i, b) in self.0.branches.iter_mut().enumerate() {
                    v.child(&i.to_string(), b);
                }
                v.child(&self.0.branches.len().to_string(), &mut self.0.pooling);
            }
        }
        v.child("convs", &mut Convs(self));
        v.child("project", &mut self.project);
    }
}

impl Layer for Aspp {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        check_nchw("aspp", x, self.pooling.conv.weight.value.dim(1))?;
        let hw = [x.dim(2), x.dim(3)];
        let mut outs = Vec::with_capacity(5);
        for b in &mut self.branches {
            outs.push(b.forward_relu(x, ctx)?);
        }
        let pooled = engine::ops::global_avg_pool2d(x)?;
        let pooled = self.pooling.forward_relu(&pooled, ctx)?;
        outs.push(engine::ops::resize_bilinear(&pooled, hw, false)?);
        let refs: Vec<&Tensor> = outs.iter().collect();
        let cat = engine::ops::concat(&refs, 1)?;
        let y = self.project.forward_relu(&cat, ctx)?;
        self.dropout.forward(&y, ctx)
    }
}
