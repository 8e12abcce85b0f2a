//! Batch normalisation over `[N, C, H, W]`, PyTorch's `F.batch_norm` conventions.
//!
//! Per channel `c`, over the `m = N H W` values of that channel:
//!
//! * **training**: `mean = sum x / m`, `var = sum (x - mean)^2 / m` (biased),
//!   `xhat = (x - mean) invstd` with `invstd = 1 / sqrt(var + eps)`, `y = w xhat + b`.
//!   The running statistics are updated in place (not differentiated):
//!   `running_mean = (1 - momentum) running_mean + momentum mean`,
//!   `running_var = (1 - momentum) running_var + momentum var m / (m - 1)` (unbiased).
//!   Backward: `db = sum g`, `dw = sum g xhat`,
//!   `dx = (w invstd / m) (m g - sum g - xhat sum(g xhat))`.
//! * **eval**: the running statistics replace the batch ones (`invstd = 1 / sqrt(running_var + eps)`)
//!   and are constants, so `dx = w invstd g`, `dw = sum g xhat`, `db = sum g`.
//!
//! `w`/`b` are optional (`1`/`0` when absent). Saved for backward: the input `x` itself (shared
//! with the caller, no copy) plus the per-channel `mean` and `invstd` (`2 C` values); `xhat` is
//! recomputed on the fly. Saving `xhat` instead would cost a full extra write in the forward and a
//! new `N C H W` buffer, while `x` is usually alive anyway. The kernels run one task per channel
//! (see `kernels::cpu::batchnorm`), so results are deterministic for any thread count.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};
use kernels::cpu::batchnorm::{bn_backward, bn_train_forward, channel_affine, BnDims, BnMode};

const OP: &str = "batch_norm2d";

fn check_channel_vector(what: &str, t: &Tensor, x: &Tensor) -> Result<()> {
    let c = x.dim(1);
    if t.dims() != [c] {
        return Err(Error::shape(
            OP,
            format!("{what} has shape {} but input {} has {c} channels", t.shape(), x.shape()),
        ));
    }
    if t.dtype() != x.dtype() {
        return Err(Error::DType { op: OP, lhs: x.dtype(), rhs: t.dtype() });
    }
    Ok(())
}

/// Batch norm 2-D like PyTorch's `F.batch_norm`. In training mode it normalises with the batch
/// statistics and updates `running_mean`/`running_var` in place with `momentum` (unbiased
/// variance for the running estimate); in eval mode it uses the running statistics.
/// `weight`/`bias`: `[C]` affine parameters (optional).
///
/// Errors: `x` not 4-D, a `[C]` vector of another shape or dtype, `momentum` outside `[0, 1]`,
/// `eps` negative or not finite, or training with a single value per channel (`N H W == 1`,
/// where the unbiased variance is undefined; PyTorch refuses it too).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    training: bool,
    momentum: f64,
    eps: f64,
) -> Result<Tensor> {
    if x.rank() != 4 {
        return Err(Error::shape(OP, format!("expected a 4-D [N, C, H, W] input, got {}", x.shape())));
    }
    for (what, t) in [("weight", weight), ("bias", bias), ("running_mean", Some(&*running_mean))] {
        if let Some(t) = t {
            check_channel_vector(what, t, x)?;
        }
    }
    check_channel_vector("running_var", running_var, x)?;
    if !(0.0..=1.0).contains(&momentum) {
        return Err(Error::invalid(OP, format!("momentum must be in [0, 1], got {momentum}")));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::invalid(OP, format!("eps must be finite and >= 0, got {eps}")));
    }
    let d = BnDims { n: x.dim(0), c: x.dim(1), hw: x.dim(2) * x.dim(3) };
    if training && d.per_channel() < 2 {
        return Err(Error::invalid(
            OP,
            format!("training needs more than one value per channel, input {} has {}", x.shape(), d.per_channel()),
        ));
    }
    with_dtype!(x.dtype(), T, forward::<T>(x, weight, bias, running_mean, running_var, training, momentum, eps, d))
}

