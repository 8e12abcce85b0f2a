//! Parameters (trainable tensors) and buffers (state saved with the model but not trained).

use engine::Tensor;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a parameter is, so optimiser groups can treat kinds differently (the usual recipe puts no
/// weight decay on normalisation parameters and biases).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A conv or linear weight.
    Weight,
    /// A conv or linear bias.
    Bias,
    /// A normalisation layer's scale (BatchNorm `weight`, gamma).
    NormWeight,
    /// A normalisation layer's shift (BatchNorm `bias`, beta).
    NormBias,
}

impl ParamKind {
    /// True for biases and normalisation parameters (the ones usually exempt from weight decay).
    pub fn is_norm_or_bias(self) -> bool {
        !matches!(self, ParamKind::Weight)
    }
}

/// A process-unique identity of a [`Param`], so a [`crate::Ctx`] can map a parameter to the tensor
/// it watched on the tape and hand its gradient back to the optimiser. Ordered by creation, which
/// keeps every iteration over gradients (and so every float sum) in a fixed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParamId(u64);

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A trainable tensor.
///
/// `frozen` parameters are never watched by a [`crate::Ctx`] (so they get no gradient and their
/// backward work is skipped) and the optimiser leaves them alone. Not `Clone`: two copies would
/// share an identity and confuse gradient bookkeeping; build a new model instead.
#[derive(Debug)]
pub struct Param {
    /// The current value (untracked).
    pub value: Tensor,
    /// Its role.
    pub kind: ParamKind,
    /// No gradient, no update.
    pub frozen: bool,
    id: ParamId,
}

impl Param {
    /// A new trainable parameter.
    pub fn new(value: Tensor, kind: ParamKind) -> Param {
        Param { value: value.detach(), kind, frozen: false, id: ParamId(NEXT_ID.fetch_add(1, Ordering::Relaxed)) }
    }
    /// Its identity.
    pub fn id(&self) -> ParamId {
        self.id
    }
}
