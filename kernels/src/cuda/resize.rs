//! Launch wrappers of `kernels/cuda/resize.cu`: bilinear resize forward and backward.
//!
//! The taps come from the CPU kernel's [`linear_taps`] (f32), uploaded as small per-axis tables,
//! so both backends use bit-identical source indices and weights. The backward's gather tables
//! (for each input index: the outputs that read it, with their weights) are built on the host.

use super::alloc::CudaBuf;
use super::device::CudaDevice;
use super::error::CudaResult;
use super::launch::{grid_1d, i32_of, same_device, BLOCK};
use crate::cpu::resize::{linear_taps, ResizeDims, Tap};
use crate::kargs;

/// Per-axis forward taps on the device.
struct AxisTaps {
    i0: CudaBuf,
    i1: CudaBuf,
    l0: CudaBuf,
    l1: CudaBuf,
}

fn upload_taps(dev: &'static CudaDevice, t: &[Tap<f32>]) -> CudaResult<AxisTaps> {
    let i0: Vec<i32> = t.iter().map(|t| t.i0 as i32).collect();
    let i1: Vec<i32> = t.iter().map(|t| t.i1 as i32).collect();
    let l0: Vec<f32> = t.iter().map(|t| t.l0).collect();
    let l1: Vec<f32> = t.iter().map(|t| t.l1).collect();
    Ok(AxisTaps { i0: dev.upload(&i0)?, i1: dev.upload(&i1)?, l0: dev.upload(&l0)?, l1: dev.upload(&l1)? })
}

/// CSR transpose of the taps: for input index `i`, entries `off[i]..off[i+1]` of `(out index, weight)`,
/// in ascending output order (`i0` before `i1` for the same output).
fn gather_table(input: usize, t: &[Tap<f32>]) -> (Vec<i32>, Vec<i32>, Vec<f32>) {
    let mut lists: Vec<Vec<(i32, f32)>> = vec![Vec::new(); input];
    for (o, tap) in t.iter().enumerate() {
        lists[tap.i0].push((o as i32, tap.l0));
        lists[tap.i1].push((o as i32, tap.l1));
    }
    let mut off = Vec::with_capacity(input + 1);
    let (mut idx, mut wt) = (Vec::new(), Vec::new());
    off.push(0);
    for l in lists {
        for (o, w) in l {
            idx.push(o);
            wt.push(w);
        }
        off.push(idx.len() as i32);
    }
    (off, idx, wt)
}

fn check(d: ResizeDims) -> CudaResult<()> {
    i32_of(d.planes * d.ih * d.iw, "resize_bilinear input")?;
    i32_of(d.planes * d.oh * d.ow, "resize_bilinear output")?;
    i32_of(d.planes * d.oh * d.iw, "resize_bilinear scratch")?;
    Ok(())
}

/// Bilinear forward (`F.interpolate(mode="bilinear", align_corners)`), `y` overwritten.
pub fn bilinear_forward(d: ResizeDims, align_corners: bool, x: &CudaBuf, y: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("resize_bilinear", &[x, y])?;
    check(d)?;
    x.expect_len::<f32>(d.planes * d.ih * d.iw, "resize x")?;
    y.expect_len::<f32>(d.planes * d.oh * d.ow, "resize y")?;
    if d.ih == 0 || d.iw == 0 || d.oh == 0 || d.ow == 0 || d.planes == 0 {
        return Ok(());
    }
    let th = upload_taps(dev, &linear_taps::<f32>(d.ih, d.oh, align_corners))?;
    let tw = upload_taps(dev, &linear_taps::<f32>(d.iw, d.ow, align_corners))?;
    let v = |x: usize| x as i32;
    let (p, ih, iw, oh, ow) = (v(d.planes), v(d.ih), v(d.iw), v(d.oh), v(d.ow));
    unsafe {
        dev.launch(
            "resize",
            "bilinear_fwd_f32",
            grid_1d(d.planes * d.oh * d.ow),
            (BLOCK, 1, 1),
            0,
            &mut kargs![
                p,
                ih,
                iw,
                oh,
                ow,
                th.i0.ptr(),
                th.i1.ptr(),
                th.l0.ptr(),
                th.l1.ptr(),
                tw.i0.ptr(),
                tw.i1.ptr(),
                tw.l0.ptr(),
                tw.l1.ptr(),
                x.ptr(),
                y.ptr()
            ],
        )
    }
}

/// Bilinear backward: `dx` (overwritten) = transpose of the forward applied to `g`.
pub fn bilinear_backward(d: ResizeDims, align_corners: bool, g: &CudaBuf, dx: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("resize_bilinear backward", &[g, dx])?;
    check(d)?;
    g.expect_len::<f32>(d.planes * d.oh * d.ow, "resize dy")?;
    dx.expect_len::<f32>(d.planes * d.ih * d.iw, "resize dx")?;
    if d.ih == 0 || d.iw == 0 || d.planes == 0 {
        return Ok(());
    }
    if d.oh == 0 || d.ow == 0 {
        return dx.memset_zero();
    }
    let (ho, hi, hw) = gather_table(d.ih, &linear_taps::<f32>(d.ih, d.oh, align_corners));
    let (wo, wi, ww) = gather_table(d.iw, &linear_taps::<f32>(d.iw, d.ow, align_corners));
    let (ho, hi, hw) = (dev.upload(&ho)?, dev.upload(&hi)?, dev.upload(&hw)?);
    let (wo, wi, ww) = (dev.upload(&wo)?, dev.upload(&wi)?, dev.upload(&ww)?);
    let tmp = dev.alloc(d.planes * d.oh * d.iw * 4)?;
    let v = |x: usize| x as i32;
    let (rows, p, ih, iw, oh, ow) = (v(d.planes * d.oh), v(d.planes), v(d.ih), v(d.iw), v(d.oh), v(d.ow));
    unsafe {
        dev.launch(
            "resize",
            "bilinear_bwd_w_f32",
            grid_1d(d.planes * d.oh * d.iw),
            (BLOCK, 1, 1),
            0,
            &mut kargs![rows, iw, ow, wo.ptr(), wi.ptr(), ww.ptr(), g.ptr(), tmp.ptr()],
        )?;
        dev.launch(
            "resize",
            "bilinear_bwd_h_f32",
            grid_1d(d.planes * d.ih * d.iw),
            (BLOCK, 1, 1),
            0,
            &mut kargs![p, ih, iw, oh, ho.ptr(), hi.ptr(), hw.ptr(), tmp.ptr(), dx.ptr()],
        )
    }
}
