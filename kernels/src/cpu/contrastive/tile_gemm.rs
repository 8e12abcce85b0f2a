//! The tile products of the contrastive loss in f32, without packing on every call.
//!
//! A general GEMM (matrixmultiply) copies both operands into its own panels on every call. The loss
//! calls it once per tile with `m, n ~ 256` and `k = 256`, so every packed element is used only ~256
//! times and packing took a sixth of the loss's time. Here the bag's features are gathered once per
//! pass into [`Panels`] — 16 pixels per panel, channel-major inside — the layout the micro-kernel
//! reads directly:
//!
//! * the left operand `A` is read one element at a time and broadcast, through one pointer per row
//!   (`A(i, l) = *(row(i) + l * a_ks)`): a feature row inside a panel (`a_ks = 16`), or a row or a
//!   column of a gradient tile;
//! * the right operand `B` is read as `k x 16` slabs, each row of 16 contiguous: for the scores
//!   `X_P X_Q^T` a slab *is* a panel; for `G X` a slab (16 channels of `k` pixels) is copied out of
//!   the panels once and then read by every row block.
//!
//! The AVX2 micro-kernel keeps a `6 x 16` block of `C` in twelve AVX registers: per step `l`, two
//! loads of `B`, six broadcasts of `A`, twelve fused multiply-adds. On AVX-512 CPUs an `8 x 32`
//! block (two slabs) lives in sixteen 512-bit registers: two loads of `B`, eight broadcasts,
//! sixteen FMAs of twice the width. Each element of `C` is the same chain of fused multiply-adds over `l` in order
//! in both (then scaled by `alpha`, then added to `C`), so results do not depend on threads or on
//! the kernel (tested).

use rayon::prelude::*;

/// Pixels per panel: the micro-kernel's column width.
pub const PANEL: usize = 16;

/// Features of `n` pixels as panels of [`PANEL`] pixels, each `d x PANEL` channel-major: the 16
/// values of one channel over a panel's pixels are contiguous. The last panel is zero-padded.
pub struct Panels {
    pub data: Vec<f32>,
    pub n: usize,
    pub d: usize,
}

impl Panels {
    /// Gather pixels `ids` (global ids `image * hw + p`) of `[images, d, hw]` features.
    pub fn gather(feats: &[f32], d: usize, hw: usize, ids: &[u32]) -> Panels {
        let n = ids.len();
        let mut data = vec![0.0f32; n.div_ceil(PANEL) * PANEL * d];
        data.par_chunks_mut(PANEL * d).enumerate().for_each(|(g, panel)| {
            let bases: Vec<usize> = ids[g * PANEL..(g * PANEL + PANEL).min(n)]
                .iter()
                .map(|&id| (id as usize / hw) * d * hw + id as usize % hw)
                .collect();
            // Channel outer: a panel's pixels are mostly neighbours, so each channel costs one
            // line (and one page) of the source instead of one per pixel.
            for (c, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                for (v, &b) in row.iter_mut().zip(&bases) {
                    *v = feats[b + c * hw];
                }
            }
        });
        Panels { data, n, d }
    }

    /// Offset of pixel `j`, channel 0; channel `c` is `c * PANEL` further.
    #[inline(always)]
    pub fn offset(&self, j: usize) -> usize {
        (j / PANEL) * PANEL * self.d + j % PANEL
    }

    /// `|x_j|^2` of every pixel.
    pub fn sq_norms(&self) -> Vec<f64> {
        (0..self.n)
            .map(|j| {
                let o = self.offset(j);
                (0..self.d).map(|c| (self.data[o + c * PANEL] as f64).powi(2)).sum()
            })
            .collect()
    }
}

/// True when the CPU runs the AVX2 + FMA micro-kernel: the same check as the conv GEMM's.
pub use crate::cpu::packed_gemm::available;
/// The micro-kernel the products run: AVX-512 (`8 x 32` blocks) where the CPU has it, the same
/// choice as the conv GEMM's ([`crate::cpu::packed_gemm::kernel`]).
use crate::cpu::packed_gemm::{kernel, Kernel};

