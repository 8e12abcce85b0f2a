//! One CUDA device: its primary context, the one stream every op runs on, the module cache and
//! the caching allocator.
//!
//! Devices are opened once per process and live until it exits ([`device`] returns a `&'static`).
//! Every public entry point calls [`CudaDevice::bind`], which makes the context current on the
//! calling thread (test threads, rayon workers), so callers never deal with contexts. All work is
//! queued on a single non-blocking stream, so the order of launches, copies and buffer reuse is
//! the program order: a buffer returned to the cache can be handed out again without a sync.

use super::alloc::Pool;
use super::driver::{self as drv, CUcontext, CUfunction, CUmodule, CUstream};
use super::error::{check, CudaError, CudaResult};
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// An opened CUDA device. Obtain with [`device`].
pub struct CudaDevice {
    ordinal: usize,
    name: String,
    ctx: usize,                                                     // CUcontext
    stream: usize,                                                  // CUstream
    modules: Mutex<HashMap<&'static str, usize>>,                   // stem -> CUmodule
    functions: Mutex<HashMap<(&'static str, &'static str), usize>>, // (stem, kernel) -> CUfunction
    pub(crate) pool: Mutex<Pool>,
    sync_every_launch: bool,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}: {})", self.ordinal, self.name)
    }
}

thread_local! {
    static CURRENT_CTX: Cell<usize> = const { Cell::new(0) };
}

static DEVICES: OnceLock<Mutex<HashMap<usize, &'static CudaDevice>>> = OnceLock::new();
static TF32: OnceLock<AtomicBool> = OnceLock::new();

fn tf32_flag() -> &'static AtomicBool {
    TF32.get_or_init(|| AtomicBool::new(std::env::var("SEGNET_CUDA_TF32").is_ok_and(|v| v == "1")))
}

/// Use the TF32 tensor-core GEMM (inputs rounded to 10-bit mantissas, ~1e-3 relative error) for
/// matmul and conv. Off by default; `SEGNET_CUDA_TF32=1` turns it on at start-up.
pub fn set_tf32(on: bool) {
    tf32_flag().store(on, Ordering::Relaxed);
}

/// Whether the TF32 GEMM path is on.
pub fn tf32_enabled() -> bool {
    tf32_flag().load(Ordering::Relaxed)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Number of CUDA devices (initialising the driver).
pub fn device_count() -> CudaResult<usize> {
    init()?;
    let mut n = 0;
    check(unsafe { drv::cuDeviceGetCount(&mut n) }, || "cuDeviceGetCount".into())?;
    Ok(n as usize)
}

fn init() -> CudaResult<()> {
    static INIT: OnceLock<Result<(), CudaError>> = OnceLock::new();
    INIT.get_or_init(|| check(unsafe { drv::cuInit(0) }, || "cuInit".into())).clone()
}

/// The driver's CUDA version as (major, minor), e.g. (13, 0).
pub fn driver_version() -> CudaResult<(i32, i32)> {
    init()?;
    let mut v = 0;
    check(unsafe { drv::cuDriverGetVersion(&mut v) }, || "cuDriverGetVersion".into())?;
    Ok((v / 1000, (v % 1000) / 10))
}

/// Open (once) and return device `ordinal`, bound to the calling thread.
pub fn device(ordinal: usize) -> CudaResult<&'static CudaDevice> {
    let map = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut m = lock(map);
    let dev = match m.get(&ordinal) {
        Some(d) => *d,
        None => {
            let d: &'static CudaDevice = Box::leak(Box::new(CudaDevice::open(ordinal)?));
            m.insert(ordinal, d);
            d
        }
    };
    drop(m);
    dev.bind()?;
    Ok(dev)
}

impl CudaDevice {
    fn open(ordinal: usize) -> CudaResult<CudaDevice> {
        init()?;
        let count = {
            let mut n = 0;
            check(unsafe { drv::cuDeviceGetCount(&mut n) }, || "cuDeviceGetCount".into())?;
            n as usize
        };
        if ordinal >= count {
            return Err(CudaError::invalid(format!("cuda:{ordinal} requested but {count} CUDA device(s) found")));
        }
        let mut dev = 0;
        check(unsafe { drv::cuDeviceGet(&mut dev, ordinal as i32) }, || format!("cuDeviceGet({ordinal})"))?;
        let mut name = [0 as std::ffi::c_char; 256];
        check(unsafe { drv::cuDeviceGetName(name.as_mut_ptr(), 255, dev) }, || "cuDeviceGetName".into())?;
        let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
        let mut ctx: CUcontext = std::ptr::null_mut();
        check(unsafe { drv::cuDevicePrimaryCtxRetain(&mut ctx, dev) }, || "cuDevicePrimaryCtxRetain".into())?;
        check(unsafe { drv::cuCtxSetCurrent(ctx) }, || "cuCtxSetCurrent".into())?;
        CURRENT_CTX.with(|c| c.set(ctx as usize));
        let mut stream: CUstream = std::ptr::null_mut();
        check(unsafe { drv::cuStreamCreate(&mut stream, drv::CU_STREAM_NON_BLOCKING) }, || "cuStreamCreate".into())?;
        Ok(CudaDevice {
            ordinal,
            name,
            ctx: ctx as usize,
            stream: stream as usize,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            pool: Mutex::new(Pool::default()),
            sync_every_launch: std::env::var("SEGNET_CUDA_SYNC").is_ok_and(|v| v == "1"),
        })
    }

