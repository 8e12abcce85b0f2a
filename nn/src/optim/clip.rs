//! Gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_` with the L2 norm.
//!
//! `n = sqrt(sum over all gradient elements of g^2)` (accumulated in f64, in parameter order, so
//! it is reproducible); if `max_norm / (n + 1e-6) < 1`, every gradient is scaled by that factor.

use crate::{Error, Grads, Result};
use engine::{with_dtype, Element, Tensor};

/// The global L2 norm of all gradients.
pub fn grad_norm(grads: &Grads) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.iter() {
        sq += with_dtype!(g.dtype(), T, sum_sq::<T>(g)?);
    }
    Ok(sq.sqrt())
}

fn sum_sq<T: Element>(g: &Tensor) -> Result<f64> {
    Ok(g.cpu_slice::<T>("clip_grad_norm")?.iter().map(|v| v.to_f64() * v.to_f64()).sum())
}

/// Scale the gradients in place so their global norm is at most `max_norm`; returns the norm
/// before clipping (a NaN or infinite norm is returned as is and nothing is scaled: check it).
pub fn clip_grad_norm(grads: &mut Grads, max_norm: f64) -> Result<f64> {
    if !(max_norm > 0.0 && max_norm.is_finite()) {
        return Err(Error::config("clip_grad_norm", format!("max norm {max_norm} must be finite and > 0")));
    }
    let norm = grad_norm(grads)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            with_dtype!(g.dtype(), T, {
                let c = T::from_f64(coef);
                g.update_cpu::<T>(|s| s.iter_mut().for_each(|v| *v *= c))?
            });
        }
    }
    Ok(norm)
}