/// `out (m x n, row stride ldo) = alpha X_a[a0..a0 + m] X_b[b0..b0 + n]^T`, with `b0` a multiple
/// of [`PANEL`]. Requires [`available`].
#[allow(clippy::too_many_arguments, clippy::manual_is_multiple_of)]
pub fn scores(
    alpha: f32,
    a: &Panels,
    a0: usize,
    m: usize,
    b: &Panels,
    b0: usize,
    n: usize,
    out: &mut [f32],
    ldo: usize,
) {
    scores_on(kernel(), alpha, a, a0, m, b, b0, n, out, ldo)
}

/// [`scores`] on a chosen micro-kernel (the tests compare the two).
#[allow(clippy::too_many_arguments, clippy::manual_is_multiple_of)]
fn scores_on(
    kern: Kernel,
    alpha: f32,
    a: &Panels,
    a0: usize,
    m: usize,
    b: &Panels,
    b0: usize,
    n: usize,
    out: &mut [f32],
    ldo: usize,
) {
    assert!(kern == Kernel::Avx2 || crate::cpu::packed_gemm::avx512_available(), "tile_gemm: AVX-512F required");
    assert!(available(), "tile_gemm: AVX2 + FMA required");
    assert!(a.d == b.d && b0 % PANEL == 0 && a0 + m <= a.n && b0 + n <= b.n, "tile_gemm: score rows");
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldo >= n && out.len() >= (m - 1) * ldo + n, "tile_gemm: score output");
    let d = a.d;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 + FMA present. Row `a0 + i` of `a` reads `d` values `PANEL` apart from its
    // offset, inside its panel; slab `j0` is the panel of `b` holding pixels `b0 + j0..+16`, all
    // inside `b.data` (panels are whole); the asserts bound the output.
    unsafe {
        let ad = a.data.as_ptr();
        let bd = b.data.as_ptr();
        let a_row = |i| ad.add(a.offset(a0 + i));
        let slab = |j0, _, _| bd.add((b0 + j0) / PANEL * PANEL * d);
        match kern {
            Kernel::Avx2 => avx2::gemm(m, n, d, alpha, a_row, PANEL, slab, out.as_mut_ptr(), ldo, false),
            Kernel::Avx512 => avx512::gemm(m, n, d, alpha, a_row, PANEL, slab, out.as_mut_ptr(), ldo, false),
        }
    }
}

/// `C (m x d, row stride d) += alpha A X[row0..row0 + k]` with `A(i, l) = a[i * a_rs + l * a_ks]` and
/// `X` in panels. Requires [`available`].
#[allow(clippy::too_many_arguments)]
pub fn product_add(
    m: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    a_rs: usize,
    a_ks: usize,
    x: &Panels,
    row0: usize,
    c: &mut [f32],
) {
    product_add_on(kernel(), m, k, alpha, a, a_rs, a_ks, x, row0, c)
}

