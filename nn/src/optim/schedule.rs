//! Learning-rate schedules: pure functions of the step, so a resumed run needs only the step.
//!
//! With base rate `lr0`, `W` warmup steps and `T` total steps, at 0-based step `s`:
//! ```text
//! warmup (s < W):  lr = lr0 * (s + 1) / W                 (reaches lr0 at s = W - 1)
//! afterwards, with progress q = min((s - W) / (T - W), 1):
//!   constant:      lr = lr0
//!   cosine:        lr = lr_min + (lr0 - lr_min) * (1 + cos(pi q)) / 2
//!   poly(power):   lr = lr0 * (1 - q)^power              (DeepLab: power 0.9)
//! ```
//! Steps past `T` keep the final value.

use crate::{Error, Result};

/// The decay after warmup.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decay {
    /// No decay.
    Constant,
    /// Half-cosine from the base rate down to `min_lr`.
    Cosine {
        /// The final rate.
        min_lr: f64,
    },
    /// `(1 - q)^power`.
    Poly {
        /// The exponent (0.9 in DeepLab).
        power: f64,
    },
}

/// A learning-rate schedule (see the module docs for the formulas).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// The peak rate.
    pub base_lr: f64,
    /// Length of the run in optimiser steps.
    pub total_steps: u64,
    /// Linear warmup steps at the start (0 = none).
    pub warmup_steps: u64,
    /// Decay after the warmup.
    pub decay: Decay,
}

impl LrSchedule {
    /// A schedule without warmup; checks the settings.
    pub fn new(base_lr: f64, total_steps: u64, decay: Decay) -> Result<LrSchedule> {
        LrSchedule { base_lr, total_steps, warmup_steps: 0, decay }.validated()
    }

    /// Cosine decay to zero, the paper's schedule.
    pub fn cosine(base_lr: f64, total_steps: u64) -> Result<LrSchedule> {
        Self::new(base_lr, total_steps, Decay::Cosine { min_lr: 0.0 })
    }

    /// DeepLab's poly schedule with power 0.9.
    pub fn poly(base_lr: f64, total_steps: u64) -> Result<LrSchedule> {
        Self::new(base_lr, total_steps, Decay::Poly { power: 0.9 })
    }

    /// Add a linear warmup over the first `steps` steps.
    pub fn with_warmup(self, steps: u64) -> Result<LrSchedule> {
        LrSchedule { warmup_steps: steps, ..self }.validated()
    }

    fn validated(self) -> Result<LrSchedule> {
        let bad = |m: String| Err(Error::config("lr schedule", m));
        if !(self.base_lr >= 0.0 && self.base_lr.is_finite()) {
            return bad(format!("base lr {} must be finite and >= 0", self.base_lr));
        }
        if self.total_steps == 0 || self.warmup_steps >= self.total_steps {
            return bad(format!(
                "need total steps ({}) > 0 and > warmup steps ({})",
                self.total_steps, self.warmup_steps
            ));
        }
        match self.decay {
            Decay::Cosine { min_lr } if !(0.0..=self.base_lr).contains(&min_lr) => {
                bad(format!("cosine min lr {min_lr} must lie in [0, base lr {}]", self.base_lr))
            }
            Decay::Poly { power } if !(power > 0.0 && power.is_finite()) => {
                bad(format!("poly power {power} must be > 0"))
            }
            _ => Ok(self),
        }
    }

    /// The learning rate of 0-based optimiser step `step`.
    pub fn lr(&self, step: u64) -> f64 {
        let (w, t) = (self.warmup_steps, self.total_steps);
        if step < w {
            return self.base_lr * (step + 1) as f64 / w as f64;
        }
        let q = ((step - w) as f64 / (t - w) as f64).min(1.0);
        match self.decay {
            Decay::Constant => self.base_lr,
            Decay::Cosine { min_lr } => {
                min_lr + (self.base_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * q).cos())
            }
            Decay::Poly { power } => self.base_lr * (1.0 - q).powf(power),
        }
    }
}
