//! The tensor: shape + reference-counted storage + (optionally) a node on a tape.

use crate::tape::{Tape, Tracked};
use crate::{with_dtype, CpuStorage, DType, Device, Element, Error, Result, Rng, Shape, Storage};
use std::sync::Arc;

/// An n-dimensional array. Cloning is cheap (the storage is shared).
///
/// A tensor is *tracked* when it is a node of a [`Tape`]; ops on tracked tensors are recorded so
/// that [`Tape::backward`] can differentiate through them. Untracked tensors record nothing.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) shape: Shape,
    pub(crate) storage: Arc<Storage>,
    pub(crate) tracked: Option<Tracked>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?}, {}", self.shape, self.dtype(), self.device())?;
        if let Some(t) = &self.tracked {
            write!(f, ", node {}", t.id)?;
        }
        write!(f, ")")
    }
}

impl Tensor {
    /// A CPU tensor from a vector and a shape (validated).
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != data.len() {
            return Err(Error::shape("from_vec", format!("{} elements do not fill shape {shape}", data.len())));
        }
        Ok(Tensor::from_cpu(T::wrap(data), shape))
    }

    pub(crate) fn from_cpu(s: CpuStorage, shape: Shape) -> Tensor {
        debug_assert_eq!(s.len(), shape.numel());
        Tensor { shape, storage: Arc::new(Storage::Cpu(s)), tracked: None }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        Self::full(shape, 0.0, dtype)
    }

    /// A tensor of ones.
    pub fn ones(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        Self::full(shape, 1.0, dtype)
    }

    /// A tensor filled with `v`.
    pub fn full(shape: impl Into<Shape>, v: f64, dtype: DType) -> Tensor {
        let shape = shape.into();
        let n = shape.numel();
        with_dtype!(dtype, T, Tensor::from_cpu(T::wrap(vec![T::from_f64(v); n]), shape))
    }

    /// A scalar (rank 0) tensor.
    pub fn scalar(v: f64, dtype: DType) -> Tensor {
        Self::full(Shape(vec![]), v, dtype)
    }

    /// Standard-normal entries scaled by `std`, from a seeded generator.
    pub fn randn(shape: impl Into<Shape>, std: f64, dtype: DType, rng: &mut Rng) -> Tensor {
        let shape = shape.into();
        let v: Vec<f64> = (0..shape.numel()).map(|_| rng.normal() * std).collect();
        Tensor::from_f64_vec(v, shape, dtype)
    }

    /// Uniform entries in `[lo, hi)`, from a seeded generator.
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f64, hi: f64, dtype: DType, rng: &mut Rng) -> Tensor {
        let shape = shape.into();
        let v: Vec<f64> = (0..shape.numel()).map(|_| lo + (hi - lo) * rng.uniform()).collect();
        Tensor::from_f64_vec(v, shape, dtype)
    }

    /// Build from f64 values converted to `dtype`.
    pub fn from_f64_vec(v: Vec<f64>, shape: impl Into<Shape>, dtype: DType) -> Tensor {
        let shape = shape.into();
        assert_eq!(v.len(), shape.numel(), "from_f64_vec: length does not match shape");
        with_dtype!(dtype, T, Tensor::from_cpu(T::wrap(v.into_iter().map(T::from_f64).collect()), shape))
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.shape.0
    }
    /// Size of dimension `i`.
    pub fn dim(&self, i: usize) -> usize {
        self.shape.0[i]
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::Cpu(c) => c.dtype(),
            #[allow(unreachable_patterns)]
            Storage::Cuda(c) => cuda_dtype(c),
        }
    }
    /// Device.
    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
            #[allow(unreachable_patterns)]
            Storage::Cuda(c) => cuda_device(c),
        }
    }
    /// The storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    /// Bytes of element data.
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype().size()
    }

    /// Borrow the CPU data as `&[T]`; an error names `op` if the dtype or device differ.
    pub fn cpu_slice<T: Element>(&self, op: &'static str) -> Result<&[T]> {
        match &*self.storage {
            Storage::Cpu(c) => T::slice(c).ok_or(Error::DType { op, lhs: T::DTYPE, rhs: c.dtype() }),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Device { op, msg: format!("expected a cpu tensor, got {}", self.device()) }),
        }
    }

    /// Copy the elements out as f64 (moves device data to the host).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        let cpu = self.to_device(Device::Cpu)?;
        Ok(with_dtype!(cpu.dtype(), T, cpu.cpu_slice::<T>("to_vec")?.iter().map(|v| v.to_f64()).collect()))
    }

    /// Copy the elements out as f32.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(self.to_vec_f64()?.into_iter().map(|v| v as f32).collect())
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape("item", format!("expected one element, got shape {}", self.shape)));
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// Is this tensor a node of a tape?
    pub fn is_tracked(&self) -> bool {
        self.tracked.is_some()
    }

    /// The tape this tensor is recorded on, if any.
    pub fn tape(&self) -> Option<&Tape> {
        self.tracked.as_ref().map(|t| &t.tape)
    }

    /// The same data, untracked: gradients do not flow through the result.
    pub fn detach(&self) -> Tensor {
        Tensor { shape: self.shape.clone(), storage: self.storage.clone(), tracked: None }
    }

    /// Convert to another dtype (untracked; for setup and tests).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.detach());
        }
        Ok(Tensor::from_f64_vec(self.to_vec_f64()?, self.shape.clone(), dtype))
    }

    /// Copy to a device (untracked).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.detach());
        }
        crate::ops::device_copy::copy(self, device)
    }

    /// Update the data in place with `f(values)`; copies first if the storage is shared (for
    /// example with a tape that saved it). Used by optimisers and running statistics.
    pub fn update_cpu<T: Element>(&mut self, f: impl FnOnce(&mut [T])) -> Result<()> {
        let s = Arc::make_mut(&mut self.storage);
        match s {
            Storage::Cpu(c) => {
                let dt = c.dtype();
                let sl = T::slice_mut(c).ok_or(Error::DType { op: "update", lhs: T::DTYPE, rhs: dt })?;
                f(sl);
                Ok(())
            }
            #[allow(unreachable_patterns)]
            _ => Err(Error::Device { op: "update", msg: "expected a cpu tensor".into() }),
        }
    }

    /// Update f32 device data in place with `f(buffer)` (a launch of `kernels::cuda`): the CUDA
    /// counterpart of [`Tensor::update_cpu`], copy-on-write in the same way (the buffer is
    /// duplicated first if any other tensor shares it). Used by batch norm's running statistics.
    #[cfg(feature = "cuda")]
    pub fn update_cuda(&mut self, f: impl FnOnce(&mut kernels::cuda::CudaBuf) -> Result<()>) -> Result<()> {
        match Arc::make_mut(&mut self.storage) {
            Storage::Cuda(c) => f(c.buf_mut("update")?),
            Storage::Cpu(_) => Err(Error::Device { op: "update", msg: "expected a cuda tensor, got cpu".into() }),
        }
    }

    /// Replace this tensor's data by `other`'s (same shape; dtype is converted). Untracks it.
    pub fn assign(&mut self, other: &Tensor) -> Result<()> {
        if other.dims() != self.dims() {
            return Err(Error::shape("assign", format!("{} into {}", other.shape, self.shape)));
        }
        let o = other.to_dtype(self.dtype())?.to_device(self.device())?;
        self.storage = o.storage;
        self.tracked = None;
        Ok(())
    }

    /// A new tensor sharing this storage with another shape of the same size (no copy, untracked).
    pub(crate) fn with_shape(&self, shape: Shape) -> Tensor {
        Tensor { shape, storage: self.storage.clone(), tracked: None }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_dtype(c: &crate::storage::CudaStorage) -> DType {
    match *c {}
}
#[cfg(not(feature = "cuda"))]
fn cuda_device(c: &crate::storage::CudaStorage) -> Device {
    match *c {}
}
#[cfg(feature = "cuda")]
fn cuda_dtype(c: &crate::storage::CudaStorage) -> DType {
    c.dtype()
}
#[cfg(feature = "cuda")]
fn cuda_device(c: &crate::storage::CudaStorage) -> Device {
    Device::Cuda(c.ordinal())
}
