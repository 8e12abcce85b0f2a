//! The [`Module`] trait (named state) and [`Layer`] (one tensor in, one tensor out).
//!
//! A module lists its parameters, buffers and child modules to a [`Visitor`], which builds
//! torchvision-style dotted names (`backbone.layer1.0.conv1.weight`, `bn1.running_mean`). That one
//! traversal serves the optimiser, freezing, dtype conversion and checkpoints, so a new model only
//! writes `visit` once:
//!
//! ```
//! use nn::{BatchNorm2d, Conv2d, Module, Visitor};
//! struct Stem { conv1: Conv2d, bn1: BatchNorm2d }
//! impl Module for Stem {
//!     fn visit(&mut self, v: &mut Visitor<'_>) {
//!         v.child("conv1", &mut self.conv1);
//!         v.child("bn1", &mut self.bn1);
//!     }
//! }
//! let mut rng = engine::Rng::new(0);
//! let mut stem = Stem { conv1: Conv2d::new(3, 8, 3, &mut rng), bn1: BatchNorm2d::new(8) };
//! assert_eq!(nn::param_names(&mut stem), ["conv1.weight", "bn1.weight", "bn1.bias"]);
//! ```
//!
//! Traversal takes `&mut self` (one method serves readers and writers alike; models are owned by
//! the trainer, so the exclusive borrow costs nothing). [`Layer::forward`] takes `&mut self`
//! because batch norm updates its running statistics in training mode.

use crate::{Ctx, Param, Result};
use engine::{DType, Device, Tensor};

/// One entry of a module's state, handed to a [`Visitor`]'s callback.
pub enum Slot<'a> {
    /// A trainable tensor.
    Param(&'a mut Param),
    /// A float buffer: saved and loaded, not trained (batch norm `running_mean`, `running_var`).
    Buffer(&'a mut Tensor),
    /// An integer counter (batch norm `num_batches_tracked`): an int64 scalar of shape `[]` in
    /// PyTorch, and so in checkpoints.
    Count(&'a mut i64),
}

/// Walks a module tree, keeping the dotted name prefix and calling one callback per entry.
pub struct Visitor<'f> {
    prefix: String,
    f: &'f mut dyn FnMut(&str, Slot<'_>),
}

impl<'f> Visitor<'f> {
    /// A visitor calling `f(full_name, slot)` for every parameter and buffer.
    pub fn new(f: &'f mut dyn FnMut(&str, Slot<'_>)) -> Self {
        Visitor { prefix: String::new(), f }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Report a parameter named `name` under the current prefix.
    pub fn param(&mut self, name: &str, p: &mut Param) {
        let full = self.full_name(name);
        (self.f)(&full, Slot::Param(p));
    }

    /// Report a float buffer named `name` under the current prefix.
    pub fn buffer(&mut self, name: &str, b: &mut Tensor) {
        let full = self.full_name(name);
        (self.f)(&full, Slot::Buffer(b));
    }

    /// Report an integer counter named `name` under the current prefix.
    pub fn count(&mut self, name: &str, c: &mut i64) {
        let full = self.full_name(name);
        (self.f)(&full, Slot::Count(c));
    }

    /// Visit a child module under `prefix.name`.
    pub fn child<M: Module + ?Sized>(&mut self, name: &str, m: &mut M) {
        let saved = self.prefix.len();
        if !self.prefix.is_empty() {
            self.prefix.push('.');
        }
        self.prefix.push_str(name);
        m.visit(self);
        self.prefix.truncate(saved);
    }
}

/// Anything with named parameters and buffers.
pub trait Module {
    /// Report every parameter, buffer and child, in a fixed order (the checkpoint and optimiser
    /// order). Names follow PyTorch's `state_dict` for the equivalent torch module.
    fn visit(&mut self, v: &mut Visitor<'_>);
}

/// A module with a single-tensor forward pass (the building blocks of [`crate::Sequential`]).
pub trait Layer: Module {
    /// Apply the layer. Parameters are fetched through [`Ctx::param`] so that they are watched on
    /// the context's tape when training; `ctx.training` selects train or eval behaviour.
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor>;
}

impl<M: Module + ?Sized> Module for Box<M> {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        (**self).visit(v)
    }
}

