//! Launch wrappers of `kernels/cuda/normalize.cu`: L2 normalisation over channels of `[N, C, S]`.

use super::alloc::CudaBuf;
use super::error::CudaResult;
use super::launch::{grid_1d, i32_of, same_device, BLOCK};
use crate::kargs;

fn dims(n: usize, c: usize, s: usize) -> CudaResult<(i32, i32, i32)> {
    i32_of(n * c * s, "l2_normalize")?;
    Ok((n as i32, c as i32, s as i32))
}

/// `norm[n, s] = ||x[n, :, s]||`, `y = x / max(norm, eps)`.
pub fn l2_normalize_forward(
    n: usize,
    c: usize,
    s: usize,
    eps: f32,
    x: &CudaBuf,
    y: &mut CudaBuf,
    norm: &mut CudaBuf,
) -> CudaResult<()> {
    let dev = same_device("l2_normalize", &[x, y, norm])?;
    let (n32, c32, s32) = dims(n, c, s)?;
    x.expect_len::<f32>(n * c * s, "l2_normalize x")?;
    y.expect_len::<f32>(n * c * s, "l2_normalize y")?;
    norm.expect_len::<f32>(n * s, "l2_normalize norm")?;
    unsafe {
        dev.launch(
            "normalize",
            "l2norm_fwd_f32",
            grid_1d(n * s),
            (BLOCK, 1, 1),
            0,
            &mut kargs![n32, c32, s32, eps, x.ptr(), y.ptr(), norm.ptr()],
        )
    }
}

/// `dx = (g - y <g, y>) / norm` where `norm > eps`, else `g / eps`.
#[allow(clippy::too_many_arguments)]
pub fn l2_normalize_backward(
    n: usize,
    c: usize,
    s: usize,
    eps: f32,
    g: &CudaBuf,
    y: &CudaBuf,
    norm: &CudaBuf,
    dx: &mut CudaBuf,
) -> CudaResult<()> {
    let dev = same_device("l2_normalize backward", &[g, y, norm, dx])?;
    let (n32, c32, s32) = dims(n, c, s)?;
    for b in [g, y, &*dx] {
        b.expect_len::<f32>(n * c * s, "l2_normalize")?;
    }
    norm.expect_len::<f32>(n * s, "l2_normalize norm")?;
    unsafe {
        dev.launch(
            "normalize",
            "l2norm_bwd_f32",
            grid_1d(n * s),
            (BLOCK, 1, 1),
            0,
            &mut kargs![n32, c32, s32, eps, g.ptr(), y.ptr(), norm.ptr(), dx.ptr()],
        )
    }
}
