//! Copies between devices (untracked; used for setup, checkpoints and tests).

use crate::{Device, Error, Result, Tensor};

/// Copy `t` to `device`.
pub fn copy(t: &Tensor, device: Device) -> Result<Tensor> {
    match (t.device(), device) {
        (a, b) if a == b => Ok(t.detach()),
        #[cfg(feature = "cuda")]
        (Device::Cpu, Device::Cuda(_)) | (Device::Cuda(_), Device::Cpu) => crate::cuda::copy(t, device),
        (_, Device::Cuda(_)) | (Device::Cuda(_), _) => {
            Err(Error::Cuda("this build has no CUDA support: rebuild with `--features cuda` (see README)".into()))
        }
        _ => unreachable!("cpu to cpu handled above"),
    }
}