#[allow(clippy::too_many_arguments)]
fn forward<T: Element>(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    training: bool,
    momentum: f64,
    eps: f64,
    d: BnDims,
) -> Result<Tensor> {
    let xs = x.cpu_slice::<T>(OP)?;
    let ws = weight.map(|w| w.cpu_slice::<T>(OP)).transpose()?;
    let bs = bias.map(|b| b.cpu_slice::<T>(OP)).transpose()?;
    let eps_t = T::from_f64(eps);
    let mut y = vec![T::ZERO; xs.len()];
    let (mean, invstd, mode) = if training {
        let stats = bn_train_forward(xs, d, ws, bs, eps_t, &mut y);
        let mean: Vec<T> = stats.iter().map(|s| s.0).collect();
        // The same expression as inside the kernel, so backward uses exactly the forward's invstd.
        let invstd: Vec<T> = stats.iter().map(|s| T::ONE / (s.1 + eps_t).sqrt()).collect();
        let (mom, keep) = (T::from_f64(momentum), T::from_f64(1.0 - momentum));
        let bessel = T::from_usize(d.per_channel()) / T::from_usize(d.per_channel() - 1);
        running_mean.update_cpu::<T>(|rm| {
            for (r, s) in rm.iter_mut().zip(&stats) {
                *r = keep * *r + mom * s.0;
            }
        })?;
        running_var.update_cpu::<T>(|rv| {
            for (r, s) in rv.iter_mut().zip(&stats) {
                *r = keep * *r + mom * (s.1 * bessel);
            }
        })?;
        (mean, invstd, BnMode::Train)
    } else {
        let mean = running_mean.cpu_slice::<T>(OP)?.to_vec();
        let invstd: Vec<T> = running_var.cpu_slice::<T>(OP)?.iter().map(|&v| T::ONE / (v + eps_t).sqrt()).collect();
        let scale: Vec<T> = (0..d.c).map(|c| ws.map_or(T::ONE, |w| w[c]) * invstd[c]).collect();
        let shift: Vec<T> = (0..d.c).map(|c| bs.map_or(T::ZERO, |b| b[c]) - mean[c] * scale[c]).collect();
        channel_affine(xs, d, &scale, &shift, &mut y);
        (mean, invstd, BnMode::Eval)
    };
    let out = Tensor::from_cpu(T::wrap(y), x.shape().clone());
    let mut inputs = vec![x];
    inputs.extend(weight);
    inputs.extend(bias);
    let cshape = Shape(vec![d.c]);
    record(OP, &inputs, out, || {
        Box::new(BatchNormBackward {
            x: x.detach(),
            weight: weight.map(Tensor::detach),
            has_bias: bias.is_some(),
            mean: Tensor::from_cpu(T::wrap(mean), cshape.clone()),
            invstd: Tensor::from_cpu(T::wrap(invstd), cshape),
            mode,
            d,
        })
    })
}

/// Saves `x` (shared), the weight (shared) and the per-channel mean and invstd.
struct BatchNormBackward {
    x: Tensor,
    weight: Option<Tensor>,
    has_bias: bool,
    mean: Tensor,
    invstd: Tensor,
    mode: BnMode,
    d: BnDims,
}

impl Backward for BatchNormBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn saved_bytes(&self) -> usize {
        self.x.nbytes() + self.weight.as_ref().map_or(0, Tensor::nbytes) + self.mean.nbytes() + self.invstd.nbytes()
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if g.dims() != self.x.dims() {
            return Err(Error::shape(OP, format!("gradient {} vs output {}", g.shape(), self.x.shape())));
        }
        let cshape = Shape(vec![self.d.c]);
        with_dtype!(g.dtype(), T, {
            let ws = self.weight.as_ref().map(|w| w.cpu_slice::<T>(OP)).transpose()?;
            let mut dx = needs[0].then(|| vec![T::ZERO; self.x.numel()]);
            let sums = bn_backward(
                g.cpu_slice::<T>(OP)?,
                self.x.cpu_slice::<T>(OP)?,
                self.d,
                self.mean.cpu_slice::<T>(OP)?,
                self.invstd.cpu_slice::<T>(OP)?,
                ws,
                self.mode,
                dx.as_deref_mut(),
            );
            let mut grads = vec![dx.map(|v| Tensor::from_cpu(T::wrap(v), self.x.shape().clone()))];
            let mut k = 1;
            if self.weight.is_some() {
                let dw = needs[k].then(|| sums.iter().map(|s| s.1).collect::<Vec<T>>());
                grads.push(dw.map(|v| Tensor::from_cpu(T::wrap(v), cshape.clone())));
                k += 1;
            }
            if self.has_bias {
                let db = needs[k].then(|| sums.iter().map(|s| s.0).collect::<Vec<T>>());
                grads.push(db.map(|v| Tensor::from_cpu(T::wrap(v), cshape.clone())));
            }
            Ok(grads)
        })
    }
}
