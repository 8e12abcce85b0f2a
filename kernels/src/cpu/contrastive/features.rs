//! How a bag's features are held and multiplied in the contrastive passes, per element type.
//!
//! Every product the loss needs is one of two kinds: scores `alpha X_a X_b^T` between two runs of
//! pixels, or `C += alpha A X` (a gradient tile or strip times a run of pixels). f32 on a CPU with
//! AVX2 + FMA keeps the bag in [`Panels`] and uses the unpacked micro-kernel of [`tile_gemm`];
//! otherwise (and always in f64, the gradient checks) the bag is a row-major `n x d` matrix and the
//! products go through matrixmultiply with strided views.
//!
//! [`tile_gemm`]: super::tile_gemm

use super::tile_gemm::{self, Panels, PANEL};
use crate::Float;

/// The per-type layout and products.
pub trait TileOps: Float {
    /// A gathered bag.
    type Feats: Send + Sync;

    /// Gather pixels `ids` (global ids `image * hw + p`) of `[images, d, hw]` features.
    fn gather(feats: &[Self], d: usize, hw: usize, ids: &[u32]) -> Self::Feats;

    /// `|x_j|^2` of every pixel.
    fn sq_norms(x: &Self::Feats, d: usize) -> Vec<f64>;

    /// `out (m x n, row stride ldo) = alpha X_a[a0..a0 + m] X_b[b0..b0 + n]^T`.
    #[allow(clippy::too_many_arguments)]
    fn scores(
        alpha: Self,
        a: &Self::Feats,
        a0: usize,
        m: usize,
        b: &Self::Feats,
        b0: usize,
        n: usize,
        d: usize,
        out: &mut [Self],
        ldo: usize,
    );

    /// The bag's storage, to reuse as scratch of at least `n * d` elements.
    fn into_buffer(x: Self::Feats) -> Vec<Self>;

    /// `C (m x d) += alpha A X[row0..row0 + k]` with `A(i, l) = a[i * a_rs + l * a_ks]`.
    #[allow(clippy::too_many_arguments)]
    fn product_add(
        m: usize,
        k: usize,
        alpha: Self,
        a: &[Self],
        a_rs: usize,
        a_ks: usize,
        x: &Self::Feats,
        row0: usize,
        d: usize,
        c: &mut [Self],
    );
}

/// Row-major gather.
fn gather_rows<T: Float>(feats: &[T], d: usize, hw: usize, ids: &[u32]) -> Vec<T> {
    let mut x = vec![T::ZERO; ids.len() * d];
    for (row, &id) in x.chunks_mut(d.max(1)).zip(ids) {
        let id = id as usize;
        let base = (id / hw) * d * hw + id % hw;
        for (c, v) in row.iter_mut().enumerate() {
            *v = feats[base + c * hw];
        }
    }
    x
}

fn rows_sq_norms<T: Float>(x: &[T], d: usize) -> Vec<f64> {
    x.chunks_exact(d.max(1)).map(|r| r.iter().map(|v| v.to_f64() * v.to_f64()).sum()).collect()
}

