//! Launch wrappers of `kernels/cuda/softmax.cu`: log-softmax over channels and pixel-wise
//! cross-entropy with an ignore label, on `[N, C, S]`.

use super::alloc::CudaBuf;
use super::error::CudaResult;
use super::launch::{grid_1d, i32_of, same_device, BLOCK};
use crate::kargs;

fn dims(n: usize, c: usize, s: usize) -> CudaResult<(i32, i32, i32)> {
    i32_of(n * c * s, "log_softmax")?;
    Ok((n as i32, c as i32, s as i32))
}

/// `y = x - logsumexp_c x`.
pub fn log_softmax_forward(n: usize, c: usize, s: usize, x: &CudaBuf, y: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("log_softmax", &[x, y])?;
    let (n32, c32, s32) = dims(n, c, s)?;
    x.expect_len::<f32>(n * c * s, "log_softmax x")?;
    y.expect_len::<f32>(n * c * s, "log_softmax y")?;
    unsafe {
        dev.launch(
            "softmax",
            "log_softmax_fwd_f32",
            grid_1d(n * s),
            (BLOCK, 1, 1),
            0,
            &mut kargs![n32, c32, s32, x.ptr(), y.ptr()],
        )
    }
}

/// `dx = g - exp(y) sum_c g`.
pub fn log_softmax_backward(
    n: usize,
    c: usize,
    s: usize,
    g: &CudaBuf,
    y: &CudaBuf,
    dx: &mut CudaBuf,
) -> CudaResult<()> {
    let dev = same_device("log_softmax backward", &[g, y, dx])?;
    let (n32, c32, s32) = dims(n, c, s)?;
    for b in [g, y, &*dx] {
        b.expect_len::<f32>(n * c * s, "log_softmax")?;
    }
    unsafe {
        dev.launch(
            "softmax",
            "log_softmax_bwd_f32",
            grid_1d(n * s),
            (BLOCK, 1, 1),
            0,
            &mut kargs![n32, c32, s32, g.ptr(), y.ptr(), dx.ptr()],
        )
    }
}

/// Per pixel: `loss = lse - x[label]` (0 where `label == ignore`) and `lse` for the backward.
/// `labels` is a u8 buffer of `n * s` labels (validated `< c` or `ignore` by the caller).
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_forward(
    n: usize,
    c: usize,
    s: usize,
    ignore: u8,
    x: &CudaBuf,
    labels: &CudaBuf,
    loss: &mut CudaBuf,
    lse: &mut CudaBuf,
) -> CudaResult<()> {
    let dev = same_device("cross_entropy", &[x, labels, loss, lse])?;
    let (n32, c32, s32) = dims(n, c, s)?;
    x.expect_len::<f32>(n * c * s, "cross_entropy logits")?;
    labels.expect_len::<u8>(n * s, "cross_entropy labels")?;
    loss.expect_len::<f32>(n * s, "cross_entropy loss")?;
    lse.expect_len::<f32>(n * s, "cross_entropy lse")?;
    let ig = ignore as i32;
    unsafe {
        dev.launch(
            "softmax",
            "cross_entropy_fwd_f32",
            grid_1d(n * s),
            (BLOCK, 1, 1),
            0,
            &mut kargs![n32, c32, s32, ig, x.ptr(), labels.ptr(), loss.ptr(), lse.ptr()],
        )
    }
}

/// `dx = scale (softmax(x) - onehot(label))` for valid pixels, 0 for ignored ones; `scale` is
/// `dloss / (number of valid pixels)`.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    n: usize,
    c: usize,
    s: usize,
    ignore: u8,
    scale: f32,
    x: &CudaBuf,
    labels: &CudaBuf,
    lse: &CudaBuf,
    dx: &mut CudaBuf,
) -> CudaResult<()> {
    let dev = same_device("cross_entropy backward", &[x, labels, lse, dx])?;
    let (n32, c32, s32) = dims(n, c, s)?;
    x.expect_len::<f32>(n * c * s, "cross_entropy logits")?;
    dx.expect_len::<f32>(n * c * s, "cross_entropy dx")?;
    labels.expect_len::<u8>(n * s, "cross_entropy labels")?;
    lse.expect_len::<f32>(n * s, "cross_entropy lse")?;
    let ig = ignore as i32;
    unsafe {
        dev.launch(
            "softmax",
            "cross_entropy_bwd_f32",
            grid_1d(n * s),
            (BLOCK, 1, 1),
            0,
            &mut kargs![n32, c32, s32, ig, scale, x.ptr(), labels.ptr(), lse.ptr(), dx.ptr()],
        )
    }
}
