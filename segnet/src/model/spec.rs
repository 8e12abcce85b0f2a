//! The shape of a DeepLabV3+ model: backbone depth, width multiplier, output stride, head widths.

use std::fmt;
use std::str::FromStr;

/// Which torchvision ResNet the backbone follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backbone {
    /// BasicBlock x [2, 2, 2, 2].
    Resnet18,
    /// BasicBlock x [3, 4, 6, 3].
    Resnet34,
    /// Bottleneck x [3, 4, 6, 3].
    Resnet50,
    /// Bottleneck x [3, 4, 23, 3].
    Resnet101,
}

impl Backbone {
    /// The lowercase torchvision name (`"resnet50"`).
    pub fn name(self) -> &'static str {
        match self {
            Backbone::Resnet18 => "resnet18",
            Backbone::Resnet34 => "resnet34",
            Backbone::Resnet50 => "resnet50",
            Backbone::Resnet101 => "resnet101",
        }
    }

    /// Blocks per stage (`layer1..layer4`).
    pub fn blocks(self) -> [usize; 4] {
        match self {
            Backbone::Resnet18 => [2, 2, 2, 2],
            Backbone::Resnet34 | Backbone::Resnet50 => [3, 4, 6, 3],
            Backbone::Resnet101 => [3, 4, 23, 3],
        }
    }

    /// Bottleneck blocks (ResNet-50/101) rather than basic blocks (ResNet-18/34).
    pub fn bottleneck(self) -> bool {
        matches!(self, Backbone::Resnet50 | Backbone::Resnet101)
    }

    /// Output channels of a block relative to its `planes` (torchvision's `block.expansion`).
    pub fn expansion(self) -> usize {
        if self.bottleneck() {
            4
        } else {
            1
        }
    }
}

impl fmt::Display for Backbone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backbone {
    type Err = nn::Error;
    fn from_str(s: &str) -> nn::Result<Backbone> {
        match s.to_ascii_lowercase().as_str() {
            "resnet18" => Ok(Backbone::Resnet18),
            "resnet34" => Ok(Backbone::Resnet34),
            "resnet50" => Ok(Backbone::Resnet50),
            "resnet101" => Ok(Backbone::Resnet101),
            _ => Err(config_error(format!("unknown backbone {s:?} (resnet18|resnet34|resnet50|resnet101)"))),
        }
    }
}

/// Scale a channel count the way MobileNet's `make_divisible` does: round `v` to the nearest
/// multiple of `divisor`, at least `min`, and never more than 10% below `v` (round up instead).
/// Multiples of 8 keep GEMM panels and SIMD lanes full.
pub fn make_divisible(v: f64, divisor: usize, min: usize) -> usize {
    let d = divisor.max(1) as f64;
    let mut rounded = (((v + d / 2.0) / d).floor() * d).max(min as f64);
    if rounded < 0.9 * v {
        rounded += d;
    }
    rounded as usize
}

/// Everything that fixes a DeepLabV3+ model's parameters.
///
/// Nominal channel counts (`head_channels`, `low_level_channels` and the backbone's 64..512
/// planes) are multiplied by `width` and rounded with [`make_divisible`] (multiples of 8, at least
/// 8); at `width = 1` they are exactly torchvision's and VainF's.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Backbone depth.
    pub backbone: Backbone,
    /// Channel multiplier for backbone and head (1.0 = the paper's sizes).
    pub width: f64,
    /// Backbone output stride: 16 (last stage dilated) or 8 (last two stages dilated).
    pub output_stride: usize,
    /// Nominal channels of ASPP, decoder and projection head (256 in the paper), before `width`.
    pub head_channels: usize,
    /// Nominal channels of the projected low-level features (48 in the paper), before `width`.
    pub low_level_channels: usize,
    /// Atrous rates of the three 3x3 ASPP branches; `None` = 6/12/18 at output stride 16,
    /// 12/24/36 at 8. Smaller rates suit small crops (a 64x64 crop at stride 16 gives a 4x4 map,
    /// where a 3x3 kernel dilated by 6 or more only sees its centre tap).
    pub aspp_rates: Option<[usize; 3]>,
    /// Classes of the 1x1 classifier.
    pub classes: usize,
    /// Dropout after the ASPP projection (0.1 as VainF).
    pub dropout: f64,
    /// 1x1 convolutions of the contrastive projection head (3 in the paper; the hidden ones are
    /// conv + BN + ReLU, see [`nn::ProjectionHead`]).
    pub projection_layers: usize,
}

