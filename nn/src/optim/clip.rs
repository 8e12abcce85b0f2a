//! Gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_` with the L2 norm.
//!
//! `n = sqrt(sum over all gradient elements of g^2)` (accumulated in f64, in parameter order, so
//! it is reproducible); if `max_norm / (n + 1e-6) < 1`, every gradient is scaled by that factor.
//!
//! Gradients on a device (CUDA) get their sum of squares from device ops (`sum_all(g * g)`, f32
//! accumulation in a fixed reduction order), read back together in one copy and added to the
//! total in the same parameter order; they are scaled by an `affine` op (the same `g * coef`).

use crate::{Error, Grads, Result};
use engine::{ops, with_dtype, Device, Element, Tensor};

/// The global L2 norm of all gradients.
pub fn grad_norm(grads: &Grads) -> Result<f64> {
    // Per-gradient sums of squares, in parameter order; device ones are filled in after one read.
    let mut per = Vec::with_capacity(grads.len());
    let mut on_device = Vec::new();
    for (i, g) in grads.iter().enumerate() {
        if g.device() == Device::Cpu {
            per.push(with_dtype!(g.dtype(), T, sum_sq::<T>(g)?));
        } else {
            per.push(0.0);
            on_device.push((i, ops::reshape(&ops::sum_all(&ops::mul(g, g)?)?, &[1])?));
        }
    }
    if !on_device.is_empty() {
        let parts: Vec<&Tensor> = on_device.iter().map(|(_, t)| t).collect();
        let sums = ops::concat(&parts, 0)?.to_vec_f64()?;
        for ((i, _), s) in on_device.iter().zip(sums) {
            per[*i] = s;
        }
    }
    let mut sq = 0.0f64;
    for s in per {
        sq += s;
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
            if g.device() != Device::Cpu {
                *g = ops::affine(g, coef, 0.0)?;
                continue;
            }
            with_dtype!(g.dtype(), T, {
                let c = T::from_f64(coef);
                g.update_cpu::<T>(|s| s.iter_mut().for_each(|v| *v *= c))?
            });
        }
    }
    Ok(norm)
}
