//! ResNet-18/34/50/101 backbones in torchvision's layout (no `avgpool`/`fc`), with a width
//! multiplier and output stride 16 or 8.
//!
//! Stem: `conv1` 7x7/2 (pad 3) -> `bn1` -> ReLU -> 3x3/2 max pool (pad 1), then four stages
//! `layer1..layer4` with strides 1, 2, 2, 2. Blocks:
//! * BasicBlock (18/34): `conv1` 3x3 (stride) -> `bn1` -> ReLU -> `conv2` 3x3 -> `bn2`;
//! * Bottleneck (50/101, ResNet v1.5: the stride sits on the 3x3): `conv1` 1x1 -> `bn1` -> ReLU ->
//!   `conv2` 3x3 (stride, dilation) -> `bn2` -> ReLU -> `conv3` 1x1 (x4 channels) -> `bn3`;
//!
//! then `+ identity` (or `downsample.0` 1x1 conv with the block's stride -> `downsample.1` BN when the
//! stride or the channel count changes) and ReLU.
//!
//! Output stride: torchvision's `replace_stride_with_dilation`, `[F, F, T]` for 16 and `[F, T, T]`
//! for 8. A dilated stage drops its stride and multiplies the running dilation by it; its *first*
//! block still uses the previous dilation (its 1x1 downsample has stride 1), the later blocks the
//! new one. So at OS16 layer4 runs at dilation 2 (first block 1); at OS8 layer3 at 2 (first block
//! 1) and layer4 at 4 (first block 2).
//!
//! torchvision's BasicBlock refuses dilation; here every 3x3 conv of a basic block uses the block's
//! dilation (padding = dilation keeps the size), which is what ResNet-18/34 DeepLab ports do.
//!
//! Initialisation as torchvision: convs `kaiming_normal_(fan_out, relu)` ([`Conv2d`]'s default), BN
//! weight 1 and bias 0, no zero-init of the last BN.

use super::blocks::ConvBn;
use super::spec::ModelSpec;
use engine::{Rng, Tensor};
use nn::{BatchNorm2d, Conv2d, ConvOptions, Ctx, Layer, MaxPool2d, Module, Result, Visitor};

/// One residual block: a chain of `conv_i -> bn_i` (ReLU between them), added to the shortcut,
/// then ReLU. Basic and bottleneck blocks differ only in the chain.
pub struct ResidualBlock {
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm2d>,
    downsample: Option<ConvBn>,
    /// Dilation of the block's 3x3 convs (for inspection and tests).
    pub dilation: usize,
    /// Stride of the block (on its first 3x3 conv and its downsample).
    pub stride: usize,
}

impl ResidualBlock {
    /// torchvision `BasicBlock(inplanes, planes, stride, downsample, dilation)`.
    fn basic(inplanes: usize, planes: usize, stride: usize, dilation: usize, rng: &mut Rng) -> Result<Self> {
        let d = ConvOptions::new().padding(dilation).dilation(dilation);
        let convs = vec![
            Conv2d::with_options(inplanes, planes, 3, d.stride(stride), rng)?,
            Conv2d::with_options(planes, planes, 3, d, rng)?,
        ];
        Self::finish(convs, inplanes, planes, stride, dilation, rng)
    }

    /// torchvision `Bottleneck(inplanes, planes, stride, downsample, dilation)`, expansion 4.
    fn bottleneck(inplanes: usize, planes: usize, stride: usize, dilation: usize, rng: &mut Rng) -> Result<Self> {
        let d = ConvOptions::new().padding(dilation).dilation(dilation).stride(stride);
        let convs = vec![
            Conv2d::new(inplanes, planes, 1, rng),
            Conv2d::with_options(planes, planes, 3, d, rng)?,
            Conv2d::new(planes, planes * 4, 1, rng),
        ];
        Self::finish(convs, inplanes, planes * 4, stride, dilation, rng)
    }

    fn finish(
        convs: Vec<Conv2d>,
        inplanes: usize,
        out: usize,
        stride: usize,
        dilation: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        let bns = convs.iter().map(|c| BatchNorm2d::new(c.out_channels())).collect();
        let downsample = if stride != 1 || inplanes != out {
            Some(ConvBn::new(inplanes, out, 1, ConvOptions::new().stride(stride), 0, rng)?)
        } else {
            None
        };
        Ok(ResidualBlock { convs, bns, downsample, dilation, stride })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.convs.last().map_or(0, |c| c.out_channels())
    }
}

impl Module for ResidualBlock {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        for (i, (conv, bn)) in self.convs.iter_mut().zip(&mut self.bns).enumerate() {
            v.child(&format!("conv{}", i + 1), conv);
            v.child(&format!("bn{}", i + 1), bn);
        }
        if let Some(ds) = &mut self.downsample {
            v.child("downsample", ds);
        }
    }
}

