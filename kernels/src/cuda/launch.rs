//! Launch helpers shared by the op wrappers: argument packing, 1-D geometry, size checks.

use super::alloc::CudaBuf;
use super::device::CudaDevice;
use super::error::{CudaError, CudaResult};

/// Threads per block of the 1-D kernels (a multiple of 32: the block reductions assume it).
pub const BLOCK: u32 = 256;

/// Pack kernel arguments: one `*mut c_void` per argument, pointing at the value. Each value must
/// have exactly the C type the kernel declares (`i32` for `int`, `f32` for `float`, `u64` for a
/// pointer, `#[repr(C)]` structs for structs). Temporaries live until the end of the statement, so
/// use it inside the `launch` call.
#[macro_export]
macro_rules! kargs {
    ($($a:expr),* $(,)?) => { [$( (&$a) as *const _ as *mut ::std::ffi::c_void ),*] };
}

/// Grid for `n` elements at [`BLOCK`] threads, capped (the kernels grid-stride).
pub fn grid_1d(n: usize) -> (u32, u32, u32) {
    ((n.div_ceil(BLOCK as usize)).min(1 << 20) as u32, 1, 1)
}

/// Blocks for `n` independent block-sized work items, capped (the kernels block-stride).
pub fn grid_blocks(n: usize) -> (u32, u32, u32) {
    (n.min(1 << 20) as u32, 1, 1)
}

/// `n` as a kernel `int`, or an error naming `what` (kernels index with 32 bits).
pub fn i32_of(n: usize, what: &str) -> CudaResult<i32> {
    i32::try_from(n)
        .map_err(|_| CudaError::invalid(format!("{what}: {n} exceeds the 32-bit index range of the kernels")))
}

/// The device shared by all buffers, or an error naming `what`.
pub fn same_device(what: &str, bufs: &[&CudaBuf]) -> CudaResult<&'static CudaDevice> {
    let d = bufs[0].device();
    if bufs.iter().any(|b| b.device().ordinal() != d.ordinal()) {
        return Err(CudaError::invalid(format!("{what}: buffers on different devices")));
    }
    d.bind()?;
    Ok(d)
}

/// Device address of element `off` of an f32 buffer.
pub fn f32_at(b: &CudaBuf, off: usize) -> u64 {
    b.ptr() + (off * 4) as u64
}
