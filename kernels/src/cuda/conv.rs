//! Launch wrappers of `kernels/cuda/conv.cu`: conv2d forward and the three gradients as im2col +
//! batched SGEMM (over groups), with the same [`Conv2dGeom`] as the CPU kernels.
//!
//! Per image: `col = im2col(x_n)` (`[C_in kH kW, OH OW]`, skipped for a 1x1 stride-1 unpadded
//! conv), `y_n[g] = W_g col_g`. Backward: `dcol_g = W_g^T dy_n[g]`, `dx_n = col2im(dcol)`
//! (a gather, deterministic); `dW_g += dy_n[g] col_g^T` over images; `db = sum_{n, pixels} dy`.

use super::alloc::CudaBuf;
use super::error::{CudaError, CudaResult};
use super::gemm::{sgemm, Gemm};
use super::launch::{f32_at, grid_1d, i32_of, same_device, BLOCK};
use crate::cpu::conv::Conv2dGeom;
use crate::kargs;

#[repr(C)]
#[derive(Clone, Copy)]
struct ConvGeomC {
    c: i32,
    h: i32,
    w: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    ph: i32,
    pw: i32,
    dh: i32,
    dw: i32,
    oh: i32,
    ow: i32,
}

struct Sizes {
    cog: usize,
    kg: usize,
    ohw: usize,
    direct: bool,
    c: ConvGeomC,
}

fn sizes(g: &Conv2dGeom) -> CudaResult<Sizes> {
    let (oh, ow) = g.out_hw().ok_or_else(|| CudaError::invalid(format!("conv2d: invalid geometry {g:?}")))?;
    if g.groups == 0 || g.c_in % g.groups != 0 || g.c_out % g.groups != 0 {
        return Err(CudaError::invalid(format!("conv2d: groups {} do not divide the channels", g.groups)));
    }
    let v = |x: usize| i32_of(x, "conv2d");
    let c = ConvGeomC {
        c: v(g.c_in)?,
        h: v(g.h)?,
        w: v(g.w)?,
        kh: v(g.kh)?,
        kw: v(g.kw)?,
        sh: v(g.stride[0])?,
        sw: v(g.stride[1])?,
        ph: v(g.padding[0])?,
        pw: v(g.padding[1])?,
        dh: v(g.dilation[0])?,
        dw: v(g.dilation[1])?,
        oh: v(oh)?,
        ow: v(ow)?,
    };
    let (cig, cog) = (g.c_in / g.groups, g.c_out / g.groups);
    let direct = g.kh == 1 && g.kw == 1 && g.stride == [1, 1] && g.padding == [0, 0];
    i32_of(g.c_in * g.kh * g.kw * oh * ow, "conv2d columns")?;
    Ok(Sizes { cog, kg: cig * g.kh * g.kw, ohw: oh * ow, direct, c })
}

fn check_lens(g: &Conv2dGeom, s: &Sizes, x: &CudaBuf, w: &CudaBuf, y: &CudaBuf) -> CudaResult<()> {
    x.expect_len::<f32>(g.n * g.c_in * g.h * g.w, "conv2d x")?;
    w.expect_len::<f32>(g.c_out * s.kg, "conv2d w")?;
    y.expect_len::<f32>(g.n * g.c_out * s.ohw, "conv2d y")
}

fn im2col(
    s: &Sizes,
    x: &CudaBuf,
    x_off: usize,
    col: &mut CudaBuf,
    c_in: usize,
    kh: usize,
    kw: usize,
) -> CudaResult<()> {
    let dev = x.device();
    let (gc, px, pc) = (s.c, f32_at(x, x_off), col.ptr());
    unsafe {
        dev.launch("conv", "im2col_f32", grid_1d(c_in * kh * kw * s.ohw), (BLOCK, 1, 1), 0, &mut kargs![gc, px, pc])
    }
}

/// The `B` operand of the per-image GEMMs: image `n`'s im2col columns, written into one buffer
/// reused image after image, or the image itself for a direct (1x1, stride 1, unpadded) convolution.
struct ImageColumns(Option<CudaBuf>);

impl ImageColumns {
    fn new(s: &Sizes, g: &Conv2dGeom, x: &CudaBuf) -> CudaResult<Self> {
        let col = if s.direct { None } else { Some(x.device().alloc(g.c_in * g.kh * g.kw * s.ohw * 4)?) };
        Ok(ImageColumns(col))
    }

    /// The operand and its element offset.
    fn image<'a>(
        &'a mut self,
        s: &Sizes,
        g: &Conv2dGeom,
        x: &'a CudaBuf,
        n: usize,
    ) -> CudaResult<(&'a CudaBuf, usize)> {
        let x_off = n * g.c_in * g.h * g.w;
        match self.0.as_mut() {
            Some(c) => {
                im2col(s, x, x_off, c, g.c_in, g.kh, g.kw)?;
                Ok((&*c, 0))
            }
            None => Ok((x, x_off)),
        }
    }
}

