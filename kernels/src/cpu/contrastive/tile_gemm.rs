//! The tile products of the contrastive loss without packing.
//!
//! A general GEMM (matrixmultiply) copies both operands into panels on every call. The loss calls
//! it once per tile with `m, n ~ 256` and `k = 256`, so every packed element is used only ~256 times
//! and packing took a sixth of the loss's time. Here the operands are laid out once per bag so that
//! the micro-kernel can read them where they are:
//!
//! * `A` is read one element at a time and broadcast: any strides (`A(i, l) = a[i * a_rs + l * a_ks]`).
//! * `B` is read 16 floats at a time: each `B(l, j0..j0 + 16)` must be contiguous. For `G X` that is
//!   a row of the row-major features; for the scores `X_P X_Q^T` the bag is also kept in
//!   [`Panels`] (16 pixels per panel, channel-major inside), where `X^T(c, j0..j0 + 16)` is contiguous.
//!
//! The micro-kernel keeps a `6 x 16` block of `C` in twelve AVX registers: per step `l`, two loads of
//! `B`, six broadcasts of `A`, twelve fused multiply-adds. Each element of `C` sums over `l` in
//! order, so results do not depend on threads. Without AVX2 + FMA (or in f64) the same products go
//! through matrixmultiply.

use crate::Float;

/// The tile products for an element type: the micro-kernel for f32 where the CPU has AVX2 + FMA,
/// matrixmultiply (through [`Float::gemm_raw`]) otherwise.
pub trait TileGemm: Float {
    /// The bag in panels, when [`TileGemm::tile_scores`] will use them.
    fn panels(x: &[Self], n: usize, d: usize) -> Option<Panels>;

    /// `out (m x n) = alpha X_P X_Q^T`, rows `p0..p0 + m` and `q0..q0 + n` of the row-major `n x d`
    /// features `x` (with `panels` from [`TileGemm::panels`]).
    #[allow(clippy::too_many_arguments)]
    fn tile_scores(
        alpha: Self,
        x: &[Self],
        panels: Option<&Panels>,
        p0: usize,
        m: usize,
        q0: usize,
        n: usize,
        d: usize,
        out: &mut [Self],
    ) {
        let _ = panels;
        assert!((p0 + m) * d <= x.len() && (q0 + n) * d <= x.len() && out.len() >= m * n);
        if m == 0 || n == 0 {
            return;
        }
        // SAFETY: the assert bounds the m x d, d x n (the transpose of rows q0..) and m x n views.
        unsafe {
            Self::gemm_raw(
                m,
                d,
                n,
                alpha,
                x[p0 * d..].as_ptr(),
                d as isize,
                1,
                x[q0 * d..].as_ptr(),
                1,
                d as isize,
                Self::ZERO,
                out.as_mut_ptr(),
                n as isize,
                1,
            )
        }
    }

    /// `C = alpha A B` or `C += alpha A B` with the layouts of [`gemm_f32`].
    #[allow(clippy::too_many_arguments)]
    fn tile_product(
        m: usize,
        n: usize,
        k: usize,
        alpha: Self,
        a: &[Self],
        a_rs: usize,
        a_ks: usize,
        b: &[Self],
        b_ks: usize,
        c: &mut [Self],
        ldc: usize,
        accumulate: bool,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k > 0 {
            assert!((m - 1) * a_rs + (k - 1) * a_ks < a.len() && (k - 1) * b_ks + n <= b.len());
        }
        assert!((m - 1) * ldc + n <= c.len() && ldc >= n);
        let beta = if accumulate { Self::ONE } else { Self::ZERO };
        // SAFETY: the asserts bound every access.
        unsafe {
            Self::gemm_raw(
                m,
                k,
                n,
                alpha,
                a.as_ptr(),
                a_rs as isize,
                a_ks as isize,
                b.as_ptr(),
                b_ks as isize,
                1,
                beta,
                c.as_mut_ptr(),
                ldc as isize,
                1,
            )
        }
    }
}

impl TileGemm for f64 {
    fn panels(_: &[f64], _: usize, _: usize) -> Option<Panels> {
        None
    }
}

