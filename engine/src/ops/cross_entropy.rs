//! Pixel-wise cross-entropy with an ignore label. TO BE WRITTEN.

use crate::{Error, LabelMap, Result, Tensor};

/// Mean over non-ignored pixels of `-log softmax(logits)[label]`, logits `[N, C, H, W]`, labels
/// `N x H x W`. An all-ignored batch gives 0 (never NaN).
pub fn cross_entropy(logits: &Tensor, labels: &LabelMap, ignore: u8) -> Result<Tensor> {
    let _ = (logits, labels, ignore);
    Err(Error::invalid("cross_entropy", "not implemented yet"))
}
