//! Small shared pieces: a conv followed by batch norm (with PyTorch `Sequential` index names), and
//! the head initialisation of VainF's DeepLabV3+.

use engine::{DType, Rng, Tensor};
use nn::{BatchNorm2d, Conv2d, ConvOptions, Ctx, Layer, Module, Result, Visitor};

/// `conv -> BN` (no activation), bias-free conv. Its state names are the two `nn.Sequential`
/// indices `first` and `first + 1` under the current prefix, because PyTorch names these pairs by
/// position (`downsample.0/1`, `aspp.convs.4.1/2`, `classifier.3/4`).
pub(crate) struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
    first: usize,
}

impl ConvBn {
    /// A `k x k` conv with `opts` (its bias is forced off: BN follows) and a BN, named from `first`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        k: usize,
        opts: ConvOptions,
        first: usize,
        rng: &mut Rng,
    ) -> Result<ConvBn> {
        let conv = Conv2d::with_options(in_channels, out_channels, k, opts.bias(false), rng)?;
        Ok(ConvBn { conv, bn: BatchNorm2d::new(out_channels), first })
    }

    /// `bn(conv(x))`.
    pub fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let y = self.conv.forward(x, ctx)?;
        self.bn.forward(&y, ctx)
    }

    /// `relu(bn(conv(x)))`.
    pub fn forward_relu(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let y = self.conv.forward(x, ctx)?;
        self.bn.forward_relu(&y, ctx)
    }
}

impl Module for ConvBn {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child(&self.first.to_string(), &mut self.conv);
        v.child(&(self.first + 1).to_string(), &mut self.bn);
    }
}

/// Redraw a head conv's weight as VainF's `_init_weight` does: `kaiming_normal_(w)` with PyTorch's
/// defaults (mode `fan_in`, ReLU gain), i.e. `std = sqrt(2 / (in/groups * k * k))`. The backbone
/// keeps torchvision's `fan_out` rule, which [`Conv2d`] applies by default.
pub(crate) fn kaiming_fan_in(conv: &mut Conv2d, rng: &mut Rng) {
    let dims = conv.weight.value.dims().to_vec();
    let (fan_in, _) = nn::init::fans(&dims);
    let std = (2.0 / fan_in.max(1) as f64).sqrt();
    conv.weight.value = Tensor::randn(dims, std, DType::F32, rng);
}

/// PyTorch's default `nn.Conv2d` bias, which VainF's init leaves alone:
/// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
pub(crate) fn default_bias(conv: &mut Conv2d, rng: &mut Rng) {
    let (fan_in, _) = nn::init::fans(conv.weight.value.dims());
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    if let Some(b) = &mut conv.bias {
        b.value = Tensor::rand_uniform(b.value.dims().to_vec(), -bound, bound, DType::F32, rng);
    }
}

/// Check that `x` is `[N, channels, H, W]`, naming `what` and the shape otherwise.
pub(crate) fn check_nchw(what: &'static str, x: &Tensor, channels: usize) -> Result<()> {
    if x.rank() != 4 || x.dim(1) != channels {
        return Err(engine::Error::Shape {
            op: what,
            msg: format!("expected an [N, {channels}, H, W] input, got {}", x.shape()),
        }
        .into());
    }
    Ok(())
}
