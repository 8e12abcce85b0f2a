//! Raw compute kernels for segnet: no autodiff, no tensor type, just slices.
//!
//! * [`cpu`]: rayon-parallel kernels generic over [`Float`] (f32 and f64). The convolutions run
//!   f32 on a packed GEMM with an AVX2 + FMA micro-kernel ([`cpu::packed_gemm`]); f64 (gradient
//!   checks), CPUs without AVX2 and the plain matrix products use `matrixmultiply`. Every kernel splits work into fixed chunks and reduces in a fixed order, so
//!   a run with the same inputs and thread count is bit-identical.
//! * `cuda` (feature `cuda`): PTX compiled from `kernels/cuda/*.cu` and launched through `cust`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod float;

pub use float::Float;
