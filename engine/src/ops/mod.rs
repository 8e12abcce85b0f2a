//! Every op of the engine, one module per family, forward and backward side by side.
//!
//! Each public op function checks its arguments (a clear [`crate::Error`] naming the op and the
//! shapes, never a panic inside a kernel), computes the forward with the CPU kernels, and records
//! a [`crate::Backward`] on the tape when an input is tracked.

pub mod batchnorm;
pub mod contrastive;
pub mod conv;
pub mod cross_entropy;
pub mod device_copy;
pub mod dropout;
pub mod elementwise;
pub mod gather;
pub mod info_nce;
pub mod info_nce_queue;
pub mod matmul;
pub mod normalize;
pub mod pool;
pub mod reduce;
pub mod resize;
pub mod shape_ops;
pub mod softmax;

pub use batchnorm::{batch_norm2d, batch_norm2d_relu};
pub use contrastive::{
    pixel_contrastive_loss, pixel_contrastive_loss_pair, ContrastiveConfig, ContrastiveForm, ContrastiveMode,
};
pub use conv::{conv2d, record_geometries, Conv2dParams};
pub use cross_entropy::cross_entropy;
pub use dropout::dropout;
pub use elementwise::{add, affine, div, exp, log, mul, neg, relu, sqrt, sub};
pub use gather::gather_pixels;
pub use info_nce::{info_nce, info_nce_indexed};
pub use info_nce_queue::info_nce_queue;
pub use matmul::matmul;
pub use normalize::l2_normalize;
pub use pool::{global_avg_pool2d, max_pool2d};
pub use reduce::{mean, mean_all, sum, sum_all};
pub use resize::{resize_bilinear, resize_nearest_labels, resize_nearest_labels_align_corners, NearestRule};
pub use shape_ops::{concat, permute, reshape, split, transpose};
pub use softmax::log_softmax;

/// Names of every differentiable op the engine exports. The test suite requires a gradient check
/// named `grad_<name>` for each entry, so an op cannot be added without one.
pub const ALL: &[&str] = &[
    "add",
    "sub",
    "mul",
    "div",
    "neg",
    "exp",
    "log",
    "sqrt",
    "relu",
    "affine",
    "sum",
    "mean",
    "reshape",
    "permute",
    "matmul",
    "concat",
    "split",
    "conv2d",
    "max_pool2d",
    "global_avg_pool2d",
    "batch_norm2d",
    "batch_norm2d_relu",
    "dropout",
    "resize_bilinear",
    "l2_normalize",
    "log_softmax",
    "cross_entropy",
    "pixel_contrastive_loss",
    "pixel_contrastive_loss_pair",
    "gather_pixels",
    "info_nce",
    "info_nce_queue",
];