/// [`product_add`] on a chosen micro-kernel (the tests compare the two).
#[allow(clippy::too_many_arguments)]
fn product_add_on(
    kern: Kernel,
    m: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    a_rs: usize,
    a_ks: usize,
    x: &Panels,
    row0: usize,
    c: &mut [f32],
) {
    assert!(kern == Kernel::Avx2 || crate::cpu::packed_gemm::avx512_available(), "tile_gemm: AVX-512F required");
    assert!(available(), "tile_gemm: AVX2 + FMA required");
    let d = x.d;
    if m == 0 || d == 0 {
        return;
    }
    assert!(row0 + k <= x.n && c.len() >= m * d, "tile_gemm: product rows");
    if k > 0 {
        assert!((m - 1) * a_rs + (k - 1) * a_ks < a.len(), "tile_gemm: A out of bounds");
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 + FMA present; the asserts bound `A`, the pixels `row0..row0 + k` read from the
    // panels (channels `c0 + cc < d`), and `C`. The slab holds `k x 16` floats.
    unsafe {
        let ap = a.as_ptr();
        let xd = x.data.as_ptr();
        // Two slab buffers: the AVX-512 kernel asks for the two slabs of a block in turn.
        let mut slabs = vec![0.0f32; 2 * k * PANEL];
        let sp = slabs.as_mut_ptr();
        let a_row = |i| ap.add(i * a_rs);
        let slab_of = |c0: usize, w: usize, _| {
            // Through the base pointer: the slab handed out before stays valid while this one is written.
            let slab = std::slice::from_raw_parts_mut(sp.add((c0 / PANEL % 2) * k * PANEL), k * PANEL);
            // Channels c0..c0 + w of pixels row0..row0 + k, one 16-wide row per pixel: the
            // transpose of 16 x 16 blocks of the panels (16 channels by 16 pixels).
            let mut l = 0;
            while l < k {
                let pix = row0 + l;
                let run = (PANEL - pix % PANEL).min(k - l);
                let src = xd.add(x.offset(pix) + c0 * PANEL);
                let dst = slab.as_mut_ptr().add(l * PANEL);
                if run == PANEL && w == PANEL {
                    for (cb, jb) in [(0, 0), (0, 8), (8, 0), (8, 8)] {
                        avx2::transpose_8x8(src.add(cb * PANEL + jb), PANEL, dst.add(jb * PANEL + cb), PANEL);
                    }
                } else {
                    for j in 0..run {
                        for cc in 0..w {
                            *dst.add(j * PANEL + cc) = *src.add(cc * PANEL + j);
                        }
                    }
                }
                l += run;
            }
            slab.as_ptr()
        };
        match kern {
            Kernel::Avx2 => avx2::gemm(m, d, k, alpha, a_row, a_ks, slab_of, c.as_mut_ptr(), d, true),
            Kernel::Avx512 => avx512::gemm(m, d, k, alpha, a_row, a_ks, slab_of, c.as_mut_ptr(), d, true),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const MR: usize = 6;
    const NR: usize = 16;

    /// `C (m x n) = alpha A B` or `+=`. Column slabs of 16 outer (`slab(j0, w, k)` returns `k` rows
    /// of 16 readable floats, the first `w` of them `B(l, j0..j0 + w)`), row blocks of 6 inner: the
    /// slab stays in L1 while every row block of `A` streams past it.
    ///
    /// # Safety
    /// AVX2 + FMA present; `a_row(i) + l * a_ks` readable for `i < m`, `l < k`; the slabs readable;
    /// `C` writable for `m` rows of stride `ldc` and `n` columns.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a_row: impl Fn(usize) -> *const f32,
        a_ks: usize,
        mut slab: impl FnMut(usize, usize, usize) -> *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut j0 = 0;
        while j0 < n {
            let w = (n - j0).min(NR);
            let bp = slab(j0, w, k);
            let mut i0 = 0;
            while i0 < m {
                let cp = c.add(i0 * ldc + j0);
                macro_rules! block {
                    ($r:literal) => {
                        micro::<$r>(k, alpha, std::array::from_fn(|r| a_row(i0 + r)), a_ks, bp, w, cp, ldc, accumulate)
                    };
                }
                match (m - i0).min(MR) {
                    6 => block!(6),
                    5 => block!(5),
                    4 => block!(4),
                    3 => block!(3),
                    2 => block!(2),
                    _ => block!(1),
                }
                i0 += MR;
            }
            j0 += NR;
        }
    }

    /// `dst[j * ds + i] = src[i * ss + j]` for `i, j < 8`: unpack pairs, shuffle quads, swap halves.
    ///
    /// # Safety
    /// AVX present; 8 rows of 8 floats readable at `src` and writable at `dst`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn transpose_8x8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, v) in out.iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * ds), *v);
        }
    }

    /// Lane masks for the first `w` of 16 columns.
    #[inline(always)]
    unsafe fn masks(w: usize) -> (__m256i, __m256i) {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let w0 = _mm256_set1_epi32(w.min(8) as i32);
        let w1 = _mm256_set1_epi32(w.saturating_sub(8) as i32);
        (_mm256_cmpgt_epi32(w0, lanes), _mm256_cmpgt_epi32(w1, lanes))
    }

    /// One `R x 16` block of `C` (`w <= 16` columns stored) over all `k`. One pointer per row of
    /// `A`, each stepped on its own: one pointer stepped row to row would chain six dependent adds
    /// into every step.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro<const R: usize>(
        k: usize,
        alpha: f32,
        mut rows: [*const f32; R],
        a_ks: usize,
        b: *const f32,
        w: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        let mut bp = b;
        for _ in 0..k {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for r in 0..R {
                let av = _mm256_broadcast_ss(&*rows[r]);
                lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
                hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
                rows[r] = rows[r].add(a_ks);
            }
            bp = bp.add(NR);
        }
        let al = _mm256_set1_ps(alpha);
        let (m0, m1) = masks(w);
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::cpu::packed_gemm::lane_mask;
    use std::arch::x86_64::*;

    const MR: usize = 8;
    const NR: usize = 16;

    /// [`super::avx2::gemm`] on the 512-bit kernel: blocks of 8 rows by two slabs (32 columns,
    /// sixteen accumulators), so each broadcast of `A` feeds two FMAs. `slab` is asked for the two
    /// slabs of a block one after the other and must keep both readable.
    ///
    /// # Safety
    /// AVX-512F present; otherwise as [`super::avx2::gemm`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a_row: impl Fn(usize) -> *const f32,
        a_ks: usize,
        mut slab: impl FnMut(usize, usize, usize) -> *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut j0 = 0;
        while j0 < n {
            let w = (n - j0).min(2 * NR);
            let b0 = slab(j0, w.min(NR), k);
            let b1 = if w > NR { slab(j0 + NR, w - NR, k) } else { b0 };
            let mut i0 = 0;
            while i0 < m {
                let cp = c.add(i0 * ldc + j0);
                macro_rules! block {
                    ($r:literal) => {{
                        let rows = std::array::from_fn(|r| a_row(i0 + r));
                        if w > NR {
                            micro::<$r, 2>(k, alpha, rows, a_ks, [b0, b1], w, cp, ldc, accumulate)
                        } else {
                            micro::<$r, 1>(k, alpha, rows, a_ks, [b0], w, cp, ldc, accumulate)
                        }
                    }};
                }
                match (m - i0).min(MR) {
                    8 => block!(8),
                    7 => block!(7),
                    6 => block!(6),
                    5 => block!(5),
                    4 => block!(4),
                    3 => block!(3),
                    2 => block!(2),
                    _ => block!(1),
                }
                i0 += MR;
            }
            j0 += 2 * NR;
        }
    }

    /// One `R x 16 S` block of `C` (`w` columns stored) over all `k`, one 512-bit accumulator per
    /// row and slab; the same per-element operations as the AVX2 kernel's.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro<const R: usize, const S: usize>(
        k: usize,
        alpha: f32,
        mut rows: [*const f32; R],
        a_ks: usize,
        slabs: [*const f32; S],
        w: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); S]; R];
        for l in 0..k {
            let b: [__m512; S] = std::array::from_fn(|j| _mm512_loadu_ps(slabs[j].add(l * NR)));
            for r in 0..R {
                let av = _mm512_set1_ps(*rows[r]);
                for j in 0..S {
                    acc[r][j] = _mm512_fmadd_ps(av, b[j], acc[r][j]);
                }
                rows[r] = rows[r].add(a_ks);
            }
        }
        let al = _mm512_set1_ps(alpha);
        let masks: [__mmask16; S] = std::array::from_fn(|j| lane_mask(w.saturating_sub(j * NR)));
        for (r, row) in acc.iter().enumerate() {
            for j in 0..S {
                let cr = c.add(r * ldc + j * NR);
                let mut v = _mm512_mul_ps(al, row[j]);
                if accumulate {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(masks[j], cr));
                }
                _mm512_mask_storeu_ps(cr, masks[j], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(i: usize) -> f32 {
        ((i * 7919 % 2003) as f32 / 2003.0 - 0.5) * 2.0
    }

    /// `n` pixels of `d` channels, one image, pixel `j` of the panels = pixel `perm(j)` of the image.
    fn setup(n: usize, d: usize) -> (Vec<f32>, Panels, Vec<u32>) {
        let feats: Vec<f32> = (0..n * d).map(val).collect();
        let ids: Vec<u32> = (0..n as u32).map(|j| (j * 7 + 3) % n as u32).collect();
        let p = Panels::gather(&feats, d, n, &ids);
        (feats, p, ids)
    }

    #[test]
    fn scores_match_naive() {
        if !available() {
            eprintln!("skipped: no AVX2 + FMA");
            return;
        }
        let (n, d) = (53, 19);
        let (feats, panels, ids) = setup(n, d);
        let x = |j: usize, c: usize| feats[c * n + ids[j] as usize] as f64;
        for &(a0, m, b0, w) in &[(0, 53, 0, 53), (3, 7, 16, 37), (50, 3, 48, 5), (1, 13, 0, 1)] {
            let ldo = w + 3;
            let mut c = vec![7.0f32; m * ldo];
            scores(2.0, &panels, a0, m, &panels, b0, w, &mut c, ldo);
            for i in 0..m {
                for j in 0..ldo {
                    let got = c[i * ldo + j] as f64;
                    if j < w {
                        let want: f64 = 2.0 * (0..d).map(|l| x(a0 + i, l) * x(b0 + j, l)).sum::<f64>();
                        assert!((got - want).abs() < 1e-5, "({i},{j}): {got} vs {want}");
                    } else {
                        assert_eq!(got, 7.0, "padding column written");
                    }
                }
            }
        }
    }

    #[test]
    fn products_match_naive_for_row_and_column_operands() {
        if !available() {
            eprintln!("skipped: no AVX2 + FMA");
            return;
        }
        for &(n, d) in &[(53, 19), (40, 32), (17, 5)] {
            let (feats, panels, ids) = setup(n, d);
            let x = |j: usize, c: usize| feats[c * n + ids[j] as usize] as f64;
            for &(m, k, row0) in &[(7, 11, 5), (13, n - 2, 2), (1, 1, 0), (6, n, 0)] {
                for &(a_rs, a_ks) in &[(k + 1, 1), (1, m + 2)] {
                    let a: Vec<f32> = (0..m * a_rs + k * a_ks + 1).map(|i| val(i + 31)).collect();
                    let c0: Vec<f32> = (0..m * d).map(|i| val(i + 5)).collect();
                    let mut c = c0.clone();
                    product_add(m, k, 0.5, &a, a_rs, a_ks, &panels, row0, &mut c);
                    for i in 0..m {
                        for ch in 0..d {
                            let want = c0[i * d + ch] as f64
                                + 0.5 * (0..k).map(|l| a[i * a_rs + l * a_ks] as f64 * x(row0 + l, ch)).sum::<f64>();
                            let got = c[i * d + ch] as f64;
                            assert!(
                                (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                                "{n}x{d} {m}x{k}: ({i},{ch}) {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn avx512_products_match_avx2_bit_for_bit() {
        if !available() || !crate::cpu::packed_gemm::avx512_available() {
            eprintln!("skipped: no AVX-512F");
            return;
        }
        // Row counts across the 12-row blocks (1, 11, 12, 13, 25), partial last slabs.
        let (n, d) = (61, 37);
        let (_, panels, _) = setup(n, d);
        for &(a0, m, b0, w) in &[(0, 61, 0, 61), (3, 13, 16, 37), (50, 11, 48, 5), (1, 25, 0, 1), (0, 12, 32, 29)] {
            let ldo = w + 3;
            let mut wide = vec![7.0f32; m * ldo];
            let mut narrow = wide.clone();
            scores_on(Kernel::Avx512, 2.0, &panels, a0, m, &panels, b0, w, &mut wide, ldo);
            scores_on(Kernel::Avx2, 2.0, &panels, a0, m, &panels, b0, w, &mut narrow, ldo);
            assert!(wide.iter().zip(&narrow).all(|(a, b)| a.to_bits() == b.to_bits()), "scores {a0} {m} {b0} {w}");
        }
        for &(m, k, row0) in &[(7, 11, 5), (13, n - 2, 2), (1, 1, 0), (25, n, 0), (12, 30, 16)] {
            for &(a_rs, a_ks) in &[(k + 1, 1), (1, m + 2)] {
                let a: Vec<f32> = (0..m * a_rs + k * a_ks + 1).map(|i| val(i + 31)).collect();
                let c0: Vec<f32> = (0..m * d).map(|i| val(i + 5)).collect();
                let (mut wide, mut narrow) = (c0.clone(), c0.clone());
                product_add_on(Kernel::Avx512, m, k, 0.5, &a, a_rs, a_ks, &panels, row0, &mut wide);
                product_add_on(Kernel::Avx2, m, k, 0.5, &a, a_rs, a_ks, &panels, row0, &mut narrow);
                assert!(wide.iter().zip(&narrow).all(|(a, b)| a.to_bits() == b.to_bits()), "product {m} {k} {row0}");
            }
        }
    }

    /// `cargo test -p kernels --release --lib tile_gemm -- --ignored --nocapture --test-threads=1`:
    /// the loss's tile shapes, next to matrixmultiply on the same operands in row-major form.
    #[test]
    #[ignore]
    fn speed_on_tile_shapes() {
        use crate::Float;
        let (t, d) = (256usize, 256usize);
        let (_, panels, _) = setup(2 * t, d);
        let x: Vec<f32> = (0..2 * t * d).map(val).collect();
        let mut g = vec![0.0f32; t * t];
        let mut dx = vec![0.0f32; t * d];
        let time = crate::cpu::best_time;
        let gf = 2.0 * (t * t * d) as f64 * 1e-9;
        #[allow(clippy::too_many_arguments)]
        fn mm(
            m: usize,
            k: usize,
            n: usize,
            a: &[f32],
            rsa: usize,
            csa: usize,
            b: &[f32],
            rsb: usize,
            csb: usize,
            c: &mut [f32],
        ) {
            // SAFETY: the callers pass in-bounds views.
            unsafe {
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
            }
        }
        for _ in 0..2 {
            let s = time(&mut || scores(1.0, &panels, 0, t, &panels, t, t, &mut g, t));
            let s2 = time(&mut || scores_on(Kernel::Avx2, 1.0, &panels, 0, t, &panels, t, t, &mut g, t));
            let s_mm = time(&mut || mm(t, d, t, &x, d, 1, &x[t * d..], 1, d, &mut g));
            let p = time(&mut || product_add(t, t, 1.0, &g, t, 1, &panels, t, &mut dx));
            let p2 = time(&mut || product_add_on(Kernel::Avx2, t, t, 1.0, &g, t, 1, &panels, t, &mut dx));
            let p_mm = time(&mut || mm(t, t, d, &g, t, 1, &x[t * d..], d, 1, &mut dx));
            let q = time(&mut || product_add(t, t, 1.0, &g, 1, t, &panels, 0, &mut dx));
            let q_mm = time(&mut || mm(t, t, d, &g, 1, t, &x, d, 1, &mut dx));
            println!(
                "GFLOP/s ours ({:?}) | matrixmultiply: scores {:.1} | {:.1}, G X {:.1} | {:.1}, G^T X {:.1} | {:.1}; \
                 AVX2 kernel: scores {:.1}, G X {:.1}",
                kernel(),
                gf / s,
                gf / s_mm,
                gf / p,
                gf / p_mm,
                gf / q,
                gf / q_mm,
                gf / s2,
                gf / p2
            );
        }
    }
}
