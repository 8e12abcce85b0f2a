//! The pixel-wise label-based contrastive loss. TO BE WRITTEN.

use crate::{Error, LabelMap, Result, Tensor};

/// Which pixels are contrasted with which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ContrastiveMode {
    /// Each image against itself (the paper's default).
    #[default]
    WithinImage,
    /// Each image paired with a partner image: positives from both, negatives from its own.
    CrossImage,
    /// All pixels of the batch as one bag, randomly subsampled to at most `max_pixels`.
    Batch,
}

/// The denominator of each positive pair's term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ContrastiveForm {
    /// Zhao et al.: `e_ij / (e_ij + sum of negatives of i)`.
    #[default]
    PerPositive,
    /// SupCon: `e_ij / sum over all k != i of e_ik`.
    SupCon,
}

/// Settings of [`pixel_contrastive_loss`].
#[derive(Clone, Debug)]
pub struct ContrastiveConfig {
    /// Temperature (> 0), default 0.07.
    pub tau: f64,
    /// Pairing of pixels.
    pub mode: ContrastiveMode,
    /// Denominator form.
    pub form: ContrastiveForm,
    /// Number of classes (labels must be `< classes` or `ignore`).
    pub classes: usize,
    /// The ignore label.
    pub ignore: u8,
    /// Pixel budget of the batch mode.
    pub max_pixels: usize,
    /// Seed for the batch mode's sample and the cross-image partner shuffle.
    pub seed: u64,
}

impl Default for ContrastiveConfig {
    fn default() -> Self {
        ContrastiveConfig {
            tau: 0.07,
            mode: ContrastiveMode::WithinImage,
            form: ContrastiveForm::PerPositive,
            classes: 256,
            ignore: 255,
            max_pixels: 10_000,
            seed: 0,
        }
    }
}

/// The loss for unit-normalised features `[B, D, H, W]` and labels `B x H x W`.
pub fn pixel_contrastive_loss(features: &Tensor, labels: &LabelMap, cfg: &ContrastiveConfig) -> Result<Tensor> {
    let _ = (features, labels, cfg);
    Err(Error::invalid("pixel_contrastive_loss", "not implemented yet"))
}
