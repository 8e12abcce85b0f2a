//! The per-step context passed to every forward pass, and the parameter gradients it yields.
//!
//! A training step:
//!
//! ```no_run
//! # use nn::*;
//! # fn step(model: &mut Sequential, x: &engine::Tensor, labels: &engine::LabelMap,
//! #         opt: &mut Sgd, sched: &LrSchedule, rng: &mut engine::Rng, step: u64) -> nn::Result<()> {
//! let mut ctx = Ctx::train(rng.fork());          // a fresh tape, training mode, a dropout stream
//! let logits = model.forward(x, &mut ctx)?;       // parameters are watched as they are used
//! let loss = CrossEntropyLoss::new(255).forward(&logits, labels)?;
//! let mut grads = ctx.backward(&loss)?;           // gradients per parameter; the tape is freed
//! clip_grad_norm(&mut grads, 10.0)?;              // optional
//! opt.step(model, &grads, sched.lr(step))?;       // SGD update in place
//! # Ok(()) }
//! ```

use crate::{Param, ParamId, Result};
use engine::{Rng, Tape, Tensor};
use std::collections::BTreeMap;

/// What a forward pass needs besides its input: the tape (when gradients are wanted), the
/// train/eval flag (batch norm statistics, dropout) and a seeded generator (dropout masks).
pub struct Ctx {
    tape: Option<Tape>,
    /// Training mode: batch norm uses batch statistics and updates its running ones; dropout drops.
    pub training: bool,
    /// The generator for stochastic layers. Give each step its own fork of the run's generator,
    /// so a resumed run (which restores the run's generator) repeats exactly.
    pub rng: Rng,
    watched: BTreeMap<ParamId, Tensor>,
}

impl Ctx {
    /// A training step: a new tape, training mode.
    pub fn train(rng: Rng) -> Ctx {
        Ctx::new(Some(Tape::new()), true, rng)
    }

    /// Inference: no tape (nothing is recorded), eval mode.
    pub fn eval() -> Ctx {
        Ctx::new(None, false, Rng::new(0))
    }

    /// Any combination, e.g. eval-mode batch norm with gradients (a tape and `training = false`).
    pub fn new(tape: Option<Tape>, training: bool, rng: Rng) -> Ctx {
        Ctx { tape, training, rng, watched: BTreeMap::new() }
    }

    /// The tape, if gradients are being recorded.
    pub fn tape(&self) -> Option<&Tape> {
        self.tape.as_ref()
    }

    /// The tensor to use for `p` in this forward pass: watched on the tape the first time it is
    /// asked for (later uses share the same leaf, so a shared weight's gradients add up), or its
    /// plain untracked value when there is no tape or the parameter is frozen.
    pub fn param(&mut self, p: &Param) -> Tensor {
        match &self.tape {
            Some(tape) if !p.frozen => self.watched.entry(p.id()).or_insert_with(|| tape.watch(&p.value)).clone(),
            _ => p.value.clone(),
        }
    }

    /// Differentiate the scalar `loss` and collect the gradient of every watched parameter.
    /// Consumes the context: the watched leaves are dropped, so the optimiser's in-place updates
    /// do not have to copy parameter storage still shared with the tape.
    pub fn backward(self, loss: &Tensor) -> Result<Grads> {
        let tape = self.tape.ok_or_else(|| engine::Error::Tape {
            op: "backward",
            msg: "this context has no tape (Ctx::eval); use Ctx::train to record gradients".into(),
        })?;
        let grads = tape.backward(loss)?;
        let mut map = BTreeMap::new();
        for (id, leaf) in &self.watched {
            if let Some(g) = grads.get(leaf) {
                map.insert(*id, g.detach());
            }
        }
        Ok(Grads { map })
    }
}

/// Gradients keyed by parameter identity, iterated in parameter-creation order (so sums over
/// them, like the global norm, are computed in a fixed order).
#[derive(Default)]
pub struct Grads {
    map: BTreeMap<ParamId, Tensor>,
}

impl Grads {
    /// An empty set (to fill by hand with [`Grads::insert`], e.g. in tests).
    pub fn new() -> Grads {
        Grads::default()
    }
    /// Set the gradient of `p`.
    pub fn insert(&mut self, p: &Param, grad: Tensor) {
        self.map.insert(p.id(), grad.detach());
    }
    /// The gradient of `p`, if the loss depends on it.
    pub fn get(&self, p: &Param) -> Option<&Tensor> {
        self.map.get(&p.id())
    }
    /// Number of parameters with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// True when no parameter got a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// All gradients, in parameter-creation order.
    pub fn iter(&self) -> impl Iterator<Item = &Tensor> {
        self.map.values()
    }
    /// All gradients, mutably, in parameter-creation order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Tensor> {
        self.map.values_mut()
    }
}
