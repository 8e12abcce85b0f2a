//! Launch wrappers of `kernels/cuda/elementwise.cu`: unary maps, broadcasting binary ops, fill,
//! and the dropout mask. Buffers hold f32 elements; the output is `&mut`, inputs are `&`.

use super::alloc::CudaBuf;
use super::error::{CudaError, CudaResult};
use super::launch::{grid_1d, i32_of, same_device, BLOCK};
use crate::kargs;

const MAX_RANK: usize = 8;

/// Unary op codes of `unary_f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum UnaryOp {
    /// `-x`
    Neg = 0,
    /// `e^x`
    Exp = 1,
    /// `ln x`
    Log = 2,
    /// `sqrt x`
    Sqrt = 3,
    /// `max(x, 0)`
    Relu = 4,
    /// `alpha x + beta`
    Affine = 5,
}

/// Binary op codes of `binary_f32` (`a`, `b` the broadcast operands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum BinaryOp {
    /// `a + b`
    Add = 0,
    /// `a - b`
    Sub = 1,
    /// `a * b`
    Mul = 2,
    /// `a / b`
    Div = 3,
    /// `-a / b^2`
    NegDivSq = 4,
    /// `a / (2 b)`
    HalfDiv = 5,
    /// `b > 0 ? a : 0`
    ReluMask = 6,
    /// `alpha * b`
    ScaleB = 7,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Bcast {
    rank: i32,
    dims: [i32; MAX_RANK],
    sa: [i32; MAX_RANK],
    sb: [i32; MAX_RANK],
}

/// `y[i] = op(x[i])` for `i < n`.
pub fn unary(x: &CudaBuf, y: &mut CudaBuf, n: usize, op: UnaryOp, alpha: f32, beta: f32) -> CudaResult<()> {
    let dev = same_device("unary", &[x, y])?;
    x.expect_len::<f32>(n, "unary input")?;
    y.expect_len::<f32>(n, "unary output")?;
    let (n32, op32) = (i32_of(n, "unary")?, op as i32);
    unsafe {
        dev.launch(
            "elementwise",
            "unary_f32",
            grid_1d(n),
            (BLOCK, 1, 1),
            0,
            &mut kargs![n32, op32, alpha, beta, x.ptr(), y.ptr()],
        )
    }
}

pub(crate) fn row_major_strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Strides of `dims` inside the broadcast shape `out` (0 along stretched dimensions).
fn bcast_strides(dims: &[usize], out: &[usize]) -> Vec<usize> {
    let s = row_major_strides(dims);
    let off = out.len() - dims.len();
    (0..out.len()).map(|i| if i < off || dims[i - off] == 1 { 0 } else { s[i - off] }).collect()
}

/// `z = op(a, b)` with NumPy broadcasting of `a_dims` and `b_dims` to `out_dims` (which the caller
/// has validated). `alpha` is used by [`BinaryOp::ScaleB`].
#[allow(clippy::too_many_arguments)]
pub fn binary(
    a: &CudaBuf,
    a_dims: &[usize],
    b: &CudaBuf,
    b_dims: &[usize],
    z: &mut CudaBuf,
    out_dims: &[usize],
    op: BinaryOp,
    alpha: f32,
) -> CudaResult<()> {
    let dev = same_device("binary", &[a, b, z])?;
    let n: usize = out_dims.iter().product();
    a.expect_len::<f32>(a_dims.iter().product(), "binary lhs")?;
    b.expect_len::<f32>(b_dims.iter().product(), "binary rhs")?;
    z.expect_len::<f32>(n, "binary output")?;
    if a_dims.len() > out_dims.len() || b_dims.len() > out_dims.len() {
        return Err(CudaError::invalid(format!("binary: {a_dims:?} and {b_dims:?} do not broadcast to {out_dims:?}")));
    }
    let (n32, op32) = (i32_of(n, "binary")?, op as i32);
    if a_dims == out_dims && b_dims == out_dims {
        return unsafe {
            dev.launch(
                "elementwise",
                "binary_same_f32",
                grid_1d(n),
                (BLOCK, 1, 1),
                0,
                &mut kargs![n32, op32, alpha, a.ptr(), b.ptr(), z.ptr()],
            )
        };
    }
    // Drop size-1 output dims (they never move an index) so higher ranks still fit MAX_RANK.
    let (sa, sb) = (bcast_strides(a_dims, out_dims), bcast_strides(b_dims, out_dims));
    let keep: Vec<usize> = (0..out_dims.len()).filter(|&i| out_dims[i] != 1).collect();
    if keep.len() > MAX_RANK {
        return Err(CudaError::invalid(format!("binary: rank {} above the CUDA kernels' {MAX_RANK}", keep.len())));
    }
    let mut s = Bcast { rank: keep.len() as i32, dims: [1; MAX_RANK], sa: [0; MAX_RANK], sb: [0; MAX_RANK] };
    for (j, &i) in keep.iter().enumerate() {
        s.dims[j] = i32_of(out_dims[i], "binary")?;
        s.sa[j] = sa[i] as i32;
        s.sb[j] = sb[i] as i32;
    }
    unsafe {
        dev.launch(
            "elementwise",
            "binary_f32",
            grid_1d(n),
            (BLOCK, 1, 1),
            0,
            &mut kargs![n32, op32, alpha, s, a.ptr(), b.ptr(), z.ptr()],
        )
    }
}

/// `y[i] = v` for `i < n`.
pub fn fill(y: &mut CudaBuf, n: usize, v: f32) -> CudaResult<()> {
    let dev = same_device("fill", &[y])?;
    y.expect_len::<f32>(n, "fill")?;
    let n32 = i32_of(n, "fill")?;
    unsafe { dev.launch("elementwise", "fill_f32", grid_1d(n), (BLOCK, 1, 1), 0, &mut kargs![n32, v, y.ptr()]) }
}

/// Dropout: `y[i] = keep[i] ? x[i] * scale : 0`, `keep` a u8 mask of `n` bytes.
pub fn mask_scale(x: &CudaBuf, keep: &CudaBuf, y: &mut CudaBuf, n: usize, scale: f32) -> CudaResult<()> {
    let dev = same_device("mask_scale", &[x, keep, y])?;
    x.expect_len::<f32>(n, "dropout input")?;
    keep.expect_len::<u8>(n, "dropout mask")?;
    y.expect_len::<f32>(n, "dropout output")?;
    let n32 = i32_of(n, "dropout")?;
    unsafe {
        dev.launch(
            "elementwise",
            "mask_scale_f32",
            grid_1d(n),
            (BLOCK, 1, 1),
            0,
            &mut kargs![n32, scale, x.ptr(), keep.ptr(), y.ptr()],
        )
    }
}

pub(crate) use row_major_strides as strides;
