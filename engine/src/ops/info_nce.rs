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
//! **Indexed keys** ([`info_nce_indexed`]): the keys are rows of a bank `b: [R, D]`, `k_mj =
//! b_(i_mj)` for an index `i: M x K` (rows may repeat: U2PL draws 50 negatives per anchor, with
//! replacement, from a queue, and one prototype serves every anchor of its class), so the
//! `M x K x D` key tensor is never written (13 MiB per U2PL step at 1024 anchors x 51 keys x 64).
//! The gradient of a bank row sums over its uses: `db_r = g / (M tau) sum_{(m, j): i_mj = r}
//! (p_mj - [j == 0]) a_m`, in `(m, j)` order. [`info_nce`] is the indexed form with the identity
//! index over its keys.
//!
//! Saved for backward: the anchors, the bank and the index (untracked handles, shared with the
//! caller) and `lse` (`M` values); the logits are recomputed. The caller normalises: with unit anchors and
//! keys the logits are cosine similarities over `tau`, as U2PL. CPU only.
//!
//! Rows run in parallel (U2PL's term has `M` = 1024 rows of `K` = 51 keys), each dot product in
//! f64 over four interleaved lanes so it vectorises; the loss sums the rows' terms in row order,
//! so results do not depend on the thread count. A test compares the op with the plain loop.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};
use rayon::prelude::*;

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
    // `K = 0` and everything else are checked by the indexed form.
    let (m, k, d) = (keys.dim(0), keys.dim(1), keys.dim(2));
    let bank = keys.reshape(&[m * k, d])?;
    let index: Vec<usize> = (0..m * k).collect();
    info_nce_indexed(anchors, &bank, &index, k, tau)
}

/// [`info_nce`] with the keys of row `m` the bank rows `index[m K .. (m + 1) K]` (`K` = `keys`
/// per row, the positive first) of `bank: [R, D]` (see the module docs). Errors: other shapes,
/// `K = 0`, an index of another length than `M K` or out of the bank, `tau` not a positive
/// number, mixed dtypes, or tensors not on the CPU.
pub fn info_nce_indexed(anchors: &Tensor, bank: &Tensor, index: &[usize], keys: usize, tau: f64) -> Result<Tensor> {
    if anchors.rank() != 2 || bank.rank() != 2 || bank.dim(1) != anchors.dim(1) {
        return Err(Error::shape(
            OP,
            format!("expected anchors [M, D] and a key bank [R, D], got {} and {}", anchors.shape(), bank.shape()),
        ));
    }
    if keys == 0 {
        return Err(Error::invalid(OP, "every row needs at least its positive key (K >= 1)"));
    }
    let (m, d, r) = (anchors.dim(0), anchors.dim(1), bank.dim(0));
    if index.len() != m * keys {
        return Err(Error::invalid(
            OP,
            format!("{} key indices for {m} anchors of {keys} keys (expected {})", index.len(), m * keys),
        ));
    }
    if let Some(&bad) = index.iter().find(|&&i| i >= r) {
        return Err(Error::invalid(OP, format!("key index {bad} out of range for a bank of {r} rows")));
    }
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(Error::invalid(OP, format!("tau must be a positive number, got {tau}")));
    }
    if anchors.dtype() != bank.dtype() {
        return Err(Error::DType { op: OP, lhs: anchors.dtype(), rhs: bank.dtype() });
    }
    if anchors.device() != crate::Device::Cpu || bank.device() != crate::Device::Cpu {
        return Err(Error::Device { op: OP, msg: "only the CPU has this op".into() });
    }
    let k = keys;
    with_dtype!(anchors.dtype(), T, {
        let (a, b) = (anchors.cpu_slice::<T>(OP)?, bank.cpu_slice::<T>(OP)?);
        // Per row: (lse, lse - l_0).
        let rows: Vec<(f64, f64)> = (0..m)
            .into_par_iter()
            .with_min_len(ROWS_PER_TASK)
            .map_init(
                || vec![0f64; k],
                |l, row| {
                    logits_row(a, b, &index[row * k..(row + 1) * k], row, d, tau, l);
                    let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let s = mx + l.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
                    (s, s - l[0])
                },
            )
            .collect();
        let lse: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let total: f64 = rows.iter().map(|r| r.1).sum();
        let loss = if m == 0 { 0.0 } else { total / m as f64 };
        let out = Tensor::from_cpu(T::wrap(vec![T::from_f64(loss)]), Shape(vec![]));
        record(OP, &[anchors, bank], out, || {
            Box::new(InfoNceBackward {
                anchors: anchors.detach(),
                bank: bank.detach(),
                index: index.to_vec(),
                keys: k,
                lse,
                tau,
            })
        })
    })
}

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// `l_j = a_row . b_(idx_j) / tau` for every key `j` of one row (`idx` its bank rows),
/// accumulated in f64.
fn logits_row<T: crate::Float>(a: &[T], b: &[T], idx: &[usize], row: usize, d: usize, tau: f64, l: &mut [f64]) {
    let ar = &a[row * d..(row + 1) * d];
    for (lj, &i) in l.iter_mut().zip(idx) {
        *lj = dot(ar, &b[i * d..(i + 1) * d]) / tau;
    }
}

