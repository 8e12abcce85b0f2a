//! Elementwise ops with NumPy broadcasting, and unary maps.
//!
//! Broadcasting aligns shapes from the right; a dimension of size 1 (or a missing one) stretches
//! to the other operand's size. The backward of a broadcast input sums the incoming gradient over
//! the stretched dimensions ([`sum_to_shape`]).
//!
//! | op | forward | backward |
//! |---|---|---|
//! | `add` | `z = a + b` | `da = S_a(g)`, `db = S_b(g)` |
//! | `sub` | `z = a - b` | `da = S_a(g)`, `db = -S_b(g)` |
//! | `mul` | `z = a * b` | `da = S_a(g b)`, `db = S_b(g a)` |
//! | `div` | `z = a / b` | `da = S_a(g / b)`, `db = -S_b(g a / b^2)` |
//! | `neg` | `z = -x` | `dx = -g` |
//! | `exp` | `z = e^x` | `dx = g z` (saves z) |
//! | `log` | `z = ln x` | `dx = g / x` (saves x) |
//! | `sqrt` | `z = sqrt x` | `dx = g / (2 z)` (saves z) |
//! | `relu` | `z = max(x, 0)` | `dx = g [x > 0]` (saves z: z > 0 iff x > 0) |
//! | `affine` | `z = alpha x + beta` | `dx = alpha g` |
//!
//! where `S_a` sums over the dimensions along which `a` was broadcast.
//!
//! On `Device::Cuda` (feature `cuda`) the same ops run `kernels/cuda/elementwise.cu`; backward
//! formulas go through [`BinFn`] (named functions both backends implement) rather than closures.

use crate::ops::reduce::sum_to_shape;
use crate::shape::strides;
use crate::tape::record;
use crate::{with_dtype, Backward, Device, Element, Error, Result, Shape, Tensor};
use kernels::cpu::parallel::{for_chunks_mut, map_new, zip_map_new};
use rayon::prelude::*;

/// The broadcast shape of `a` and `b`, or an error naming `op`.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
        let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(Error::shape(op, format!("cannot broadcast {a:?} with {b:?}"))),
        };
    }
    Ok(out)
}

/// Strides of `dims` viewed inside the broadcast shape `out` (0 along stretched dimensions).
fn broadcast_strides(dims: &[usize], out: &[usize]) -> Vec<usize> {
    let s = strides(dims);
    let off = out.len() - dims.len();
    (0..out.len()).map(|i| if i < off || dims[i - off] == 1 { 0 } else { s[i - off] }).collect()
}

fn check_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DType { op, lhs: a.dtype(), rhs: b.dtype() });
    }
    if a.device() != b.device() {
        return Err(Error::Device { op, msg: format!("{} vs {}", a.device(), b.device()) });
    }
    Ok(())
}

/// Binary functions implemented by both backends (a closure cannot run on the device).
#[derive(Clone, Copy, Debug)]
pub(crate) enum BinFn {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `-a / b^2` (div backward for `b`, given `a = g a`)
    NegDivSq,
    /// `a / (2 b)` (sqrt backward)
    HalfDiv,
    /// `a` where `b > 0`, else 0 (relu backward, `b` the output)
    ReluMask,
}

#[cfg(feature = "cuda")]
impl BinFn {
    fn cuda(self) -> kernels::cuda::elementwise::BinaryOp {
        use kernels::cuda::elementwise::BinaryOp as K;
        match self {
            BinFn::Add => K::Add,
            BinFn::Sub => K::Sub,
            BinFn::Mul => K::Mul,
            BinFn::Div => K::Div,
            BinFn::NegDivSq => K::NegDivSq,
            BinFn::HalfDiv => K::HalfDiv,
            BinFn::ReluMask => K::ReluMask,
        }
    }
}

