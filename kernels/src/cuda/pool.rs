//! Launch wrappers of `kernels/cuda/pool.cu`: max pool (with argmax) and global average pool, with
//! the CPU kernels' [`Pool2dGeom`] and argmax convention (`iy * W + ix` within the plane, `u32`).

use super::alloc::CudaBuf;
use super::error::{CudaError, CudaResult};
use super::launch::{grid_1d, grid_blocks, i32_of, same_device, BLOCK};
use crate::cpu::pool::Pool2dGeom;
use crate::kargs;

#[repr(C)]
#[derive(Clone, Copy)]
struct PoolGeomC {
    planes: i32,
    h: i32,
    w: i32,
    oh: i32,
    ow: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    ph: i32,
    pw: i32,
}

fn geom(g: &Pool2dGeom) -> CudaResult<(PoolGeomC, usize)> {
    let (oh, ow) = g.out_hw().ok_or_else(|| CudaError::invalid(format!("max_pool2d: invalid geometry {g:?}")))?;
    let v = |x: usize| i32_of(x, "max_pool2d");
    i32_of(g.planes * g.h * g.w, "max_pool2d")?;
    let c = PoolGeomC {
        planes: v(g.planes)?,
        h: v(g.h)?,
        w: v(g.w)?,
        oh: v(oh)?,
        ow: v(ow)?,
        kh: v(g.kernel[0])?,
        kw: v(g.kernel[1])?,
        sh: v(g.stride[0])?,
        sw: v(g.stride[1])?,
        ph: v(g.padding[0])?,
        pw: v(g.padding[1])?,
    };
    Ok((c, g.planes * oh * ow))
}

/// Max pool forward: `y` and `argmax` (`u32`, one per output).
pub fn max_pool2d_forward(g: &Pool2dGeom, x: &CudaBuf, y: &mut CudaBuf, argmax: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("max_pool2d", &[x, y, argmax])?;
    let (c, n_out) = geom(g)?;
    x.expect_len::<f32>(g.planes * g.h * g.w, "max_pool2d x")?;
    y.expect_len::<f32>(n_out, "max_pool2d y")?;
    argmax.expect_len::<u32>(n_out, "max_pool2d argmax")?;
    unsafe {
        dev.launch(
            "pool",
            "max_pool2d_fwd_f32",
            grid_1d(n_out),
            (BLOCK, 1, 1),
            0,
            &mut kargs![c, x.ptr(), y.ptr(), argmax.ptr()],
        )
    }
}

/// Max pool backward: `dx` (overwritten) gathers `dy` of the windows whose argmax it is.
pub fn max_pool2d_backward(g: &Pool2dGeom, argmax: &CudaBuf, gy: &CudaBuf, dx: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("max_pool2d backward", &[argmax, gy, dx])?;
    let (c, n_out) = geom(g)?;
    let n_in = g.planes * g.h * g.w;
    argmax.expect_len::<u32>(n_out, "max_pool2d argmax")?;
    gy.expect_len::<f32>(n_out, "max_pool2d dy")?;
    dx.expect_len::<f32>(n_in, "max_pool2d dx")?;
    unsafe {
        dev.launch(
            "pool",
            "max_pool2d_bwd_f32",
            grid_1d(n_in),
            (BLOCK, 1, 1),
            0,
            &mut kargs![c, argmax.ptr(), gy.ptr(), dx.ptr()],
        )
    }
}

/// `y[p] = mean of plane p` over `planes` planes of `hw` elements.
pub fn global_avg_pool_forward(planes: usize, hw: usize, x: &CudaBuf, y: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("global_avg_pool2d", &[x, y])?;
    x.expect_len::<f32>(planes * hw, "global_avg_pool2d x")?;
    y.expect_len::<f32>(planes, "global_avg_pool2d y")?;
    let (p, h) = (i32_of(planes, "gap")?, i32_of(hw, "gap")?);
    unsafe {
        dev.launch("pool", "gap_fwd_f32", grid_blocks(planes), (BLOCK, 1, 1), 0, &mut kargs![p, h, x.ptr(), y.ptr()])
    }
}

/// `dx[p, i] = dy[p] / hw`.
pub fn global_avg_pool_backward(planes: usize, hw: usize, gy: &CudaBuf, dx: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("global_avg_pool2d backward", &[gy, dx])?;
    gy.expect_len::<f32>(planes, "global_avg_pool2d dy")?;
    dx.expect_len::<f32>(planes * hw, "global_avg_pool2d dx")?;
    let (p, h) = (i32_of(planes, "gap")?, i32_of(hw, "gap")?);
    i32_of(planes * hw, "gap")?;
    unsafe {
        dev.launch("pool", "gap_bwd_f32", grid_1d(planes * hw), (BLOCK, 1, 1), 0, &mut kargs![p, h, gy.ptr(), dx.ptr()])
    }
}
