//! 2-D convolution with torchvision ResNet's initialisation.

use crate::{init, Ctx, Error, Layer, Module, Param, ParamKind, Result, Visitor};
use engine::ops::Conv2dParams;
use engine::{DType, Rng, Tensor};

/// Square hyperparameters of a [`Conv2d`] (PyTorch `nn.Conv2d` defaults: stride 1, padding 0,
/// dilation 1, groups 1; bias off here, as in every torchvision ResNet conv).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvOptions {
    /// Step between output positions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Spacing between kernel taps (the atrous rate).
    pub dilation: usize,
    /// Channel groups (`in_channels` for depthwise).
    pub groups: usize,
    /// Add a learned bias (initialised to zero).
    pub bias: bool,
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions { stride: 1, padding: 0, dilation: 1, groups: 1, bias: false }
    }
}

impl ConvOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set the stride.
    pub fn stride(self, stride: usize) -> Self {
        ConvOptions { stride, ..self }
    }
    /// Set the zero padding.
    pub fn padding(self, padding: usize) -> Self {
        ConvOptions { padding, ..self }
    }
    /// Set the dilation (atrous rate).
    pub fn dilation(self, dilation: usize) -> Self {
        ConvOptions { dilation, ..self }
    }
    /// Set the number of groups.
    pub fn groups(self, groups: usize) -> Self {
        ConvOptions { groups, ..self }
    }
    /// Turn the bias on or off.
    pub fn bias(self, bias: bool) -> Self {
        ConvOptions { bias, ..self }
    }
}

/// `nn.Conv2d`: weight `[out, in/groups, k, k]` (state names `weight`, `bias`).
///
/// Initialisation as torchvision's ResNet: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`,
/// i.e. `std = sqrt(2 / (out * k * k))` (torch does not divide fan_out by groups); bias zero.
#[derive(Debug)]
pub struct Conv2d {
    /// `[out, in/groups, kH, kW]`.
    pub weight: Param,
    /// `[out]`, if enabled.
    pub bias: Option<Param>,
    /// Stride, padding, dilation and groups as the engine op takes them.
    pub params: Conv2dParams,
}

impl Conv2d {
    /// A `k x k` convolution, stride 1, no padding, no bias.
    pub fn new(in_channels: usize, out_channels: usize, k: usize, rng: &mut Rng) -> Conv2d {
        let dims = [out_channels, in_channels, k, k];
        Conv2d {
            weight: Param::new(init::kaiming_normal_fan_out(&dims, DType::F32, rng), ParamKind::Weight),
            bias: None,
            params: Conv2dParams::default(),
        }
    }

    /// A `k x k` convolution with the given options; checks that groups divide both channel
    /// counts and that the kernel, stride and dilation are positive.
    pub fn with_options(
        in_channels: usize,
        out_channels: usize,
        k: usize,
        o: ConvOptions,
        rng: &mut Rng,
    ) -> Result<Conv2d> {
        if k == 0 || o.stride == 0 || o.dilation == 0 || o.groups == 0 {
            return Err(Error::config(
                "Conv2d",
                format!("kernel {k}, {o:?}: kernel, stride, dilation and groups must be > 0"),
            ));
        }
        #[allow(clippy::manual_is_multiple_of)] // is_multiple_of is newer than the workspace's MSRV
        if in_channels % o.groups != 0 || out_channels % o.groups != 0 {
            return Err(Error::config(
                "Conv2d",
                format!("groups {} must divide in_channels {in_channels} and out_channels {out_channels}", o.groups),
            ));
        }
        let dims = [out_channels, in_channels / o.groups, k, k];
        let weight = Param::new(init::kaiming_normal_fan_out(&dims, DType::F32, rng), ParamKind::Weight);
        let bias = o.bias.then(|| Param::new(Tensor::zeros([out_channels], DType::F32), ParamKind::Bias));
        let params = Conv2dParams {
            stride: [o.stride; 2],
            padding: [o.padding; 2],
            dilation: [o.dilation; 2],
            groups: o.groups,
        };
        Ok(Conv2d { weight, bias, params })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.value.dim(0)
    }
}

impl Module for Conv2d {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.param("weight", &mut self.weight);
        if let Some(b) = &mut self.bias {
            v.param("bias", b);
        }
    }
}

impl Layer for Conv2d {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let w = ctx.param(&self.weight);
        let b = self.bias.as_ref().map(|b| ctx.param(b));
        Ok(engine::ops::conv2d(x, &w, b.as_ref(), self.params)?)
    }
}