/// `f(a, b)` elementwise with broadcasting on the operands' device, untracked.
pub(crate) fn binary_fn(op: &'static str, f: BinFn, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_pair(op, a, b)?;
    let out = broadcast_shape(op, a.dims(), b.dims())?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = a.device() {
        return crate::cuda::binary(op, a, b, &out, f.cuda(), 0.0);
    }
    // The first four in the element type; the backward helpers through f64 as they always were.
    with_dtype!(
        a.dtype(),
        T,
        match f {
            BinFn::Add => binary_kernel::<T, _>(op, a, b, out, |x: T, y: T| x + y),
            BinFn::Sub => binary_kernel::<T, _>(op, a, b, out, |x: T, y: T| x - y),
            BinFn::Mul => binary_kernel::<T, _>(op, a, b, out, |x: T, y: T| x * y),
            BinFn::Div => binary_kernel::<T, _>(op, a, b, out, |x: T, y: T| x / y),
            BinFn::NegDivSq => binary_kernel::<T, _>(op, a, b, out, |x: T, y: T| {
                let (x, y) = (x.to_f64(), y.to_f64());
                T::from_f64(-x / (y * y))
            }),
            BinFn::HalfDiv => {
                binary_kernel::<T, _>(op, a, b, out, |x: T, y: T| T::from_f64(x.to_f64() / (2.0 * y.to_f64())))
            }
            BinFn::ReluMask => {
                binary_kernel::<T, _>(op, a, b, out, |x: T, y: T| if y.to_f64() > 0.0 { x } else { T::ZERO })
            }
        }
    )
}

