//! CPU kernels over slices. Each file holds one op family; the engine's ops call these.

pub mod batchnorm;
pub mod contrastive;
pub mod conv;
pub mod gemm;
pub mod packed_gemm;
pub mod parallel;
pub mod pool;
pub mod resize;
pub mod softmax;

pub use gemm::{gemm, Mat, MatMut};