/// `y = conv2d(x, w) + bias` (NCHW, `w: [C_out, C_in/G, kH, kW]`). `y` is overwritten.
pub fn conv2d_forward(
    g: &Conv2dGeom,
    x: &CudaBuf,
    w: &CudaBuf,
    bias: Option<&CudaBuf>,
    y: &mut CudaBuf,
) -> CudaResult<()> {
    let dev = same_device("conv2d", &[x, w, y])?;
    let s = sizes(g)?;
    check_lens(g, &s, x, w, y)?;
    let mut cols = ImageColumns::new(&s, g, x)?;
    for n in 0..g.n {
        let (bsrc, b_off) = cols.image(&s, g, x, n)?;
        let spec = Gemm {
            m: s.cog,
            n: s.ohw,
            k: s.kg,
            batch: g.groups,
            a: (s.kg, 1, s.cog * s.kg, 0),
            b: (s.ohw, 1, s.kg * s.ohw, b_off),
            c: (s.ohw, s.cog * s.ohw, n * g.c_out * s.ohw),
            alpha: 1.0,
            beta: 0.0,
        };
        sgemm(&spec, w, bsrc, y)?;
    }
    if let Some(b) = bias {
        same_device("conv2d bias", &[b, y])?;
        b.expect_len::<f32>(g.c_out, "conv2d bias")?;
        let total = g.n * g.c_out * s.ohw;
        let (t, co, hw) = (i32_of(total, "conv2d")?, i32_of(g.c_out, "conv2d")?, i32_of(s.ohw, "conv2d")?);
        unsafe {
            dev.launch(
                "conv",
                "bias_add_f32",
                grid_1d(total),
                (BLOCK, 1, 1),
                0,
                &mut kargs![t, co, hw, b.ptr(), y.ptr()],
            )?
        };
    }
    Ok(())
}

/// `dx` from `dy` (overwritten).
pub fn conv2d_backward_input(g: &Conv2dGeom, w: &CudaBuf, gy: &CudaBuf, dx: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("conv2d backward input", &[w, gy, dx])?;
    let s = sizes(g)?;
    check_lens(g, &s, dx, w, gy)?;
    let mut dcol = if s.direct { None } else { Some(dev.alloc(g.c_in * g.kh * g.kw * s.ohw * 4)?) };
    for n in 0..g.n {
        let x_off = n * g.c_in * g.h * g.w;
        let spec = |c_off: usize| Gemm {
            m: s.kg,
            n: s.ohw,
            k: s.cog,
            batch: g.groups,
            a: (1, s.kg, s.cog * s.kg, 0),
            b: (s.ohw, 1, s.cog * s.ohw, n * g.c_out * s.ohw),
            c: (s.ohw, s.kg * s.ohw, c_off),
            alpha: 1.0,
            beta: 0.0,
        };
        match dcol.as_mut() {
            None => sgemm(&spec(x_off), w, gy, dx)?,
            Some(dc) => {
                sgemm(&spec(0), w, gy, dc)?;
                let (gc, pc, px) = (s.c, dc.ptr(), f32_at(dx, x_off));
                unsafe {
                    dev.launch(
                        "conv",
                        "col2im_f32",
                        grid_1d(g.c_in * g.h * g.w),
                        (BLOCK, 1, 1),
                        0,
                        &mut kargs![gc, pc, px],
                    )?
                };
            }
        }
    }
    Ok(())
}

/// `dw = sum_n dy_n col_n^T` per group (overwritten).
pub fn conv2d_backward_weight(g: &Conv2dGeom, x: &CudaBuf, gy: &CudaBuf, dw: &mut CudaBuf) -> CudaResult<()> {
    same_device("conv2d backward weight", &[x, gy, dw])?;
    let s = sizes(g)?;
    check_lens(g, &s, x, dw, gy)?;
    if g.n == 0 {
        return dw.memset_zero();
    }
    let mut cols = ImageColumns::new(&s, g, x)?;
    for n in 0..g.n {
        let (bsrc, b_off) = cols.image(&s, g, x, n)?;
        let spec = Gemm {
            m: s.cog,
            n: s.kg,
            k: s.ohw,
            batch: g.groups,
            a: (s.ohw, 1, s.cog * s.ohw, n * g.c_out * s.ohw),
            b: (1, s.ohw, s.kg * s.ohw, b_off),
            c: (s.kg, s.cog * s.kg, 0),
            alpha: 1.0,
            beta: if n == 0 { 0.0 } else { 1.0 },
        };
        sgemm(&spec, gy, bsrc, dw)?;
    }
    Ok(())
}

/// `db[o] = sum_{n, pixels} dy[n, o]` (overwritten).
pub fn conv2d_backward_bias(g: &Conv2dGeom, gy: &CudaBuf, db: &mut CudaBuf) -> CudaResult<()> {
    let s = sizes(g)?;
    super::reduce::sum_axes(gy, &[g.n, g.c_out, s.ohw], &[true, false, true], 1.0, db)
}
