//! The fused pixel-wise label-based contrastive loss: forward and backward without an `N x N` matrix.
//!
//! # Problem
//! Pixels are grouped into *bags* (an image, or a sample of the whole batch). Each bag lists its
//! pixels (global ids `image * hw + p` into a `[images, d, hw]` feature buffer) **grouped by class**,
//! so that the pixels of one class are a contiguous run of rows. A bag may name a *partner* bag whose
//! pixels of the anchor's class are extra positives (never negatives). With `s_ij = f_i . f_j / tau`:
//!
//! * **Per-positive form** (Zhao et al.). For anchor `i` of class `c`: negatives `K_i` = own-bag pixels
//!   of another class, positives `P_i` = own-bag pixels of class `c` (i itself included) plus the
//!   partner's pixels of class `c`. With `L_i = log sum_{k in K_i} exp(s_ik)` (`-inf` if `K_i` is empty),
//!   `l_ij = log(exp(s_ij) + exp(L_i)) - s_ij = softplus(L_i - s_ij)` and `loss_i = mean_{j in P_i} l_ij`.
//! * **SupCon form**. Candidates `C_i` = own-bag pixels except `i` itself, plus the partner's pixels of
//!   class `c`; positives `P_i` = the candidates of class `c`. `L_i = log sum_{k in C_i} exp(s_ik)`,
//!   `loss_i = L_i - mean_{j in P_i} s_ij`. Anchors with `P_i` empty are skipped.
//!
//! The loss is `sum_i w_i loss_i` where `w_i = 1 / (anchors of i's bag * bags with an anchor)` for every
//! anchor that counts (all pixels in the per-positive form, which always has `i in P_i`), 0 otherwise.
//!
//! # Gradient
//! Let `sig(x) = 1 / (1 + exp(-x))`. In the per-positive form, with `A_i = sum_{j in P_i} sig(L_i - s_ij)`,
//! `dloss/ds_ij = -(w_i/|P_i|) sig(L_i - s_ij)` for `j in P_i` and `dloss/ds_ik = (w_i/|P_i|) A_i exp(s_ik - L_i)`
//! for `k in K_i`. In the SupCon form, `dloss/ds_ik = w_i exp(s_ik - L_i) - [k in P_i] w_i/|P_i|` for
//! `k in C_i`. Every pair `(i, j)` of the same bag appears as `s_ij` (anchor `i`) and `s_ji` (anchor `j`),
//! so with `G_ij = dS_ij + dS_ji`, `df_i = (1/tau) (sum_j G_ij f_j + partner terms)`; the diagonal gets
//! `2 dS_ii` as `d s_ii / d f_i = 2 f_i / tau` requires.
//!
//! # How
//! The forward saves per anchor only `L_i` and two coefficients (`w_i/|P_i|` and `w_i A_i/|P_i|`, or
//! `w_i/|P_i|` and `w_i` for SupCon): O(N). Both passes walk *strips* of [`STRIP_ROWS`] anchors against all
//! candidates of the bag: one single-threaded GEMM gives the strip's `rows x n` scores, which are
//! consumed at once and overwritten by the next strip. The forward needs one GEMM per strip; the
//! backward recomputes the strip's scores, turns them into `G` in place (the `dS_ji` half uses the saved
//! state of column `j`) and multiplies by the bag's features: two GEMMs. Each strip owns its output
//! rows, so strips run on rayon threads with no shared accumulator; sums are taken in a fixed order,
//! so results repeat bit for bit for any thread count. Extra memory: the gathered `n x d` features of
//! the bag (and of its partners in cross mode) plus `rows x n` scores per thread.
//!
//! Stabilisation: `L_i` uses the maximum over its own terms, so `exp(s - L_i) <= 1` for every term it
//! sums; softplus and sigmoid are evaluated in their stable forms. Large, unnormalised scores are fine.
//!
//! Speed: candidates are class-sorted, so an anchor's negatives and positives are contiguous column
//! ranges and the row loops are plain, branch-free slice loops (f32 `exp`/`ln` are polynomials that
//! vectorise). The hot row loops are compiled twice, baseline and AVX2+FMA, picked at run time; a
//! machine always takes the same path, so results still repeat bit for bit on it.

use crate::Float;
use rayon::prelude::*;