impl<L: Layer + ?Sized> Layer for Box<L> {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        (**self).forward(x, ctx)
    }
}

/// Call `f(name, slot)` for every parameter and buffer of `m`.
pub fn visit_all<M: Module + ?Sized>(m: &mut M, mut f: impl FnMut(&str, Slot<'_>)) {
    let mut v = Visitor::new(&mut f);
    m.visit(&mut v);
}

/// Call `f(name, param)` for every parameter of `m`.
pub fn for_each_param<M: Module + ?Sized>(m: &mut M, mut f: impl FnMut(&str, &mut Param)) {
    visit_all(m, |name, slot| {
        if let Slot::Param(p) = slot {
            f(name, p)
        }
    });
}

/// Names of all parameters, in visit order.
pub fn param_names<M: Module + ?Sized>(m: &mut M) -> Vec<String> {
    let mut out = Vec::new();
    for_each_param(m, |n, _| out.push(n.to_string()));
    out
}

/// Names of all parameters and buffers (the `state_dict` keys), in visit order.
pub fn state_names<M: Module + ?Sized>(m: &mut M) -> Vec<String> {
    let mut out = Vec::new();
    visit_all(m, |n, _| out.push(n.to_string()));
    out
}

/// Number of parameter elements: `(trainable, total)`.
pub fn num_params<M: Module + ?Sized>(m: &mut M) -> (usize, usize) {
    let (mut trainable, mut total) = (0, 0);
    for_each_param(m, |_, p| {
        total += p.value.numel();
        if !p.frozen {
            trainable += p.value.numel();
        }
    });
    (trainable, total)
}

/// Does the dotted `name` lie under `prefix`? `""` matches everything; `"backbone"` matches
/// `backbone.conv1.weight` but not `backbone2.weight`.
pub fn under_prefix(name: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('.');
    prefix.is_empty()
        || name == prefix
        || (name.len() > prefix.len() && name.starts_with(prefix) && name.as_bytes()[prefix.len()] == b'.')
}

/// Freeze (or unfreeze) every parameter under `prefix` (see [`under_prefix`]); returns how many
/// parameters changed state. Frozen parameters get no gradient and no optimiser update. (Batch
/// norm running statistics still update in training mode; run those layers with an eval
/// [`Ctx`] if they must stay fixed too.)
pub fn set_frozen<M: Module + ?Sized>(m: &mut M, prefix: &str, frozen: bool) -> usize {
    let mut changed = 0;
    for_each_param(m, |name, p| {
        if under_prefix(name, prefix) && p.frozen != frozen {
            p.frozen = frozen;
            changed += 1;
        }
    });
    changed
}

/// Replace every parameter and float buffer `t` by `f(t)` (integer counters are left alone);
/// stops at the first error.
fn map_float_tensors<M: Module + ?Sized>(m: &mut M, f: impl Fn(&Tensor) -> engine::Result<Tensor>) -> Result<()> {
    let mut result = Ok(());
    visit_all(m, |_, slot| {
        if result.is_err() {
            return;
        }
        let t = match slot {
            Slot::Param(p) => &mut p.value,
            Slot::Buffer(t) => t,
            Slot::Count(_) => return,
        };
        result = f(t).map(|c| *t = c).map_err(Into::into);
    });
    result
}

/// Convert every parameter and float buffer to `dtype` (f64 for gradient checks, f32 to train).
pub fn convert_dtype<M: Module + ?Sized>(m: &mut M, dtype: DType) -> Result<()> {
    map_float_tensors(m, |t| t.to_dtype(dtype))
}

/// Move every parameter and float buffer to `device` (e.g. `Device::Cuda(0)` before training on
/// the GPU, `Device::Cpu` before saving a checkpoint by hand). Frozen flags, names and counters are
/// unchanged; tensors already on `device` are kept as they are. Gradients and optimiser momentum
/// live outside the model: the optimiser moves its buffers to each parameter's device as it steps.
pub fn to_device<M: Module + ?Sized>(m: &mut M, device: Device) -> Result<()> {
    map_float_tensors(m, |t| t.to_device(device))
}