/// `sum_t x_t y_t` in f64, four interleaved partial sums (so it vectorises), combined in a fixed order.
#[inline]
fn dot<T: crate::Float>(x: &[T], y: &[T]) -> f64 {
    let mut acc = [0f64; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let tail: f64 = xc.remainder().iter().zip(yc.remainder()).map(|(p, q)| p.to_f64() * q.to_f64()).sum();
    for (p, q) in xc.zip(yc) {
        for i in 0..4 {
            acc[i] += p[i].to_f64() * q[i].to_f64();
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Saves the anchors, the bank, the index and the per-row log-sum-exp.
struct InfoNceBackward {
    anchors: Tensor,
    bank: Tensor,
    index: Vec<usize>,
    keys: usize,
    lse: Vec<f64>,
    tau: f64,
}

impl Backward for InfoNceBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn saved_bytes(&self) -> usize {
        self.anchors.nbytes() + self.bank.nbytes() + self.index.len() * 8 + self.lse.len() * 8
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (m, d, k, r) = (self.anchors.dim(0), self.anchors.dim(1), self.keys, self.bank.dim(0));
        let index = &self.index;
        let gv = g.item()?;
        with_dtype!(self.anchors.dtype(), T, {
            let (a, b) = (self.anchors.cpu_slice::<T>(OP)?, self.bank.cpu_slice::<T>(OP)?);
            let scale = if m == 0 { 0.0 } else { gv / (m as f64 * self.tau) };
            // coef[row][j] = scale (p_row,j - [j == 0]), each row's logits recomputed once.
            let mut coef = vec![0f64; m * k];
            coef.par_chunks_mut(k).enumerate().with_min_len(ROWS_PER_TASK).for_each(|(row, c)| {
                logits_row(a, b, &index[row * k..(row + 1) * k], row, d, self.tau, c);
                for (j, cj) in c.iter_mut().enumerate() {
                    *cj = scale * ((*cj - self.lse[row]).exp() - if j == 0 { 1.0 } else { 0.0 });
                }
            });
            let da = needs[0].then(|| {
                let mut da = vec![T::ZERO; m * d];
                da.par_chunks_mut(d.max(1)).enumerate().with_min_len(ROWS_PER_TASK).for_each(|(row, dar)| {
                    for (&cj, &i) in coef[row * k..(row + 1) * k].iter().zip(&index[row * k..(row + 1) * k]) {
                        for (o, &kv) in dar.iter_mut().zip(&b[i * d..][..d]) {
                            *o += T::from_f64(cj * kv.to_f64());
                        }
                    }
                });
                da
            });
            let db = needs[1].then(|| {
                // Each bank row sums its uses in (row, key) order: the uses grouped by bank row
                // (a counting sort keeps that order), then the rows in parallel.
                let mut start = vec![0usize; r + 1];
                for &i in index {
                    start[i + 1] += 1;
                }
                for i in 0..r {
                    start[i + 1] += start[i];
                }
                let mut uses = vec![0usize; index.len()];
                let mut fill = start.clone();
                for (mj, &i) in index.iter().enumerate() {
                    uses[fill[i]] = mj;
                    fill[i] += 1;
                }
                let mut db = vec![T::ZERO; r * d];
                db.par_chunks_mut(d.max(1)).enumerate().with_min_len(ROWS_PER_TASK).for_each(|(i, dbr)| {
                    for &mj in &uses[start[i]..start[i + 1]] {
                        let (cj, ar) = (coef[mj], &a[(mj / k) * d..][..d]);
                        for (o, &av) in dbr.iter_mut().zip(ar) {
                            *o += T::from_f64(cj * av.to_f64());
                        }
                    }
                });
                db
            });
            Ok(vec![
                da.map(|v| Tensor::from_cpu(T::wrap(v), self.anchors.shape().clone())),
                db.map(|v| Tensor::from_cpu(T::wrap(v), self.bank.shape().clone())),
            ])
        })
    }
}