/// Anchors per strip: the GEMM row block. The strip's score buffer is `STRIP_ROWS x n`.
pub const STRIP_ROWS: usize = 64;

/// Elementwise transcendental functions used in the row loops. f32 uses polynomial versions that
/// the compiler can vectorise (about 1 ulp); f64 (gradient checks) uses the standard library.
pub trait FastMath: Float {
    /// `e^x`; exactly 0 below the smallest normal result, and finite (clamped) above.
    fn exp_fast(self) -> Self;
    /// `ln x` for positive finite `x`.
    fn ln_fast(self) -> Self;
}

impl FastMath for f64 {
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn ln_fast(self) -> f64 {
        self.ln()
    }
}

impl FastMath for f32 {
    /// Cephes `expf`: `e^x = 2^n e^r`, `|r| <= ln2/2`, degree-6 polynomial for `e^r`.
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer in the low bits.
        let x = self.clamp(-87.0, 88.0);
        let t = x * std::f32::consts::LOG2_E + MAGIC;
        let n = t - MAGIC;
        let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
        let mut p = 1.987_569_1e-4f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 5e-1;
        let er = p * r * r + r + 1.0;
        let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
        let pow2 = f32::from_bits(((ni + 127) << 23) as u32);
        if self < -87.0 {
            0.0
        } else {
            er * pow2
        }
    }

    /// Cephes `logf` for positive normal `x`.
    #[inline(always)]
    fn ln_fast(self) -> f32 {
        let bits = self.to_bits();
        let mut e = ((bits >> 23) & 0xff) as i32 - 127;
        let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000); // in [1, 2)
        if m > std::f32::consts::SQRT_2 {
            m *= 0.5;
            e += 1;
        }
        let x = m - 1.0;
        let z = x * x;
        let mut y = 7.037_683_6e-2f32;
        y = y * x - 1.151_461e-1;
        y = y * x + 1.167_699_9e-1;
        y = y * x - 1.242_014_1e-1;
        y = y * x + 1.424_932_3e-1;
        y = y * x - 1.666_805_8e-1;
        y = y * x + 2.000_071_4e-1;
        y = y * x - 2.499_999_4e-1;
        y = y * x + 3.333_333e-1;
        y = y * x * z;
        let ef = e as f32;
        y += ef * -2.121_944_4e-4;
        y += -0.5 * z;
        x + y + ef * 0.693_359_4
    }
}

/// Which loss (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `-log(e_ij / (e_ij + sum of negatives))`, i itself a positive of i.
    PerPositive,
    /// `-log(e_ij / sum over all other candidates)`, self excluded.
    SupCon,
}

/// The pixels of one class inside a bag: rows `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassRun {
    /// The class label.
    pub class: u8,
    /// First row.
    pub start: usize,
    /// One past the last row.
    pub end: usize,
}

/// A set of pixels contrasted with each other, grouped by class.
#[derive(Clone, Debug, Default)]
pub struct Bag {
    /// Global pixel ids `image * hw + p`, grouped by class (runs in ascending class order).
    pub pixels: Vec<u32>,
    /// The class runs covering `pixels`, ascending by class.
    pub runs: Vec<ClassRun>,
    /// A bag whose pixels of the anchor's class are extra positives (never negatives).
    pub partner: Option<usize>,
}

impl Bag {
    /// Build a bag from `(class, global pixel id)` pairs; they are sorted by class, then pixel id.
    pub fn from_pixels(mut items: Vec<(u8, u32)>, partner: Option<usize>) -> Bag {
        items.sort_unstable();
        let mut runs: Vec<ClassRun> = Vec::new();
        for (r, &(c, _)) in items.iter().enumerate() {
            match runs.last_mut() {
                Some(last) if last.class == c => last.end = r + 1,
                _ => runs.push(ClassRun { class: c, start: r, end: r + 1 }),
            }
        }
        Bag { pixels: items.into_iter().map(|(_, p)| p).collect(), runs, partner }
    }
    /// Number of pixels.
    pub fn len(&self) -> usize {
        self.pixels.len()
    }
    /// True when the bag has no pixel.
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }
    /// Rows of class `c`, or an empty range.
    pub fn class_rows(&self, c: u8) -> (usize, usize) {
        match self.runs.binary_search_by_key(&c, |r| r.class) {
            Ok(k) => (self.runs[k].start, self.runs[k].end),
            Err(_) => (0, 0),
        }
    }
}

