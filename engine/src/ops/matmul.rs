//! Batched matrix multiply.
//!
//! `C[b] = A[b] B[b]` for `A: [..., m, k]`, `B: [..., k, n]` (batch dims equal, or `B` 2-D and
//! shared by every batch). Backward: `dA[b] = G[b] B[b]^T`, `dB[b] = A[b]^T G[b]` (summed over
//! the batch when `B` is shared). Transposes are strided views into the GEMM: no copies.
//! On CUDA the same views drive the batched SGEMM of `kernels/cuda/gemm.cu`; the shared-`B`
//! gradient is one product `A_flat^T G_flat` over the stacked `batch*m` rows.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};
use kernels::cpu::{gemm, Mat, MatMut};

struct Dims {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    b_shared: bool,
}

fn dims(a: &[usize], b: &[usize]) -> Result<Dims> {
    if a.len() < 2 || b.len() < 2 {
        return Err(Error::shape("matmul", format!("operands must be at least 2-D, got {a:?} and {b:?}")));
    }
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
    if k != k2 {
        return Err(Error::shape("matmul", format!("inner dimensions differ: {a:?} x {b:?}")));
    }
    let ab = &a[..a.len() - 2];
    let bb = &b[..b.len() - 2];
    let b_shared = bb.is_empty();
    if !b_shared && ab != bb {
        return Err(Error::shape("matmul", format!("batch dimensions differ: {a:?} x {b:?}")));
    }
    Ok(Dims { batch: ab.iter().product(), m, k, n, b_shared })
}

/// `out[b] = op(A[b]) op(B[b])` into a fresh buffer, where `ta`/`tb` transpose the operands.
#[allow(clippy::too_many_arguments)]
fn bmm<T: Element>(
    a: &[T],
    am: usize,
    ak: usize,
    ta: bool,
    b: &[T],
    bk: usize,
    bn: usize,
    tb: bool,
    batch: usize,
    a_shared: bool,
    b_shared: bool,
    accumulate_batch: bool,
) -> Vec<T> {
    // Logical shapes after transposition.
    let (m, k) = if ta { (ak, am) } else { (am, ak) };
    let n = if tb { bk } else { bn };
    let out_batches = if accumulate_batch { 1 } else { batch };
    let mut out = vec![T::ZERO; out_batches * m * n];
    for bi in 0..batch {
        let asl = if a_shared { a } else { &a[bi * am * ak..(bi + 1) * am * ak] };
        let bsl = if b_shared { b } else { &b[bi * bk * bn..(bi + 1) * bk * bn] };
        let av = if ta { Mat::rm(asl, am, ak).t() } else { Mat::rm(asl, am, ak) };
        let bv = if tb { Mat::rm(bsl, bk, bn).t() } else { Mat::rm(bsl, bk, bn) };
        let (o, beta) = if accumulate_batch {
            (&mut out[..], if bi == 0 { T::ZERO } else { T::ONE })
        } else {
            (&mut out[bi * m * n..(bi + 1) * m * n], T::ZERO)
        };
        debug_assert_eq!(av.cols, k);
        gemm(T::ONE, av, bv, beta, MatMut::rm(o, m, n));
    }
    out
}

struct MatmulBackward {
    a: Tensor,
    b: Tensor,
}

impl Backward for MatmulBackward {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn saved_bytes(&self) -> usize {
        self.a.nbytes() + self.b.nbytes()
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let d = dims(self.a.dims(), self.b.dims())?;
        #[cfg(feature = "cuda")]
        if let crate::Device::Cuda(_) = g.device() {
            return cuda_backward(&d, &self.a, &self.b, g, needs);
        }
        with_dtype!(g.dtype(), T, {
            let (gs, asl, bsl) =
                (g.cpu_slice::<T>("matmul")?, self.a.cpu_slice::<T>("matmul")?, self.b.cpu_slice::<T>("matmul")?);
            // dA = G B^T : [m,n] x [n,k]
            let da = needs[0].then(|| {
                let v = bmm::<T>(gs, d.m, d.n, false, bsl, d.k, d.n, true, d.batch, false, d.b_shared, false);
                Tensor::from_cpu(T::wrap(v), self.a.shape.clone())
            });
            // dB = A^T G : [k,m] x [m,n], summed over batches when B is shared.
            let db = needs[1].then(|| {
                let v = bmm::<T>(asl, d.m, d.k, true, gs, d.m, d.n, false, d.batch, false, false, d.b_shared);
                Tensor::from_cpu(T::wrap(v), self.b.shape.clone())
            });
            Ok(vec![da, db])
        })
    }
}

