//! Launch wrappers of `kernels/cuda/batchnorm.cu` over `[N, C, HW]` ([`BnDims`] of the CPU side).
//!
//! Train forward: [`bn_stats`] (batch mean / biased var), [`bn_scale_shift`], [`bn_apply`], and
//! [`bn_running_update`]; eval forward: [`bn_scale_shift`] on the running stats, then [`bn_apply`].
//! Backward: [`bn_backward`] returns `(sg, sgxhat)` = `(db, dw)` per channel and writes `dx`.
//! Every per-channel vector is an f32 buffer of `C` elements; `weight`/`bias` may be absent.

use super::alloc::CudaBuf;
use super::error::CudaResult;
use super::launch::{grid_1d, grid_blocks, i32_of, same_device, BLOCK};
use crate::cpu::batchnorm::{BnDims, BnMode};
use crate::kargs;

fn dims(d: BnDims) -> CudaResult<(i32, i32, i32, usize)> {
    let total = d.n * d.c * d.hw;
    i32_of(total, "batch_norm2d")?;
    Ok((i32_of(d.n, "bn")?, i32_of(d.c, "bn")?, i32_of(d.hw, "bn")?, total))
}

fn opt_ptr(b: Option<&CudaBuf>) -> u64 {
    b.map_or(0, |b| b.ptr())
}

/// Per channel: `mean = sum x / m`, `var = sum (x - mean)^2 / m` (biased).
pub fn bn_stats(x: &CudaBuf, d: BnDims, mean: &mut CudaBuf, var: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("batch_norm2d stats", &[x, mean, var])?;
    let (n, c, hw, total) = dims(d)?;
    x.expect_len::<f32>(total, "bn x")?;
    mean.expect_len::<f32>(d.c, "bn mean")?;
    var.expect_len::<f32>(d.c, "bn var")?;
    unsafe {
        dev.launch(
            "batchnorm",
            "bn_stats_f32",
            grid_blocks(d.c),
            (BLOCK, 1, 1),
            0,
            &mut kargs![n, c, hw, x.ptr(), mean.ptr(), var.ptr()],
        )
    }
}

/// `invstd = 1/sqrt(var + eps)`, `scale = w invstd`, `shift = b - mean scale` per channel.
#[allow(clippy::too_many_arguments)]
pub fn bn_scale_shift(
    c: usize,
    eps: f32,
    mean: &CudaBuf,
    var: &CudaBuf,
    weight: Option<&CudaBuf>,
    bias: Option<&CudaBuf>,
    invstd: &mut CudaBuf,
    scale: &mut CudaBuf,
    shift: &mut CudaBuf,
) -> CudaResult<()> {
    let dev = same_device("batch_norm2d scale", &[mean, var, invstd, scale, shift])?;
    for b in [Some(mean), Some(var), weight, bias, Some(&*invstd), Some(&*scale), Some(&*shift)].into_iter().flatten() {
        b.expect_len::<f32>(c, "bn per-channel vector")?;
    }
    let (c32, pw, pb) = (i32_of(c, "bn")?, opt_ptr(weight), opt_ptr(bias));
    unsafe {
        dev.launch(
            "batchnorm",
            "bn_scale_shift_f32",
            grid_1d(c),
            (BLOCK, 1, 1),
            0,
            &mut kargs![c32, eps, mean.ptr(), var.ptr(), pw, pb, invstd.ptr(), scale.ptr(), shift.ptr()],
        )
    }
}

/// `y = x scale[c] + shift[c]`.
pub fn bn_apply(x: &CudaBuf, d: BnDims, scale: &CudaBuf, shift: &CudaBuf, y: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("batch_norm2d apply", &[x, scale, shift, y])?;
    let (_, c, hw, total) = dims(d)?;
    x.expect_len::<f32>(total, "bn x")?;
    y.expect_len::<f32>(total, "bn y")?;
    scale.expect_len::<f32>(d.c, "bn scale")?;
    shift.expect_len::<f32>(d.c, "bn shift")?;
    let t = total as i32;
    unsafe {
        dev.launch(
            "batchnorm",
            "bn_apply_f32",
            grid_1d(total),
            (BLOCK, 1, 1),
            0,
            &mut kargs![t, c, hw, x.ptr(), scale.ptr(), shift.ptr(), y.ptr()],
        )
    }
}

/// `rm = (1-mom) rm + mom mean`, `rv = (1-mom) rv + mom var m/(m-1)` (in place).
pub fn bn_running_update(
    d: BnDims,
    momentum: f32,
    mean: &CudaBuf,
    var: &CudaBuf,
    rm: &mut CudaBuf,
    rv: &mut CudaBuf,
) -> CudaResult<()> {
    let dev = same_device("batch_norm2d running", &[mean, var, rm, rv])?;
    for b in [mean, var, &*rm, &*rv] {
        b.expect_len::<f32>(d.c, "bn running vector")?;
    }
    let (c, m) = (i32_of(d.c, "bn")?, i32_of(d.per_channel(), "bn")?);
    unsafe {
        dev.launch(
            "batchnorm",
            "bn_running_f32",
            grid_1d(d.c),
            (BLOCK, 1, 1),
            0,
            &mut kargs![c, m, momentum, mean.ptr(), var.ptr(), rm.ptr(), rv.ptr()],
        )
    }
}

/// Backward: writes `sg = sum g` (= db) and `sgxhat = sum g xhat` (= dw) per channel, and `dx`
/// when given (train: with the batch-statistics terms; eval: `w invstd g`).
#[allow(clippy::too_many_arguments)]
pub fn bn_backward(
    g: &CudaBuf,
    x: &CudaBuf,
    d: BnDims,
    mean: &CudaBuf,
    invstd: &CudaBuf,
    weight: Option<&CudaBuf>,
    mode: BnMode,
    sg: &mut CudaBuf,
    sgxhat: &mut CudaBuf,
    dx: Option<&mut CudaBuf>,
) -> CudaResult<()> {
    let dev = same_device("batch_norm2d backward", &[g, x, mean, invstd, sg, sgxhat])?;
    let (n, c, hw, total) = dims(d)?;
    g.expect_len::<f32>(total, "bn g")?;
    x.expect_len::<f32>(total, "bn x")?;
    for b in [mean, invstd, &*sg, &*sgxhat] {
        b.expect_len::<f32>(d.c, "bn per-channel vector")?;
    }
    unsafe {
        dev.launch(
            "batchnorm",
            "bn_bwd_reduce_f32",
            grid_blocks(d.c),
            (BLOCK, 1, 1),
            0,
            &mut kargs![n, c, hw, g.ptr(), x.ptr(), mean.ptr(), invstd.ptr(), sg.ptr(), sgxhat.ptr()],
        )?
    };
    if let Some(dx) = dx {
        dx.expect_len::<f32>(total, "bn dx")?;
        if let Some(w) = weight {
            w.expect_len::<f32>(d.c, "bn weight")?;
        }
        let (t, m, train, pw) =
            (total as i32, i32_of(d.per_channel(), "bn")?, (mode == BnMode::Train) as i32, opt_ptr(weight));
        unsafe {
            dev.launch(
                "batchnorm",
                "bn_bwd_dx_f32",
                grid_1d(total),
                (BLOCK, 1, 1),
                0,
                &mut kargs![
                    t,
                    c,
                    hw,
                    m,
                    train,
                    g.ptr(),
                    x.ptr(),
                    mean.ptr(),
                    invstd.ptr(),
                    pw,
                    sg.ptr(),
                    sgxhat.ptr(),
                    dx.ptr()
                ],
            )?
        };
    }
    Ok(())
}
