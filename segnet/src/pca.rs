//! Principal component analysis for the embedding map: the data are centred, their covariance
//! formed (`d x d`, `d` the embedding width, a few hundred at most), and the top components found
//! one at a time by power iteration, each found component deflated out of the matrix
//! (`C <- C - lambda v v^T`) and, against rounding, re-orthogonalised away on every iteration.
//! Deterministic: a fixed start vector, and each axis signed so its largest entry is positive.

use anyhow::{ensure, Result};

/// The top principal components of a set of rows.
#[derive(Clone, Debug)]
pub struct Pca {
    /// The rows' mean.
    pub mean: Vec<f64>,
    /// Unit axes, largest variance first.
    pub axes: Vec<Vec<f64>>,
    /// The variance along each axis (its eigenvalue of the covariance).
    pub variances: Vec<f64>,
    /// The total variance (the covariance's trace), to state how much the axes explain.
    pub total_variance: f64,
}

impl Pca {
    /// The top `k` components of the `n = rows.len() / dim` rows of `rows` (row-major), `k <= dim`.
    pub fn fit(rows: &[f64], dim: usize, k: usize) -> Result<Pca> {
        ensure!(dim > 0 && rows.len() % dim == 0, "PCA: {} values are not rows of {dim}", rows.len());
        let n = rows.len() / dim;
        ensure!(n >= 2, "PCA needs at least 2 points, got {n}");
        ensure!((1..=dim).contains(&k), "PCA: {k} components of {dim}-dimensional data");
        let mut mean = vec![0.0; dim];
        for r in rows.chunks_exact(dim) {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        // Covariance (upper triangle, then mirrored), normalised by n - 1.
        let mut cov = vec![0.0; dim * dim];
        let mut c = vec![0.0; dim];
        for r in rows.chunks_exact(dim) {
            for (ci, (v, m)) in c.iter_mut().zip(r.iter().zip(&mean)) {
                *ci = v - m;
            }
            for i in 0..dim {
                let ci = c[i];
                if ci == 0.0 {
                    continue;
                }
                let row = &mut cov[i * dim..(i + 1) * dim];
                for j in i..dim {
                    row[j] += ci * c[j];
                }
            }
        }
        for i in 0..dim {
            for j in i..dim {
                let v = cov[i * dim + j] / (n - 1) as f64;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        let total_variance: f64 = (0..dim).map(|i| cov[i * dim + i]).sum();
        let mut axes: Vec<Vec<f64>> = Vec::with_capacity(k);
        let mut variances = Vec::with_capacity(k);
        for _ in 0..k {
            let (v, lambda) = top_eigenvector(&cov, dim, &axes);
            for i in 0..dim {
                for j in 0..dim {
                    cov[i * dim + j] -= lambda * v[i] * v[j];
                }
            }
            axes.push(v);
            variances.push(lambda.max(0.0));
        }
        Ok(Pca { mean, axes, variances, total_variance })
    }

    /// The coordinates of `row` on the axes.
    pub fn project(&self, row: &[f64]) -> Vec<f64> {
        self.axes
            .iter()
            .map(|a| a.iter().zip(row.iter().zip(&self.mean)).map(|(a, (x, m))| a * (x - m)).sum())
            .collect()
    }

    /// The fraction of the total variance along axis `k` (0 when there is none).
    pub fn explained(&self, k: usize) -> f64 {
        if self.total_variance > 0.0 {
            self.variances[k] / self.total_variance
        } else {
            0.0
        }
    }
}

/// The dominant eigenpair of the symmetric positive semi-definite `m` (`dim x dim`), orthogonal to
/// `found`. Power iteration until the vector settles (or 2000 iterations, when the top two
/// eigenvalues are close: the axis is then still inside their eigenspace, all a picture needs).
fn top_eigenvector(m: &[f64], dim: usize, found: &[Vec<f64>]) -> (Vec<f64>, f64) {
    // Twice: one Gram-Schmidt pass leaves a vector that was nearly parallel to a found axis
    // visibly non-orthogonal ("twice is enough", Parlett and Kahan).
    let orthogonalise = |v: &mut Vec<f64>| {
        for _ in 0..2 {
            for f in found {
                let d: f64 = v.iter().zip(f).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(f).for_each(|(a, b)| *a -= d * b);
            }
        }
    };
    let normalise = |v: &mut Vec<f64>| -> bool {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-300 {
            v.iter_mut().for_each(|x| *x /= norm);
            true
        } else {
            false
        }
    };
    // A start with a part along every direction (a plain all-ones vector can be orthogonal to the
    // answer, as in centred data whose axes sum to zero).
    let mut v: Vec<f64> = (0..dim).map(|i| 1.0 + ((i * 7919 + 13) % 101) as f64 / 101.0).collect();
    orthogonalise(&mut v);
    if !normalise(&mut v) {
        // `found` spans everything: any unit vector (variance 0).
        v = (0..dim).map(|i| if i == found.len() % dim { 1.0 } else { 0.0 }).collect();
        return (v, 0.0);
    }
    let mut lambda = 0.0;
    let mut w = vec![0.0; dim];
    for it in 0..2000 {
        for (i, wi) in w.iter_mut().enumerate() {
            *wi = m[i * dim..(i + 1) * dim].iter().zip(&v).map(|(a, b)| a * b).sum();
        }
        let next: f64 = w.iter().zip(&v).map(|(a, b)| a * b).sum();
        std::mem::swap(&mut v, &mut w);
        orthogonalise(&mut v);
        if !normalise(&mut v) {
            // No variance left orthogonal to `found`: keep the (unit) previous vector.
            std::mem::swap(&mut v, &mut w);
            return (sign(v), 0.0);
        }
        lambda = next;
        // On the vector, not the Rayleigh quotient: that settles quadratically faster than the
        // vector it is computed from.
        let change = v.iter().zip(&w).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
        if it > 2 && change < 1e-13 {
            break;
        }
    }
    (sign(v), lambda)
}

/// `v` or `-v`, whichever has its largest-magnitude entry positive.
fn sign(mut v: Vec<f64>) -> Vec<f64> {
    let big = v.iter().copied().fold(0.0f64, |a, x| if x.abs() > a.abs() { x } else { a });
    if big < 0.0 {
        v.iter_mut().for_each(|x| *x = -*x);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Points `mean + 3 a u + 1 b v + 0.2 c w` on a rotated orthonormal basis `u, v, w` of R^4
    /// (plus a fourth direction with no spread), `a, b, c` balanced and uncorrelated: the axes
    /// must be `u` then `v`, with variances in the ratio 9 : 1.
    #[test]
    fn recovers_known_principal_axes() {
        let s = 0.5f64;
        let u = [s, s, s, s];
        let v = [s, -s, s, -s];
        let w = [s, s, -s, -s];
        let mean = [10.0, -2.0, 0.5, 3.0];
        let mut rows = Vec::new();
        for a in [-1.0, 1.0] {
            for b in [-1.0, 1.0] {
                for c in [-1.0, 1.0] {
                    for k in 0..4 {
                        rows.push(mean[k] + 3.0 * a * u[k] + b * v[k] + 0.2 * c * w[k]);
                    }
                }
            }
        }
        let p = Pca::fit(&rows, 4, 3).unwrap();
        assert!(dot(&p.axes[0], &u).abs() > 1.0 - 1e-9, "first axis {:?}", p.axes[0]);
        assert!(dot(&p.axes[1], &v).abs() > 1.0 - 1e-9, "second axis {:?}", p.axes[1]);
        assert!(dot(&p.axes[2], &w).abs() > 1.0 - 1e-9, "third axis {:?}", p.axes[2]);
        // 8 points at +-3: variance 9 * 8 / 7.
        assert!((p.variances[0] - 9.0 * 8.0 / 7.0).abs() < 1e-9, "{:?}", p.variances);
        assert!((p.variances[0] / p.variances[1] - 9.0).abs() < 1e-9);
        assert!((p.explained(0) - 9.0 / (9.0 + 1.0 + 0.04)).abs() < 1e-9);
        for (i, m) in p.mean.iter().enumerate() {
            assert!((m - mean[i]).abs() < 1e-12);
        }
        // The first point (a = b = c = -1) projects to (-3, -1) up to the axes' signs.
        let xy = p.project(&rows[..4]);
        assert!((xy[0].abs() - 3.0).abs() < 1e-9 && (xy[1].abs() - 1.0).abs() < 1e-9, "{xy:?}");
        // Unit, orthogonal, and signed so the largest entry is positive.
        for (i, a) in p.axes.iter().enumerate() {
            assert!((dot(a, a) - 1.0).abs() < 1e-12);
            let big = a.iter().copied().fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
            assert!(big > 0.0);
            for b in &p.axes[i + 1..] {
                assert!(dot(a, b).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn degenerate_data_and_bad_shapes() {
        // All points equal: zero variance, still unit axes and no NaN.
        let p = Pca::fit(&[1.0, 2.0, 1.0, 2.0, 1.0, 2.0], 2, 2).unwrap();
        assert_eq!(p.variances, [0.0, 0.0]);
        assert_eq!(p.explained(0), 0.0);
        assert!(p.axes.iter().all(|a| (dot(a, a) - 1.0).abs() < 1e-12));
        assert!(p.project(&[5.0, 5.0]).iter().all(|x| x.is_finite()));
        // A line in 3-D: one axis along it, the second any unit vector orthogonal to it.
        let rows: Vec<f64> = (0..5).flat_map(|t| [t as f64, 2.0 * t as f64, 0.0]).collect();
        let p = Pca::fit(&rows, 3, 2).unwrap();
        let d = [1.0 / 5f64.sqrt(), 2.0 / 5f64.sqrt(), 0.0];
        assert!(dot(&p.axes[0], &d) > 1.0 - 1e-9);
        assert!(dot(&p.axes[0], &p.axes[1]).abs() < 1e-9);
        assert!(p.variances[1].abs() < 1e-9);
        assert!(Pca::fit(&[1.0, 2.0], 2, 1).is_err(), "one point");
        assert!(Pca::fit(&[1.0, 2.0, 3.0], 2, 1).is_err(), "ragged rows");
        assert!(Pca::fit(&[1.0, 2.0, 3.0, 4.0], 2, 3).is_err(), "more components than dimensions");
    }
}
