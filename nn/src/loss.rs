//! Losses: thin modules over the engine's loss ops, holding their settings.

use crate::Result;
use engine::ops::ContrastiveConfig;
use engine::{LabelMap, Tensor};

/// Pixel-wise cross-entropy, `nn.CrossEntropyLoss(ignore_index=ignore)` with mean reduction over
/// the non-ignored pixels (0, not NaN, when every pixel is ignored).
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropyLoss {
    /// Label excluded from the loss (255 = void in VOC and Cityscapes).
    pub ignore: u8,
}

impl CrossEntropyLoss {
    /// With the given ignore label.
    pub fn new(ignore: u8) -> Self {
        CrossEntropyLoss { ignore }
    }
    /// `logits: [N, C, H, W]`, `labels: N x H x W` -> scalar.
    pub fn forward(&self, logits: &Tensor, labels: &LabelMap) -> Result<Tensor> {
        Ok(engine::ops::cross_entropy(logits, labels, self.ignore)?)
    }
}

impl Default for CrossEntropyLoss {
    fn default() -> Self {
        CrossEntropyLoss::new(LabelMap::IGNORE)
    }
}

/// The pixel-wise label-based contrastive loss of the pretraining stage (see
/// [`engine::ops::pixel_contrastive_loss`] for the math and the modes).
#[derive(Clone, Debug, Default)]
pub struct PixelContrastiveLoss {
    /// Temperature, pairing mode, denominator form, classes, ignore label, sampling seed.
    pub cfg: ContrastiveConfig,
}

impl PixelContrastiveLoss {
    /// With the given settings.
    pub fn new(cfg: ContrastiveConfig) -> Self {
        PixelContrastiveLoss { cfg }
    }
    /// `features: [B, D, H, W]` unit-normalised over D, `labels: B x H x W` -> scalar.
    pub fn forward(&self, features: &Tensor, labels: &LabelMap) -> Result<Tensor> {
        Ok(engine::ops::pixel_contrastive_loss(features, labels, &self.cfg)?)
    }
}
