//! Bilinear resize (both `align_corners` conventions) and nearest resize for label maps. TO BE WRITTEN.

use crate::{Error, LabelMap, Result, Tensor};

/// Bilinear resize of `[N, C, H, W]` to `[N, C, out_h, out_w]`, matching
/// `F.interpolate(mode="bilinear", align_corners=...)`.
pub fn resize_bilinear(x: &Tensor, out_hw: [usize; 2], align_corners: bool) -> Result<Tensor> {
    let _ = (x, out_hw, align_corners);
    Err(Error::invalid("resize_bilinear", "not implemented yet"))
}

/// Nearest-neighbour resize of a label map (no gradient), matching `F.interpolate(mode="nearest")`.
pub fn resize_nearest_labels(labels: &LabelMap, out_hw: [usize; 2]) -> Result<LabelMap> {
    let _ = (labels, out_hw);
    Err(Error::invalid("resize_nearest_labels", "not implemented yet"))
}
