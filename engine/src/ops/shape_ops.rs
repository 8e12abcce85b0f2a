//! Shape ops: reshape, permute (and transpose), concat, split.
//!
//! * `reshape`: same elements, new dims (no copy). Backward: reshape `g` back.
//! * `permute(x, p)`: `y[i_0..i_r] = x[j]` with `j[p[d]] = i_d`. Backward: permute `g` by the
//!   inverse permutation.
//! * `concat(xs, axis)`: stack along `axis`. Backward: split `g` into the input sizes.
//! * `split(x, sizes, axis)`: the inverse of concat; each piece is recorded as its own node whose
//!   backward writes `g` into its slice of a zero tensor of `x`'s shape.
//!
//! On CUDA, permute and the concat/split copies run `kernels/cuda/shape.cu`; reshape is a view.

use crate::shape::strides;
use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};
use kernels::cpu::parallel::for_chunks_mut;

struct ReshapeBackward {
    in_shape: Shape,
}
impl Backward for ReshapeBackward {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn backward(&self, g: &Tensor, _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.with_shape(self.in_shape.clone()))])
    }
}

/// View `x` with new dims (same number of elements). At most one dim may be `usize::MAX`
/// meaning "infer".
pub fn reshape(x: &Tensor, dims: &[usize]) -> Result<Tensor> {
    let mut d = dims.to_vec();
    let infer: Vec<usize> = (0..d.len()).filter(|&i| d[i] == usize::MAX).collect();
    if infer.len() > 1 {
        return Err(Error::invalid("reshape", "at most one dimension can be inferred"));
    }
    if let Some(&i) = infer.first() {
        let known: usize = d.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &v)| v).product();
        #[allow(clippy::manual_is_multiple_of)] // is_multiple_of is newer than the workspace's MSRV
        if known == 0 || x.numel() % known != 0 {
            return Err(Error::shape("reshape", format!("cannot infer {dims:?} from {}", x.shape)));
        }
        d[i] = x.numel() / known;
    }
    let shape = Shape(d);
    if shape.numel() != x.numel() {
        return Err(Error::shape(
            "reshape",
            format!("{} has {} elements, {shape} needs {}", x.shape, x.numel(), shape.numel()),
        ));
    }
    let out = x.with_shape(shape);
    record("reshape", &[x], out, || Box::new(ReshapeBackward { in_shape: x.shape.clone() }))
}

fn permute_kernel<T: Element>(xs: &[T], dims: &[usize], perm: &[usize]) -> (Vec<T>, Vec<usize>) {
    let od: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let is = strides(dims);
    let ps: Vec<usize> = perm.iter().map(|&p| is[p]).collect(); // input stride for each out dim
    let os = strides(&od);
    let mut out = vec![T::ZERO; xs.len()];
    let r = od.len();
    let last = if r == 0 { 1 } else { od[r - 1] };
    let ls = if r == 0 { 0 } else { ps[r - 1] };
    for_chunks_mut(&mut out, (4096 / last.max(1)).max(1) * last, |s, ch| {
        for (ri, row) in ch.chunks_mut(last.max(1)).enumerate() {
            let flat = s + ri * last;
            let mut base = 0;
            let mut rem = flat;
            for d in 0..r.saturating_sub(1) {
                base += (rem / os[d]) * ps[d];
                rem %= os[d];
            }
            for (j, o) in row.iter_mut().enumerate() {
                *o = xs[base + j * ls];
            }
        }
    });
    (out, od)
}

struct PermuteBackward {
    inverse: Vec<usize>,
}
impl Backward for PermuteBackward {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn backward(&self, g: &Tensor, _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(permute_untracked(g, &self.inverse)?)])
    }
}

fn permute_untracked(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = x.device() {
        return crate::cuda::permute(x, perm);
    }
    with_dtype!(x.dtype(), T, {
        let (v, od) = permute_kernel::<T>(x.cpu_slice::<T>("permute")?, x.dims(), perm);
        Ok(Tensor::from_cpu(T::wrap(v), Shape(od)))
    })
}

/// Reorder dimensions: output dim `d` is input dim `perm[d]` (copies into contiguous memory).
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let r = x.rank();
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
        return Err(Error::invalid(
            "permute",
            format!("{perm:?} is not a permutation of {r} dims (shape {})", x.shape),
        ));
    }
    let out = permute_untracked(x, perm)?;
    let mut inverse = vec![0; r];
    for (d, &p) in perm.iter().enumerate() {
        inverse[p] = d;
    }
    record("permute", &[x], out, || Box::new(PermuteBackward { inverse }))
}

/// Swap two dimensions (a [`permute`]).
pub fn transpose(x: &Tensor, a: usize, b: usize) -> Result<Tensor> {
    if a >= x.rank() || b >= x.rank() {
        return Err(Error::invalid("transpose", format!("axes {a},{b} out of range for shape {}", x.shape)));
    }
    let mut p: Vec<usize> = (0..x.rank()).collect();
    p.swap(a, b);
    permute(x, &p)
}

/// Copy `src` (dims `sd`) into `dst` (dims `dd`) at offset `start` along `axis`.
fn place<T: Element>(dst: &mut [T], dd: &[usize], src: &[T], sd: &[usize], axis: usize, start: usize) {
    let outer: usize = dd[..axis].iter().product();
    let inner: usize = dd[axis + 1..].iter().product();
    let (dl, sl) = (dd[axis] * inner, sd[axis] * inner);
    for o in 0..outer {
        dst[o * dl + start * inner..o * dl + start * inner + sl].copy_from_slice(&src[o * sl..(o + 1) * sl]);
    }
}

