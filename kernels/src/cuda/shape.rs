//! Launch wrappers of `kernels/cuda/shape.cu`: permute, and the row copies behind concat/split.

use super::alloc::CudaBuf;
use super::elementwise::strides;
use super::error::{CudaError, CudaResult};
use super::launch::{grid_1d, i32_of, same_device, BLOCK};
use crate::kargs;

const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy)]
struct PermDesc {
    rank: i32,
    out_dims: [i32; MAX_RANK],
    in_strides: [i32; MAX_RANK],
}

/// `y` = `x` (dims `dims`) with output dim `d` being input dim `perm[d]`, contiguous.
pub fn permute(x: &CudaBuf, dims: &[usize], perm: &[usize], y: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("permute", &[x, y])?;
    let n: usize = dims.iter().product();
    x.expect_len::<f32>(n, "permute input")?;
    y.expect_len::<f32>(n, "permute output")?;
    let st = strides(dims);
    // Size-1 output dims never move an index; dropping them keeps higher ranks under MAX_RANK.
    let keep: Vec<usize> = perm.iter().copied().filter(|&p| dims[p] != 1).collect();
    if keep.len() > MAX_RANK {
        return Err(CudaError::invalid(format!("permute: rank {} above the CUDA kernels' {MAX_RANK}", keep.len())));
    }
    let mut d = PermDesc { rank: keep.len() as i32, out_dims: [1; MAX_RANK], in_strides: [0; MAX_RANK] };
    for (j, &p) in keep.iter().enumerate() {
        d.out_dims[j] = i32_of(dims[p], "permute")?;
        d.in_strides[j] = i32_of(st[p], "permute")?;
    }
    let n32 = i32_of(n, "permute")?;
    unsafe { dev.launch("shape", "permute_f32", grid_1d(n), (BLOCK, 1, 1), 0, &mut kargs![n32, d, x.ptr(), y.ptr()]) }
}

/// For `r < rows`, `j < row_len`: `dst[r*dst_stride + dst_off + j] = src[r*src_stride + src_off + j]`.
#[allow(clippy::too_many_arguments)]
pub fn copy_rows(
    src: &CudaBuf,
    src_stride: usize,
    src_off: usize,
    dst: &mut CudaBuf,
    dst_stride: usize,
    dst_off: usize,
    rows: usize,
    row_len: usize,
) -> CudaResult<()> {
    let dev = same_device("copy_rows", &[src, dst])?;
    if rows == 0 || row_len == 0 {
        return Ok(());
    }
    src.expect_len::<f32>((rows - 1) * src_stride + src_off + row_len, "copy_rows source")?;
    dst.expect_len::<f32>((rows - 1) * dst_stride + dst_off + row_len, "copy_rows destination")?;
    let v = |x: usize| i32_of(x, "copy_rows");
    let (r, l, ss, so, ds, dof) = (v(rows)?, v(row_len)?, v(src_stride)?, v(src_off)?, v(dst_stride)?, v(dst_off)?);
    i32_of(rows * row_len, "copy_rows")?;
    unsafe {
        dev.launch(
            "shape",
            "copy_rows_f32",
            grid_1d(rows * row_len),
            (BLOCK, 1, 1),
            0,
            &mut kargs![r, l, src.ptr(), ss, so, dst.ptr(), ds, dof],
        )
    }
}