impl Layer for ResidualBlock {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let last = self.convs.len() - 1;
        let mut h = x.clone();
        for (i, (conv, bn)) in self.convs.iter_mut().zip(&mut self.bns).enumerate() {
            let y = conv.forward(&h, ctx)?;
            // The ReLUs inside the chain run fused with their batch norm.
            h = if i < last { bn.forward_relu(&y, ctx)? } else { bn.forward(&y, ctx)? };
        }
        let shortcut = match &mut self.downsample {
            Some(ds) => ds.forward(x, ctx)?,
            None => x.clone(),
        };
        Ok(h.add(&shortcut)?.relu()?)
    }
}

/// A stage (`layer1` .. `layer4`): blocks named `0`, `1`, ... like `nn.Sequential`.
pub struct ResLayer {
    /// The blocks in order.
    pub blocks: Vec<ResidualBlock>,
}

impl Module for ResLayer {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        for (i, b) in self.blocks.iter_mut().enumerate() {
            v.child(&i.to_string(), b);
        }
    }
}

impl Layer for ResLayer {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut h = x.clone();
        for b in &mut self.blocks {
            h = b.forward(&h, ctx)?;
        }
        Ok(h)
    }
}

/// What the DeepLabV3+ head takes from the backbone.
pub struct BackboneFeatures {
    /// `layer1` output, stride 4 (the decoder's low-level input).
    pub low_level: Tensor,
    /// `layer4` output, stride = the output stride (the ASPP input).
    pub out: Tensor,
}

/// A torchvision ResNet without `avgpool` and `fc`; state names `conv1.*`, `bn1.*`, `layer{k}.{i}.*`.
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    maxpool: MaxPool2d,
    /// `layer1` .. `layer4`.
    pub layers: [ResLayer; 4],
}

impl ResNet {
    /// The backbone of `spec` (depth, width, output stride).
    pub fn new(spec: &ModelSpec, rng: &mut Rng) -> Result<ResNet> {
        spec.validate()?;
        let planes = spec.stage_planes();
        let stem = planes[0];
        let conv1 = Conv2d::with_options(3, stem, 7, ConvOptions::new().stride(2).padding(3), rng)?;
        let bn1 = BatchNorm2d::new(stem);
        // replace_stride_with_dilation for layer2, layer3, layer4 (layer1 has stride 1 anyway).
        let dilate = if spec.output_stride == 8 { [false, true, true] } else { [false, false, true] };
        let mut inplanes = stem;
        let mut dilation = 1;
        let mut layers = Vec::with_capacity(4);
        for (stage, (&n, &p)) in spec.backbone.blocks().iter().zip(&planes).enumerate() {
            let mut stride = if stage == 0 { 1 } else { 2 };
            let previous_dilation = dilation;
            if stage > 0 && dilate[stage - 1] {
                dilation *= stride;
                stride = 1;
            }
            let mut blocks = Vec::with_capacity(n);
            for i in 0..n {
                let (s, d) = if i == 0 { (stride, previous_dilation) } else { (1, dilation) };
                let block = if spec.backbone.bottleneck() {
                    ResidualBlock::bottleneck(inplanes, p, s, d, rng)?
                } else {
                    ResidualBlock::basic(inplanes, p, s, d, rng)?
                };
                inplanes = block.out_channels();
                blocks.push(block);
            }
            layers.push(ResLayer { blocks });
        }
        let layers: [ResLayer; 4] = layers.try_into().unwrap_or_else(|_| unreachable!("four stages"));
        Ok(ResNet { conv1, bn1, maxpool: MaxPool2d::new(3, 2, 1), layers })
    }

    /// Run the backbone on `[N, 3, H, W]`; `layer1` (stride 4) and `layer4` (output stride) features.
    pub fn forward_features(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<BackboneFeatures> {
        let h = self.bn1.forward_relu(&self.conv1.forward(x, ctx)?, ctx)?;
        let h = self.maxpool.forward(&h, ctx)?;
        let low_level = self.layers[0].forward(&h, ctx)?;
        let mut out = low_level.clone();
        for layer in &mut self.layers[1..] {
            out = layer.forward(&out, ctx)?;
        }
        Ok(BackboneFeatures { low_level, out })
    }

    /// Channels of `layer1`'s output.
    pub fn low_level_channels(&self) -> usize {
        self.layers[0].blocks.last().map_or(0, |b| b.out_channels())
    }

    /// Channels of `layer4`'s output.
    pub fn out_channels(&self) -> usize {
        self.layers[3].blocks.last().map_or(0, |b| b.out_channels())
    }
}

impl Module for ResNet {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("conv1", &mut self.conv1);
        v.child("bn1", &mut self.bn1);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            v.child(&format!("layer{}", i + 1), layer);
        }
    }
}

impl Layer for ResNet {
    /// The `layer4` features.
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        Ok(self.forward_features(x, ctx)?.out)
    }
}
