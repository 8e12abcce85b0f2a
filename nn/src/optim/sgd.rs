//! Stochastic gradient descent exactly as `torch.optim.SGD`, so runs are comparable.
//!
//! For each parameter `p` with gradient `g`, in the parameter's dtype:
//! ```text
//! d   = g + wd * p                           (weight decay, L2 in the gradient)
//! buf = d                                    (first step of this parameter)
//! buf = momentum * buf + (1 - dampening) * d (later steps)
//! d   = nesterov ? d + momentum * buf : buf  (only when momentum != 0)
//! p   = p - lr * d
//! ```
//! Momentum buffers are kept by parameter *name*, so they survive a checkpoint round trip and a
//! rebuilt model. Parameters that are frozen or got no gradient are skipped (buffer untouched),
//! as PyTorch skips parameters whose `.grad` is `None`.
//!
//! Parameters on the CPU are updated in place by one fused loop. Parameters on another device
//! (CUDA) are updated with the same formulas written as untracked engine ops (`affine`, `add`,
//! `sub`, each a device kernel), and the parameter and buffer are replaced by the results; a
//! momentum buffer restored on the host is moved to the parameter's device first.

use crate::{for_each_param, under_prefix, Error, Grads, Module, Param, ParamKind, Result};
use engine::{ops, with_dtype, Device, Element, Tensor};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Hyperparameters of [`Sgd`] (the learning rate comes from the schedule at each step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Momentum factor (0 = plain SGD). The paper: 0.9.
    pub momentum: f64,
    /// Dampening of the gradient in the momentum update (PyTorch default 0).
    pub dampening: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening 0, as in PyTorch).
    pub nesterov: bool,
    /// L2 weight decay added to the gradient. The paper: 4e-5.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 }
    }
}

/// Per-parameter settings chosen by name and kind (PyTorch's parameter groups, declaratively).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamGroups {
    /// `(prefix, multiplier)`: parameters under `prefix` (see [`under_prefix`]) train with
    /// `lr * multiplier`; the first matching entry wins. E.g. `("backbone", 0.1)`.
    pub lr_mult: Vec<(String, f64)>,
    /// No weight decay on biases and normalisation weights/biases.
    pub no_decay_norm_and_bias: bool,
}

impl ParamGroups {
    /// `(lr multiplier, weight decay)` for one parameter.
    pub fn settings(&self, name: &str, kind: ParamKind, weight_decay: f64) -> (f64, f64) {
        let mult = self.lr_mult.iter().find(|(pre, _)| under_prefix(name, pre)).map_or(1.0, |(_, m)| *m);
        let wd = if self.no_decay_norm_and_bias && kind.is_norm_or_bias() { 0.0 } else { weight_decay };
        (mult, wd)
    }
}

/// SGD with momentum, Nesterov, weight decay and parameter groups. See the module docs.
#[derive(Clone, Debug)]
pub struct Sgd {
    cfg: SgdConfig,
    groups: ParamGroups,
    momentum: BTreeMap<String, Tensor>,
    steps: u64,
}