/// The inputs of one loss evaluation.
#[derive(Clone, Copy)]
pub struct Problem<'a, T> {
    /// Features `[images, d, hw]` (NCHW with `hw = h * w`).
    pub feats: &'a [T],
    /// Channels.
    pub d: usize,
    /// Pixels per image.
    pub hw: usize,
    /// The bags; every pixel appears in at most one bag.
    pub bags: &'a [Bag],
    /// `1 / tau`.
    pub inv_tau: T,
    /// Which loss.
    pub form: Form,
}

/// What the backward needs, per bag and row: `L_i` and two coefficients (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct BagState<T> {
    /// `L_i` (`+inf` for an anchor that does not count, so `exp(s - L_i) = 0`).
    pub l: Vec<T>,
    /// Per-positive: `w_i/|P_i|`; SupCon: `w_i/|P_i|`.
    pub c_pos: Vec<T>,
    /// Per-positive: `w_i A_i/|P_i|`; SupCon: `w_i`.
    pub c_exp: Vec<T>,
}

impl<T> BagState<T> {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        3 * self.l.len() * std::mem::size_of::<T>()
    }
}

/// The forward result: the loss and the per-anchor state for the backward.
#[derive(Clone, Debug)]
pub struct Forward<T> {
    /// The loss (accumulated in f64).
    pub loss: f64,
    /// One state per bag.
    pub states: Vec<BagState<T>>,
}

/// `|P_i|` for an anchor of class run `run` with `partner_len` partner pixels of its class.
fn positives(form: Form, run: &ClassRun, partner_len: usize) -> usize {
    let own = run.end - run.start;
    match form {
        Form::PerPositive => own + partner_len,
        Form::SupCon => own - 1 + partner_len,
    }
}

fn partner_rows(bags: &[Bag], bag: &Bag, class: u8) -> (usize, usize) {
    bag.partner.map(|q| bags[q].class_rows(class)).unwrap_or((0, 0))
}

/// Per-anchor weight of each bag: `1 / (counting anchors * bags with a counting anchor)`, or 0.
fn bag_weights(bags: &[Bag], form: Form) -> Vec<f64> {
    let counts: Vec<usize> = bags
        .iter()
        .map(|bag| {
            bag.runs
                .iter()
                .filter(|run| {
                    let (ps, pe) = partner_rows(bags, bag, run.class);
                    positives(form, run, pe - ps) > 0
                })
                .map(|run| run.end - run.start)
                .sum()
        })
        .collect();
    let valid = counts.iter().filter(|&&c| c > 0).count();
    counts.iter().map(|&c| if c > 0 { 1.0 / (c as f64 * valid as f64) } else { 0.0 }).collect()
}

/// Copy a bag's features into a row-major `n x d` matrix.
fn gather<T: Float>(p: &Problem<'_, T>, bag: &Bag) -> Vec<T> {
    let (d, hw) = (p.d, p.hw);
    let mut x = vec![T::ZERO; bag.len() * d];
    x.par_chunks_mut(d * STRIP_ROWS).enumerate().for_each(|(ci, chunk)| {
        for (r, row) in chunk.chunks_mut(d).enumerate() {
            let g = bag.pixels[ci * STRIP_ROWS + r] as usize;
            let (img, px) = (g / hw, g % hw);
            let base = img * d * hw + px;
            for (c, v) in row.iter_mut().enumerate() {
                *v = p.feats[base + c * hw];
            }
        }
    });
    x
}