// `is_multiple_of` is newer than the workspace's rust-version.
#[allow(clippy::manual_is_multiple_of)]
impl TileGemm for f32 {
    fn panels(x: &[f32], n: usize, d: usize) -> Option<Panels> {
        available().then(|| Panels::from_rows(x, n, d))
    }

    fn tile_scores(
        alpha: f32,
        x: &[f32],
        panels: Option<&Panels>,
        p0: usize,
        m: usize,
        q0: usize,
        n: usize,
        d: usize,
        out: &mut [f32],
    ) {
        match panels {
            Some(pn) if q0 % PANEL == 0 => scores_f32(alpha, x, pn, p0, m, q0, n, out),
            _ => {
                assert!((p0 + m) * d <= x.len() && (q0 + n) * d <= x.len() && out.len() >= m * n);
                if m > 0 && n > 0 {
                    // SAFETY: as in the provided method.
                    unsafe {
                        f32::gemm_raw(
                            m,
                            d,
                            n,
                            alpha,
                            x[p0 * d..].as_ptr(),
                            d as isize,
                            1,
                            x[q0 * d..].as_ptr(),
                            1,
                            d as isize,
                            0.0,
                            out.as_mut_ptr(),
                            n as isize,
                            1,
                        )
                    }
                }
            }
        }
    }

    fn tile_product(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        a_rs: usize,
        a_ks: usize,
        b: &[f32],
        b_ks: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        if available() {
            gemm_f32(m, n, k, alpha, a, a_rs, a_ks, b, b_ks, c, ldc, accumulate);
        } else if m > 0 && n > 0 {
            if k > 0 {
                assert!((m - 1) * a_rs + (k - 1) * a_ks < a.len() && (k - 1) * b_ks + n <= b.len());
            }
            assert!((m - 1) * ldc + n <= c.len() && ldc >= n);
            // SAFETY: the asserts bound every access.
            unsafe {
                f32::gemm_raw(
                    m,
                    k,
                    n,
                    alpha,
                    a.as_ptr(),
                    a_rs as isize,
                    a_ks as isize,
                    b.as_ptr(),
                    b_ks as isize,
                    1,
                    if accumulate { 1.0 } else { 0.0 },
                    c.as_mut_ptr(),
                    ldc as isize,
                    1,
                )
            }
        }
    }
}

/// Pixels per panel: the micro-kernel's column width.
pub const PANEL: usize = 16;

/// A bag's features as panels of [`PANEL`] pixels, each `d x PANEL` channel-major, so that the
/// 16 values of one channel over a panel's pixels are contiguous. The last panel is zero-padded.
pub struct Panels {
    pub data: Vec<f32>,
    pub d: usize,
}

impl Panels {
    /// Build from row-major `n x d` features.
    pub fn from_rows(x: &[f32], n: usize, d: usize) -> Panels {
        use rayon::prelude::*;
        let mut data = vec![0.0f32; n.div_ceil(PANEL) * PANEL * d];
        data.par_chunks_mut(PANEL * d).enumerate().for_each(|(g, panel)| {
            for j in 0..PANEL.min(n - g * PANEL) {
                let row = &x[(g * PANEL + j) * d..(g * PANEL + j + 1) * d];
                for (c, &v) in row.iter().enumerate() {
                    panel[c * PANEL + j] = v;
                }
            }
        });
        Panels { data, d }
    }
}

/// `C = alpha A B` (`accumulate = false`) or `C += alpha A B`, `C` (`m x n`) row-major with stride
/// `ldc`; `A(i, l) = a[i * a_rs + l * a_ks]`, `B(l, j) = b[l * b_ks + j]`. AVX2 + FMA only: callers
/// check [`available`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    a_rs: usize,
    a_ks: usize,
    b: &[f32],
    b_ks: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(available(), "tile_gemm: AVX2 + FMA required");
    if k > 0 {
        assert!((m - 1) * a_rs + (k - 1) * a_ks < a.len(), "tile_gemm: A out of bounds");
        assert!((k - 1) * b_ks + n <= b.len(), "tile_gemm: B out of bounds");
    }
    assert!((m - 1) * ldc + n <= c.len() && ldc >= n, "tile_gemm: C out of bounds");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX2 + FMA (asserted) and the asserts above bound every access.
    unsafe {
        avx2::gemm(m, n, k, alpha, a.as_ptr(), a_rs, a_ks, b.as_ptr(), b_ks, c.as_mut_ptr(), ldc, accumulate)
    }
}