impl Sgd {
    /// Checks the settings like PyTorch does.
    pub fn new(cfg: SgdConfig) -> Result<Sgd> {
        let bad = |m: String| Err(Error::config("sgd", m));
        if !(cfg.momentum >= 0.0 && cfg.momentum.is_finite()) {
            return bad(format!("momentum {} must be >= 0", cfg.momentum));
        }
        if !(cfg.weight_decay >= 0.0 && cfg.weight_decay.is_finite()) {
            return bad(format!("weight decay {} must be >= 0", cfg.weight_decay));
        }
        if !cfg.dampening.is_finite() {
            return bad(format!("dampening {} must be finite", cfg.dampening));
        }
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            return bad("Nesterov momentum requires momentum > 0 and zero dampening".into());
        }
        Ok(Sgd { cfg, groups: ParamGroups::default(), momentum: BTreeMap::new(), steps: 0 })
    }

    /// Use per-parameter groups.
    pub fn with_groups(mut self, groups: ParamGroups) -> Sgd {
        self.groups = groups;
        self
    }

    /// The settings.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }

    /// The parameter groups.
    pub fn groups(&self) -> &ParamGroups {
        &self.groups
    }

    /// Number of [`Sgd::step`] calls so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Momentum buffers by parameter name (empty until the first step with momentum).
    pub fn momentum_buffers(&self) -> &BTreeMap<String, Tensor> {
        &self.momentum
    }

    /// Restore optimiser state (from a checkpoint): buffers by name and the step count.
    pub fn restore(&mut self, momentum: BTreeMap<String, Tensor>, steps: u64) {
        self.momentum = momentum;
        self.steps = steps;
    }

    /// One update of every trainable parameter of `model` that has a gradient in `grads`, with
    /// base learning rate `lr` (times the group's multiplier). Returns how many were updated.
    pub fn step<M: Module + ?Sized>(&mut self, model: &mut M, grads: &Grads, lr: f64) -> Result<usize> {
        if !(lr >= 0.0 && lr.is_finite()) {
            return Err(Error::config("sgd", format!("learning rate {lr} must be finite and >= 0")));
        }
        let (cfg, groups, buffers) = (&self.cfg, &self.groups, &mut self.momentum);
        let mut updated = 0;
        let mut result = Ok(());
        for_each_param(model, |name, p| {
            if result.is_err() || p.frozen {
                return;
            }
            let Some(g) = grads.get(p) else { return };
            let (mult, wd) = groups.settings(name, p.kind, cfg.weight_decay);
            let hyper = Hyper { lr: lr * mult, wd, ..Hyper::from(cfg) };
            result = update_param(name, p, g, buffers, &hyper);
            updated += 1;
        });
        result?;
        self.steps += 1;
        Ok(updated)
    }
}

/// The numbers of one parameter's update.
struct Hyper {
    lr: f64,
    wd: f64,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
}

impl From<&SgdConfig> for Hyper {
    fn from(c: &SgdConfig) -> Self {
        Hyper { lr: 0.0, wd: c.weight_decay, momentum: c.momentum, dampening: c.dampening, nesterov: c.nesterov }
    }
}

fn update_param(
    name: &str,
    p: &mut Param,
    g: &Tensor,
    buffers: &mut BTreeMap<String, Tensor>,
    h: &Hyper,
) -> Result<()> {
    if g.dims() != p.value.dims() {
        return Err(Error::config(
            "sgd",
            format!("gradient of {name} has shape {} but the parameter {}", g.shape(), p.value.shape()),
        ));
    }
    if p.value.device() != Device::Cpu {
        return update_on_device(name, p, g, buffers, h);
    }
    let dtype = p.value.dtype();
    if h.momentum == 0.0 {
        return with_dtype!(dtype, T, sgd_kernel::<T>(&mut p.value, g, None, h));
    }
    let first = !buffers.contains_key(name);
    let mut buf = match buffers.remove(name) {
        Some(b) if b.dims() == p.value.dims() => b.to_dtype(dtype)?,
        Some(b) => {
            return Err(Error::config(
                "sgd",
                format!("momentum buffer of {name} has shape {} but the parameter {}", b.shape(), p.value.shape()),
            ))
        }
        None => Tensor::zeros(p.value.shape().clone(), dtype),
    };
    with_dtype!(dtype, T, sgd_kernel::<T>(&mut p.value, g, Some((&mut buf, first)), h))?;
    buffers.insert(name.to_string(), buf);
    Ok(())
}