/// `out (m x n, row-major) = alpha * a (m x k) * b^T` where `b` is `n x k` row-major; single-threaded.
fn gemm_abt<T: Float>(alpha: T, a: &[T], m: usize, b: &[T], n: usize, k: usize, out: &mut [T]) {
    assert!(a.len() >= m * k && b.len() >= n * k && out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above bound every access of the m x k, k x n and m x n views.
    unsafe {
        T::gemm_raw(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            k as isize,
            T::ZERO,
            out.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

/// `out (m x k) = alpha * a (m x n) * b (n x k) + beta * out`, all row-major; single-threaded.
#[allow(clippy::too_many_arguments)]
fn gemm_ab<T: Float>(alpha: T, a: &[T], m: usize, n: usize, b: &[T], k: usize, beta: T, out: &mut [T]) {
    assert!(a.len() >= m * n && b.len() >= n * k && out.len() >= m * k);
    if m == 0 || k == 0 {
        return;
    }
    // SAFETY: the asserts above bound every access.
    unsafe {
        T::gemm_raw(
            m,
            n,
            k,
            alpha,
            a.as_ptr(),
            n as isize,
            1,
            b.as_ptr(),
            k as isize,
            1,
            beta,
            out.as_mut_ptr(),
            k as isize,
            1,
        )
    }
}

// ---- row reductions: eight independent lanes so the loops vectorise; fixed order. ----

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

fn max_of<T: Float>(x: &[T]) -> T {
    // A compare-and-select (not `max`, whose NaN rules block vectorisation); scores are never NaN.
    lanes_fold(x, T::NEG_INFINITY, |a, b| if b > a { b } else { a }, |v| v)
}

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

/// `sum softplus(l - s)` and `sum sig(l - s)` over `x`.
fn softplus_sigmoid_sums<T: FastMath>(x: &[T], l: T) -> (T, T) {
    let mut sp = [T::ZERO; LANES];
    let mut sg = [T::ZERO; LANES];
    let one = T::ONE;
    let step = |v: T| {
        let z = l - v;
        let t = (-z.abs()).exp_fast();
        let inv = one / (one + t);
        let sig = if z >= T::ZERO { inv } else { t * inv };
        (z.max(T::ZERO) + (one + t).ln_fast(), sig)
    };
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            let (a, b) = step(c[k]);
            sp[k] += a;
            sg[k] += b;
        }
    }
    for (k, &v) in rest.iter().enumerate() {
        let (a, b) = step(v);
        sp[k] += a;
        sg[k] += b;
    }
    (sp.iter().copied().sum(), sg.iter().copied().sum())
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

/// One anchor's forward from its scores: own-bag row `srow` (self at `i`, class run `cs..ce`) and
/// partner positives `prow`, both overwritten. Returns `(L_i, a, b)`: per-positive form
/// `a = sum softplus(L_i - s_ij)`, `b = A_i`; SupCon `a = sum of positive scores`, `b = 0`.
#[inline(always)]
fn forward_row<T: FastMath>(form: Form, srow: &mut [T], prow: &mut [T], i: usize, cs: usize, ce: usize) -> (T, T, T) {
    match form {
        Form::PerPositive => {
            let (head, rest) = srow.split_at_mut(cs);
            let (pos, tail) = rest.split_at_mut(ce - cs);
            let li = logsumexp_in_place(&mut [head, tail]);
            let (sp1, sg1) = softplus_sigmoid_sums(pos, li);
            let (sp2, sg2) = softplus_sigmoid_sums(prow, li);
            (li, sp1 + sp2, sg1 + sg2)
        }
        Form::SupCon => {
            let pos_sum = sum_of(&srow[cs..ce]) - srow[i] + sum_of(prow);
            let (head, rest) = srow.split_at_mut(i);
            let li = logsumexp_in_place(&mut [head, &mut rest[1..], prow]);
            (li, pos_sum, T::ZERO)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_row_avx2<T: FastMath>(
    form: Form,
    srow: &mut [T],
    prow: &mut [T],
    i: usize,
    cs: usize,
    ce: usize,
) -> (T, T, T) {
    forward_row(form, srow, prow, i, cs, ce)
}

/// True when the AVX2 + FMA versions of the row loops may run (checked once, cached by std).
#[inline(always)]
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn forward_row_dispatch<T: FastMath>(
    form: Form,
    srow: &mut [T],
    prow: &mut [T],
    i: usize,
    cs: usize,
    ce: usize,
) -> (T, T, T) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports the enabled features.
        return unsafe { forward_row_avx2(form, srow, prow, i, cs, ce) };
    }
    forward_row(form, srow, prow, i, cs, ce)
}

/// One row of `G = dS + dS^T` in place over the own-bag scores of anchor `i` (class run `cs..ce`).
#[inline(always)]
fn grad_row<T: FastMath>(form: Form, g: &mut [T], i: usize, cs: usize, ce: usize, st: &BagState<T>) {
    let (li, cpi, cei) = (st.l[i], st.c_pos[i], st.c_exp[i]);
    match form {
        Form::PerPositive => {
            neg_pair_grad(&mut g[..cs], li, cei, &st.l[..cs], &st.c_exp[..cs]);
            neg_pair_grad(&mut g[ce..], li, cei, &st.l[ce..], &st.c_exp[ce..]);
            pos_pair_grad(&mut g[cs..ce], li, cpi, &st.l[cs..ce], &st.c_pos[cs..ce]);
        }
        Form::SupCon => {
            neg_pair_grad(g, li, cei, &st.l, &st.c_exp);
            for (v, &cpj) in g[cs..ce].iter_mut().zip(&st.c_pos[cs..ce]) {
                *v -= cpi + cpj;
            }
            g[i] = T::ZERO;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_row_avx2<T: FastMath>(form: Form, g: &mut [T], i: usize, cs: usize, ce: usize, st: &BagState<T>) {
    grad_row(form, g, i, cs, ce, st)
}

fn grad_row_dispatch<T: FastMath>(form: Form, g: &mut [T], i: usize, cs: usize, ce: usize, st: &BagState<T>) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports the enabled features.
        return unsafe { grad_row_avx2(form, g, i, cs, ce, st) };
    }
    grad_row(form, g, i, cs, ce, st)
}

/// Scratch reused by one rayon job across strips.
struct Scratch<T> {
    s: Vec<T>,
    sp: Vec<T>,
    dx: Vec<T>,
}

impl<T: Float> Scratch<T> {
    fn new() -> Self {
        Scratch { s: Vec::new(), sp: Vec::new(), dx: Vec::new() }
    }
}

fn resize<T: Float>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::ZERO);
    }
}

/// The runs of `bag` that intersect rows `r0..r1`, clipped: `(run, a, b)`.
fn runs_in(bag: &Bag, r0: usize, r1: usize) -> impl Iterator<Item = (&ClassRun, usize, usize)> {
    let first = bag.runs.partition_point(|r| r.end <= r0);
    bag.runs[first..].iter().take_while(move |r| r.start < r1).map(move |r| (r, r.start.max(r0), r.end.min(r1)))
}

/// Loss and per-anchor state. Panics if a bag names a pixel outside the feature buffer.
pub fn forward<T: FastMath>(p: &Problem<'_, T>) -> Forward<T> {
    check(p);
    let weights = bag_weights(p.bags, p.form);
    let mut loss = 0.0;
    let mut states = Vec::with_capacity(p.bags.len());
    for (b, bag) in p.bags.iter().enumerate() {
        let (l, st) = forward_bag(p, bag, weights[b]);
        loss += l;
        states.push(st);
    }
    Forward { loss, states }
}

fn forward_bag<T: FastMath>(p: &Problem<'_, T>, bag: &Bag, w_bag: f64) -> (f64, BagState<T>) {
    let n = bag.len();
    let inf = -T::NEG_INFINITY;
    if n == 0 || w_bag == 0.0 {
        return (0.0, BagState { l: vec![inf; n], c_pos: vec![T::ZERO; n], c_exp: vec![T::ZERO; n] });
    }
    let x = gather(p, bag);
    let xq = bag.partner.map(|q| gather(p, &p.bags[q]));
    let d = p.d;
    let strips = n.div_ceil(STRIP_ROWS);
    type Part<T> = (f64, Vec<T>, Vec<T>, Vec<T>);
    let parts: Vec<Part<T>> = (0..strips)
        .into_par_iter()
        .map_init(Scratch::<T>::new, |scr, si| {
            let (r0, r1) = (si * STRIP_ROWS, ((si + 1) * STRIP_ROWS).min(n));
            let rows = r1 - r0;
            resize(&mut scr.s, rows * n);
            gemm_abt(p.inv_tau, &x[r0 * d..r1 * d], rows, &x, n, d, &mut scr.s);
            let mut loss = 0.0;
            let (mut ls, mut cps, mut ces) =
                (Vec::with_capacity(rows), Vec::with_capacity(rows), Vec::with_capacity(rows));
            for (run, a, b) in runs_in(bag, r0, r1) {
                let (ps, pe) = partner_rows(p.bags, bag, run.class);
                let plen = pe - ps;
                if plen > 0 {
                    resize(&mut scr.sp, (b - a) * plen);
                    let xq = xq.as_ref().expect("partner gathered");
                    gemm_abt(p.inv_tau, &x[a * d..b * d], b - a, &xq[ps * d..pe * d], plen, d, &mut scr.sp);
                }
                let npos = positives(p.form, run, plen);
                for i in a..b {
                    let srow = &mut scr.s[(i - r0) * n..(i - r0 + 1) * n];
                    let prow = &mut scr.sp[(i - a) * plen..(i - a + 1) * plen];
                    if npos == 0 {
                        ls.push(inf);
                        cps.push(T::ZERO);
                        ces.push(T::ZERO);
                        continue;
                    }
                    let wi = T::from_f64(w_bag / npos as f64);
                    let (li, x1, x2) = forward_row_dispatch(p.form, srow, prow, i, run.start, run.end);
                    ls.push(li);
                    cps.push(wi);
                    match p.form {
                        Form::PerPositive => {
                            loss += (w_bag / npos as f64) * x1.to_f64();
                            ces.push(wi * x2);
                        }
                        Form::SupCon => {
                            loss += w_bag * (li.to_f64() - x1.to_f64() / npos as f64);
                            ces.push(T::from_f64(w_bag));
                        }
                    }
                }
            }
            (loss, ls, cps, ces)
        })
        .collect();
    let mut st = BagState { l: Vec::with_capacity(n), c_pos: Vec::with_capacity(n), c_exp: Vec::with_capacity(n) };
    let mut loss = 0.0;
    for (l, a, b, c) in parts {
        loss += l;
        st.l.extend(a);
        st.c_pos.extend(b);
        st.c_exp.extend(c);
    }
    (loss, st)
}

struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    // A method (not a field access) so closures capture the whole Sync wrapper.
    fn ptr(&self) -> *mut T {
        self.0
    }
}

/// `grad[image, c, p] = scale * dloss/df` for every pixel of every bag; other entries are left as
/// they are (callers pass zeros). `grad` has the layout of `p.feats`.
pub fn backward<T: FastMath>(p: &Problem<'_, T>, fwd: &Forward<T>, scale: T, grad: &mut [T]) {
    check(p);
    assert_eq!(grad.len(), p.feats.len(), "contrastive backward: gradient buffer size");
    assert_eq!(fwd.states.len(), p.bags.len(), "contrastive backward: state count");
    for b in 0..p.bags.len() {
        backward_bag(p, fwd, b, scale, grad);
    }
}

fn backward_bag<T: FastMath>(p: &Problem<'_, T>, fwd: &Forward<T>, b: usize, scale: T, grad: &mut [T]) {
    let bag = &p.bags[b];
    let n = bag.len();
    if n == 0 {
        return;
    }
    let (d, hw) = (p.d, p.hw);
    let st = &fwd.states[b];
    let x = gather(p, bag);
    let xq = bag.partner.map(|q| gather(p, &p.bags[q]));
    // Bags whose partner is this bag: their anchors have positives among our pixels.
    let back: Vec<(usize, Vec<T>)> = (0..p.bags.len())
        .filter(|&r| r != b && p.bags[r].partner == Some(b) && !p.bags[r].is_empty())
        .map(|r| (r, gather(p, &p.bags[r])))
        .collect();
    let form = p.form;
    let out = SendPtr(grad.as_mut_ptr());
    let strips = n.div_ceil(STRIP_ROWS);
    (0..strips).into_par_iter().for_each_init(Scratch::<T>::new, |scr, si| {
        let (r0, r1) = (si * STRIP_ROWS, ((si + 1) * STRIP_ROWS).min(n));
        let rows = r1 - r0;
        resize(&mut scr.s, rows * n);
        resize(&mut scr.dx, rows * d);
        gemm_abt(p.inv_tau, &x[r0 * d..r1 * d], rows, &x, n, d, &mut scr.s);
        // G = dS + dS^T over the strip, in place.
        for (run, a, bb) in runs_in(bag, r0, r1) {
            for i in a..bb {
                grad_row_dispatch(form, &mut scr.s[(i - r0) * n..(i - r0 + 1) * n], i, run.start, run.end, st);
            }
        }
        gemm_ab(p.inv_tau, &scr.s, rows, n, &x, d, T::ZERO, &mut scr.dx);
        // Partner positives of our anchors, and our pixels as positives of anchors partnered with us.
        for (run, a, bb) in runs_in(bag, r0, r1) {
            let xa = &x[a * d..bb * d];
            let dxa = &mut scr.dx[(a - r0) * d..(bb - r0) * d];
            if let (Some(q), Some(xq)) = (bag.partner, xq.as_ref()) {
                let (ps, pe) = p.bags[q].class_rows(run.class);
                if pe > ps {
                    let plen = pe - ps;
                    resize(&mut scr.sp, (bb - a) * plen);
                    gemm_abt(p.inv_tau, xa, bb - a, &xq[ps * d..pe * d], plen, d, &mut scr.sp);
                    for i in a..bb {
                        let g = &mut scr.sp[(i - a) * plen..(i - a + 1) * plen];
                        anchor_side_partner_grad(form, g, st.l[i], st.c_pos[i], st.c_exp[i]);
                    }
                    gemm_ab(p.inv_tau, &scr.sp, bb - a, plen, &xq[ps * d..pe * d], d, T::ONE, dxa);
                }
            }
            for (r, xr) in &back {
                let (rs, re) = p.bags[*r].class_rows(run.class);
                if re > rs {
                    let len = re - rs;
                    let sr = &fwd.states[*r];
                    resize(&mut scr.sp, (bb - a) * len);
                    gemm_abt(p.inv_tau, xa, bb - a, &xr[rs * d..re * d], len, d, &mut scr.sp);
                    for i in a..bb {
                        let g = &mut scr.sp[(i - a) * len..(i - a + 1) * len];
                        candidate_side_partner_grad(form, g, &sr.l[rs..re], &sr.c_pos[rs..re], &sr.c_exp[rs..re]);
                    }
                    gemm_ab(p.inv_tau, &scr.sp, bb - a, len, &xr[rs * d..re * d], d, T::ONE, dxa);
                }
            }
        }
        for (k, row) in scr.dx[..rows * d].chunks(d).enumerate() {
            let g = bag.pixels[r0 + k] as usize;
            let base = (g / hw) * d * hw + g % hw;
            for (c, &v) in row.iter().enumerate() {
                // SAFETY: `check` verified every pixel id is in range and appears in one bag row
                // only, so no two strips (or bags) write the same element.
                unsafe { *out.ptr().add(base + c * hw) = scale * v };
            }
        }
    });
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
fn anchor_side_partner_grad<T: FastMath>(form: Form, g: &mut [T], li: T, cpi: T, cei: T) {
    match form {
        Form::PerPositive => g.iter_mut().for_each(|v| *v = -cpi * sigmoid(li - *v)),
        Form::SupCon => g.iter_mut().for_each(|v| *v = cei * (*v - li).exp_fast() - cpi),
    }
}

/// `dS_ai` for anchors `a` of a bag partnered with ours and our pixel `i` (scores in `g`).
fn candidate_side_partner_grad<T: FastMath>(form: Form, g: &mut [T], l: &[T], cp: &[T], ce: &[T]) {
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

/// Consistency of a problem: pixel ids in range and unique across bags, runs covering each bag,
/// partners in range. Callers build bags with [`Bag::from_pixels`]; this guards the unsafe scatter.
#[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` is newer than the workspace's rust-version
fn check<T>(p: &Problem<'_, T>) {
    assert!(p.d > 0 && p.hw > 0 && p.feats.len() % (p.d * p.hw) == 0, "contrastive: feature buffer shape");
    let npx = p.feats.len() / p.d;
    let mut seen = vec![false; npx];
    for bag in p.bags {
        let mut next = 0;
        for r in &bag.runs {
            assert!(r.start == next && r.end > r.start, "contrastive: class runs must tile the bag");
            next = r.end;
        }
        assert!(next == bag.len(), "contrastive: class runs must cover the bag");
        assert!(bag.runs.windows(2).all(|w| w[0].class < w[1].class), "contrastive: runs ascending by class");
    }
    for (b, bag) in p.bags.iter().enumerate() {
        assert!(
            bag.partner.map(|q| q < p.bags.len() && q != b).unwrap_or(true),
            "contrastive: partner out of range or self"
        );
        for &g in &bag.pixels {
            let g = g as usize;
            assert!(g < npx && !seen[g], "contrastive: pixel {g} out of range or in two bags");
            seen[g] = true;
        }
    }
}

/// Bytes of scratch one evaluation (forward + backward) allocates for bags of `n` pixels (and
/// `partners` extra gathered bags of the same size), `d` channels, `threads` workers, element size
/// `elem`: the gathered features plus a `STRIP_ROWS x n` score strip and a `STRIP_ROWS x d` gradient
/// strip per thread.
pub fn scratch_bytes(n: usize, d: usize, partners: usize, threads: usize, elem: usize) -> usize {
    let gathered = (1 + partners) * n * d;
    let per_thread = STRIP_ROWS * n + STRIP_ROWS * d + STRIP_ROWS * n;
    (gathered + threads * per_thread + 3 * n) * elem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_ln_match_std() {
        let mut worst: f32 = 0.0;
        let mut x = -86.0f32;
        while x < 87.0 {
            let (a, b) = (x.exp_fast(), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "exp rel err {worst}");
        assert_eq!((-200.0f32).exp_fast(), 0.0);
        assert_eq!(f32::NEG_INFINITY.exp_fast(), 0.0);
        assert!(f32::INFINITY.exp_fast().is_finite());
        let mut worst: f32 = 0.0;
        let mut y = 1e-30f32;
        while y < 1e30 {
            let (a, b) = (y.ln_fast(), y.ln());
            worst = worst.max((a - b).abs() / b.abs().max(1.0));
            y *= 1.37;
        }
        assert!(worst < 4e-7, "ln err {worst}");
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use std::time::Instant;

    fn min_time(mut f: impl FnMut(), reps: usize) -> f64 {
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// `cargo test -p kernels --release --lib timing -- --ignored --nocapture`: one strip's parts.
    #[test]
    #[ignore]
    fn strip_parts() {
        let (n, d, rows) = (4225, 256, STRIP_ROWS);
        let x: Vec<f32> = (0..n * d).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) / 8.0).collect();
        let mut s = vec![0.0f32; rows * n];
        let mut dx = vec![0.0f32; rows * d];
        let t_gemm = min_time(|| gemm_abt(14.0, &x[..rows * d], rows, &x, n, d, &mut s), 20);
        let l = vec![3.0f32; n];
        let ce = vec![1e-6f32; n];
        let mut row = s[..n].to_vec();
        let t_lse = min_time(
            || {
                std::hint::black_box(forward_row_dispatch::<f32>(Form::PerPositive, &mut row, &mut [], 0, 0, n / 5));
            },
            200,
        ) * rows as f64;
        let t_sps = min_time(
            || {
                std::hint::black_box(softplus_sigmoid_sums::<f32>(&s[..n], 3.0));
            },
            200,
        ) * rows as f64;
        let mut g = s[..n].to_vec();
        let st = BagState { l: l.clone(), c_pos: ce.clone(), c_exp: ce.clone() };
        let t_neg = min_time(|| grad_row_dispatch(Form::PerPositive, &mut g, 0, 0, n / 5, &st), 200) * rows as f64;
        let t_pos = min_time(|| grad_row_dispatch(Form::SupCon, &mut g, 0, 0, n / 5, &st), 200) * rows as f64;
        let t_gemm2 = min_time(|| gemm_ab(14.0, &s, rows, n, &x, d, 0.0, &mut dx), 20);
        let gf = 2.0 * (rows * n * d) as f64 * 1e-9;
        println!(
            "strip {rows}x{n}x{d}: gemm S {:.2} ms ({:.1} GFLOP/s), gemm GX {:.2} ms ({:.1} GFLOP/s)",
            t_gemm * 1e3,
            gf / t_gemm,
            t_gemm2 * 1e3,
            gf / t_gemm2
        );
        println!("  per strip: forward rows {:.2} ms, softplus+sigmoid (all) {:.2} ms, grad rows {:.2} ms, supcon grad rows {:.2} ms", t_lse * 1e3, t_sps * 1e3, t_neg * 1e3, t_pos * 1e3);
    }
}
