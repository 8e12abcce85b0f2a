//! InfoNCE of anchors against their own keys, the positive first: U2PL's contrastive term
//! (`F.cross_entropy(logits / tau, zeros)` with `logits = [a . k_pos, a . k_neg_1, ...]`).
//!
//! For anchors `a: [M, D]`, keys `k: [M, K, D]` (row `m`'s key 0 is its positive, keys
//! `1..K` its negatives) and temperature `tau > 0`:
//! `l_mj = a_m . k_mj / tau`, `lse_m = log sum_j exp(l_mj)` (stable),
//! `loss = (1 / M) sum_m (lse_m - l_m0)`; with `M = 0` the loss is 0.
//!
//! Backward, with `g` the scalar output gradient and `p_mj = exp(l_mj - lse_m)` (the softmax over
//! a row's keys):
//! * `da_m = g / (M tau) sum_j (p_mj - [j == 0]) k_mj`,
//! * `dk_mj = g / (M tau) (p_mj - [j == 0]) a_m`.
//!
//! Saved for backward: the anchors and keys (untracked handles, shared with the caller) and
//! `lse` (`M` values); the logits are recomputed. The caller normalises: with unit anchors and
//! keys the logits are cosine similarities over `tau`, as U2PL. CPU only.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};

const OP: &str = "info_nce";

/// Mean over rows of `-log softmax_j(a_m . k_mj / tau)[0]` for `a: [M, D]`, `k: [M, K, D]`
/// (see the module docs). Errors: other shapes, `K = 0`, `tau` not a positive number, mixed
/// dtypes, or tensors not on the CPU.
pub fn info_nce(anchors: &Tensor, keys: &Tensor, tau: f64) -> Result<Tensor> {
    if anchors.rank() != 2 || keys.rank() != 3 || keys.dim(0) != anchors.dim(0) || keys.dim(2) != anchors.dim(1) {
        return Err(Error::shape(
            OP,
            format!("expected anchors [M, D] and keys [M, K, D], got {} and {}", anchors.shape(), keys.shape()),
        ));
    }
    if keys.dim(1) == 0 {
        return Err(Error::invalid(OP, "every row needs at least its positive key (K >= 1)"));
    }
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(Error::invalid(OP, format!("tau must be a positive number, got {tau}")));
    }
    if anchors.dtype() != keys.dtype() {
        return Err(Error::DType { op: OP, lhs: anchors.dtype(), rhs: keys.dtype() });
    }
    if anchors.device() != crate::Device::Cpu || keys.device() != crate::Device::Cpu {
        return Err(Error::Device { op: OP, msg: "only the CPU has this op".into() });
    }
    let (m, k, d) = (keys.dim(0), keys.dim(1), keys.dim(2));
    with_dtype!(anchors.dtype(), T, {
        let (a, ks) = (anchors.cpu_slice::<T>(OP)?, keys.cpu_slice::<T>(OP)?);
        let mut lse = vec![0f64; m];
        let mut total = 0f64;
        let mut l = vec![0f64; k];
        for (row, lse_row) in lse.iter_mut().enumerate() {
            logits_row(a, ks, row, k, d, tau, &mut l);
            let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s = mx + l.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            *lse_row = s;
            total += s - l[0];
        }
        let loss = if m == 0 { 0.0 } else { total / m as f64 };
        let out = Tensor::from_cpu(T::wrap(vec![T::from_f64(loss)]), Shape(vec![]));
        record(OP, &[anchors, keys], out, || {
            Box::new(InfoNceBackward { anchors: anchors.detach(), keys: keys.detach(), lse, tau })
        })
    })
}

/// `l_j = a_row . k_row,j / tau` for every key `j` of one row, accumulated in f64.
fn logits_row<T: crate::Float>(a: &[T], ks: &[T], row: usize, k: usize, d: usize, tau: f64, l: &mut [f64]) {
    let ar = &a[row * d..(row + 1) * d];
    for (j, lj) in l.iter_mut().enumerate().take(k) {
        let kr = &ks[(row * k + j) * d..(row * k + j + 1) * d];
        *lj = ar.iter().zip(kr).map(|(x, y)| x.to_f64() * y.to_f64()).sum::<f64>() / tau;
    }
}

/// Saves the anchors, the keys and the per-row log-sum-exp.
struct InfoNceBackward {
    anchors: Tensor,
    keys: Tensor,
    lse: Vec<f64>,
    tau: f64,
}

impl Backward for InfoNceBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn saved_bytes(&self) -> usize {
        self.anchors.nbytes() + self.keys.nbytes() + self.lse.len() * 8
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (m, k, d) = (self.keys.dim(0), self.keys.dim(1), self.keys.dim(2));
        let gv = g.item()?;
        with_dtype!(self.anchors.dtype(), T, {
            let (a, ks) = (self.anchors.cpu_slice::<T>(OP)?, self.keys.cpu_slice::<T>(OP)?);
            let mut da = needs[0].then(|| vec![T::ZERO; m * d]);
            let mut dk = needs[1].then(|| vec![T::ZERO; m * k * d]);
            let scale = if m == 0 { 0.0 } else { gv / (m as f64 * self.tau) };
            let mut l = vec![0f64; k];
            for row in 0..m {
                logits_row(a, ks, row, k, d, self.tau, &mut l);
                for (j, &lj) in l.iter().enumerate() {
                    let coef = scale * ((lj - self.lse[row]).exp() - if j == 0 { 1.0 } else { 0.0 });
                    let base = (row * k + j) * d;
                    if let Some(da) = da.as_mut() {
                        for t in 0..d {
                            da[row * d + t] += T::from_f64(coef * ks[base + t].to_f64());
                        }
                    }
                    if let Some(dk) = dk.as_mut() {
                        for t in 0..d {
                            dk[base + t] = T::from_f64(coef * a[row * d + t].to_f64());
                        }
                    }
                }
            }
            Ok(vec![
                da.map(|v| Tensor::from_cpu(T::wrap(v), self.anchors.shape().clone())),
                dk.map(|v| Tensor::from_cpu(T::wrap(v), self.keys.shape().clone())),
            ])
        })
    }
}
