//! Device buffers and the size-bucketed caching allocator.
//!
//! `cuMemAlloc`/`cuMemFree` synchronise the device and cost tens of microseconds; a training step
//! allocates thousands of temporaries of a few recurring sizes. Requests are rounded up to a
//! bucket (powers of two from 512 B to 1 MiB, then multiples of 2 MiB) and a dropped [`CudaBuf`]
//! goes back to its bucket's free list instead of to the driver. Reuse needs no synchronisation
//! because all work runs on the device's single stream (see `device.rs`). When the driver reports
//! out-of-memory, the cache is released and the allocation retried once.

use super::device::CudaDevice;
use super::driver::{self as drv, CUdeviceptr};
use super::error::{check, CudaError, CudaResult};
use std::collections::HashMap;

const SMALL_MAX: usize = 1 << 20;
const LARGE_STEP: usize = 2 << 20;

/// Bucket size for a request of `bytes`.
pub fn bucket_size(bytes: usize) -> usize {
    let b = bytes.max(512);
    if b <= SMALL_MAX {
        b.next_power_of_two()
    } else {
        b.div_ceil(LARGE_STEP) * LARGE_STEP
    }
}

/// Free lists and counters of one device.
#[derive(Default, Debug)]
pub(crate) struct Pool {
    free: HashMap<usize, Vec<CUdeviceptr>>,
    stats: PoolStats,
}

/// Allocator counters (bytes are bucket sizes).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes handed out and not yet dropped.
    pub in_use: usize,
    /// Bytes held in free lists.
    pub cached: usize,
    /// Highest `in_use` seen.
    pub peak_in_use: usize,
    /// Calls to `cuMemAlloc`.
    pub driver_allocs: usize,
    /// Requests served from the cache.
    pub cache_hits: usize,
}

/// A device allocation of at least `bytes()` bytes; returned to its device's cache on drop.
pub struct CudaBuf {
    ptr: CUdeviceptr,
    bytes: usize,
    bucket: usize,
    dev: &'static CudaDevice,
}

impl std::fmt::Debug for CudaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuf({} B on cuda:{})", self.bytes, self.dev.ordinal())
    }
}

/// Plain element types that may be copied bit for bit between host and device.
///
/// # Safety
/// Implementors must be `Copy`, have no padding and accept every bit pattern.
pub unsafe trait HostElem: Copy + Default + 'static {}
unsafe impl HostElem for f32 {}
unsafe impl HostElem for f64 {}
unsafe impl HostElem for u8 {}
unsafe impl HostElem for i32 {}
unsafe impl HostElem for u32 {}

impl CudaDevice {
    /// A buffer of at least `bytes` bytes (contents undefined).
    pub fn alloc(&'static self, bytes: usize) -> CudaResult<CudaBuf> {
        self.bind()?;
        let bucket = bucket_size(bytes);
        {
            let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(ptr) = p.free.get_mut(&bucket).and_then(|v| v.pop()) {
                p.stats.cached -= bucket;
                p.stats.cache_hits += 1;
                p.stats.in_use += bucket;
                p.stats.peak_in_use = p.stats.peak_in_use.max(p.stats.in_use);
                return Ok(CudaBuf { ptr, bytes, bucket, dev: self });
            }
        }
        let mut ptr: CUdeviceptr = 0;
        let mut code = unsafe { drv::cuMemAlloc_v2(&mut ptr, bucket) };
        if code == drv::CUDA_ERROR_OUT_OF_MEMORY {
            self.empty_cache()?;
            code = unsafe { drv::cuMemAlloc_v2(&mut ptr, bucket) };
        }
        check(code, || {
            let s = self.pool_stats();
            format!("cuMemAlloc({bucket} B; {} B in use, {} B cached)", s.in_use, s.cached)
        })?;
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        p.stats.driver_allocs += 1;
        p.stats.in_use += bucket;
        p.stats.peak_in_use = p.stats.peak_in_use.max(p.stats.in_use);
        Ok(CudaBuf { ptr, bytes, bucket, dev: self })
    }

    /// A buffer of `n` elements of `T`, zero-filled.
    pub fn alloc_zeros<T: HostElem>(&'static self, n: usize) -> CudaResult<CudaBuf> {
        let b = self.alloc(n * std::mem::size_of::<T>())?;
        b.memset_zero()?;
        Ok(b)
    }

