//! Where the bytes of a tensor are: a closed enum over backends (not a generic parameter), so
//! models stay non-generic and compile fast. Without the `cuda` feature the CUDA variant holds an
//! uninhabited type: it can never be constructed and nothing CUDA is compiled.

use crate::DType;

/// Host storage.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    /// f32 elements.
    F32(Vec<f32>),
    /// f64 elements.
    F64(Vec<f64>),
}

impl CpuStorage {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
        }
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Stand-in for device storage when the `cuda` feature is off: uninhabited.
#[cfg(not(feature = "cuda"))]
#[derive(Clone, Debug)]
pub enum CudaStorage {}

#[cfg(feature = "cuda")]
pub use crate::cuda::CudaStorage;

/// The storage of a tensor on some device.
#[derive(Clone, Debug)]
pub enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
    /// CUDA device memory.
    Cuda(CudaStorage),
}