/// `f(a, b)` elementwise with broadcasting, untracked (CPU only: `f` is a host closure).
pub(crate) fn binary_map<F>(op: &'static str, a: &Tensor, b: &Tensor, f: F) -> Result<Tensor>
where
    F: Fn(f64, f64) -> f64 + Sync + Copy,
{
    check_pair(op, a, b)?;
    let out = broadcast_shape(op, a.dims(), b.dims())?;
    if a.device() != crate::Device::Cpu {
        return Err(Error::Device { op, msg: format!("{op}: no {} kernel for a host closure", a.device()) });
    }
    with_dtype!(
        a.dtype(),
        T,
        binary_kernel::<T, _>(op, a, b, out, move |x: T, y: T| T::from_f64(f(x.to_f64(), y.to_f64())))
    )
}

fn binary_kernel<T: Element, F: Fn(T, T) -> T + Sync>(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    out_dims: Vec<usize>,
    f: F,
) -> Result<Tensor> {
    let (xa, xb) = (a.cpu_slice::<T>(op)?, b.cpu_slice::<T>(op)?);
    let n: usize = out_dims.iter().product();
    if a.dims() == b.dims() {
        // One parallel pass that writes each output once (no zero fill first).
        let out = zip_map_new(xa, xb, f);
        return Ok(Tensor::from_cpu(T::wrap(out), Shape(out_dims)));
    }
    let mut out = kernels::cpu::parallel::zeros::<T>(n);
    if n > 0 {
        let sa = broadcast_strides(a.dims(), &out_dims);
        let sb = broadcast_strides(b.dims(), &out_dims);
        let r = out_dims.len();
        let last = if r == 0 { 1 } else { out_dims[r - 1] };
        let (la, lb) = if r == 0 { (0, 0) } else { (sa[r - 1], sb[r - 1]) };
        let outer = &out_dims[..r.saturating_sub(1)];
        // Each row (a run along the last dimension) starts at offsets found by decomposing its index.
        let rows_per_chunk = (8192 / last.max(1)).max(1);
        for_chunks_mut(&mut out, rows_per_chunk * last, |s, ch| {
            for (ri, row) in ch.chunks_mut(last).enumerate() {
                let mut rem = s / last + ri;
                let (mut oa, mut ob) = (0usize, 0usize);
                for d in (0..outer.len()).rev() {
                    let k = rem % outer[d];
                    rem /= outer[d];
                    oa += k * sa[d];
                    ob += k * sb[d];
                }
                for (j, o) in row.iter_mut().enumerate() {
                    *o = f(xa[oa + j * la], xb[ob + j * lb]);
                }
            }
        });
    }
    Ok(Tensor::from_cpu(T::wrap(out), Shape(out_dims)))
}

/// `f(x)` elementwise, untracked.
#[allow(dead_code)]
pub(crate) fn unary_map<F>(op: &'static str, x: &Tensor, f: F) -> Result<Tensor>
where
    F: Fn(f64) -> f64 + Sync + Copy,
{
    with_dtype!(x.dtype(), T, {
        let xs = x.cpu_slice::<T>(op)?;
        let mut out = Vec::with_capacity(xs.len());
        xs.par_iter().with_min_len(8192).map(|&v| T::from_f64(f(v.to_f64()))).collect_into_vec(&mut out);
        Ok(Tensor::from_cpu(T::wrap(out), x.shape.clone()))
    })
}

pub(crate) fn add_untracked(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary_fn("add", BinFn::Add, a, b)
}

/// `acc + g` for a sum of gradients: in place in `acc` when it is a CPU tensor of `g`'s shape and
/// dtype whose buffer no other tensor shares (a gradient fresh from an op's backward, usually),
/// else a new tensor as [`add_untracked`]. The same sums either way; in place saves a new
/// activation-sized buffer and the write to it (the sums of a residual network's shortcuts).
pub(crate) fn accumulate_grad(mut acc: Tensor, g: &Tensor) -> Result<Tensor> {
    let same = acc.dims() == g.dims() && acc.dtype() == g.dtype() && g.device() == Device::Cpu;
    if same && acc.device() == Device::Cpu && std::sync::Arc::get_mut(&mut acc.storage).is_some() {
        with_dtype!(g.dtype(), T, {
            let gs = g.cpu_slice::<T>("grad accumulate")?;
            // Unique (checked above), so this updates in place without a copy.
            acc.update_cpu::<T>(|a| {
                a.par_chunks_mut(ACCUMULATE_CHUNK).zip(gs.par_chunks(ACCUMULATE_CHUNK)).for_each(|(a, g)| {
                    for (av, &gv) in a.iter_mut().zip(g) {
                        *av += gv;
                    }
                });
            })?;
        });
        return Ok(acc);
    }
    add_untracked(&acc, g)
}

/// Elements per task of [`accumulate_grad`]'s in-place sum (128 KiB of f32).
const ACCUMULATE_CHUNK: usize = 1 << 15;
fn mul_untracked(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary_fn("mul", BinFn::Mul, a, b)
}
pub(crate) fn scale_untracked(x: &Tensor, alpha: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = x.device() {
        return crate::cuda::unary("scale", x, kernels::cuda::elementwise::UnaryOp::Affine, alpha, 0.0);
    }
    with_dtype!(x.dtype(), T, {
        let xs = x.cpu_slice::<T>("scale")?;
        let a = T::from_f64(alpha);
        let mut out = Vec::with_capacity(xs.len());
        xs.par_iter().with_min_len(8192).map(|&v| v * a).collect_into_vec(&mut out);
        Ok(Tensor::from_cpu(T::wrap(out), x.shape.clone()))
    })
}

#[derive(Clone, Copy)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

struct BinaryBackward {
    op: BinOp,
    a: Option<Tensor>,
    b: Option<Tensor>,
    a_dims: Vec<usize>,
    b_dims: Vec<usize>,
}

impl Backward for BinaryBackward {
    fn name(&self) -> &'static str {
        match self.op {
            BinOp::Add => "add",
            BinOp::Sub => "sub",
            BinOp::Mul => "mul",
            BinOp::Div => "div",
        }
    }
    fn saved_bytes(&self) -> usize {
        self.a.as_ref().map_or(0, |t| t.nbytes()) + self.b.as_ref().map_or(0, |t| t.nbytes())
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (ad, bd) = (&self.a_dims, &self.b_dims);
        let ga = if needs[0] {
            Some(match self.op {
                BinOp::Add | BinOp::Sub => sum_to_shape(g, ad)?,
                BinOp::Mul => sum_to_shape(&mul_untracked(g, self.b.as_ref().unwrap())?, ad)?,
                BinOp::Div => sum_to_shape(&binary_fn("div", BinFn::Div, g, self.b.as_ref().unwrap())?, ad)?,
            })
        } else {
            None
        };
        let gb = if needs[1] {
            Some(match self.op {
                BinOp::Add => sum_to_shape(g, bd)?,
                BinOp::Sub => scale_untracked(&sum_to_shape(g, bd)?, -1.0)?,
                BinOp::Mul => sum_to_shape(&mul_untracked(g, self.a.as_ref().unwrap())?, bd)?,
                BinOp::Div => {
                    // -g a / b^2, computed as (g * a) then divided by b^2 with broadcasting.
                    let ga = mul_untracked(g, self.a.as_ref().unwrap())?;
                    let q = binary_fn("div", BinFn::NegDivSq, &ga, self.b.as_ref().unwrap())?;
                    sum_to_shape(&q, bd)?
                }
            })
        } else {
            None
        };
        Ok(vec![ga, gb])
    }
}

fn binary(op: BinOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = match op {
        BinOp::Add => "add",
        BinOp::Sub => "sub",
        BinOp::Mul => "mul",
        BinOp::Div => "div",
    };
    let f = match op {
        BinOp::Add => BinFn::Add,
        BinOp::Sub => BinFn::Sub,
        BinOp::Mul => BinFn::Mul,
        BinOp::Div => BinFn::Div,
    };
    let out = binary_fn(name, f, a, b)?;
    let save = matches!(op, BinOp::Mul | BinOp::Div);
    record(name, &[a, b], out, || {
        Box::new(BinaryBackward {
            op,
            a: save.then(|| a.detach()),
            b: save.then(|| b.detach()),
            a_dims: a.dims().to_vec(),
            b_dims: b.dims().to_vec(),
        })
    })
}

/// `a + b` with broadcasting. Backward: `da = S_a(g)`, `db = S_b(g)`.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinOp::Add, a, b)
}
/// `a - b` with broadcasting. Backward: `da = S_a(g)`, `db = -S_b(g)`.
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinOp::Sub, a, b)
}
/// `a * b` with broadcasting. Backward: `da = S_a(g b)`, `db = S_b(g a)`; saves both inputs.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinOp::Mul, a, b)
}
/// `a / b` with broadcasting. Backward: `da = S_a(g / b)`, `db = -S_b(g a / b^2)`; saves both.
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinOp::Div, a, b)
}

