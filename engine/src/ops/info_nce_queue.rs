//! InfoNCE of anchors against their own positive key and one shared bank of negatives: MoCo's and
//! DenseCL's loss (`F.cross_entropy(cat([q . k_pos, q @ queue^T], 1) / tau, zeros)`), without the
//! `M x (1 + K) x D` key tensor that [`super::info_nce`] would need for a shared queue.
//!
//! For anchors `q: [M, D]`, positives `p: [M, D]` (row `m`'s own), negatives `n: [K, D]` (shared
//! by every row) and temperature `tau > 0`:
//! `l_m0 = q_m . p_m / tau`, `l_mj = q_m . n_(j-1) / tau` (`j = 1..=K`),
//! `lse_m = log sum_j exp(l_mj)` (stable), `loss = (1 / M) sum_m (lse_m - l_m0)`; with `M = 0`
//! the loss is 0.
//!
//! Backward, with `g` the scalar output gradient, `s = g / (M tau)` and `w_mj = exp(l_mj - lse_m)`
//! (the softmax over a row's logits):
//! * `dq_m = s ((w_m0 - 1) p_m + sum_(j>=1) w_mj n_(j-1))`,
//! * `dp_m = s (w_m0 - 1) q_m`,
//! * `dn_k = s sum_m w_m(k+1) q_m`.
//!
//! Saved for backward: the three inputs (untracked handles, shared with the caller) and `lse`
//! (`M` values); the logits are recomputed. The caller normalises (unit rows: cosine similarities
//! over `tau`). CPU only.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};

const OP: &str = "info_nce_queue";

/// Mean over rows of `-log softmax([q_m . p_m, q_m . n_0, ..., q_m . n_(K-1)] / tau)[0]` for
/// `q, p: [M, D]`, `n: [K, D]` (see the module docs). `K = 0` is allowed (the loss is then 0).
/// Errors: other shapes, `tau` not a positive number, mixed dtypes, tensors not on the CPU.
pub fn info_nce_queue(q: &Tensor, pos: &Tensor, neg: &Tensor, tau: f64) -> Result<Tensor> {
    if q.rank() != 2 || pos.dims() != q.dims() || neg.rank() != 2 || neg.dim(1) != q.dim(1) {
        return Err(Error::shape(
            OP,
            format!(
                "expected anchors [M, D], positives [M, D] and negatives [K, D], got {}, {} and {}",
                q.shape(),
                pos.shape(),
                neg.shape()
            ),
        ));
    }
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(Error::invalid(OP, format!("tau must be a positive number, got {tau}")));
    }
    for t in [pos, neg] {
        if t.dtype() != q.dtype() {
            return Err(Error::DType { op: OP, lhs: q.dtype(), rhs: t.dtype() });
        }
    }
    if [q, pos, neg].iter().any(|t| t.device() != crate::Device::Cpu) {
        return Err(Error::Device { op: OP, msg: "only the CPU has this op".into() });
    }
    let (m, d, k) = (q.dim(0), q.dim(1), neg.dim(0));
    with_dtype!(q.dtype(), T, {
        let (qs, ps, ns) = (q.cpu_slice::<T>(OP)?, pos.cpu_slice::<T>(OP)?, neg.cpu_slice::<T>(OP)?);
        let mut lse = vec![0f64; m];
        let mut total = 0f64;
        let mut l = vec![0f64; k + 1];
        for row in 0..m {
            logits_row(qs, ps, ns, row, d, tau, &mut l);
            let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s = mx + l.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            lse[row] = s;
            total += s - l[0];
        }
        let loss = if m == 0 { 0.0 } else { total / m as f64 };
        let out = Tensor::from_cpu(T::wrap(vec![T::from_f64(loss)]), Shape(vec![]));
        record(OP, &[q, pos, neg], out, || {
            Box::new(QueueBackward { q: q.detach(), pos: pos.detach(), neg: neg.detach(), lse, tau })
        })
    })
}

fn dot<T: crate::Float>(a: &[T], b: &[T]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x.to_f64() * y.to_f64()).sum()
}

/// `l[0] = q_row . p_row / tau`, `l[1 + j] = q_row . n_j / tau`, accumulated in f64.
fn logits_row<T: crate::Float>(q: &[T], p: &[T], n: &[T], row: usize, d: usize, tau: f64, l: &mut [f64]) {
    let qr = &q[row * d..(row + 1) * d];
    l[0] = dot(qr, &p[row * d..(row + 1) * d]) / tau;
    for (j, lj) in l[1..].iter_mut().enumerate() {
        *lj = dot(qr, &n[j * d..(j + 1) * d]) / tau;
    }
}

/// Saves the inputs and the per-row log-sum-exp.
struct QueueBackward {
    q: Tensor,
    pos: Tensor,
    neg: Tensor,
    lse: Vec<f64>,
    tau: f64,
}

impl Backward for QueueBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn saved_bytes(&self) -> usize {
        self.q.nbytes() + self.pos.nbytes() + self.neg.nbytes() + self.lse.len() * 8
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (m, d, k) = (self.q.dim(0), self.q.dim(1), self.neg.dim(0));
        let gv = g.item()?;
        with_dtype!(self.q.dtype(), T, {
            let (qs, ps, ns) = (self.q.cpu_slice::<T>(OP)?, self.pos.cpu_slice::<T>(OP)?, self.neg.cpu_slice::<T>(OP)?);
            let mut dq = needs[0].then(|| vec![0f64; m * d]);
            let mut dp = needs[1].then(|| vec![0f64; m * d]);
            let mut dn = needs[2].then(|| vec![0f64; k * d]);
            let s = if m == 0 { 0.0 } else { gv / (m as f64 * self.tau) };
            let mut l = vec![0f64; k + 1];
            for row in 0..m {
                logits_row(qs, ps, ns, row, d, self.tau, &mut l);
                let w0 = s * ((l[0] - self.lse[row]).exp() - 1.0);
                let qr = &qs[row * d..(row + 1) * d];
                if let Some(dq) = dq.as_mut() {
                    let out = &mut dq[row * d..(row + 1) * d];
                    for t in 0..d {
                        out[t] += w0 * ps[row * d + t].to_f64();
                    }
                    for j in 0..k {
                        let w = s * (l[1 + j] - self.lse[row]).exp();
                        for t in 0..d {
                            out[t] += w * ns[j * d + t].to_f64();
                        }
                    }
                }
                if let Some(dp) = dp.as_mut() {
                    for t in 0..d {
                        dp[row * d + t] = w0 * qr[t].to_f64();
                    }
                }
                if let Some(dn) = dn.as_mut() {
                    for j in 0..k {
                        let w = s * (l[1 + j] - self.lse[row]).exp();
                        for t in 0..d {
                            dn[j * d + t] += w * qr[t].to_f64();
                        }
                    }
                }
            }
            let wrap = |v: Option<Vec<f64>>, shape: &Shape| {
                v.map(|v| Tensor::from_cpu(T::wrap(v.into_iter().map(T::from_f64).collect()), shape.clone()))
            };
            Ok(vec![wrap(dq, self.q.shape()), wrap(dp, self.pos.shape()), wrap(dn, self.neg.shape())])
        })
    }
}