/// The same update as [`sgd_kernel`] for a parameter off the CPU, as untracked engine ops on its
/// device (new tensors; nothing is written in place, so a tensor still shared elsewhere is safe).
fn update_on_device(
    name: &str,
    p: &mut Param,
    g: &Tensor,
    buffers: &mut BTreeMap<String, Tensor>,
    h: &Hyper,
) -> Result<()> {
    let (dtype, device) = (p.value.dtype(), p.value.device());
    let g = g.detach();
    let mut d = if h.wd != 0.0 { ops::add(&g, &ops::affine(&p.value, h.wd, 0.0)?)? } else { g };
    if h.momentum != 0.0 {
        let buf = match buffers.remove(name) {
            None => d.clone(),
            Some(b) if b.dims() == p.value.dims() => {
                let b = b.to_dtype(dtype)?.to_device(device)?;
                ops::add(&ops::affine(&b, h.momentum, 0.0)?, &ops::affine(&d, 1.0 - h.dampening, 0.0)?)?
            }
            Some(b) => {
                return Err(Error::config(
                    "sgd",
                    format!("momentum buffer of {name} has shape {} but the parameter {}", b.shape(), p.value.shape()),
                ))
            }
        };
        d = if h.nesterov { ops::add(&d, &ops::affine(&buf, h.momentum, 0.0)?)? } else { buf.clone() };
        buffers.insert(name.to_string(), buf);
    }
    let updated = ops::sub(&p.value, &ops::affine(&d, h.lr, 0.0)?)?;
    p.value.assign(&updated)?;
    Ok(())
}

/// Elements per parallel task of the update (smaller tensors run on one thread).
const PAR_MIN: usize = 1 << 14;

/// The update of one tensor, element by element in `T` arithmetic (as PyTorch's CPU loop).
///
/// Each task runs a tight loop over one chunk of slices, with the first-step and Nesterov choices
/// made once per chunk ([`momentum_chunk`]), so the loop vectorises: per element it is the same
/// arithmetic as the formulas above, and splitting over threads changes nothing but the time.
/// (Item by item through zipped parallel iterators the update ran scalar, at half the memory
/// bandwidth: 16.8 ms for ResNet-18 DeepLabV3+'s 16.6 M parameters.)
fn sgd_kernel<T: Element>(p: &mut Tensor, g: &Tensor, buf: Option<(&mut Tensor, bool)>, h: &Hyper) -> Result<()> {
    let g = g.cpu_slice::<T>("sgd")?;
    let k = Coeffs {
        lr: T::from_f64(h.lr),
        wd: T::from_f64(h.wd),
        m: T::from_f64(h.momentum),
        one_minus_damp: T::from_f64(1.0 - h.dampening),
    };
    let mut inner = Ok(());
    match buf {
        None => p.update_cpu::<T>(|ps| {
            ps.par_chunks_mut(PAR_MIN).zip(g.par_chunks(PAR_MIN)).for_each(|(ps, gs)| {
                for (pv, &gv) in ps.iter_mut().zip(gs) {
                    let d = gv + k.wd * *pv;
                    *pv -= k.lr * d;
                }
            });
        })?,
        Some((buf, first)) => buf.update_cpu::<T>(|bs| {
            inner = p.update_cpu::<T>(|ps| {
                ps.par_chunks_mut(PAR_MIN).zip(g.par_chunks(PAR_MIN)).zip(bs.par_chunks_mut(PAR_MIN)).for_each(
                    |((ps, gs), bs)| match (first, h.nesterov) {
                        (false, false) => momentum_chunk::<T, false, false>(ps, gs, bs, &k),
                        (false, true) => momentum_chunk::<T, false, true>(ps, gs, bs, &k),
                        (true, false) => momentum_chunk::<T, true, false>(ps, gs, bs, &k),
                        (true, true) => momentum_chunk::<T, true, true>(ps, gs, bs, &k),
                    },
                );
            });
        })?,
    }
    Ok(inner?)
}

/// The update's numbers in `T`.
#[derive(Clone, Copy)]
struct Coeffs<T> {
    lr: T,
    wd: T,
    m: T,
    one_minus_damp: T,
}

/// The momentum update on one chunk: parameters `ps`, gradients `gs`, buffers `bs`.
#[inline]
fn momentum_chunk<T: Element, const FIRST: bool, const NESTEROV: bool>(
    ps: &mut [T],
    gs: &[T],
    bs: &mut [T],
    k: &Coeffs<T>,
) {
    for ((pv, &gv), bv) in ps.iter_mut().zip(gs).zip(bs.iter_mut()) {
        let d = gv + k.wd * *pv;
        *bv = if FIRST { d } else { k.m * *bv + k.one_minus_damp * d };
        let d = if NESTEROV { d + k.m * *bv } else { *bv };
        *pv -= k.lr * d;
    }
}
