//! Copies between devices (untracked; used for setup, checkpoints and tests).
//!
//! With the `cuda` feature, host<->device and device<->device copies go through
//! [`crate::cuda::copy`]; without it, asking for a CUDA device is a clear error.

use crate::{Device, Result, Tensor};

/// Copy `t` to `device`.
pub fn copy(t: &Tensor, device: Device) -> Result<Tensor> {
    match (t.device(), device) {
        (a, b) if a == b => Ok(t.detach()),
        #[cfg(feature = "cuda")]
        (_, Device::Cuda(_)) | (Device::Cuda(_), _) => crate::cuda::copy(t, device),
        #[cfg(not(feature = "cuda"))]
        (_, Device::Cuda(_)) | (Device::Cuda(_), _) => Err(crate::Error::Cuda(
            "this build has no CUDA support: rebuild with `--features cuda` (see README)".into(),
        )),
        _ => unreachable!("cpu to cpu handled above"),
    }
}
