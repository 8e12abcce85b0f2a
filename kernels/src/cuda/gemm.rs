//! Launch wrapper of `kernels/cuda/gemm.cu`: batched strided SGEMM (f32 tiles, or TF32 tensor
//! cores when [`super::set_tf32`] is on).

use super::alloc::CudaBuf;
use super::device::tf32_enabled;
use super::error::{CudaError, CudaResult};
use super::launch::{f32_at, i32_of, same_device};
use crate::kargs;

/// One batched product `C[b] = alpha A[b] B[b] + beta C[b]`, `A[b]` is `m x k`, `B[b]` `k x n`,
/// `C[b]` `m x n`. Strides are in elements: element `(i, p)` of `A[b]` is at
/// `a_off + b*a_bs + i*a_rs + p*a_cs`. A transposed operand is a view with swapped strides; an
/// operand shared by every batch has batch stride 0. `C` rows are `c_rs` apart, columns adjacent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gemm {
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Number of products.
    pub batch: usize,
    /// `A` row, column and batch strides, and element offset.
    pub a: (usize, usize, usize, usize),
    /// `B` row, column and batch strides, and element offset.
    pub b: (usize, usize, usize, usize),
    /// `C` row and batch strides, and element offset.
    pub c: (usize, usize, usize),
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old `C` (0 never reads `C`).
    pub beta: f32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct GemmDesc {
    m: i32,
    n: i32,
    k: i32,
    a_rs: i32,
    a_cs: i32,
    a_bs: i32,
    b_rs: i32,
    b_cs: i32,
    b_bs: i32,
    c_rs: i32,
    c_bs: i32,
    alpha: f32,
    beta: f32,
}

/// Largest element index touched, plus one.
fn extent(off: usize, batch: usize, bs: usize, rows: usize, rs: usize, cols: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 || batch == 0 {
        return off;
    }
    off + (batch - 1) * bs + (rows - 1) * rs + (cols - 1) * cs + 1
}

/// Run `g` on the buffers (f32). Checks that every access is inside its buffer.
pub fn sgemm(g: &Gemm, a: &CudaBuf, b: &CudaBuf, c: &mut CudaBuf) -> CudaResult<()> {
    let dev = same_device("sgemm", &[a, b, c])?;
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    a.expect_len::<f32>(extent(g.a.3, g.batch, g.a.2, g.m, g.a.0, g.k, g.a.1), "sgemm A")?;
    b.expect_len::<f32>(extent(g.b.3, g.batch, g.b.2, g.k, g.b.0, g.n, g.b.1), "sgemm B")?;
    c.expect_len::<f32>(extent(g.c.2, g.batch, g.c.1, g.m, g.c.0, g.n, 1), "sgemm C")?;
    if g.batch > 65535 {
        return Err(CudaError::invalid(format!("sgemm: batch {} above the grid's z limit 65535", g.batch)));
    }
    let d = GemmDesc {
        m: i32_of(g.m, "sgemm m")?,
        n: i32_of(g.n, "sgemm n")?,
        k: i32_of(g.k, "sgemm k")?,
        a_rs: i32_of(g.a.0, "sgemm")?,
        a_cs: i32_of(g.a.1, "sgemm")?,
        a_bs: i32_of(g.a.2, "sgemm")?,
        b_rs: i32_of(g.b.0, "sgemm")?,
        b_cs: i32_of(g.b.1, "sgemm")?,
        b_bs: i32_of(g.b.2, "sgemm")?,
        c_rs: i32_of(g.c.0, "sgemm")?,
        c_bs: i32_of(g.c.1, "sgemm")?,
        alpha: g.alpha,
        beta: g.beta,
    };
    let grid = (g.n.div_ceil(64) as u32, g.m.div_ceil(64) as u32, g.batch as u32);
    let (pa, pb, pc) = (f32_at(a, g.a.3), f32_at(b, g.b.3), f32_at(c, g.c.2));
    let (name, threads) = if tf32_enabled() { ("sgemm_tf32", 128) } else { ("sgemm_f32", 256) };
    unsafe { dev.launch("gemm", name, grid, (threads, 1, 1), 0, &mut kargs![d, pa, pb, pc]) }
}