    /// Make this device's context current on the calling thread (cheap when it already is).
    pub fn bind(&self) -> CudaResult<()> {
        if CURRENT_CTX.with(|c| c.get()) != self.ctx {
            check(unsafe { drv::cuCtxSetCurrent(self.ctx as CUcontext) }, || "cuCtxSetCurrent".into())?;
            CURRENT_CTX.with(|c| c.set(self.ctx));
        }
        Ok(())
    }

    /// Device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Device name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn stream(&self) -> CUstream {
        self.stream as CUstream
    }

    /// Wait until every queued launch and copy has finished; surfaces asynchronous kernel faults.
    pub fn synchronize(&self) -> CudaResult<()> {
        self.bind()?;
        check(unsafe { drv::cuStreamSynchronize(self.stream()) }, || {
            format!("cuStreamSynchronize(cuda:{})", self.ordinal)
        })
    }

    fn module(&self, stem: &'static str) -> CudaResult<CUmodule> {
        let mut mods = lock(&self.modules);
        if let Some(&m) = mods.get(stem) {
            return Ok(m as CUmodule);
        }
        let ptx = super::ptx::ALL
            .iter()
            .find(|(s, _)| *s == stem)
            .map(|(_, p)| *p)
            .ok_or_else(|| CudaError::invalid(format!("no embedded PTX module named {stem}")))?;
        let m = load_ptx(stem, ptx)?;
        mods.insert(stem, m as usize);
        Ok(m)
    }

    /// The kernel `name` of module `stem` (`kernels/cuda/<stem>.cu`), loaded and cached on first use.
    pub fn function(&self, stem: &'static str, name: &'static str) -> CudaResult<CUfunction> {
        self.bind()?;
        if let Some(&f) = lock(&self.functions).get(&(stem, name)) {
            return Ok(f as CUfunction);
        }
        let m = self.module(stem)?;
        let cname = CString::new(name).unwrap();
        let mut f: CUfunction = std::ptr::null_mut();
        check(unsafe { drv::cuModuleGetFunction(&mut f, m, cname.as_ptr()) }, || {
            format!("cuModuleGetFunction({stem}.{name})")
        })?;
        lock(&self.functions).insert((stem, name), f as usize);
        Ok(f)
    }

    /// Launch `stem.name` with the given geometry. `params` holds one pointer per kernel argument,
    /// pointing at a value of exactly the C type the kernel declares (use [`crate::kargs!`]).
    ///
    /// # Safety
    /// The argument list must match the kernel's signature, and every device pointer in it must
    /// be valid for the accesses the kernel makes with the given sizes.
    pub unsafe fn launch(
        &self,
        stem: &'static str,
        name: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        params: &mut [*mut c_void],
    ) -> CudaResult<()> {
        let f = self.function(stem, name)?;
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(()); // nothing to do (empty tensor)
        }
        check(
            drv::cuLaunchKernel(
                f,
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                shared_bytes,
                self.stream(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            ),
            || format!("launch {stem}.{name} grid {grid:?} block {block:?}"),
        )?;
        if self.sync_every_launch {
            // SEGNET_CUDA_SYNC=1: attribute an asynchronous fault to the kernel that caused it.
            check(drv::cuStreamSynchronize(self.stream()), || format!("{stem}.{name} (synchronised after launch)"))?;
        }
        Ok(())
    }
}

/// Load PTX with the JIT error and info logs captured, so a failed load reports the raw code
/// (222 = PTX too new for this driver) and the compiler's message.
fn load_ptx(stem: &str, ptx: &str) -> CudaResult<CUmodule> {
    let image = CString::new(ptx).map_err(|_| CudaError::invalid(format!("PTX of {stem} contains a NUL byte")))?;
    const LOG: usize = 16 * 1024;
    let mut err_log = vec![0u8; LOG];
    let mut info_log = vec![0u8; LOG];
    let mut opts = [
        drv::CU_JIT_ERROR_LOG_BUFFER,
        drv::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        drv::CU_JIT_INFO_LOG_BUFFER,
        drv::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
    ];
    // Size options are passed by value in the pointer slot.
    let mut vals: [*mut c_void; 4] =
        [err_log.as_mut_ptr().cast(), LOG as *mut c_void, info_log.as_mut_ptr().cast(), LOG as *mut c_void];
    let mut m: CUmodule = std::ptr::null_mut();
    let code = unsafe {
        drv::cuModuleLoadDataEx(&mut m, image.as_ptr().cast(), opts.len() as u32, opts.as_mut_ptr(), vals.as_mut_ptr())
    };
    if code != drv::CUDA_SUCCESS {
        let text =
            |b: &[u8]| String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]).into_owned();
        let mut log = text(&err_log);
        let info = text(&info_log);
        if !info.is_empty() {
            log.push_str(&info);
        }
        return Err(CudaError { code, context: format!("cuModuleLoadDataEx({stem}.ptx)"), jit_log: log });
    }
    Ok(m)
}