#[allow(clippy::too_many_arguments)]
fn rows_scores<T: Float>(
    alpha: T,
    a: &[T],
    a0: usize,
    m: usize,
    b: &[T],
    b0: usize,
    n: usize,
    d: usize,
    out: &mut [T],
    ldo: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((a0 + m) * d <= a.len() && (b0 + n) * d <= b.len() && ldo >= n && out.len() >= (m - 1) * ldo + n);
    // SAFETY: the assert bounds the m x d view of `a`, the d x n view (transposed rows) of `b` and
    // the output.
    unsafe {
        T::gemm_raw(
            m,
            d,
            n,
            alpha,
            a[a0 * d..].as_ptr(),
            d as isize,
            1,
            b[b0 * d..].as_ptr(),
            1,
            d as isize,
            T::ZERO,
            out.as_mut_ptr(),
            ldo as isize,
            1,
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn rows_product_add<T: Float>(
    m: usize,
    k: usize,
    alpha: T,
    a: &[T],
    a_rs: usize,
    a_ks: usize,
    x: &[T],
    row0: usize,
    d: usize,
    c: &mut [T],
) {
    if m == 0 || d == 0 {
        return;
    }
    assert!((row0 + k) * d <= x.len() && c.len() >= m * d);
    if k > 0 {
        assert!((m - 1) * a_rs + (k - 1) * a_ks < a.len());
    }
    // SAFETY: the asserts bound every access.
    unsafe {
        T::gemm_raw(
            m,
            k,
            d,
            alpha,
            a.as_ptr(),
            a_rs as isize,
            a_ks as isize,
            x[row0 * d..].as_ptr(),
            d as isize,
            1,
            T::ONE,
            c.as_mut_ptr(),
            d as isize,
            1,
        )
    }
}

impl TileOps for f64 {
    type Feats = Vec<f64>;
    fn gather(feats: &[f64], d: usize, hw: usize, ids: &[u32]) -> Vec<f64> {
        gather_rows(feats, d, hw, ids)
    }
    fn into_buffer(x: Vec<f64>) -> Vec<f64> {
        x
    }
    fn sq_norms(x: &Vec<f64>, d: usize) -> Vec<f64> {
        rows_sq_norms(x, d)
    }
    fn scores(
        alpha: f64,
        a: &Vec<f64>,
        a0: usize,
        m: usize,
        b: &Vec<f64>,
        b0: usize,
        n: usize,
        d: usize,
        out: &mut [f64],
        ldo: usize,
    ) {
        rows_scores(alpha, a, a0, m, b, b0, n, d, out, ldo)
    }
    fn product_add(
        m: usize,
        k: usize,
        alpha: f64,
        a: &[f64],
        a_rs: usize,
        a_ks: usize,
        x: &Vec<f64>,
        row0: usize,
        d: usize,
        c: &mut [f64],
    ) {
        rows_product_add(m, k, alpha, a, a_rs, a_ks, x, row0, d, c)
    }
}

/// An f32 bag: panels for the micro-kernel, or rows without AVX2 + FMA.
pub enum F32Feats {
    Panels(Panels),
    Rows(Vec<f32>),
}

impl TileOps for f32 {
    type Feats = F32Feats;
    fn gather(feats: &[f32], d: usize, hw: usize, ids: &[u32]) -> F32Feats {
        if tile_gemm::available() {
            F32Feats::Panels(Panels::gather(feats, d, hw, ids))
        } else {
            F32Feats::Rows(gather_rows(feats, d, hw, ids))
        }
    }
    fn into_buffer(x: F32Feats) -> Vec<f32> {
        match x {
            F32Feats::Panels(p) => p.data,
            F32Feats::Rows(r) => r,
        }
    }
    fn sq_norms(x: &F32Feats, d: usize) -> Vec<f64> {
        match x {
            F32Feats::Panels(p) => p.sq_norms(),
            F32Feats::Rows(r) => rows_sq_norms(r, d),
        }
    }
    fn scores(
        alpha: f32,
        a: &F32Feats,
        a0: usize,
        m: usize,
        b: &F32Feats,
        b0: usize,
        n: usize,
        d: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        match (a, b) {
            (F32Feats::Panels(pa), F32Feats::Panels(pb)) => {
                // Slabs start at a panel: for a run that does not, score from the panel start
                // (at most 15 extra columns) and keep the wanted ones.
                let extra = b0 % PANEL;
                if extra == 0 {
                    tile_gemm::scores(alpha, pa, a0, m, pb, b0, n, out, ldo);
                } else if m > 0 && n > 0 {
                    let wide = n + extra;
                    let mut tmp = vec![0.0f32; m * wide];
                    tile_gemm::scores(alpha, pa, a0, m, pb, b0 - extra, wide, &mut tmp, wide);
                    for (i, row) in tmp.chunks_exact(wide).enumerate() {
                        out[i * ldo..i * ldo + n].copy_from_slice(&row[extra..]);
                    }
                }
            }
            (F32Feats::Rows(ra), F32Feats::Rows(rb)) => rows_scores(alpha, ra, a0, m, rb, b0, n, d, out, ldo),
            _ => unreachable!("one bag gathered two ways"),
        }
    }
    fn product_add(
        m: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        a_rs: usize,
        a_ks: usize,
        x: &F32Feats,
        row0: usize,
        d: usize,
        c: &mut [f32],
    ) {
        match x {
            F32Feats::Panels(p) => tile_gemm::product_add(m, k, alpha, a, a_rs, a_ks, p, row0, c),
            F32Feats::Rows(r) => rows_product_add(m, k, alpha, a, a_rs, a_ks, r, row0, d, c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(i: usize) -> f32 {
        ((i * 7919 % 2003) as f32 / 2003.0 - 0.5) * 2.0
    }

    /// The f32 row-major path (CPUs without AVX2 + FMA) and the panel path give the same products,
    /// so the fallback is exercised on any machine.
    #[test]
    fn f32_rows_and_panels_agree() {
        if !tile_gemm::available() {
            eprintln!("skipped: no AVX2 + FMA, only the row path exists here");
            return;
        }
        let (hw, d) = (70, 21);
        let feats: Vec<f32> = (0..2 * hw * d).map(val).collect();
        let ids: Vec<u32> = (0..2 * hw as u32).rev().step_by(2).collect();
        let n = ids.len();
        let rows = F32Feats::Rows(gather_rows(&feats, d, hw, &ids));
        let panels = F32Feats::Panels(Panels::gather(&feats, d, hw, &ids));
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + x.abs()));
        assert!(close(
            &f32::sq_norms(&rows, d).iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &f32::sq_norms(&panels, d).iter().map(|&v| v as f32).collect::<Vec<_>>()
        ));
        for &(a0, m, b0, w) in &[(0, n, 0, n), (3, 9, 5, 30), (20, 13, 16, 19)] {
            let (mut s1, mut s2) = (vec![0.0f32; m * w], vec![0.0f32; m * w]);
            f32::scores(1.5, &rows, a0, m, &rows, b0, w, d, &mut s1, w);
            f32::scores(1.5, &panels, a0, m, &panels, b0, w, d, &mut s2, w);
            assert!(close(&s1, &s2), "scores {a0} {m} {b0} {w}");
        }
        for &(m, k, row0, a_rs, a_ks) in &[(7, 11, 4, 12, 1), (9, 16, 16, 1, 10), (5, n - 1, 1, n, 1)] {
            let a: Vec<f32> = (0..m * a_rs + k * a_ks).map(|i| val(i + 3)).collect();
            let c0: Vec<f32> = (0..m * d).map(|i| val(i + 9)).collect();
            let (mut c1, mut c2) = (c0.clone(), c0);
            f32::product_add(m, k, 0.5, &a, a_rs, a_ks, &rows, row0, d, &mut c1);
            f32::product_add(m, k, 0.5, &a, a_rs, a_ks, &panels, row0, d, &mut c2);
            assert!(close(&c1, &c2), "product {m} {k} {row0}");
        }
    }
}
