//! 2-D convolution (atrous, grouped, depthwise). TO BE WRITTEN: math, kernels, backward.

use crate::{Error, Result, Tensor};

/// Hyperparameters of [`conv2d`] (PyTorch's `F.conv2d` semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between output positions, (h, w).
    pub stride: [usize; 2],
    /// Zero padding added on both sides, (h, w).
    pub padding: [usize; 2],
    /// Spacing between kernel taps (atrous rate), (h, w).
    pub dilation: [usize; 2],
    /// Number of channel groups (`in_channels` and `out_channels` must both divide by it).
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
}

/// `y = conv2d(x, w) + b` for `x: [N, C_in, H, W]`, `w: [C_out, C_in/groups, kH, kW]`,
/// `b: [C_out]`.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    let _ = (x, w, b, p);
    Err(Error::invalid("conv2d", "not implemented yet"))
}
