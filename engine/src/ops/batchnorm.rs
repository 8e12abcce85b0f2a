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
//!
//! **batch_norm2d_relu**: `relu(batch_norm2d(x))` in one op, bit for bit the same values and
//! gradients. The forward writes `y = max(x scale + shift, 0)` in the batch norm's output pass, and
//! the backward masks `g` by `x scale + shift > 0`, recomputed from the saved `x` and the per-channel
//! `scale`, `shift` (saved, `2 C` values): `g' = g [x scale + shift > 0]`, then the batch-norm
//! backward above with `g'`. That saves the ReLU's own pass over the activation in each direction
//! (and its output buffer). On CUDA it is the two ops in turn.
//!
//! On `Device::Cuda` (feature `cuda`, f32; `x`, the `[C]` vectors and the running statistics all
//! on the device) the forward runs `kernels::cuda::batchnorm`: training
//! `bn_stats -> bn_scale_shift -> bn_apply`, then `bn_running_update` writes the running
//! statistics in place ([`Tensor::update_cuda`], copy-on-write); eval
//! `bn_scale_shift(running stats) -> bn_apply`. The backward (`bn_backward`) gives `db = sum g`,
//! `dw = sum g xhat` and `dx` in one pass per channel. Same saved tensors, on the device.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};
use kernels::cpu::batchnorm::{bn_backward, bn_train_forward, channel_affine, scale_shift, BnDims, BnMode, Then};

const OP: &str = "batch_norm2d";
const OP_RELU: &str = "batch_norm2d_relu";

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
    batch_norm2d_then(x, weight, bias, running_mean, running_var, training, momentum, eps, Then::Nothing)
}

/// `relu(batch_norm2d(x, ...))` as one op (see the module docs): the same arguments, errors,
/// values and gradients as the two ops in turn, with one pass over the activation fewer in each
/// direction on the CPU.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d_relu(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    training: bool,
    momentum: f64,
    eps: f64,
) -> Result<Tensor> {
    batch_norm2d_then(x, weight, bias, running_mean, running_var, training, momentum, eps, Then::Relu)
}

/// Both ops: validate, then the device's path (on CUDA the ReLU is the separate op).
#[allow(clippy::too_many_arguments)]
fn batch_norm2d_then(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    training: bool,
    momentum: f64,
    eps: f64,
    then: Then,
) -> Result<Tensor> {
    let d = validate(x, weight, bias, running_mean, running_var, training, momentum, eps)?;
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = x.device() {
        let y = on_cuda::forward(x, weight, bias, running_mean, running_var, training, momentum, eps, d)?;
        return match then {
            Then::Nothing => Ok(y),
            Then::Relu => super::relu(&y),
        };
    }
    with_dtype!(
        x.dtype(),
        T,
        forward::<T>(x, weight, bias, running_mean, running_var, training, momentum, eps, d, then)
    )
}

