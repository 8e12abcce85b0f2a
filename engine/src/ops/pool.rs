//! Max pooling and global average pooling. TO BE WRITTEN.

use crate::{Error, Result, Tensor};

/// Max pool over `[N, C, H, W]` windows (PyTorch `F.max_pool2d`, padding with -inf).
pub fn max_pool2d(x: &Tensor, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<Tensor> {
    let _ = (x, kernel, stride, padding);
    Err(Error::invalid("max_pool2d", "not implemented yet"))
}

/// Mean over H and W: `[N, C, H, W] -> [N, C, 1, 1]`.
pub fn global_avg_pool2d(x: &Tensor) -> Result<Tensor> {
    let _ = x;
    Err(Error::invalid("global_avg_pool2d", "not implemented yet"))
}
