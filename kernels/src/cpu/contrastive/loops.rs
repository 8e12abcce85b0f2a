//! The elementwise loops of the contrastive loss: over one anchor's row of scores, or over a tile.
//!
//! Every loop is a plain slice loop the compiler vectorises. Each is compiled three times,
//! baseline, AVX2 + FMA and AVX-512F, and picked at run time ([`simd_dispatch`]: AVX-512 where the
//! packed GEMM runs its 512-bit kernel, so `SEGNET_CPU_AVX512=0` turns both off). The compiler
//! keeps each loop's arithmetic as written (no reassociation, no contraction into FMAs), so the
//! wider builds give the same values as the others, only more lanes at once (tested against the
//! AVX2 build). Sums use eight independent lanes in a fixed order.
//!
//! Notation as in the module docs of `contrastive`: `s` a score, `L_i` an anchor's log-sum-exp,
//! `m` the bag's score bound (the tiles' shift), `N_i = exp(L_i - m)` the anchor's shifted sum,
//! `cp`/`ce` the saved coefficients and `a_i = ce_i / N_i`.

use super::{FastMath, Form};
use crate::Float;

/// Defines `pub(super) fn $name` that runs `$inner` compiled with AVX2 + FMA where the CPU has them.
macro_rules! simd_dispatch {
    ($(#[$doc:meta])* $name:ident => $inner:ident ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        pub(super) fn $name<T: FastMath>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast<T: FastMath>($($arg: $ty),*) -> $ret {
                    $inner($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide<T: FastMath>($($arg: $ty),*) -> $ret {
                    $inner($($arg),*)
                }
                if super::tile_gemm::available() {
                    if wide_loops() {
                        // SAFETY: the CPU supports the enabled features (`wide_loops`).
                        return unsafe { wide($($arg),*) };
                    }
                    // SAFETY: the CPU supports the enabled features.
                    return unsafe { fast($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}

/// Whether the loops run their AVX-512F build: where the packed GEMM runs its 512-bit kernel
/// (the CPU has AVX-512F and `SEGNET_CPU_AVX512` is not `0`). Tests switch it off per thread to
/// compare the builds.
#[cfg(target_arch = "x86_64")]
fn wide_loops() -> bool {
    crate::cpu::packed_gemm::kernel() == crate::cpu::packed_gemm::Kernel::Avx512 && !NARROW.with(|n| n.get())
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Set by tests to run the AVX2 build on an AVX-512 CPU.
    static NARROW: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with this thread's loops on their AVX2 build (a test's reference for the wider one).
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) fn with_avx2_loops<R>(f: impl FnOnce() -> R) -> R {
    NARROW.with(|n| n.set(true));
    let r = f();
    NARROW.with(|n| n.set(false));
    r
}

// ---- reductions ----

const LANES: usize = 8;

#[inline(always)]
fn lanes_fold<T: Float>(x: &[T], init: T, f: impl Fn(T, T) -> T, g: impl Fn(T) -> T) -> T {
    let mut acc = [init; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = f(acc[l], g(c[l]));
        }
    }
    for (l, &v) in rest.iter().enumerate() {
        acc[l] = f(acc[l], g(v));
    }
    let mut r = acc[0];
    for &a in &acc[1..] {
        r = f(r, a);
    }
    r
}

#[inline(always)]
fn max_of<T: Float>(x: &[T]) -> T {
    // A compare-and-select (not `max`, whose NaN rules block vectorisation); scores are never NaN.
    lanes_fold(x, T::NEG_INFINITY, |a, b| if b > a { b } else { a }, |v| v)
}

#[inline(always)]
fn sum_of<T: Float>(x: &[T]) -> T {
    lanes_fold(x, T::ZERO, |a, b| a + b, |v| v)
}

/// `sum exp(x - m)`, overwriting `x` with the terms (a plain map loop vectorises; a fold does not).
#[inline(always)]
fn sum_exp_shifted_in_place<T: FastMath>(x: &mut [T], m: T) -> T {
    for v in x.iter_mut() {
        *v = (*v - m).exp_fast();
    }
    sum_of(x)
}

/// `sum softplus(l - s)` and `sum sig(l - s)` over `x`, element `j` summed in lane `j % LANES`.
///
/// In blocks: the terms of a block first (an elementwise loop, which vectorises; with the sums in
/// the same loop it ran scalar, one lane at a time), then added to the lanes in order: the same
/// additions, in the same order, as summing them as they are computed.
#[inline(always)]
fn softplus_sigmoid_sums<T: FastMath>(x: &[T], l: T) -> (T, T) {
    const BLOCK: usize = 16 * LANES;
    let mut sp = [T::ZERO; LANES];
    let mut sg = [T::ZERO; LANES];
    let (mut tp, mut tg) = ([T::ZERO; BLOCK], [T::ZERO; BLOCK]);
    for blk in x.chunks(BLOCK) {
        let (tp, tg) = (&mut tp[..blk.len()], &mut tg[..blk.len()]);
        for ((&v, a), b) in blk.iter().zip(tp.iter_mut()).zip(tg.iter_mut()) {
            (*a, *b) = softplus_sig(l - v);
        }
        let (cp, cg) = (tp.chunks_exact(LANES), tg.chunks_exact(LANES));
        let (rp, rg) = (cp.remainder(), cg.remainder());
        for (a, b) in cp.zip(cg) {
            for k in 0..LANES {
                sp[k] += a[k];
                sg[k] += b[k];
            }
        }
        for (k, (&a, &b)) in rp.iter().zip(rg).enumerate() {
            sp[k] += a;
            sg[k] += b;
        }
    }
    (sp.iter().copied().sum(), sg.iter().copied().sum())
}

/// `(softplus(z), sig(z))` in their stable forms: `max(z, 0) + ln(1 + e^-|z|)`, and `1 / (1 + e^-|z|)`
/// or its complement.
#[inline(always)]
fn softplus_sig<T: FastMath>(z: T) -> (T, T) {
    let one = T::ONE;
    let t = (-z.abs()).exp_fast();
    let inv = one / (one + t);
    let sig = if z >= T::ZERO { inv } else { t * inv };
    (z.max(T::ZERO) + (one + t).ln_fast(), sig)
}

#[inline(always)]
fn sigmoid<T: FastMath>(z: T) -> T {
    T::ONE / (T::ONE + (-z).exp_fast())
}

/// Log-sum-exp over several slices (`-inf` when all are empty); the slices are overwritten.
#[inline(always)]
fn logsumexp_in_place<T: FastMath>(parts: &mut [&mut [T]]) -> T {
    let m = parts.iter().map(|p| max_of(p)).fold(T::NEG_INFINITY, |a, b| a.max(b));
    if m == T::NEG_INFINITY {
        return m;
    }
    let s: T = parts.iter_mut().map(|p| sum_exp_shifted_in_place(p, m)).fold(T::ZERO, |a, b| a + b);
    m + s.ln()
}

/// `L_i` of one anchor from a full row of scores, with its own maximum as the shift: the exact path
/// for anchors whose shifted tile sum fell below [`FastMath::SUM_FLOOR`]. `srow` holds the own-bag
/// scores (self at `i`, class run `cs..ce`), `prow` the partner positives; both are overwritten.
#[inline(always)]
fn exact_l<T: FastMath>(form: Form, srow: &mut [T], prow: &mut [T], i: usize, cs: usize, ce: usize) -> T {
    match form {
        Form::PerPositive => {
            let (head, rest) = srow.split_at_mut(cs);
            let tail = &mut rest[ce - cs..];
            logsumexp_in_place(&mut [head, tail])
        }
        Form::SupCon => {
            let (head, rest) = srow.split_at_mut(i);
            logsumexp_in_place(&mut [head, &mut rest[1..], prow])
        }
    }
}

simd_dispatch!(
    /// See `exact_l`.
    forward_exact_l => exact_l(form: Form, srow: &mut [T], prow: &mut [T], i: usize, cs: usize, ce: usize) -> T
);

/// The partner-positive terms of an anchor whose `L_i` is known, from its scores `prow` against the
/// partner's pixels of its class: per-positive `(sum softplus(L_i - s), sum sig(L_i - s))`; SupCon
/// `(sum s, 0)`.
#[inline(always)]
fn partner_row_terms<T: FastMath>(form: Form, prow: &[T], li: T) -> (T, T) {
    match form {
        Form::PerPositive => softplus_sigmoid_sums(prow, li),
        Form::SupCon => (sum_of(prow), T::ZERO),
    }
}

simd_dispatch!(
    /// See `partner_row_terms`.
    forward_partner_terms => partner_row_terms(form: Form, prow: &[T], li: T) -> (T, T)
);

/// Two running sums per row or column.
pub(super) type PairSums<T> = Vec<(T, T)>;

/// A positive tile: scores between rows `p0..` and columns `q0..q0 + tq` of one class run (row-major
/// with stride `ld`, column `q0` at offset `off` of each row). Per row and, off the diagonal, per column: per-positive `(sum softplus(L - s), sum
/// sig(L - s))` with the row's (or column's) own `L`; SupCon `(sum s, 0)` without the self pair.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn positive_tile<T: FastMath>(
    form: Form,
    tile: &[T],
    ld: usize,
    off: usize,
    tq: usize,
    p0: usize,
    q0: usize,
    l: &[T],
    diagonal: bool,
) -> (PairSums<T>, PairSums<T>) {
    let mut rows = Vec::with_capacity(tile.len() / ld.max(1));
    let (mut c1, mut c2) = (vec![T::ZERO; if diagonal { 0 } else { tq }], vec![T::ZERO; if diagonal { 0 } else { tq }]);
    let lq = &l[q0..q0 + tq];
    for (r, full) in tile.chunks_exact(ld).enumerate() {
        let row = &full[off..off + tq];
        let i = p0 + r;
        match form {
            Form::PerPositive => {
                rows.push(softplus_sigmoid_sums(row, l[i]));
                if !diagonal {
                    for (((&v, &lj), a), b) in row.iter().zip(lq).zip(c1.iter_mut()).zip(c2.iter_mut()) {
                        let (sp, sg) = softplus_sig(lj - v);
                        *a += sp;
                        *b += sg;
                    }
                }
            }
            Form::SupCon => {
                let own = if diagonal { row[i - q0] } else { T::ZERO };
                rows.push((sum_of(row) - own, T::ZERO));
                if !diagonal {
                    for (&v, a) in row.iter().zip(c1.iter_mut()) {
                        *a += v;
                    }
                }
            }
        }
    }
    (rows, c1.into_iter().zip(c2).collect())
}

simd_dispatch!(
    /// See `positive_tile`.
    forward_positive_tile => positive_tile(form: Form, tile: &[T], ld: usize, off: usize, tq: usize, p0: usize, q0: usize, l: &[T], diagonal: bool) -> (PairSums<T>, PairSums<T>)
);

/// `sum exp(x - m)` (the SupCon partner terms of a tiled anchor), `x` overwritten.
#[inline(always)]
fn shifted_sum<T: FastMath>(x: &mut [T], m: T) -> T {
    sum_exp_shifted_in_place(x, m)
}

simd_dispatch!(
    /// See `shifted_sum`.
    forward_shifted_sum => shifted_sum(x: &mut [T], m: T) -> T
);

/// A forward tile: scores of rows `p0..` (`tile`, row-major with `tq` columns starting at column
/// `q0`) become `exp(s - m)`, the pairs that are not in an anchor's sum are zeroed (same class in
/// the per-positive form, self in SupCon), and the row sums (and, off the diagonal, the column
/// sums) are returned. `runs[i]` is row `i`'s class run.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn exp_tile<T: FastMath>(
    form: Form,
    tile: &mut [T],
    tq: usize,
    p0: usize,
    q0: usize,
    runs: &[(u32, u32)],
    m: T,
    diagonal: bool,
) -> (Vec<T>, Vec<T>) {
    let mut row_sums = Vec::with_capacity(tile.len() / tq.max(1));
    let mut col_sums = vec![T::ZERO; if diagonal { 0 } else { tq }];
    for (r, row) in tile.chunks_exact_mut(tq).enumerate() {
        let i = p0 + r;
        for v in row.iter_mut() {
            *v = (*v - m).exp_fast();
        }
        match form {
            Form::PerPositive => {
                let (a, b) = window(runs[i], q0, tq);
                row[a..b].fill(T::ZERO);
            }
            Form::SupCon => {
                if (q0..q0 + tq).contains(&i) {
                    row[i - q0] = T::ZERO;
                }
            }
        }
        row_sums.push(sum_of(row));
        for (c, &v) in col_sums.iter_mut().zip(row.iter()) {
            *c += v;
        }
    }
    (row_sums, col_sums)
}

simd_dispatch!(
    /// See `exp_tile`.
    forward_exp_tile => exp_tile(form: Form, tile: &mut [T], tq: usize, p0: usize, q0: usize, runs: &[(u32, u32)], m: T, diagonal: bool) -> (Vec<T>, Vec<T>)
);

/// The part of class run `run` inside the columns `q0..q0 + tq`, relative to `q0`.
#[inline(always)]
fn window(run: (u32, u32), q0: usize, tq: usize) -> (usize, usize) {
    let a = (run.0 as usize).clamp(q0, q0 + tq) - q0;
    let b = (run.1 as usize).clamp(q0, q0 + tq) - q0;
    (a, b)
}

/// What a backward tile needs per bag row.
#[derive(Clone, Copy)]
pub(super) struct Coefs<'a, T> {
    /// Class run of each row.
    pub runs: &'a [(u32, u32)],
    /// `L_i`.
    pub l: &'a [T],
    /// `cp_i`.
    pub cp: &'a [T],
    /// `ce_i`.
    pub ce: &'a [T],
    /// `N_i` (0 for an anchor on the exact path or without candidates).
    pub nsum: &'a [T],
    /// `a_i = ce_i / N_i` (0 where `N_i` is 0).
    pub a: &'a [T],
    /// The shift `m`.
    pub shift: T,
}

/// A backward tile: scores (as in [`forward_exp_tile`]) become `G_ij = dS_ij + dS_ji`. With `exact`,
/// every term is formed from `L` (`ce_i exp(s - L_i)`, `sig(L_i - s)`), which is right for any anchor;
/// otherwise from the shifted sums, one `exp` per pair: negatives `exp(s - m) (a_i + a_j)`,
/// per-positive positives `-(cp_i N_i / (N_i + e) + cp_j N_j / (N_j + e))` with `e = exp(s - m)`.
#[inline(always)]
fn grad_tile<T: FastMath>(form: Form, tile: &mut [T], tq: usize, p0: usize, q0: usize, k: Coefs<'_, T>, exact: bool) {
    let cols = q0..q0 + tq;
    for (r, g) in tile.chunks_exact_mut(tq).enumerate() {
        let i = p0 + r;
        let (a, b) = window(k.runs[i], q0, tq);
        let (pa, pb) = (q0 + a, q0 + b);
        match (form, exact) {
            (Form::PerPositive, true) => {
                let (li, cei, cpi) = (k.l[i], k.ce[i], k.cp[i]);
                let (head, rest) = g.split_at_mut(a);
                let (pos, tail) = rest.split_at_mut(b - a);
                neg_pair_grad(head, li, cei, &k.l[q0..pa], &k.ce[q0..pa]);
                neg_pair_grad(tail, li, cei, &k.l[pb..cols.end], &k.ce[pb..cols.end]);
                pos_pair_grad(pos, li, cpi, &k.l[pa..pb], &k.cp[pa..pb]);
            }
            (Form::PerPositive, false) => {
                let (ai, ni, cpi) = (k.a[i], k.nsum[i], k.cp[i]);
                let (head, rest) = g.split_at_mut(a);
                let (pos, tail) = rest.split_at_mut(b - a);
                neg_pair_grad_shifted(head, k.shift, ai, &k.a[q0..pa]);
                neg_pair_grad_shifted(tail, k.shift, ai, &k.a[pb..cols.end]);
                pos_pair_grad_shifted(pos, k.shift, ni, cpi, &k.nsum[pa..pb], &k.cp[pa..pb]);
            }
            (Form::SupCon, true) => {
                neg_pair_grad(g, k.l[i], k.ce[i], &k.l[cols.clone()], &k.ce[cols.clone()]);
                supcon_positive_shift(&mut g[a..b], k.cp[i], &k.cp[pa..pb]);
            }
            (Form::SupCon, false) => {
                neg_pair_grad_shifted(g, k.shift, k.a[i], &k.a[cols.clone()]);
                supcon_positive_shift(&mut g[a..b], k.cp[i], &k.cp[pa..pb]);
            }
        }
        if form == Form::SupCon && cols.contains(&i) {
            g[i - q0] = T::ZERO;
        }
    }
}

simd_dispatch!(
    /// See `grad_tile`.
    backward_grad_tile => grad_tile(form: Form, tile: &mut [T], tq: usize, p0: usize, q0: usize, k: Coefs<'_, T>, exact: bool) -> ()
);

/// Negative pairs from the shifted sums: `g_j = exp(s_j - m) (a_i + a_j)`.
#[inline(always)]
fn neg_pair_grad_shifted<T: FastMath>(g: &mut [T], m: T, ai: T, a: &[T]) {
    for (v, &aj) in g.iter_mut().zip(a) {
        *v = (*v - m).exp_fast() * (ai + aj);
    }
}

/// Per-positive same-class pairs from the shifted sums: `sig(L_i - s) = N_i / (N_i + exp(s - m))`
/// (0 when the anchor has no negatives: `N_i = 0`).
#[inline(always)]
fn pos_pair_grad_shifted<T: FastMath>(g: &mut [T], m: T, ni: T, cpi: T, nsum: &[T], cp: &[T]) {
    let tiny = T::from_f64(f64::MIN_POSITIVE);
    for ((v, &nj), &cpj) in g.iter_mut().zip(nsum).zip(cp) {
        let e = (*v - m).exp_fast();
        let di = ni + e;
        let dj = nj + e;
        *v = -(cpi * ni / if di > tiny { di } else { tiny } + cpj * nj / if dj > tiny { dj } else { tiny });
    }
}

/// SupCon's positive part of `G`: `- (cp_i + cp_j)` on same-class pairs.
#[inline(always)]
fn supcon_positive_shift<T: FastMath>(g: &mut [T], cpi: T, cp: &[T]) {
    for (v, &cpj) in g.iter_mut().zip(cp) {
        *v -= cpi + cpj;
    }
}

/// Negative pairs (or SupCon's exp terms): `g_j = ce_i exp(s_j - l_i) + ce_j exp(s_j - l_j)`.
#[inline(always)]
fn neg_pair_grad<T: FastMath>(g: &mut [T], li: T, cei: T, l: &[T], ce: &[T]) {
    for ((v, &lj), &cej) in g.iter_mut().zip(l).zip(ce) {
        let s = *v;
        *v = cei * (s - li).exp_fast() + cej * (s - lj).exp_fast();
    }
}

/// Per-positive form, same-class pairs: `g_j = -(cp_i sig(l_i - s_j) + cp_j sig(l_j - s_j))`.
#[inline(always)]
fn pos_pair_grad<T: FastMath>(g: &mut [T], li: T, cpi: T, l: &[T], cp: &[T]) {
    for ((v, &lj), &cpj) in g.iter_mut().zip(l).zip(cp) {
        let s = *v;
        *v = -(cpi * sigmoid(li - s) + cpj * sigmoid(lj - s));
    }
}

/// `dS_ij` for our anchor `i` and its partner positives `j` (scores in `g`, overwritten).
#[inline(always)]
fn anchor_side_partner_grad_impl<T: FastMath>(form: Form, g: &mut [T], li: T, cpi: T, cei: T) {
    match form {
        Form::PerPositive => g.iter_mut().for_each(|v| *v = -cpi * sigmoid(li - *v)),
        Form::SupCon => g.iter_mut().for_each(|v| *v = cei * (*v - li).exp_fast() - cpi),
    }
}

/// `dS_ai` for anchors `a` of a bag partnered with ours and our pixel `i` (scores in `g`).
#[inline(always)]
fn candidate_side_partner_grad_impl<T: FastMath>(form: Form, g: &mut [T], l: &[T], cp: &[T], ce: &[T]) {
    match form {
        Form::PerPositive => {
            for ((v, &la), &cpa) in g.iter_mut().zip(l).zip(cp) {
                *v = -cpa * sigmoid(la - *v);
            }
        }
        Form::SupCon => {
            for (((v, &la), &cpa), &cea) in g.iter_mut().zip(l).zip(cp).zip(ce) {
                *v = cea * (*v - la).exp_fast() - cpa;
            }
        }
    }
}

simd_dispatch!(
    /// `dS_ij` for an anchor `i` and its partner positives `j` (scores in `g`, overwritten).
    anchor_side_partner_grad => anchor_side_partner_grad_impl(form: Form, g: &mut [T], li: T, cpi: T, cei: T) -> ()
);

simd_dispatch!(
    /// `dS_ai` for anchors `a` of a bag partnered with ours and our pixel `i` (scores in `g`).
    candidate_side_partner_grad => candidate_side_partner_grad_impl(form: Form, g: &mut [T], l: &[T], cp: &[T], ce: &[T]) -> ()
);
