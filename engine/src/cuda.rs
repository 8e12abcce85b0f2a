//! The CUDA side of the engine (feature `cuda`): device storage, host<->device copies, and the
//! tensor-level helpers the ops dispatch to when their inputs live on `Device::Cuda`.
//!
//! Storage is an `Arc<CudaBuf>` from the kernels crate's caching allocator; cloning a
//! [`CudaStorage`] shares the buffer (device data is never written after the op that produced it,
//! so sharing is safe, like `Arc<Storage>` on the CPU side). Copies may hold f32 or f64; the CUDA
//! kernels are f32 only, and an op given an f64 CUDA tensor returns `Error::Device` saying so
//! (training is f32; gradient checks run on the CPU in f64).

use crate::shape::strides;
use crate::{with_dtype, DType, Device, Element, Error, Result, Shape, Storage, Tensor};
use kernels::cuda::{self as kc, CudaBuf, CudaDevice, CudaError};
use std::sync::Arc;

/// Tensor data in CUDA device memory.
#[derive(Clone, Debug)]
pub struct CudaStorage {
    buf: Arc<CudaBuf>,
    dtype: DType,
    len: usize,
}

impl CudaStorage {
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Ordinal of the device holding the data.
    pub fn ordinal(&self) -> usize {
        self.buf.device().ordinal()
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The device buffer (for launch wrappers of `kernels::cuda`).
    pub fn buf(&self) -> &CudaBuf {
        &self.buf
    }

    /// The f32 buffer for writing in place, copied first when another storage shares it (so a
    /// tensor saved by a tape or cloned elsewhere keeps its values: copy-on-write, like
    /// `Arc::make_mut` on the CPU side). The copy is queued on the device's one stream, so it is
    /// ordered after every launch that produced or read the old data.
    pub(crate) fn buf_mut(&mut self, op: &'static str) -> Result<&mut CudaBuf> {
        if self.dtype != DType::F32 {
            return Err(Error::Device { op, msg: "in-place updates on CUDA are f32 only".into() });
        }
        if Arc::get_mut(&mut self.buf).is_none() {
            self.buf = Arc::new(self.buf.duplicate(self.len * 4)?);
        }
        Ok(Arc::get_mut(&mut self.buf).expect("the buffer was just made unique"))
    }
}

impl From<CudaError> for Error {
    fn from(e: CudaError) -> Self {
        Error::Cuda(e.to_string())
    }
}

/// The opened device `ordinal` (bound to this thread).
pub fn device(ordinal: usize) -> Result<&'static CudaDevice> {
    Ok(kc::device(ordinal)?)
}

/// Wrap a device buffer of `dims` f32 elements as an untracked tensor.
pub fn wrap(buf: CudaBuf, dims: Vec<usize>) -> Tensor {
    let len = dims.iter().product();
    Tensor {
        shape: Shape(dims),
        storage: Arc::new(Storage::Cuda(CudaStorage { buf: Arc::new(buf), dtype: DType::F32, len })),
        tracked: None,
    }
}

/// The f32 device buffer of `t`, or an error naming `op` (CPU tensor, or f64 on CUDA).
pub fn buf<'a>(t: &'a Tensor, op: &'static str) -> Result<&'a CudaBuf> {
    match &*t.storage {
        Storage::Cuda(c) if c.dtype == DType::F32 => Ok(&c.buf),
        Storage::Cuda(_) => Err(Error::Device {
            op,
            msg: "f64 tensors are not supported by the CUDA kernels (f32 only); convert with to_dtype(DType::F32)"
                .into(),
        }),
        Storage::Cpu(_) => Err(Error::Device { op, msg: format!("expected a cuda tensor, got {}", t.device()) }),
    }
}