/// The checks of [`batch_norm2d`]; the layout of `x` when they pass.
#[allow(clippy::too_many_arguments)]
fn validate(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    training: bool,
    momentum: f64,
    eps: f64,
) -> Result<BnDims> {
    if x.rank() != 4 {
        return Err(Error::shape(OP, format!("expected a 4-D [N, C, H, W] input, got {}", x.shape())));
    }
    for (what, t) in [("weight", weight), ("bias", bias), ("running_mean", Some(running_mean))] {
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
    Ok(d)
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
    then: Then,
) -> Result<Tensor> {
    let xs = x.cpu_slice::<T>(OP)?;
    let ws = weight.map(|w| w.cpu_slice::<T>(OP)).transpose()?;
    let bs = bias.map(|b| b.cpu_slice::<T>(OP)).transpose()?;
    let eps_t = T::from_f64(eps);
    let mut y = kernels::cpu::parallel::zeros::<T>(xs.len());
    // Each channel's map `(scale, shift)`, the expression the kernels use.
    let maps = |mean: &[T], invstd: &[T]| -> (Vec<T>, Vec<T>) {
        (0..d.c).map(|c| scale_shift(ws.map(|w| w[c]), bs.map(|b| b[c]), mean[c], invstd[c])).unzip()
    };
    let (mean, invstd, mode, eval_maps) = if training {
        let stats = bn_train_forward(xs, d, ws, bs, eps_t, then, &mut y);
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
        (mean, invstd, BnMode::Train, None)
    } else {
        let mean = running_mean.cpu_slice::<T>(OP)?.to_vec();
        let invstd: Vec<T> = running_var.cpu_slice::<T>(OP)?.iter().map(|&v| T::ONE / (v + eps_t).sqrt()).collect();
        let (scale, shift) = maps(&mean, &invstd);
        channel_affine(xs, d, &scale, &shift, then, &mut y);
        (mean, invstd, BnMode::Eval, Some((scale, shift)))
    };
    // The fused ReLU's mask in the backward: the forward's per-channel maps.
    let relu = (then == Then::Relu).then(|| {
        let (scale, shift) = eval_maps.unwrap_or_else(|| maps(&mean, &invstd));
        let cshape = Shape(vec![d.c]);
        (Tensor::from_cpu(T::wrap(scale), cshape.clone()), Tensor::from_cpu(T::wrap(shift), cshape))
    });
    let out = Tensor::from_cpu(T::wrap(y), x.shape().clone());
    let mut inputs = vec![x];
    inputs.extend(weight);
    inputs.extend(bias);
    let cshape = Shape(vec![d.c]);
    let name = if relu.is_some() { OP_RELU } else { OP };
    record(name, &inputs, out, || {
        Box::new(BatchNormBackward {
            x: x.detach(),
            weight: weight.map(Tensor::detach),
            has_bias: bias.is_some(),
            mean: Tensor::from_cpu(T::wrap(mean), cshape.clone()),
            invstd: Tensor::from_cpu(T::wrap(invstd), cshape),
            mode,
            d,
            relu,
        })
    })
}

/// Saves `x` (shared), the weight (shared) and the per-channel mean and invstd; with the ReLU
/// fused also the per-channel `(scale, shift)` of the forward, whose sign test on `x` is its mask.
struct BatchNormBackward {
    x: Tensor,
    weight: Option<Tensor>,
    has_bias: bool,
    mean: Tensor,
    invstd: Tensor,
    mode: BnMode,
    d: BnDims,
    relu: Option<(Tensor, Tensor)>,
}

impl Backward for BatchNormBackward {
    fn name(&self) -> &'static str {
        if self.relu.is_some() {
            OP_RELU
        } else {
            OP
        }
    }
    fn saved_bytes(&self) -> usize {
        let relu = self.relu.as_ref().map_or(0, |(a, b)| a.nbytes() + b.nbytes());
        self.x.nbytes()
            + self.weight.as_ref().map_or(0, Tensor::nbytes)
            + self.mean.nbytes()
            + self.invstd.nbytes()
            + relu
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if g.dims() != self.x.dims() {
            return Err(Error::shape(OP, format!("gradient {} vs output {}", g.shape(), self.x.shape())));
        }
        #[cfg(feature = "cuda")]
        if let crate::Device::Cuda(_) = g.device() {
            return on_cuda::backward(self, g, needs);
        }
        let cshape = Shape(vec![self.d.c]);
        with_dtype!(g.dtype(), T, {
            let ws = self.weight.as_ref().map(|w| w.cpu_slice::<T>(OP)).transpose()?;
            let relu = match &self.relu {
                Some((sc, sh)) => Some((sc.cpu_slice::<T>(OP)?, sh.cpu_slice::<T>(OP)?)),
                None => None,
            };
            let mut dx = needs[0].then(|| kernels::cpu::parallel::zeros::<T>(self.x.numel()));
            let sums = bn_backward(
                g.cpu_slice::<T>(OP)?,
                self.x.cpu_slice::<T>(OP)?,
                self.d,
                self.mean.cpu_slice::<T>(OP)?,
                self.invstd.cpu_slice::<T>(OP)?,
                ws,
                self.mode,
                relu,
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

/// The f32 CUDA path through `kernels::cuda::batchnorm`.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::{BatchNormBackward, OP};
    use crate::cuda::{alloc, buf, wrap};
    use crate::tape::record;
    use crate::{Result, Tensor};
    use kernels::cpu::batchnorm::{BnDims, BnMode};
    use kernels::cuda::batchnorm as kc;

    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
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
        let xb = buf(x, OP)?;
        let dev = xb.device();
        let wb = weight.map(|w| buf(w, OP)).transpose()?;
        let bb = bias.map(|b| buf(b, OP)).transpose()?;
        let c = d.c;
        let (mut invstd, mut scale, mut shift) = (alloc(dev, c)?, alloc(dev, c)?, alloc(dev, c)?);
        let mut y = alloc(dev, x.numel())?;
        let (mean, mode) = if training {
            let (mut mean, mut var) = (alloc(dev, c)?, alloc(dev, c)?);
            kc::bn_stats(xb, d, &mut mean, &mut var)?;
            kc::bn_scale_shift(c, eps as f32, &mean, &var, wb, bb, &mut invstd, &mut scale, &mut shift)?;
            kc::bn_apply(xb, d, &scale, &shift, &mut y)?;
            // Both running vectors must be on this device before either is written.
            buf(running_mean, OP)?;
            buf(running_var, OP)?;
            running_mean.update_cuda(|rm| {
                running_var.update_cuda(|rv| Ok(kc::bn_running_update(d, momentum as f32, &mean, &var, rm, rv)?))
            })?;
            (wrap(mean, vec![c]), BnMode::Train)
        } else {
            let (rm, rv) = (buf(running_mean, OP)?, buf(running_var, OP)?);
            kc::bn_scale_shift(c, eps as f32, rm, rv, wb, bb, &mut invstd, &mut scale, &mut shift)?;
            kc::bn_apply(xb, d, &scale, &shift, &mut y)?;
            // Shares the running mean's buffer: a later in-place update copies it first.
            (running_mean.detach(), BnMode::Eval)
        };
        let out = wrap(y, x.dims().to_vec());
        let mut inputs = vec![x];
        inputs.extend(weight);
        inputs.extend(bias);
        record(OP, &inputs, out, || {
            Box::new(BatchNormBackward {
                x: x.detach(),
                weight: weight.map(Tensor::detach),
                has_bias: bias.is_some(),
                mean,
                invstd: wrap(invstd, vec![c]),
                mode,
                d,
                relu: None,
            })
        })
    }

    pub(super) fn backward(s: &BatchNormBackward, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let gb = buf(g, OP)?;
        let dev = gb.device();
        let c = s.d.c;
        let wb = s.weight.as_ref().map(|w| buf(w, OP)).transpose()?;
        let (mut sg, mut sgxhat) = (alloc(dev, c)?, alloc(dev, c)?);
        let mut dx = if needs[0] { Some(alloc(dev, s.x.numel())?) } else { None };
        kc::bn_backward(
            gb,
            buf(&s.x, OP)?,
            s.d,
            buf(&s.mean, OP)?,
            buf(&s.invstd, OP)?,
            wb,
            s.mode,
            &mut sg,
            &mut sgxhat,
            dx.as_mut(),
        )?;
        let mut grads = vec![dx.map(|v| wrap(v, s.x.dims().to_vec()))];
        let mut k = 1;
        if s.weight.is_some() {
            grads.push(needs[k].then(|| wrap(sgxhat, vec![c])));
            k += 1;
        }
        if s.has_bias {
            grads.push(needs[k].then(|| wrap(sg, vec![c])));
        }
        Ok(grads)
    }
}