    /// Copy a host slice into a new buffer.
    pub fn upload<T: HostElem>(&'static self, host: &[T]) -> CudaResult<CudaBuf> {
        let bytes = std::mem::size_of_val(host);
        let b = self.alloc(bytes)?;
        if bytes > 0 {
            // Pageable source: the call returns once the data is staged, so `host` may go away.
            check(unsafe { drv::cuMemcpyHtoDAsync_v2(b.ptr, host.as_ptr().cast(), bytes, self.stream()) }, || {
                format!("cuMemcpyHtoD({bytes} B)")
            })?;
        }
        Ok(b)
    }

    /// Give every cached block back to the driver.
    pub fn empty_cache(&self) -> CudaResult<()> {
        self.bind()?;
        self.synchronize()?;
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        for (_, v) in p.free.drain() {
            for ptr in v {
                check(unsafe { drv::cuMemFree_v2(ptr) }, || "cuMemFree".into())?;
            }
        }
        p.stats.cached = 0;
        Ok(())
    }

    /// Allocator counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).stats
    }
}

impl CudaBuf {
    /// Requested size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The raw device address (for kernel arguments).
    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }
    /// The device this buffer lives on.
    pub fn device(&self) -> &'static CudaDevice {
        self.dev
    }

    /// Check that the buffer holds `n` elements of `T`; the error names `what`.
    pub fn expect_len<T>(&self, n: usize, what: &str) -> CudaResult<()> {
        let need = n * std::mem::size_of::<T>();
        if self.bytes < need {
            return Err(CudaError::invalid(format!(
                "{what}: buffer of {} B is smaller than the {n} elements ({need} B) the launch uses",
                self.bytes
            )));
        }
        Ok(())
    }

    /// Fill with zero bytes.
    pub fn memset_zero(&self) -> CudaResult<()> {
        self.dev.bind()?;
        if self.bytes == 0 {
            return Ok(());
        }
        check(unsafe { drv::cuMemsetD8Async(self.ptr, 0, self.bytes, self.dev.stream()) }, || {
            format!("cuMemsetD8({} B)", self.bytes)
        })
    }

    /// Copy the first `out.len()` elements to the host (waits for the stream).
    pub fn download<T: HostElem>(&self, out: &mut [T]) -> CudaResult<()> {
        self.dev.bind()?;
        let bytes = std::mem::size_of_val(out);
        self.expect_len::<T>(out.len(), "download")?;
        if bytes > 0 {
            check(
                unsafe { drv::cuMemcpyDtoHAsync_v2(out.as_mut_ptr().cast(), self.ptr, bytes, self.dev.stream()) },
                || format!("cuMemcpyDtoH({bytes} B)"),
            )?;
        }
        self.dev.synchronize()
    }

    /// Copy the first `n` elements into a new host vector.
    pub fn to_vec<T: HostElem>(&self, n: usize) -> CudaResult<Vec<T>> {
        let mut v = vec![T::default(); n];
        self.download(&mut v)?;
        Ok(v)
    }

    /// A new buffer with a copy of the first `bytes` bytes (device to device, queued).
    pub fn duplicate(&self, bytes: usize) -> CudaResult<CudaBuf> {
        let out = self.dev.alloc(bytes)?;
        if bytes > 0 {
            check(unsafe { drv::cuMemcpyDtoDAsync_v2(out.ptr, self.ptr, bytes, self.dev.stream()) }, || {
                format!("cuMemcpyDtoD({bytes} B)")
            })?;
        }
        Ok(out)
    }
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        let mut p = self.dev.pool.lock().unwrap_or_else(|e| e.into_inner());
        p.stats.in_use -= self.bucket;
        p.stats.cached += self.bucket;
        p.free.entry(self.bucket).or_default().push(self.ptr);
    }
}

#[cfg(test)]
mod tests {
    use super::bucket_size;

    #[test]
    fn buckets_round_up() {
        assert_eq!(bucket_size(0), 512);
        assert_eq!(bucket_size(513), 1024);
        assert_eq!(bucket_size(1 << 20), 1 << 20);
        assert_eq!(bucket_size((1 << 20) + 1), 2 << 20);
        assert_eq!(bucket_size((5 << 20) + 7), 6 << 20);
    }
}
