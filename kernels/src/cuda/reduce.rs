//! Launch wrapper of `kernels/cuda/reduce.cu`: sums over a set of axes.

use super::alloc::CudaBuf;
use super::elementwise::strides;
use super::error::{CudaError, CudaResult};
use super::launch::{grid_1d, grid_blocks, i32_of, same_device, BLOCK};
use crate::kargs;

const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy)]
struct ReduceDesc {
    kept_rank: i32,
    kept_dims: [i32; MAX_RANK],
    kept_strides: [i32; MAX_RANK],
    red_rank: i32,
    red_dims: [i32; MAX_RANK],
    red_strides: [i32; MAX_RANK],
}

/// `y[o] = scale * sum over the axes with reduced[i] of x`, `x` contiguous with dims `dims`; `y`
/// holds the kept elements in row-major order (the layout of the keepdim result).
pub fn sum_axes(x: &CudaBuf, dims: &[usize], reduced: &[bool], scale: f32, y: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("sum_axes", &[x, y])?;
    if reduced.len() != dims.len() {
        return Err(CudaError::invalid("sum_axes: one flag per dim expected"));
    }
    let st = strides(dims);
    let mut d = ReduceDesc {
        kept_rank: 0,
        kept_dims: [1; MAX_RANK],
        kept_strides: [0; MAX_RANK],
        red_rank: 0,
        red_dims: [1; MAX_RANK],
        red_strides: [0; MAX_RANK],
    };
    let (mut n_out, mut n_red) = (1usize, 1usize);
    for i in 0..dims.len() {
        if dims[i] == 1 {
            continue; // size-1 dims never move an index
        }
        if reduced[i] {
            if d.red_rank as usize == MAX_RANK {
                return Err(CudaError::invalid("sum_axes: too many reduced dims"));
            }
            d.red_dims[d.red_rank as usize] = i32_of(dims[i], "sum_axes")?;
            d.red_strides[d.red_rank as usize] = i32_of(st[i], "sum_axes")?;
            d.red_rank += 1;
            n_red *= dims[i];
        } else {
            if d.kept_rank as usize == MAX_RANK {
                return Err(CudaError::invalid("sum_axes: too many kept dims"));
            }
            d.kept_dims[d.kept_rank as usize] = i32_of(dims[i], "sum_axes")?;
            d.kept_strides[d.kept_rank as usize] = i32_of(st[i], "sum_axes")?;
            d.kept_rank += 1;
            n_out *= dims[i];
        }
    }
    let numel: usize = dims.iter().product();
    if numel == 0 {
        // Empty input: sums of nothing are 0 (n_out may still be > 0).
        let n_out: usize = dims.iter().zip(reduced).map(|(&s, &r)| if r { 1 } else { s }).product();
        return super::elementwise::fill(y, n_out, 0.0);
    }
    x.expect_len::<f32>(numel, "sum_axes input")?;
    y.expect_len::<f32>(n_out, "sum_axes output")?;
    let (no, nr) = (i32_of(n_out, "sum_axes")?, i32_of(n_red, "sum_axes")?);
    // Long reductions: a block per output; short ones: a thread per output.
    let (name, grid) = if n_red >= BLOCK as usize {
        ("reduce_block_f32", grid_blocks(n_out))
    } else {
        ("reduce_thread_f32", grid_1d(n_out))
    };
    unsafe { dev.launch("reduce", name, grid, (BLOCK, 1, 1), 0, &mut kargs![no, nr, scale, d, x.ptr(), y.ptr()]) }
}
