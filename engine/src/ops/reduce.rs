//! Sums and means over axes.
//!
//! `sum(x, axes)`: `y[k] = sum_{r} x[k, r]` over the reduced axes `r`; backward broadcasts the
//! gradient back: `dx[k, r] = g[k]`. `mean` divides by the number `n` of reduced elements:
//! `dx[k, r] = g[k] / n`. Each output element is reduced serially in a fixed order (and a full
//! reduction in fixed chunks combined in order), so results are deterministic. On CUDA
//! (`kernels/cuda/reduce.cu`) each output is reduced by one thread or one block in a fixed tree.

use crate::shape::strides;
use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};
use kernels::cpu::parallel::{chunk_len, for_chunks_mut};
use kernels::Float;
use rayon::prelude::*;

/// Reduce `x` (dims `dims`) over the axes where `reduced[i]`; output keeps size-1 dims there.
fn reduce_kernel<T: Element>(xs: &[T], dims: &[usize], reduced: &[bool]) -> Vec<T> {
    let st = strides(dims);
    let out_dims: Vec<usize> = dims.iter().zip(reduced).map(|(&d, &r)| if r { 1 } else { d }).collect();
    let n_out: usize = out_dims.iter().product();
    if n_out == 1 {
        // Full reduction: fixed chunks, combined in order.
        let c = chunk_len(xs.len(), 16384);
        let parts: Vec<T> = xs.par_chunks(c.max(1)).map(|ch| ch.iter().copied().sum()).collect();
        return vec![parts.into_iter().sum()];
    }
    // Offsets of every reduced multi-index, in row-major order.
    let mut roffs = vec![0usize];
    for i in 0..dims.len() {
        if reduced[i] {
            let mut next = Vec::with_capacity(roffs.len() * dims[i]);
            for &o in &roffs {
                for k in 0..dims[i] {
                    next.push(o + k * st[i]);
                }
            }
            roffs = next;
        }
    }
    let ost = strides(&out_dims);
    let mut out = vec![T::ZERO; n_out];
    for_chunks_mut(&mut out, (4096 / roffs.len()).max(1), |s, ch| {
        for (j, o) in ch.iter_mut().enumerate() {
            let mut rem = s + j;
            let mut base = 0;
            for i in 0..dims.len() {
                let k = rem / ost[i];
                rem %= ost[i];
                base += k * st[i];
            }
            let mut acc = T::ZERO;
            for &r in &roffs {
                acc += xs[base + r];
            }
            *o = acc;
        }
    });
    out
}

/// Sum the broadcast gradient `g` down to `target` dims (the inverse of broadcasting).
pub fn sum_to_shape(g: &Tensor, target: &[usize]) -> Result<Tensor> {
    if g.dims() == target {
        return Ok(g.detach());
    }
    let r = g.rank();
    if target.len() > r {
        return Err(Error::shape("sum_to_shape", format!("{:?} to {target:?}", g.dims())));
    }
    let off = r - target.len();
    let reduced: Vec<bool> = (0..r).map(|i| i < off || (target[i - off] == 1 && g.dims()[i] != 1)).collect();
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = g.device() {
        return crate::cuda::sum_axes("sum_to_shape", g, &reduced, 1.0, target.to_vec());
    }
    with_dtype!(g.dtype(), T, {
        let v = reduce_kernel::<T>(g.cpu_slice::<T>("sum_to_shape")?, g.dims(), &reduced);
        Ok(Tensor::from_cpu(T::wrap(v), Shape(target.to_vec())))
    })
}

/// Broadcast `g` (dims with 1 at reduced axes) to `dims`, multiplied by `scale`. Untracked.
fn expand_scaled(g: &Tensor, dims: &[usize], scale: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = g.device() {
        return crate::cuda::broadcast_scaled(g, dims, scale);
    }
    let ones = Tensor::full(Shape(dims.to_vec()), scale, g.dtype());
    crate::ops::elementwise::binary_map("expand", &ones, g, |s, g| s * g)
}

struct ReduceBackward {
    in_dims: Vec<usize>,
    kept_dims: Vec<usize>,
    scale: f64,
    mean: bool,
}

impl Backward for ReduceBackward {
    fn name(&self) -> &'static str {
        if self.mean {
            "mean"
        } else {
            "sum"
        }
    }
    fn backward(&self, g: &Tensor, _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let g = g.with_shape(Shape(self.kept_dims.clone()));
        Ok(vec![Some(expand_scaled(&g, &self.in_dims, self.scale)?)])
    }
}

fn reduce(name: &'static str, x: &Tensor, axes: &[usize], keepdim: bool, mean: bool) -> Result<Tensor> {
    let r = x.rank();
    let mut reduced = vec![false; r];
    for &a in axes {
        if a >= r {
            return Err(Error::invalid(name, format!("axis {a} out of range for shape {}", x.shape)));
        }
        if reduced[a] {
            return Err(Error::invalid(name, format!("axis {a} given twice")));
        }
        reduced[a] = true;
    }
    let n: usize = (0..r).filter(|&i| reduced[i]).map(|i| x.dims()[i]).product();
    let kept: Vec<usize> = (0..r).map(|i| if reduced[i] { 1 } else { x.dims()[i] }).collect();
    let out_dims: Vec<usize> =
        if keepdim { kept.clone() } else { (0..r).filter(|&i| !reduced[i]).map(|i| x.dims()[i]).collect() };
    let scale = if mean { 1.0 / n.max(1) as f64 } else { 1.0 };
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = x.device() {
        let out = crate::cuda::sum_axes(name, x, &reduced, scale, out_dims)?;
        let in_dims = x.dims().to_vec();
        return record(name, &[x], out, || Box::new(ReduceBackward { in_dims, kept_dims: kept, scale, mean }));
    }
    let out = with_dtype!(x.dtype(), T, {
        let mut v = reduce_kernel::<T>(x.cpu_slice::<T>(name)?, x.dims(), &reduced);
        if mean {
            let s = T::from_f64(scale);
            v.iter_mut().for_each(|e| *e *= s);
        }
        Tensor::from_cpu(T::wrap(v), Shape(out_dims))
    });
    let in_dims = x.dims().to_vec();
    record(name, &[x], out, || Box::new(ReduceBackward { in_dims, kept_dims: kept, scale, mean }))
}

/// Sum over `axes` (drop them unless `keepdim`). Backward: `dx = broadcast(g)`.
pub fn sum(x: &Tensor, axes: &[usize], keepdim: bool) -> Result<Tensor> {
    reduce("sum", x, axes, keepdim, false)
}
/// Mean over `axes`. Backward: `dx = broadcast(g) / n`, `n` = number of reduced elements.
pub fn mean(x: &Tensor, axes: &[usize], keepdim: bool) -> Result<Tensor> {
    reduce("mean", x, axes, keepdim, true)
}
/// Sum of all elements, as a scalar.
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    let axes: Vec<usize> = (0..x.rank()).collect();
    reduce("sum", x, &axes, false, false)
}
/// Mean of all elements, as a scalar.
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    let axes: Vec<usize> = (0..x.rank()).collect();
    reduce("mean", x, &axes, false, true)
}

#[allow(dead_code)]
fn _assert_float<T: Float>() {}
