//! Errors of the CUDA backend: the raw driver code, its name, what we were doing, and for a failed
//! module load the JIT compiler's log.

use super::driver;
use std::ffi::CStr;

/// A CUDA failure, or a bad argument to a launch wrapper (`code` = -1).
#[derive(Clone, Debug)]
pub struct CudaError {
    /// The raw `CUresult` (not cust's lossy mapping); -1 for argument errors found on the host.
    pub code: i32,
    /// What the backend was doing (`cuMemAlloc(4096 B)`, `launch sgemm_f32`, ...).
    pub context: String,
    /// The JIT error/info log of a failed `cuModuleLoadDataEx`, else empty.
    pub jit_log: String,
}

/// Result alias of the CUDA backend.
pub type CudaResult<T> = Result<T, CudaError>;

impl CudaError {
    /// An argument error found before calling the driver.
    pub fn invalid(context: impl Into<String>) -> Self {
        CudaError { code: -1, context: context.into(), jit_log: String::new() }
    }

    /// The driver's name for the code (`CUDA_ERROR_OUT_OF_MEMORY`), asked of the driver itself so
    /// that codes newer than cust's bindings still get a name.
    pub fn name(&self) -> String {
        if self.code < 0 {
            return "invalid argument".into();
        }
        let mut p: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static string or fails; we check both.
        let ok = unsafe { driver::cuGetErrorName(self.code, &mut p) } == driver::CUDA_SUCCESS;
        if ok && !p.is_null() {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        } else {
            "unrecognised CUresult".into()
        }
    }

    fn description(&self) -> String {
        if self.code < 0 {
            return String::new();
        }
        let mut p: *const std::ffi::c_char = std::ptr::null();
        let ok = unsafe { driver::cuGetErrorString(self.code, &mut p) } == driver::CUDA_SUCCESS;
        if ok && !p.is_null() {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        } else {
            String::new()
        }
    }
}

impl std::fmt::Display for CudaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.code < 0 {
            return write!(f, "{}", self.context);
        }
        write!(f, "{} (code {}) in {}", self.name(), self.code, self.context)?;
        let d = self.description();
        if !d.is_empty() {
            write!(f, ": {d}")?;
        }
        if self.code == 222 {
            write!(
                f,
                " [the PTX is newer than this driver: rebuild with the pinned nvcc wheels, requirements-cuda.txt]"
            )?;
        }
        if !self.jit_log.is_empty() {
            write!(f, "\nJIT log:\n{}", self.jit_log)?;
        }
        Ok(())
    }
}

impl std::error::Error for CudaError {}

/// Turn a raw driver result into a `CudaResult`, naming the call.
pub(crate) fn check(code: driver::CUresult, context: impl FnOnce() -> String) -> CudaResult<()> {
    if code == driver::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CudaError { code, context: context(), jit_log: String::new() })
    }
}