/// `C = alpha X_P X_Q^T` for the scores of a tile: rows `p0..p0 + m` of the row-major `x` against
/// pixels `q0..q0 + n` of the same bag in panels (`q0` a multiple of [`PANEL`]).
#[allow(clippy::too_many_arguments, clippy::manual_is_multiple_of)]
pub fn scores_f32(alpha: f32, x: &[f32], panels: &Panels, p0: usize, m: usize, q0: usize, n: usize, c: &mut [f32]) {
    let d = panels.d;
    assert!(q0 % PANEL == 0, "tile_gemm: score columns must start at a panel");
    assert!((p0 + m) * d <= x.len() && (q0 + n).div_ceil(PANEL) * PANEL * d <= panels.data.len(), "tile_gemm: rows");
    assert!(c.len() >= m * n, "tile_gemm: C out of bounds");
    assert!(available(), "tile_gemm: AVX2 + FMA required");
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 + FMA present; the asserts bound rows `p0..p0 + m` of `x`, the panels covering
    // pixels `q0..q0 + n` and the `m x n` output.
    unsafe {
        avx2::scores(m, n, d, alpha, x.as_ptr().add(p0 * d), panels.data.as_ptr().add(q0 * d), c.as_mut_ptr())
    }
}

/// True when the CPU runs the AVX2 + FMA micro-kernel (checked once, cached by std).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const MR: usize = 6;
    const NR: usize = 16;

    /// Column blocks of 16 outer, row blocks of 6 inner: the `k x 16` slab of `B` stays in L1 while
    /// every row block of `A` streams past it.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: *const f32,
        a_rs: usize,
        a_ks: usize,
        b: *const f32,
        b_ks: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        // A `k x 16` slab of B is read once per row block; unless it is already contiguous (the
        // score panels), copy it once per slab so the row blocks read one contiguous stream (rows
        // of `B` a power of two apart would otherwise fight over the same L1 sets).
        let mut slab: Vec<f32> = if b_ks == NR { Vec::new() } else { vec![0.0; k * NR] };
        let mut j0 = 0;
        while j0 < n {
            let w = (n - j0).min(NR);
            let (bp, bs) = if b_ks == NR {
                (b.add(j0), NR)
            } else {
                for l in 0..k {
                    let src = b.add(l * b_ks + j0);
                    let dst = slab.as_mut_ptr().add(l * NR);
                    std::ptr::copy_nonoverlapping(src, dst, w);
                }
                (slab.as_ptr(), NR)
            };
            let mut i0 = 0;
            while i0 < m {
                let ap = a.add(i0 * a_rs);
                let cp = c.add(i0 * ldc + j0);
                let args = (k, alpha, ap, a_rs, a_ks, bp, bs, w, cp, ldc, accumulate);
                match (m - i0).min(MR) {
                    6 => micro::<6>(args),
                    5 => micro::<5>(args),
                    4 => micro::<4>(args),
                    3 => micro::<3>(args),
                    2 => micro::<2>(args),
                    _ => micro::<1>(args),
                }
                i0 += MR;
            }
            j0 += NR;
        }
    }

    /// Scores: row blocks outer, panels inner, so a block's six feature rows stay in L1 while the
    /// panels (contiguous `d x 16` each) stream past.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores(m: usize, n: usize, d: usize, alpha: f32, x: *const f32, panels: *const f32, c: *mut f32) {
        let mut i0 = 0;
        while i0 < m {
            let mut j0 = 0;
            while j0 < n {
                let w = (n - j0).min(NR);
                let args = (d, alpha, x.add(i0 * d), d, 1, panels.add(j0 * d), NR, w, c.add(i0 * n + j0), n, false);
                match (m - i0).min(MR) {
                    6 => micro::<6>(args),
                    5 => micro::<5>(args),
                    4 => micro::<4>(args),
                    3 => micro::<3>(args),
                    2 => micro::<2>(args),
                    _ => micro::<1>(args),
                }
                j0 += NR;
            }
            i0 += MR;
        }
    }

    type Args = (usize, f32, *const f32, usize, usize, *const f32, usize, usize, *mut f32, usize, bool);

    /// Lane masks for the first `w` of 16 columns.
    #[inline(always)]
    unsafe fn masks(w: usize) -> (__m256i, __m256i) {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let w0 = _mm256_set1_epi32(w.min(8) as i32);
        let w1 = _mm256_set1_epi32(w.saturating_sub(8) as i32);
        (_mm256_cmpgt_epi32(w0, lanes), _mm256_cmpgt_epi32(w1, lanes))
    }

    /// One `R x 16` block of `C` (`w <= 16` columns valid) over all `k`.
    #[inline(always)]
    unsafe fn micro<const R: usize>(args: Args) {
        let (k, alpha, a, a_rs, a_ks, b, b_ks, w, c, ldc, accumulate) = args;
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        let (m0, m1) = masks(w);
        // One pointer per row of A, each stepped on its own: a single pointer stepped row to row
        // would chain six dependent adds into every step.
        let mut rows: [*const f32; R] = std::array::from_fn(|r| a.add(r * a_rs));
        let mut bp = b;
        if w == NR {
            for _ in 0..k {
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                for r in 0..R {
                    let av = _mm256_broadcast_ss(&*rows[r]);
                    lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
                    rows[r] = rows[r].add(a_ks);
                }
                bp = bp.add(b_ks);
            }
        } else {
            // Masked lanes are never read, so a partial last block does not run past `B`.
            for _ in 0..k {
                let b0 = _mm256_maskload_ps(bp, m0);
                let b1 = _mm256_maskload_ps(bp.add(8), m1);
                for r in 0..R {
                    let av = _mm256_broadcast_ss(&*rows[r]);
                    lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
                    rows[r] = rows[r].add(a_ks);
                }
                bp = bp.add(b_ks);
            }
        }
        let al = _mm256_set1_ps(alpha);
        for r in 0..R {
            let cr = c.add(r * ldc);
            let (mut v0, mut v1) = (_mm256_mul_ps(al, lo[r]), _mm256_mul_ps(al, hi[r]));
            if w == NR {
                if accumulate {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cr));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cr.add(8)));
                }
                _mm256_storeu_ps(cr, v0);
                _mm256_storeu_ps(cr.add(8), v1);
            } else {
                if accumulate {
                    v0 = _mm256_add_ps(v0, _mm256_maskload_ps(cr, m0));
                    v1 = _mm256_add_ps(v1, _mm256_maskload_ps(cr.add(8), m1));
                }
                _mm256_maskstore_ps(cr, m0, v0);
                _mm256_maskstore_ps(cr.add(8), m1, v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| a(i, l) as f64 * b(l, j) as f64).sum();
            }
        }
        out
    }

    fn val(i: usize) -> f32 {
        ((i * 7919 % 2003) as f32 / 2003.0 - 0.5) * 2.0
    }

    #[test]
    fn matches_naive_on_edges_strides_and_accumulate() {
        if !available() {
            eprintln!("skipped: no AVX2 + FMA");
            return;
        }
        for &(m, n, k) in &[(1, 1, 1), (5, 7, 3), (6, 16, 9), (7, 17, 33), (13, 40, 256), (12, 32, 0), (25, 9, 64)] {
            for &(a_rs, a_ks) in &[(k.max(1), 1), (1, m + 3)] {
                let a: Vec<f32> = (0..(m * a_rs + k * a_ks + 1)).map(val).collect();
                let b_ks = n + 5;
                let b: Vec<f32> = (0..(k * b_ks + n)).map(|i| val(i + 17)).collect();
                let want = naive(m, n, k, |i, l| a[i * a_rs + l * a_ks], |l, j| b[l * b_ks + j]);
                let ldc = n + 2;
                for accumulate in [false, true] {
                    let c0: Vec<f32> = (0..m * ldc).map(|i| val(i + 5)).collect();
                    let mut c = c0.clone();
                    gemm_f32(m, n, k, 0.5, &a, a_rs, a_ks, &b, b_ks, &mut c, ldc, accumulate);
                    for i in 0..m {
                        for j in 0..n {
                            let base = if accumulate { c0[i * ldc + j] as f64 } else { 0.0 };
                            let w = base + 0.5 * want[i * n + j];
                            let got = c[i * ldc + j] as f64;
                            assert!((got - w).abs() <= 1e-5 * (1.0 + w.abs()), "{m}x{n}x{k} ({i},{j}): {got} vs {w}");
                        }
                        // Padding columns of C are untouched.
                        for j in n..ldc {
                            assert_eq!(c[i * ldc + j], c0[i * ldc + j]);
                        }
                    }
                }
            }
        }
    }

    /// `cargo test -p kernels --release --lib tile_gemm -- --ignored --nocapture`: the loss's shapes.
    #[test]
    #[ignore]
    fn speed_on_tile_shapes() {
        let (t, d) = (256usize, 256usize);
        let x: Vec<f32> = (0..2 * t * d).map(val).collect();
        let panels = Panels::from_rows(&x, 2 * t, d);
        let mut g = vec![0.0f32; t * t];
        let mut dx = vec![0.0f32; t * d];
        // Best of 7 batches of 10, each kernel next to matrixmultiply on the same operands.
        let time = |f: &mut dyn FnMut()| {
            (0..7)
                .map(|_| {
                    let t0 = std::time::Instant::now();
                    for _ in 0..10 {
                        f();
                    }
                    t0.elapsed().as_secs_f64() / 10.0
                })
                .fold(f64::INFINITY, f64::min)
        };
        let gf = 2.0 * (t * t * d) as f64 * 1e-9;
        let mm = |m: usize,
                  k: usize,
                  n: usize,
                  a: &[f32],
                  rsa: usize,
                  csa: usize,
                  b: &[f32],
                  rsb: usize,
                  csb: usize,
                  c: &mut [f32]| unsafe {
            f32::gemm_raw(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                rsa as isize,
                csa as isize,
                b.as_ptr(),
                rsb as isize,
                csb as isize,
                1.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        };
        for _ in 0..2 {
            let s = time(&mut || scores_f32(1.0, &x, &panels, 0, t, t, t, &mut g));
            let s_mm = time(&mut || mm(t, d, t, &x, d, 1, &x[t * d..], 1, d, &mut g));
            let p = time(&mut || gemm_f32(t, d, t, 1.0, &g, t, 1, &x[t * d..], d, &mut dx, d, true));
            let p_mm = time(&mut || mm(t, t, d, &g, t, 1, &x[t * d..], d, 1, &mut dx));
            let q = time(&mut || gemm_f32(t, d, t, 1.0, &g, 1, t, &x, d, &mut dx, d, true));
            let q_mm = time(&mut || mm(t, t, d, &g, 1, t, &x, d, 1, &mut dx));
            println!(
                "GFLOP/s ours | matrixmultiply: scores {:.1} | {:.1}, G X {:.1} | {:.1}, G^T X {:.1} | {:.1}",
                gf / s,
                gf / s_mm,
                gf / p,
                gf / p_mm,
                gf / q,
                gf / q_mm
            );
        }
    }

    #[test]
    fn panel_scores_match_naive() {
        if !available() {
            eprintln!("skipped: no AVX2 + FMA");
            return;
        }
        let (n, d) = (53, 19);
        let x: Vec<f32> = (0..n * d).map(val).collect();
        let panels = Panels::from_rows(&x, n, d);
        for &(p0, m, q0, w) in &[(0, 53, 0, 53), (3, 7, 16, 37), (50, 3, 48, 5)] {
            let mut c = vec![0.0f32; m * w];
            scores_f32(2.0, &x, &panels, p0, m, q0, w, &mut c);
            for i in 0..m {
                for j in 0..w {
                    let want: f64 =
                        2.0 * (0..d).map(|l| x[(p0 + i) * d + l] as f64 * x[(q0 + j) * d + l] as f64).sum::<f64>();
                    assert!((c[i * w + j] as f64 - want).abs() < 1e-5, "({i},{j})");
                }
            }
        }
    }
}