/// The device of a CUDA tensor.
pub fn device_of(t: &Tensor, op: &'static str) -> Result<&'static CudaDevice> {
    match t.device() {
        Device::Cuda(i) => device(i),
        d => Err(Error::Device { op, msg: format!("expected a cuda tensor, got {d}") }),
    }
}

/// An uninitialised f32 buffer for `n` elements on `dev`.
pub fn alloc(dev: &'static CudaDevice, n: usize) -> Result<CudaBuf> {
    Ok(dev.alloc(n * 4)?)
}

/// A zero f32 tensor on `dev`.
pub fn zeros(dev: &'static CudaDevice, dims: Vec<usize>) -> Result<Tensor> {
    let n = dims.iter().product();
    Ok(wrap(dev.alloc_zeros::<f32>(n)?, dims))
}

/// Copy `t` to `device` (host to device, device to host, or between devices through the host).
pub fn copy(t: &Tensor, device_to: Device) -> Result<Tensor> {
    match (&*t.storage, device_to) {
        (Storage::Cpu(c), Device::Cuda(o)) => {
            let dev = device(o)?;
            let dtype = c.dtype();
            let buf = with_dtype!(dtype, T, dev.upload::<T>(T::slice(c).expect("dtype matches storage"))?);
            Ok(Tensor {
                shape: t.shape.clone(),
                storage: Arc::new(Storage::Cuda(CudaStorage { buf: Arc::new(buf), dtype, len: t.numel() })),
                tracked: None,
            })
        }
        (Storage::Cuda(c), Device::Cpu) => {
            let cpu = with_dtype!(c.dtype, T, T::wrap(c.buf.to_vec::<T>(c.len)?));
            Ok(Tensor::from_cpu(cpu, t.shape.clone()))
        }
        (Storage::Cuda(c), Device::Cuda(o)) if c.ordinal() == o => Ok(t.detach()),
        (Storage::Cuda(_), Device::Cuda(_)) => copy(&copy(t, Device::Cpu)?, device_to),
        (Storage::Cpu(_), Device::Cpu) => Ok(t.detach()),
    }
}

/// `y = op(x)` elementwise.
pub fn unary(op_name: &'static str, x: &Tensor, op: kc::elementwise::UnaryOp, alpha: f64, beta: f64) -> Result<Tensor> {
    let xb = buf(x, op_name)?;
    let mut y = alloc(xb.device(), x.numel())?;
    kc::elementwise::unary(xb, &mut y, x.numel(), op, alpha as f32, beta as f32)?;
    Ok(wrap(y, x.dims().to_vec()))
}

/// `z = op(a, b)` with broadcasting to `out_dims` (validated by the caller).
pub fn binary(
    op_name: &'static str,
    a: &Tensor,
    b: &Tensor,
    out_dims: &[usize],
    op: kc::elementwise::BinaryOp,
    alpha: f64,
) -> Result<Tensor> {
    let (ab, bb) = (buf(a, op_name)?, buf(b, op_name)?);
    let mut z = alloc(ab.device(), out_dims.iter().product())?;
    kc::elementwise::binary(ab, a.dims(), bb, b.dims(), &mut z, out_dims, op, alpha as f32)?;
    Ok(wrap(z, out_dims.to_vec()))
}

/// `scale * g` broadcast to `dims` (g's dims broadcast to `dims`).
pub fn broadcast_scaled(g: &Tensor, dims: &[usize], scale: f64) -> Result<Tensor> {
    binary("expand", g, g, dims, kc::elementwise::BinaryOp::ScaleB, scale)
}

/// `scale * sum` of `x` over the axes flagged in `reduced`, shaped `out_dims` (same element count
/// as the keepdim result).
pub fn sum_axes(op: &'static str, x: &Tensor, reduced: &[bool], scale: f64, out_dims: Vec<usize>) -> Result<Tensor> {
    let xb = buf(x, op)?;
    let mut y = alloc(xb.device(), out_dims.iter().product())?;
    kc::reduce::sum_axes(xb, x.dims(), reduced, scale as f32, &mut y)?;
    Ok(wrap(y, out_dims))
}

/// Batched GEMM `out = A B` as described by `g` (offsets/strides in elements), into a new
/// tensor of `out_dims`.
pub fn gemm(op: &'static str, a: &Tensor, b: &Tensor, g: kc::gemm::Gemm, out_dims: Vec<usize>) -> Result<Tensor> {
    let (ab, bb) = (buf(a, op)?, buf(b, op)?);
    let mut c = alloc(ab.device(), out_dims.iter().product())?;
    kc::gemm::sgemm(&g, ab, bb, &mut c)?;
    Ok(wrap(c, out_dims))
}

/// Permute dims (output dim `d` = input dim `perm[d]`), contiguous copy.
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let xb = buf(x, "permute")?;
    let mut y = alloc(xb.device(), x.numel())?;
    kc::shape::permute(xb, x.dims(), perm, &mut y)?;
    Ok(wrap(y, perm.iter().map(|&p| x.dims()[p]).collect()))
}

/// The slice `[start, start+len)` of `x` along `axis`.
pub fn take(op: &'static str, x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    let xb = buf(x, op)?;
    let (outer, inner) = outer_inner(x.dims(), axis);
    let mut d = x.dims().to_vec();
    d[axis] = len;
    let mut y = alloc(xb.device(), outer * len * inner)?;
    let xl = x.dims()[axis] * inner;
    kc::shape::copy_rows(xb, xl, start * inner, &mut y, len * inner, 0, outer, len * inner)?;
    Ok(wrap(y, d))
}

/// A tensor of `dims` made of `parts` placed along `axis` at the given starts; zero where no part
/// lands (so `place` of one part is split's backward and of all parts is concat).
pub fn place(op: &'static str, dims: &[usize], axis: usize, parts: &[(&Tensor, usize)]) -> Result<Tensor> {
    let first = parts.first().ok_or_else(|| Error::invalid(op, "no tensors to place"))?.0;
    let dev = buf(first, op)?.device();
    let covered: usize = parts.iter().map(|(t, _)| t.dims()[axis]).sum();
    let n: usize = dims.iter().product();
    let mut y = if covered == dims[axis] { alloc(dev, n)? } else { dev.alloc_zeros::<f32>(n)? };
    let (outer, inner) = outer_inner(dims, axis);
    let dl = dims[axis] * inner;
    for (t, start) in parts {
        let sl = t.dims()[axis] * inner;
        kc::shape::copy_rows(buf(t, op)?, sl, 0, &mut y, dl, start * inner, outer, sl)?;
    }
    Ok(wrap(y, dims.to_vec()))
}

fn outer_inner(dims: &[usize], axis: usize) -> (usize, usize) {
    (dims[..axis].iter().product(), dims[axis + 1..].iter().product())
}

/// Row-major strides, re-exported for the ops' CUDA paths.
pub fn row_strides(dims: &[usize]) -> Vec<usize> {
    strides(dims)
}

/// Check that an element type is f32 for a CUDA op.
pub fn require_f32<T: Element>(op: &'static str) -> Result<()> {
    if T::DTYPE != DType::F32 {
        return Err(Error::Device { op, msg: "the CUDA kernels are f32 only".into() });
    }
    Ok(())
}
