//! General matrix multiply `C = alpha * A B + beta * C` on strided views.
//!
//! `matrixmultiply` does the register/cache blocking on one thread; we split the rows of `C`
//! into fixed blocks (or its columns when `m` is small) and run the blocks on rayon threads. Each
//! element of `C` is computed by exactly one block with the library's fixed `k` order, so the
//! result does not depend on the thread count. Strides are in elements and may be anything, so a
//! transposed operand is just a view with swapped strides: no copy.

use crate::cpu::parallel::SendPtr;
use crate::Float;
use rayon::prelude::*;

/// A read-only strided matrix view.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: isize,
    pub cs: isize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major contiguous `rows x cols`.
    pub fn rm(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: cols as isize, cs: 1 }
    }
    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    fn check(&self) {
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        let last = (self.rows - 1) as isize * self.rs + (self.cols - 1) as isize * self.cs;
        assert!(self.rs >= 0 && self.cs >= 0 && (last as usize) < self.data.len(), "gemm view out of bounds");
    }
}

/// A mutable strided matrix view.
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub data: &'a mut [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: isize,
    pub cs: isize,
}

impl<'a, T> MatMut<'a, T> {
    /// Row-major contiguous `rows x cols`.
    pub fn rm(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        MatMut { data, rows, cols, rs: cols as isize, cs: 1 }
    }
}

/// Below this many multiply-adds a single thread is faster than splitting.
const PAR_THRESHOLD: usize = 1 << 18;
/// Rows (or columns) per parallel block: a multiple of matrixmultiply's micro-kernel sizes.
const BLOCK: usize = 64;

/// `C = alpha * A B + beta * C`. Panics only on inconsistent shapes (callers validate first).
pub fn gemm<T: Float>(alpha: T, a: Mat<'_, T>, b: Mat<'_, T>, beta: T, c: MatMut<'_, T>) {
    assert!(a.cols == b.rows && a.rows == c.rows && b.cols == c.cols, "gemm shape mismatch");
    a.check();
    b.check();
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if c.rows > 0 && c.cols > 0 {
        let last = (c.rows - 1) as isize * c.rs + (c.cols - 1) as isize * c.cs;
        assert!(c.rs >= 0 && c.cs >= 0 && (last as usize) < c.data.len(), "gemm output out of bounds");
    }
    let cp = SendPtr(c.data.as_mut_ptr());
    let (rsc, csc) = (c.rs, c.cs);
    // SAFETY (of the writes through `cp`): the blocks below cover disjoint rows (or columns) of C.
    let run = |r0: usize, r1: usize, c0: usize, c1: usize| unsafe {
        T::gemm_raw(
            r1 - r0,
            k,
            c1 - c0,
            alpha,
            a.data.as_ptr().offset(r0 as isize * a.rs),
            a.rs,
            a.cs,
            b.data.as_ptr().offset(c0 as isize * b.cs),
            b.rs,
            b.cs,
            beta,
            cp.ptr().offset(r0 as isize * rsc + c0 as isize * csc),
            rsc,
            csc,
        )
    };
    if m * n * k.max(1) < PAR_THRESHOLD || rayon::current_num_threads() == 1 {
        run(0, m, 0, n);
    } else if m >= n {
        // Split rows of C; blocks write disjoint rows.
        (0..m.div_ceil(BLOCK)).into_par_iter().for_each(|bi| run(bi * BLOCK, ((bi + 1) * BLOCK).min(m), 0, n));
    } else {
        (0..n.div_ceil(BLOCK)).into_par_iter().for_each(|bj| run(0, m, bj * BLOCK, ((bj + 1) * BLOCK).min(n)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        c
    }

    #[test]
    fn matches_naive_including_transposed_views_and_parallel_split() {
        for &(m, k, n) in &[(3, 4, 5), (130, 70, 90), (7, 300, 400)] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 7919) % 13) as f64 - 6.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 104729) % 11) as f64 - 5.0).collect();
            let want = naive(&a, &b, m, k, n);
            let mut c = vec![0.0; m * n];
            gemm(1.0, Mat::rm(&a, m, k), Mat::rm(&b, k, n), 0.0, MatMut::rm(&mut c, m, n));
            assert_eq!(c, want);
            // B stored transposed (n x k) and viewed through .t()
            let bt: Vec<f64> = (0..n * k).map(|idx| b[(idx % k) * n + idx / k]).collect();
            let mut c2 = vec![0.0; m * n];
            gemm(1.0, Mat::rm(&a, m, k), Mat::rm(&bt, n, k).t(), 0.0, MatMut::rm(&mut c2, m, n));
            assert_eq!(c2, want);
        }
    }
}