#[derive(Clone, Copy)]
enum UnOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Relu,
    Affine(f64, f64),
}

struct UnaryBackward {
    op: UnOp,
    /// The input (log) or the output (exp, sqrt, relu); nothing for neg/affine.
    saved: Option<Tensor>,
}

impl Backward for UnaryBackward {
    fn name(&self) -> &'static str {
        match self.op {
            UnOp::Neg => "neg",
            UnOp::Exp => "exp",
            UnOp::Log => "log",
            UnOp::Sqrt => "sqrt",
            UnOp::Relu => "relu",
            UnOp::Affine(..) => "affine",
        }
    }
    fn saved_bytes(&self) -> usize {
        self.saved.as_ref().map_or(0, |t| t.nbytes())
    }
    fn backward(&self, g: &Tensor, _: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let s = self.saved.as_ref();
        let dx = match self.op {
            UnOp::Neg => scale_untracked(g, -1.0)?,
            UnOp::Affine(a, _) => scale_untracked(g, a)?,
            UnOp::Exp => mul_untracked(g, s.unwrap())?,
            UnOp::Log => binary_fn("log", BinFn::Div, g, s.unwrap())?,
            UnOp::Sqrt => binary_fn("sqrt", BinFn::HalfDiv, g, s.unwrap())?,
            UnOp::Relu => binary_fn("relu", BinFn::ReluMask, g, s.unwrap())?,
        };
        Ok(vec![Some(dx)])
    }
}