impl ModelSpec {
    /// The paper's shape for `backbone` and `classes`: width 1, output stride 16, 256 head
    /// channels, 48 low-level channels, default rates, dropout 0.1, a 3-layer projection head.
    pub fn new(backbone: Backbone, classes: usize) -> ModelSpec {
        ModelSpec {
            backbone,
            width: 1.0,
            output_stride: 16,
            head_channels: 256,
            low_level_channels: 48,
            aspp_rates: None,
            classes,
            dropout: 0.1,
            projection_layers: nn::ProjectionHead::DEFAULT_LAYERS,
        }
    }

    /// The spec a run's `[model]` config describes (48 low-level channels, dropout 0.1), validated.
    pub fn from_config(
        backbone: &str,
        width: f64,
        output_stride: usize,
        head_channels: usize,
        aspp_rates: Option<[usize; 3]>,
        classes: usize,
    ) -> nn::Result<ModelSpec> {
        let spec =
            ModelSpec { width, output_stride, head_channels, aspp_rates, ..ModelSpec::new(backbone.parse()?, classes) };
        spec.validate()?;
        Ok(spec)
    }

    /// Check every setting; the constructors call this.
    pub fn validate(&self) -> nn::Result<()> {
        if !(self.width.is_finite() && self.width > 0.0) {
            return Err(config_error(format!("width must be a positive number, got {}", self.width)));
        }
        if self.output_stride != 8 && self.output_stride != 16 {
            return Err(config_error(format!("output_stride must be 8 or 16, got {}", self.output_stride)));
        }
        if self.head_channels == 0 || self.low_level_channels == 0 {
            return Err(config_error(format!(
                "head_channels ({}) and low_level_channels ({}) must be positive",
                self.head_channels, self.low_level_channels
            )));
        }
        if self.classes == 0 {
            return Err(config_error("classes must be at least 1".into()));
        }
        if let Some(r) = self.aspp_rates {
            if r.contains(&0) {
                return Err(config_error(format!("aspp_rates must be positive, got {r:?}")));
            }
        }
        if self.projection_layers == 0 {
            return Err(config_error("projection_layers must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(config_error(format!("dropout must be in [0, 1), got {}", self.dropout)));
        }
        Ok(())
    }

    /// A nominal channel count scaled by `width` (multiple of 8, at least 8; exact at width 1).
    pub fn scaled(&self, nominal: usize) -> usize {
        if self.width == 1.0 {
            nominal
        } else {
            make_divisible(nominal as f64 * self.width, 8, 8)
        }
    }

    /// Channels of ASPP, decoder and projection head.
    pub fn head_width(&self) -> usize {
        self.scaled(self.head_channels)
    }

    /// Channels of the projected low-level features.
    pub fn low_level_width(&self) -> usize {
        self.scaled(self.low_level_channels)
    }

    /// The atrous rates actually used.
    pub fn rates(&self) -> [usize; 3] {
        self.aspp_rates.unwrap_or(if self.output_stride == 8 { [12, 24, 36] } else { [6, 12, 18] })
    }

    /// Stem channels and `planes` of `layer1..layer4` (64, 128, 256, 512 scaled).
    pub fn stage_planes(&self) -> [usize; 4] {
        [64, 128, 256, 512].map(|c| self.scaled(c))
    }

    /// Channels out of `layer1` (the decoder's low-level input).
    pub fn low_level_in(&self) -> usize {
        self.stage_planes()[0] * self.backbone.expansion()
    }

    /// Channels out of `layer4` (the ASPP input).
    pub fn backbone_out(&self) -> usize {
        self.stage_planes()[3] * self.backbone.expansion()
    }
}

pub(crate) fn config_error(msg: String) -> nn::Error {
    nn::Error::Config { what: "model", msg }
}
