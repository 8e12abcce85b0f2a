//! Gathering single pixels' channel vectors out of a feature map (the anchors of U2PL's
//! contrastive term are sampled pixels of the student's representation).
//!
//! For `x: [N, C, S...]` (`S` = the product of the spatial dims) and flat pixel indices
//! `idx_m = n_m * S + s_m` (`m = 0..M`, repeats allowed):
//! `y[m, c] = x[n_m, c, s_m]`, `y: [M, C]`.
//!
//! Backward, with `g: [M, C]` the output gradient: the transpose, a scatter-add
//! `dx[n, c, s] = sum_{m : idx_m = n S + s} g[m, c]` (a pixel gathered twice gets both rows'
//! gradients, accumulated in `m` order, so the result is deterministic). Saved for backward: the
//! indices and the input's shape (no tensor data).
//!
//! CPU only: on another device the op returns a clear error.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};

const OP: &str = "gather_pixels";

/// Rows `y[m] = x[n_m, :, s_m]` of `x: [N, C, S...]` at flat pixel indices `idx_m = n_m S + s_m`;
/// returns `[M, C]` (see the module docs). Errors: fewer than 2 dims, an index `>= N S`, or a
/// tensor not on the CPU.
pub fn gather_pixels(x: &Tensor, idx: &[usize]) -> Result<Tensor> {
    if x.rank() < 2 {
        return Err(Error::shape(OP, format!("expected at least 2 dims [N, C, ...], got {}", x.shape())));
    }
    if x.device() != crate::Device::Cpu {
        return Err(Error::Device { op: OP, msg: format!("only the CPU has this op, the input is on {}", x.device()) });
    }
    let (n, c) = (x.dim(0), x.dim(1));
    let s: usize = x.dims()[2..].iter().product();
    if let Some(&bad) = idx.iter().find(|&&i| i >= n * s) {
        return Err(Error::invalid(OP, format!("pixel index {bad} out of range for {} ({} pixels)", x.shape(), n * s)));
    }
    let m = idx.len();
    with_dtype!(x.dtype(), T, {
        let xs = x.cpu_slice::<T>(OP)?;
        let mut y = vec![T::ZERO; m * c];
        for (row, &i) in idx.iter().enumerate() {
            let (b, p) = (i / s, i % s);
            for ch in 0..c {
                y[row * c + ch] = xs[(b * c + ch) * s + p];
            }
        }
        let out = Tensor::from_cpu(T::wrap(y), Shape(vec![m, c]));
        record(OP, &[x], out, || Box::new(GatherBackward { idx: idx.to_vec(), shape: x.shape().clone(), n, c, s }))
    })
}

/// Saves the indices and the input shape.
struct GatherBackward {
    idx: Vec<usize>,
    shape: Shape,
    n: usize,
    c: usize,
    s: usize,
}

impl Backward for GatherBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn saved_bytes(&self) -> usize {
        self.idx.len() * std::mem::size_of::<usize>()
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        let (c, s) = (self.c, self.s);
        with_dtype!(g.dtype(), T, {
            let gs = g.cpu_slice::<T>(OP)?;
            let mut dx = vec![T::ZERO; self.n * c * s];
            for (row, &i) in self.idx.iter().enumerate() {
                let (b, p) = (i / s, i % s);
                for ch in 0..c {
                    dx[(b * c + ch) * s + p] += gs[row * c + ch];
                }
            }
            Ok(vec![Some(Tensor::from_cpu(T::wrap(dx), self.shape.clone()))])
        })
    }
}
