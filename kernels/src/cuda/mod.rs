//! The CUDA backend (feature `cuda`): kernels compiled to PTX by `build.rs` from
//! `kernels/cuda/*.cu`, loaded and launched through the driver API that `cust` links.
//!
//! * [`device`]: open a device (primary context, one stream, module cache, caching allocator).
//! * [`CudaBuf`]: a device allocation that returns to the allocator's cache on drop; upload,
//!   download, zero.
//! * One module per op family with slice-level launch wrappers over `CudaBuf`s of f32 elements
//!   (inputs `&`, outputs `&mut`, sizes checked before every launch). Shapes are validated by the
//!   engine; the wrappers only guard memory safety.
//! * [`CudaError`]: the raw `CUresult`, the driver's name for it, what was being done, and the JIT
//!   log of a failed module load.
//!
//! See kernels/README.md for the API of every family and the launch geometry of every kernel.

mod alloc;
pub mod batchnorm;
pub mod contrastive;
pub mod conv;
mod device;
mod driver;
pub mod elementwise;
mod error;
pub mod gemm;
mod launch;
pub mod normalize;
pub mod pool;
pub mod reduce;
pub mod resize;
pub mod shape;
pub mod softmax;

pub use alloc::{bucket_size, CudaBuf, HostElem, PoolStats};
pub use device::{device, device_count, driver_version, set_tf32, tf32_enabled, CudaDevice};
pub use error::{CudaError, CudaResult};
pub use launch::{grid_1d, i32_of, BLOCK};

/// The embedded PTX, one constant per `kernels/cuda/*.cu` file.
pub mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels_ptx.rs"));
}

#[cfg(test)]
mod tests {
    // Runs without a GPU: checks the PTX is embedded and targets what the driver accepts.
    #[test]
    fn ptx_is_embedded_for_compute_80() {
        assert!(super::ptx::ALL.len() >= 4);
        for (name, text) in super::ptx::ALL {
            assert!(text.contains(".entry"), "{name} has no kernel");
            assert!(text.lines().any(|l| l.trim() == ".version 9.0" || l.trim().starts_with(".version ")), "{name}");
        }
    }
}
