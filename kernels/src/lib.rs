//! Raw compute kernels for segnet: no autodiff, no tensor type, just slices.
//!
//! * [`cpu`]: rayon-parallel kernels generic over [`Float`] (f32 and f64), GEMM through
//!   `matrixmultiply`. Every kernel splits work into fixed chunks and reduces in a fixed order, so
//!   a run with the same inputs and thread count is bit-identical.
//! * `cuda` (feature `cuda`): PTX compiled from `kernels/cuda/*.cu` and launched through `cust`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod float;

pub use float::Float;