/// Batched matrix product `A B`. See the module docs for shapes and the backward.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType { op: "matmul", lhs: a.dtype(), rhs: b.dtype() });
    }
    if a.device() != b.device() {
        return Err(Error::Device { op: "matmul", msg: format!("{} vs {}", a.device(), b.device()) });
    }
    let d = dims(a.dims(), b.dims())?;
    let mut od = a.dims()[..a.rank() - 2].to_vec();
    od.extend([d.m, d.n]);
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = a.device() {
        let g = kernels::cuda::gemm::Gemm {
            m: d.m,
            n: d.n,
            k: d.k,
            batch: d.batch,
            a: (d.k, 1, d.m * d.k, 0),
            b: (d.n, 1, if d.b_shared { 0 } else { d.k * d.n }, 0),
            c: (d.n, d.m * d.n, 0),
            alpha: 1.0,
            beta: 0.0,
        };
        let out = crate::cuda::gemm("matmul", a, b, g, od)?;
        return record("matmul", &[a, b], out, || Box::new(MatmulBackward { a: a.detach(), b: b.detach() }));
    }
    let out = with_dtype!(a.dtype(), T, {
        let v = bmm::<T>(
            a.cpu_slice::<T>("matmul")?,
            d.m,
            d.k,
            false,
            b.cpu_slice::<T>("matmul")?,
            d.k,
            d.n,
            false,
            d.batch,
            false,
            d.b_shared,
            false,
        );
        Tensor::from_cpu(T::wrap(v), Shape(od))
    });
    record("matmul", &[a, b], out, || Box::new(MatmulBackward { a: a.detach(), b: b.detach() }))
}

/// CUDA gradients: `dA = G B^T` (batched), `dB = A^T G` (batched, or one product over the stacked
/// rows when `B` is shared by every batch).
#[cfg(feature = "cuda")]
fn cuda_backward(d: &Dims, a: &Tensor, b: &Tensor, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
    use kernels::cuda::gemm::Gemm;
    let da = if needs[0] {
        let spec = Gemm {
            m: d.m,
            n: d.k,
            k: d.n,
            batch: d.batch,
            a: (d.n, 1, d.m * d.n, 0),
            b: (1, d.n, if d.b_shared { 0 } else { d.k * d.n }, 0),
            c: (d.k, d.m * d.k, 0),
            alpha: 1.0,
            beta: 0.0,
        };
        Some(crate::cuda::gemm("matmul", g, b, spec, a.dims().to_vec())?)
    } else {
        None
    };
    let db = if needs[1] {
        let spec = if d.b_shared {
            Gemm {
                m: d.k,
                n: d.n,
                k: d.batch * d.m,
                batch: 1,
                a: (1, d.k, 0, 0),
                b: (d.n, 1, 0, 0),
                c: (d.n, 0, 0),
                alpha: 1.0,
                beta: 0.0,
            }
        } else {
            Gemm {
                m: d.k,
                n: d.n,
                k: d.m,
                batch: d.batch,
                a: (1, d.k, d.m * d.k, 0),
                b: (d.n, 1, d.m * d.n, 0),
                c: (d.n, d.k * d.n, 0),
                alpha: 1.0,
                beta: 0.0,
            }
        };
        Some(crate::cuda::gemm("matmul", a, g, spec, b.dims().to_vec())?)
    } else {
        None
    };
    Ok(vec![da, db])
}
