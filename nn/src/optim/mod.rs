//! Optimisation: SGD with momentum (PyTorch semantics), learning-rate schedules, gradient-norm
//! clipping.

mod clip;
mod schedule;
mod sgd;

pub use clip::{clip_grad_norm, grad_norm};
pub use schedule::{Decay, LrSchedule};
pub use sgd::{ParamGroups, Sgd, SgdConfig};
