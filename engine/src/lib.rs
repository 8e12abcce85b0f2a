//! segnet's tensor engine.
//!
//! * [`Tensor`]: a shape, a dtype (f32 for training, f64 for gradient checks), a device and a
//!   reference-counted [`Storage`]. NCHW, always contiguous.
//! * [`Tape`]: the reverse-mode autodiff arena. A tensor made from a tape-tracked input is
//!   recorded as a node that keeps only what its backward needs; [`Tape::backward`] walks the arena
//!   in reverse and returns [`Gradients`]. Untracked tensors record nothing (no-grad is the default).
//! * [`ops`]: one module per op family, forward and backward side by side, with the math in the
//!   doc comment. [`ops::ALL`] lists every differentiable op; the test suite checks each one.
//! * [`profile`]: wall time per op of a step (forward, backward), off unless started.
//! * [`gradcheck`]: analytic gradients against central finite differences in f64.
#![warn(missing_docs)]

#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod gradcheck;
mod labels;
pub mod ops;
pub mod profile;
mod rng;
mod shape;
mod storage;
mod tape;
mod tensor;
mod tensor_methods;

pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use kernels::Float;
pub use labels::LabelMap;
pub use rng::Rng;
pub use shape::Shape;
pub use storage::{CpuStorage, Storage};
pub use tape::{Backward, Gradients, MemoryReport, Tape};
pub use tensor::Tensor;