fn unary_cpu(name: &'static str, op: UnOp, x: &Tensor) -> Result<Tensor> {
    Ok(with_dtype!(x.dtype(), T, {
        let xs = x.cpu_slice::<T>(name)?;
        // One loop per op (the match outside it), so each vectorises.
        let out = match op {
            UnOp::Neg => map_new(xs, |v: T| -v),
            UnOp::Exp => map_new(xs, |v: T| v.exp()),
            UnOp::Log => map_new(xs, |v: T| v.ln()),
            UnOp::Sqrt => map_new(xs, |v: T| v.sqrt()),
            UnOp::Relu => map_new(xs, |v: T| v.max(T::ZERO)),
            UnOp::Affine(a, b) => {
                let (a, b) = (T::from_f64(a), T::from_f64(b));
                map_new(xs, move |v: T| a * v + b)
            }
        };
        Tensor::from_cpu(T::wrap(out), x.shape.clone())
    }))
}

#[cfg(feature = "cuda")]
fn unary_cuda(name: &'static str, op: UnOp, x: &Tensor) -> Result<Tensor> {
    use kernels::cuda::elementwise::UnaryOp as K;
    let (k, a, b) = match op {
        UnOp::Neg => (K::Neg, 0.0, 0.0),
        UnOp::Exp => (K::Exp, 0.0, 0.0),
        UnOp::Log => (K::Log, 0.0, 0.0),
        UnOp::Sqrt => (K::Sqrt, 0.0, 0.0),
        UnOp::Relu => (K::Relu, 0.0, 0.0),
        UnOp::Affine(a, b) => (K::Affine, a, b),
    };
    crate::cuda::unary(name, x, k, a, b)
}

fn unary(op: UnOp, x: &Tensor) -> Result<Tensor> {
    let name = UnaryBackward { op, saved: None }.name();
    let out = match x.device() {
        #[cfg(feature = "cuda")]
        crate::Device::Cuda(_) => unary_cuda(name, op, x)?,
        _ => unary_cpu(name, op, x)?,
    };
    let saved = match op {
        UnOp::Neg | UnOp::Affine(..) => None,
        UnOp::Log => Some(x.detach()),
        UnOp::Exp | UnOp::Sqrt | UnOp::Relu => Some(out.detach()),
    };
    record(name, &[x], out, || Box::new(UnaryBackward { op, saved }))
}

/// `-x`. Backward: `dx = -g`.
pub fn neg(x: &Tensor) -> Result<Tensor> {
    unary(UnOp::Neg, x)
}
/// `e^x`. Backward: `dx = g e^x` (saves the output).
pub fn exp(x: &Tensor) -> Result<Tensor> {
    unary(UnOp::Exp, x)
}
/// `ln x`. Backward: `dx = g / x` (saves the input).
pub fn log(x: &Tensor) -> Result<Tensor> {
    unary(UnOp::Log, x)
}
/// `sqrt x`. Backward: `dx = g / (2 sqrt x)` (saves the output).
pub fn sqrt(x: &Tensor) -> Result<Tensor> {
    unary(UnOp::Sqrt, x)
}
/// `max(x, 0)`. Backward: `dx = g` where `x > 0`, else 0 (saves the output, whose sign is the mask).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary(UnOp::Relu, x)
}
/// `alpha x + beta` for constants. Backward: `dx = alpha g`.
pub fn affine(x: &Tensor, alpha: f64, beta: f64) -> Result<Tensor> {
    unary(UnOp::Affine(alpha, beta), x)
}