/// Take the slice `[start, start+len)` along `axis` of `x` (dims `xd`).
fn take<T: Element>(xs: &[T], xd: &[usize], axis: usize, start: usize, len: usize) -> Vec<T> {
    let outer: usize = xd[..axis].iter().product();
    let inner: usize = xd[axis + 1..].iter().product();
    let xl = xd[axis] * inner;
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        out.extend_from_slice(&xs[o * xl + start * inner..o * xl + (start + len) * inner]);
    }
    out
}

struct ConcatBackward {
    sizes: Vec<usize>,
    axis: usize,
}
impl Backward for ConcatBackward {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        #[cfg(feature = "cuda")]
        if let crate::Device::Cuda(_) = g.device() {
            let mut start = 0;
            let mut out = Vec::with_capacity(self.sizes.len());
            for (i, &len) in self.sizes.iter().enumerate() {
                out.push(if needs[i] { Some(crate::cuda::take("concat", g, self.axis, start, len)?) } else { None });
                start += len;
            }
            return Ok(out);
        }
        with_dtype!(g.dtype(), T, {
            let gs = g.cpu_slice::<T>("concat")?;
            let mut start = 0;
            let mut out = Vec::new();
            for (i, &len) in self.sizes.iter().enumerate() {
                if needs[i] {
                    let mut d = g.dims().to_vec();
                    d[self.axis] = len;
                    out.push(Some(Tensor::from_cpu(T::wrap(take(gs, g.dims(), self.axis, start, len)), Shape(d))));
                } else {
                    out.push(None);
                }
                start += len;
            }
            Ok(out)
        })
    }
}

/// Concatenate along `axis`; all other dims must match.
pub fn concat(xs: &[&Tensor], axis: usize) -> Result<Tensor> {
    let first = xs.first().ok_or_else(|| Error::invalid("concat", "no tensors given"))?;
    if axis >= first.rank() {
        return Err(Error::invalid("concat", format!("axis {axis} out of range for shape {}", first.shape)));
    }
    for t in xs {
        if t.dtype() != first.dtype() {
            return Err(Error::DType { op: "concat", lhs: first.dtype(), rhs: t.dtype() });
        }
        if t.device() != first.device() {
            return Err(Error::Device { op: "concat", msg: format!("{} vs {}", first.device(), t.device()) });
        }
        let ok = t.rank() == first.rank() && (0..t.rank()).all(|i| i == axis || t.dims()[i] == first.dims()[i]);
        if !ok {
            let shapes: Vec<_> = xs.iter().map(|t| t.dims().to_vec()).collect();
            return Err(Error::shape("concat", format!("shapes {shapes:?} differ outside axis {axis}")));
        }
    }
    let sizes: Vec<usize> = xs.iter().map(|t| t.dims()[axis]).collect();
    let mut od = first.dims().to_vec();
    od[axis] = sizes.iter().sum();
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = first.device() {
        let mut parts = Vec::with_capacity(xs.len());
        let mut start = 0;
        for t in xs {
            parts.push((*t, start));
            start += t.dims()[axis];
        }
        let out = crate::cuda::place("concat", &od, axis, &parts)?;
        return record("concat", xs, out, || Box::new(ConcatBackward { sizes, axis }));
    }
    let out = with_dtype!(first.dtype(), T, {
        let mut v = vec![T::ZERO; od.iter().product()];
        let mut start = 0;
        for t in xs {
            place(&mut v, &od, t.cpu_slice::<T>("concat")?, t.dims(), axis, start);
            start += t.dims()[axis];
        }
        Tensor::from_cpu(T::wrap(v), Shape(od))
    });
    record("concat", xs, out, || Box::new(ConcatBackward { sizes, axis }))
}

struct SplitBackward {
    in_dims: Vec<usize>,
    axis: usize,
    start: usize,
}
impl Backward for SplitBackward {
    fn name(&self) -> &'static str {
        "split"
    }
    fn backward(&self, g: &Tensor, _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        #[cfg(feature = "cuda")]
        if let crate::Device::Cuda(_) = g.device() {
            return Ok(vec![Some(crate::cuda::place("split", &self.in_dims, self.axis, &[(g, self.start)])?)]);
        }
        with_dtype!(g.dtype(), T, {
            let mut v = vec![T::ZERO; self.in_dims.iter().product()];
            place(&mut v, &self.in_dims, g.cpu_slice::<T>("split")?, g.dims(), self.axis, self.start);
            Ok(vec![Some(Tensor::from_cpu(T::wrap(v), Shape(self.in_dims.clone())))])
        })
    }
}

/// Split along `axis` into pieces of the given sizes (which must add up to the dim).
pub fn split(x: &Tensor, sizes: &[usize], axis: usize) -> Result<Vec<Tensor>> {
    if axis >= x.rank() {
        return Err(Error::invalid("split", format!("axis {axis} out of range for shape {}", x.shape)));
    }
    if sizes.iter().sum::<usize>() != x.dims()[axis] {
        return Err(Error::shape("split", format!("sizes {sizes:?} do not add up to dim {axis} of {}", x.shape)));
    }
    let mut out = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for &len in sizes {
        let mut d = x.dims().to_vec();
        d[axis] = len;
        let piece = match x.device() {
            #[cfg(feature = "cuda")]
            crate::Device::Cuda(_) => crate::cuda::take("split", x, axis, start, len)?,
            _ => with_dtype!(x.dtype(), T, {
                Tensor::from_cpu(T::wrap(take(x.cpu_slice::<T>("split")?, x.dims(), axis, start, len)), Shape(d))
            }),
        };
        let (in_dims, s) = (x.dims().to_vec(), start);
        out.push(record("split", &[x], piece, || Box::new(SplitBackward { in_dims, axis, start: s }))?);
        start += len;
    }
    Ok(out)
}
