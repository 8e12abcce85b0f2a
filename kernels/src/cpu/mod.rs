//! CPU kernels over slices. Each file holds one op family; the engine's ops call these.

pub mod gemm;
pub mod parallel;

pub use gemm::{gemm, Mat, MatMut};
