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
//! An anchor *counts* when `P_i` is not empty: every pixel in the per-positive form (which always has
//! `i in P_i`), the anchors with a positive other than themselves in SupCon. Each bag belongs to a
//! *group* ([`Bag::group`]), the unit the loss is averaged over (an image, an image pair, the batch
//! bag). With `G` the number of distinct groups of the problem and `n_g` the counting anchors of all
//! bags of group `g`, the loss is the mean over the `G` groups of the mean of `loss_i` over their
//! counting anchors,
//!
//! `loss = (1/G) sum_g [n_g > 0] (1/n_g) sum_{i in g, i counts} loss_i = sum_i w_i loss_i`,
//! `w_i = 1 / (G n_g)` for a counting anchor `i` of group `g`, 0 otherwise ([`bag_weights`]):
//!
//! a group without a counting anchor contributes 0 but still counts in `G`, as in the official code
//! of Zhao et al. (`compute_contrastive_loss`: weights `valid_i / max(1e-6, sum valid)` over the
//! anchors of one batch element, then `reduce_mean` over the batch).
//!
//! # Gradient
//! Let `sig(x) = 1 / (1 + exp(-x))`. In the per-positive form, with `A_i = sum_{j in P_i} sig(L_i - s_ij)`,
//! `dloss/ds_ij = -(w_i/|P_i|) sig(L_i - s_ij)` for `j in P_i` and `dloss/ds_ik = (w_i/|P_i|) A_i exp(s_ik - L_i)`
//! for `k in K_i`. In the SupCon form, `dloss/ds_ik = w_i exp(s_ik - L_i) - [k in P_i] w_i/|P_i|` for
//! `k in C_i`. Every pair `(i, j)` of the same bag appears as `s_ij` (anchor `i`) and `s_ji` (anchor `j`),
//! so with `G_ij = dS_ij + dS_ji` (a symmetric matrix), `df_i = (1/tau) (sum_j G_ij f_j + partner
//! terms)`; the diagonal gets `2 dS_ii` as `d s_ii / d f_i = 2 f_i / tau` requires.
//!
//! # How: symmetric tiles with a common shift
//! The own-bag score matrix `S = X X^T / tau` is symmetric, so the passes compute only its tiles
//! `(P, Q)`, `P <= Q`, of blocks of about [`TILE`] rows, each with one GEMM, and use every tile for
//! both its rows and its columns. For that, every exponential of a bag is taken with one common
//! shift, the bag's score bound `m = max_i |f_i|^2 / tau` (`s_ij <= |f_i| |f_j| / tau <= m`, so no term
//! exceeds 1): `e_ij = exp(s_ij - m)` is symmetric and costs one `exp` per pair.
//!
//! * Forward, pass 1 (tiles): `N_i = sum of e_ik over i's own-bag terms of L_i`, accumulated from the
//!   row sums and column sums of the tiles (pairs outside the sum are zeroed). Pass 2 (strips of
//!   [`STRIP_ROWS`] anchors): `L_i = m + ln N_i` (SupCon adds the partner terms first; the exact
//!   path below where needed), then the partner-positive terms. Pass 3 (tiles of each class run,
//!   again symmetric): the own-class positive terms, `softplus(L - s)` and `sig(L - s)` (SupCon: the
//!   scores) summed per row and per column.
//! * Backward (tiles): recompute the tile's scores, turn them into `G` in place — negatives
//!   `e_ij (a_i + a_j)` with `a_i = ce_i / N_i`, positives `-(cp_i N_i/(N_i + e_ij) + cp_j N_j/(N_j + e_ij))`
//!   — and accumulate `dX_P += G X_Q` and `dX_Q += G^T X_P`: three GEMMs per tile where a row-wise
//!   pass needs four (score recompute for `(P,Q)` and `(Q,P)`, two products). Then the partner terms
//!   per row block, and one scatter into the gradient.
//!
//! GEMM work, in units of one full `N^2 d` product per bag: forward 1/2 + half the positives'
//! share (`sum_c n_c^2 / N^2`), backward 3/2 — about 2 in all, against 3 for row strips that compute
//! every score twice. The products run on the unpacked f32 AVX2 kernel of [`tile_gemm`] over the bag
//! gathered once into 16-pixel panels (matrixmultiply in f64 and without AVX2: [`features`]).
//!
//! Exactness: a common shift is safe as long as an anchor's sum stays far above underflow. When
//! features are far from unit norm, an anchor's terms can all sit far below `m`; any anchor whose
//! `N_i` falls below [`FastMath::SUM_FLOOR`] (e^-40 in f32) takes the *exact path*: its row is
//! recomputed whole and `L_i` taken with its own maximum, and every tile touching it forms `G` from
//! `L` (`ce_i exp(s - L_i)`, `sig(L_i - s)`, two `exp` per pair). Unit-normalised features with
//! `tau >= 0.03` never leave the fast path (`m - s_ij <= 2 / tau`).
//!
//! Order: the tiles of a pass run in rounds of a round-robin schedule ([`schedule`]): tiles of one
//! round touch disjoint blocks and run on rayon threads; every accumulator receives its tiles in the
//! same order for any thread count, so results repeat bit for bit.
//!
//! Parallel work: the tiles of a round, the strips of the forward's second pass, and the bags
//! themselves when they are small (at most `2 TILE` pixels: one or two blocks, too few tiles to
//! keep the threads busy); larger bags run one after another.
//!
//! Extra memory: the gathered `n x d` features of the bag (and of partner bags in cross mode; of up
//! to one small bag per thread at a time), one tile per thread and O(n) per-anchor state. The
//! backward accumulates `dX` in the gradient of the
//! image the bag covers (the caller's zeroed buffer) and, once the features are no longer needed,
//! lends their buffer to `dX` while the image receives its final layout; only a bag spanning several
//! images (batch mode, at most `max_pixels` pixels) allocates its own `n x d` accumulator.

pub mod fastmath;
pub mod features;
mod loops;
pub mod schedule;
pub mod tile_gemm;

pub use fastmath::FastMath;
pub use features::TileOps;
pub use schedule::TILE;

/// Anchors per strip of the forward's second pass: its score buffers hold `STRIP_ROWS x` (a class
/// run) values per thread.
pub const STRIP_ROWS: usize = 64;

use crate::cpu::parallel::SendPtr;
use crate::Float;
use loops::Coefs;
use rayon::prelude::*;
use std::sync::Mutex;

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
    /// The reduction unit the bag's anchors are averaged in (see the module docs): bags of one group
    /// share one mean over their counting anchors, and the loss is the mean over the groups.
    pub group: usize,
}

impl Bag {
    /// Build a bag of group `group` from `(class, global pixel id)` pairs; they are sorted by class,
    /// then pixel id.
    pub fn from_pixels(mut items: Vec<(u8, u32)>, partner: Option<usize>, group: usize) -> Bag {
        items.sort_unstable();
        let mut runs: Vec<ClassRun> = Vec::new();
        for (r, &(c, _)) in items.iter().enumerate() {
            match runs.last_mut() {
                Some(last) if last.class == c => last.end = r + 1,
                _ => runs.push(ClassRun { class: c, start: r, end: r + 1 }),
            }
        }
        Bag { pixels: items.into_iter().map(|(_, p)| p).collect(), runs, partner, group }
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
    /// The bag's score bound `m`, the shift of the tiled passes.
    pub shift: T,
    /// `L_i` (`+inf` for an anchor that does not count, so `exp(s - L_i) = 0`).
    pub l: Vec<T>,
    /// Per-positive: `w_i/|P_i|`; SupCon: `w_i/|P_i|`.
    pub c_pos: Vec<T>,
    /// Per-positive: `w_i A_i/|P_i|`; SupCon: `w_i`.
    pub c_exp: Vec<T>,
    /// `N_i = exp(L_i - m)`, the shifted sum as the tiles summed it; 0 for an anchor on the exact
    /// path (its tiles use `L_i`), without candidates, or that does not count.
    pub nsum: Vec<T>,
    /// The anchor took the exact per-row path (its shifted sum fell below `SUM_FLOOR`).
    pub exact: Vec<bool>,
}

impl<T> BagState<T> {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * self.l.len() * std::mem::size_of::<T>() + self.exact.len()
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

/// Counting anchors of `bag` (those with a positive), given all the bags (for the partner).
pub fn counting_anchors(bags: &[Bag], bag: &Bag, form: Form) -> usize {
    bag.runs
        .iter()
        .filter(|run| {
            let (ps, pe) = partner_rows(bags, bag, run.class);
            positives(form, run, pe - ps) > 0
        })
        .map(|run| run.end - run.start)
        .sum()
}

/// The per-anchor weight of each bag's counting anchors: `1 / (G n_g)` with `n_g` the counting
/// anchors of the bag's group and `G` the number of distinct groups; 0 for a bag without a counting
/// anchor (see the module docs). Shared by the CPU and CUDA forwards.
pub fn bag_weights(bags: &[Bag], form: Form) -> Vec<f64> {
    let counts: Vec<usize> = bags.iter().map(|bag| counting_anchors(bags, bag, form)).collect();
    let mut per_group = std::collections::BTreeMap::<usize, usize>::new();
    for (bag, &c) in bags.iter().zip(&counts) {
        *per_group.entry(bag.group).or_default() += c;
    }
    let groups = per_group.len() as f64;
    bags.iter()
        .zip(&counts)
        .map(|(bag, &c)| if c > 0 { 1.0 / (per_group[&bag.group] as f64 * groups) } else { 0.0 })
        .collect()
}

/// The class run `(start, end)` of every row of a bag.
fn row_runs(bag: &Bag) -> Vec<(u32, u32)> {
    let mut out = Vec::with_capacity(bag.len());
    for r in &bag.runs {
        out.extend(std::iter::repeat_n((r.start as u32, r.end as u32), r.end - r.start));
    }
    out
}

/// The common shift `m = max |f|^2 / tau` over the pixels of `xs`.
fn score_bound<T: FastMath>(xs: &[&T::Feats], d: usize, inv_tau: T) -> T {
    let m = xs.iter().flat_map(|x| T::sq_norms(x, d)).fold(0.0f64, f64::max);
    T::from_f64(m * inv_tau.to_f64())
}

/// The runs of `bag` that intersect rows `r0..r1`, clipped: `(run, a, b)`.
fn runs_in(bag: &Bag, r0: usize, r1: usize) -> impl Iterator<Item = (&ClassRun, usize, usize)> {
    let first = bag.runs.partition_point(|r| r.end <= r0);
    bag.runs[first..].iter().take_while(move |r| r.start < r1).map(move |r| (r, r.start.max(r0), r.end.min(r1)))
}

fn resize<T: Float>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::ZERO);
    }
}

/// Loss and per-anchor state. Panics if a bag names a pixel outside the feature buffer.
pub fn forward<T: FastMath>(p: &Problem<'_, T>) -> Forward<T> {
    check(p);
    let weights = bag_weights(p.bags, p.form);
    // Small bags side by side (their tiles alone would leave threads idle), then the large ones
    // one after another (their tiles run in parallel); the loss summed in bag order either way.
    let mut done: Vec<Option<(f64, BagState<T>)>> = p.bags.iter().map(|_| None).collect();
    done.par_iter_mut().zip(p.bags).enumerate().filter(|(_, (_, bag))| is_small(bag)).for_each(|(b, (d, bag))| {
        *d = Some(forward_bag(p, bag, weights[b]));
    });
    let mut loss = 0.0;
    let mut states = Vec::with_capacity(p.bags.len());
    for (b, (d, bag)) in done.into_iter().zip(p.bags).enumerate() {
        let (l, st) = d.unwrap_or_else(|| forward_bag(p, bag, weights[b]));
        loss += l;
        states.push(st);
    }
    Forward { loss, states }
}

/// Bags of at most two blocks: so few score tiles that the threads would mostly wait inside one,
/// so such bags run side by side instead (each with its own gathered features, at most
/// `2 TILE x d` values). The default task's cross-image bags are one image's 16 x 16 map each.
fn is_small(bag: &Bag) -> bool {
    bag.len() <= 2 * TILE
}

/// Runs `tile(rows, cols, scratch)` on the symmetric tiles of each group of blocks (the blocks of
/// one group are tiled against each other), round by round, the rounds of all groups together (their
/// rows are disjoint), and adds each tile's row sums into its rows and its column sums (none on the
/// diagonal) into its columns, in round order: the same sums for any thread count.
fn symmetric_pass<T, V, F>(
    n: usize,
    groups: &[Vec<(usize, usize)>],
    to_f64: impl Fn(&V) -> (f64, f64),
    tile: F,
) -> Vec<(f64, f64)>
where
    T: Float,
    V: Send,
    F: Fn((usize, usize), (usize, usize), &mut Vec<T>) -> (Vec<V>, Vec<V>) + Sync + Send,
{
    let rounds: Vec<Vec<Vec<(usize, usize)>>> = groups.iter().map(|b| schedule::rounds(b.len())).collect();
    let depth = rounds.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut acc = vec![(0.0f64, 0.0f64); n];
    for k in 0..depth {
        let tasks: Vec<((usize, usize), (usize, usize))> = rounds
            .iter()
            .zip(groups)
            .filter_map(|(r, b)| r.get(k).map(|round| round.iter().map(|&(bp, bq)| (b[bp], b[bq])).collect::<Vec<_>>()))
            .flatten()
            .collect();
        let sums: Vec<(Vec<V>, Vec<V>)> =
            tasks.par_iter().map_init(Vec::new, |scratch, &(rows, cols)| tile(rows, cols, scratch)).collect();
        for (&((p0, _), (q0, _)), (rows, cols)) in tasks.iter().zip(sums) {
            for (start, sums) in [(p0, rows), (q0, cols)] {
                for (a, v) in acc[start..].iter_mut().zip(&sums) {
                    let (x, y) = to_f64(v);
                    a.0 += x;
                    a.1 += y;
                }
            }
        }
    }
    acc
}

/// Pass 1: `N_i` of every row from the symmetric tiles of the bag.
fn tile_sums<T: FastMath>(p: &Problem<'_, T>, x: &T::Feats, runs: &[(u32, u32)], shift: T) -> Vec<f64> {
    let d = p.d;
    let groups = [schedule::blocks(runs.len())];
    let sums = symmetric_pass(
        runs.len(),
        &groups,
        |v: &T| (v.to_f64(), 0.0),
        |(p0, p1), (q0, q1), tile| {
            let (tp, tq) = (p1 - p0, q1 - q0);
            resize(tile, tp * tq);
            T::scores(p.inv_tau, x, p0, tp, x, q0, tq, d, tile, tq);
            loops::forward_exp_tile(p.form, &mut tile[..tp * tq], tq, p0, q0, runs, shift, p0 == q0)
        },
    );
    sums.into_iter().map(|(v, _)| v).collect()
}

fn forward_bag<T: FastMath>(p: &Problem<'_, T>, bag: &Bag, w_bag: f64) -> (f64, BagState<T>) {
    let n = bag.len();
    let inf = -T::NEG_INFINITY;
    if n == 0 || w_bag == 0.0 {
        return (
            0.0,
            BagState {
                shift: T::ZERO,
                l: vec![inf; n],
                c_pos: vec![T::ZERO; n],
                c_exp: vec![T::ZERO; n],
                nsum: vec![T::ZERO; n],
                exact: vec![false; n],
            },
        );
    }
    let d = p.d;
    let x = T::gather(p.feats, d, p.hw, &bag.pixels);
    let xq = bag.partner.map(|q| T::gather(p.feats, d, p.hw, &p.bags[q].pixels));
    let runs = row_runs(bag);
    let shift = score_bound(&[&x].into_iter().chain(xq.as_ref()).collect::<Vec<_>>(), d, p.inv_tau);
    let nsum_own = tile_sums(p, &x, &runs, shift);
    // Pass 2, per strip of STRIP_ROWS anchors: L_i (the exact path where the shifted sum is too
    // small) and the partner-positive terms, which need L_i.
    struct Anchor<T> {
        l: T,
        nsum: T,
        exact: bool,
        partner: (T, T),
    }
    let floor = T::SUM_FLOOR.to_f64();
    let anchors: Vec<Anchor<T>> = (0..n.div_ceil(STRIP_ROWS))
        .into_par_iter()
        .map(|k| (k * STRIP_ROWS, ((k + 1) * STRIP_ROWS).min(n)))
        .map_init(Scratch::<T>::new, |scr, (r0, r1)| {
            let mut out = Vec::with_capacity(r1 - r0);
            for (run, a, b) in runs_in(bag, r0, r1) {
                let (ps, pe) = partner_rows(p.bags, bag, run.class);
                let plen = pe - ps;
                let rlen = run.end - run.start;
                if positives(p.form, run, plen) == 0 {
                    out.extend((a..b).map(|_| Anchor {
                        l: inf,
                        nsum: T::ZERO,
                        exact: false,
                        partner: (T::ZERO, T::ZERO),
                    }));
                    continue;
                }
                if plen > 0 {
                    resize(&mut scr.sp, (b - a) * plen);
                    let xq = xq.as_ref().expect("partner gathered");
                    T::scores(p.inv_tau, &x, a, b - a, xq, ps, plen, d, &mut scr.sp, plen);
                }
                let has_candidates = match p.form {
                    Form::PerPositive => n > rlen,
                    Form::SupCon => n > 1 || plen > 0,
                };
                #[allow(clippy::needless_range_loop)] // `i` also indexes rows of the partner strip
                for i in a..b {
                    let prow = &scr.sp[(i - a) * plen..(i - a + 1) * plen];
                    let mut ni = nsum_own[i];
                    if p.form == Form::SupCon {
                        // The partner positives are candidates too (summed on a copy: the scores
                        // are needed below).
                        scr.e.clear();
                        scr.e.extend_from_slice(prow);
                        ni += loops::forward_shifted_sum(&mut scr.e[..], shift).to_f64();
                    }
                    let exact = has_candidates && ni < floor;
                    let li = if exact {
                        // The whole row with its own maximum.
                        resize(&mut scr.row, n);
                        T::scores(p.inv_tau, &x, i, 1, &x, 0, n, d, &mut scr.row, n);
                        scr.e.clear();
                        scr.e.extend_from_slice(prow);
                        loops::forward_exact_l(p.form, &mut scr.row[..n], &mut scr.e[..], i, run.start, run.end)
                    } else if ni > 0.0 {
                        shift + T::from_f64(ni.ln())
                    } else {
                        T::NEG_INFINITY
                    };
                    let partner = loops::forward_partner_terms(p.form, prow, li);
                    out.push(Anchor { l: li, nsum: if exact { T::ZERO } else { T::from_f64(ni) }, exact, partner });
                }
            }
            out
        })
        .flatten()
        .collect();
    let l: Vec<T> = anchors.iter().map(|a| a.l).collect();
    // Pass 3: the own-class positive terms from the symmetric tiles of each class run.
    let own = positive_sums(p, bag, &x, &l);
    // The loss and the backward's coefficients.
    let mut st = BagState {
        shift,
        l,
        c_pos: Vec::with_capacity(n),
        c_exp: Vec::with_capacity(n),
        nsum: Vec::with_capacity(n),
        exact: Vec::with_capacity(n),
    };
    let mut loss = 0.0;
    for run in &bag.runs {
        let (ps, pe) = partner_rows(p.bags, bag, run.class);
        let npos = positives(p.form, run, pe - ps);
        for i in run.start..run.end {
            let an = &anchors[i];
            st.nsum.push(an.nsum);
            st.exact.push(an.exact);
            if npos == 0 {
                st.c_pos.push(T::ZERO);
                st.c_exp.push(T::ZERO);
                continue;
            }
            let wi = w_bag / npos as f64;
            let x1 = own[i].0 + an.partner.0.to_f64();
            let x2 = own[i].1 + an.partner.1.to_f64();
            st.c_pos.push(T::from_f64(wi));
            match p.form {
                Form::PerPositive => {
                    loss += wi * x1;
                    st.c_exp.push(T::from_f64(wi * x2));
                }
                Form::SupCon => {
                    loss += w_bag * (an.l.to_f64() - x1 / npos as f64);
                    st.c_exp.push(T::from_f64(w_bag));
                }
            }
        }
    }
    (loss, st)
}

/// Pass 3 of the forward: per row, the sums over the anchor's own-class positives (per-positive:
/// `softplus(L_i - s_ij)` and `sig(L_i - s_ij)`; SupCon: `s_ij`, self excluded), from the symmetric
/// tiles of each class run. The rounds of all runs run together (their rows are disjoint).
fn positive_sums<T: FastMath>(p: &Problem<'_, T>, bag: &Bag, x: &T::Feats, l: &[T]) -> Vec<(f64, f64)> {
    let d = p.d;
    let groups: Vec<Vec<(usize, usize)>> = bag
        .runs
        .iter()
        .map(|r| schedule::blocks(r.end - r.start).into_iter().map(|(s, e)| (r.start + s, r.start + e)).collect())
        .collect();
    let to_f64 = |v: &(T, T)| (v.0.to_f64(), v.1.to_f64());
    symmetric_pass(bag.len(), &groups, to_f64, |(p0, p1), (q0, q1), tile| {
        // Score from the panel boundary below the run's columns (at most 15 more) so that the
        // f32 kernel reads whole panels; the tile skips them.
        let qa = q0 / tile_gemm::PANEL * tile_gemm::PANEL;
        let (tp, ld) = (p1 - p0, q1 - qa);
        resize(tile, tp * ld);
        T::scores(p.inv_tau, x, p0, tp, x, qa, ld, d, tile, ld);
        loops::forward_positive_tile(p.form, &tile[..tp * ld], ld, q0 - qa, q1 - q0, p0, q0, l, p0 == q0)
    })
}

/// Scratch reused by one rayon job.
struct Scratch<T> {
    sp: Vec<T>,
    e: Vec<T>,
    row: Vec<T>,
}

impl<T: Float> Scratch<T> {
    fn new() -> Self {
        Scratch { sp: Vec::new(), e: Vec::new(), row: Vec::new() }
    }
}

/// `grad[image, c, p] = scale * dloss/df` for every pixel of every bag. `grad` has the layout of
/// `p.feats` and must come in zeroed: an image whose pixels all belong to one bag serves as that
/// bag's gradient accumulator (in bag order) before it receives the final values, which keeps the
/// backward's extra memory to the gathered features.
pub fn backward<T: FastMath>(p: &Problem<'_, T>, fwd: &Forward<T>, scale: T, grad: &mut [T]) {
    check(p);
    assert_eq!(grad.len(), p.feats.len(), "contrastive backward: gradient buffer size");
    assert_eq!(fwd.states.len(), p.bags.len(), "contrastive backward: state count");
    let image = p.d * p.hw;
    // The one bag with pixels in each image, if there is exactly one.
    let mut owner: Vec<Option<Option<usize>>> = vec![None; grad.len() / image];
    for (b, bag) in p.bags.iter().enumerate() {
        for &g in &bag.pixels {
            let o = &mut owner[g as usize / p.hw];
            *o = match *o {
                None => Some(Some(b)),
                Some(Some(c)) if c == b => Some(Some(b)),
                _ => Some(None),
            };
        }
    }
    let own_image = |b: usize| {
        let pixels = &p.bags[b].pixels;
        let first = pixels.first().map(|&g| g as usize / p.hw);
        let one_image = first.filter(|&img| pixels.iter().all(|&g| g as usize / p.hw == img));
        one_image.filter(|&img| owner[img] == Some(Some(b)))
    };
    // Small bags that own their image, side by side: each writes only its image's slice (an
    // owned image holds no other bag's pixel). Then the rest in bag order. Every element is
    // written by one bag, so the order does not change the result.
    let mut side_by_side: Vec<Option<usize>> = vec![None; owner.len()];
    let mut rest = Vec::new();
    for b in 0..p.bags.len() {
        match own_image(b) {
            Some(img) if is_small(&p.bags[b]) => side_by_side[img] = Some(b),
            own => rest.push((b, own)),
        }
    }
    grad.par_chunks_mut(image).zip(&side_by_side).for_each(|(img, b)| {
        if let Some(b) = *b {
            backward_bag(p, fwd, b, scale, Target::Image(img));
        }
    });
    for (b, own) in rest {
        match own {
            Some(img) => backward_bag(p, fwd, b, scale, Target::Image(&mut grad[img * image..(img + 1) * image])),
            None => backward_bag(p, fwd, b, scale, Target::Scattered(grad)),
        }
    }
}

/// Where a bag's gradient goes.
enum Target<'a, T> {
    /// The whole `[d, hw]` gradient of the one image holding every pixel of the bag.
    Image(&'a mut [T]),
    /// The whole gradient buffer; the bag's pixels span several images.
    Scattered(&'a mut [T]),
}

fn backward_bag<T: FastMath>(p: &Problem<'_, T>, fwd: &Forward<T>, b: usize, scale: T, target: Target<'_, T>) {
    let bag = &p.bags[b];
    let n = bag.len();
    if n == 0 {
        return;
    }
    let (d, hw) = (p.d, p.hw);
    let st = &fwd.states[b];
    let x = T::gather(p.feats, d, hw, &bag.pixels);
    let runs = row_runs(bag);
    let blocks = schedule::blocks(n);
    let a: Vec<T> =
        st.c_exp.iter().zip(&st.nsum).map(|(&c, &ns)| if ns > T::ZERO { c / ns } else { T::ZERO }).collect();
    let k = Coefs { runs: &runs, l: &st.l, cp: &st.c_pos, ce: &st.c_exp, nsum: &st.nsum, a: &a, shift: st.shift };
    let block_exact: Vec<bool> = blocks.iter().map(|&(s, e)| st.exact[s..e].iter().any(|&v| v)).collect();
    let dx_pass = |acc: &mut [T]| {
        // dX (n x d, bag order) per block; a round's tiles lock disjoint blocks, so the locks
        // never wait.
        let mut rest = acc;
        let mut dx: Vec<Mutex<&mut [T]>> = Vec::with_capacity(blocks.len());
        for &(s, e) in &blocks {
            let (head, tail) = rest.split_at_mut((e - s) * d);
            dx.push(Mutex::new(head));
            rest = tail;
        }
        let form = p.form;
        for round in schedule::rounds(blocks.len()) {
            round.par_iter().for_each_init(Vec::new, |tile, &(bp, bq)| {
                let ((p0, p1), (q0, q1)) = (blocks[bp], blocks[bq]);
                let (tp, tq) = (p1 - p0, q1 - q0);
                resize(tile, tp * tq);
                let g = &mut tile[..tp * tq];
                T::scores(p.inv_tau, &x, p0, tp, &x, q0, tq, d, g, tq);
                loops::backward_grad_tile(form, g, tq, p0, q0, k, block_exact[bp] || block_exact[bq]);
                let mut dp = dx[bp].lock().expect("tile lock");
                // dX_P += G X_Q: A(i, j) = g[i * tq + j].
                T::product_add(tp, tq, p.inv_tau, g, tq, 1, &x, q0, d, &mut dp);
                drop(dp);
                if bp != bq {
                    let mut dq = dx[bq].lock().expect("tile lock");
                    // dX_Q += G^T X_P: A(j, i) = g[i * tq + j].
                    T::product_add(tq, tp, p.inv_tau, g, 1, tq, &x, p0, d, &mut dq);
                }
            });
        }
        partner_terms(p, fwd, b, &blocks, &x, &dx);
    };
    match target {
        Target::Image(img) => {
            // The image's own gradient accumulates dX; then the features, no longer needed, lend
            // their buffer to dX while the image receives the final layout.
            dx_pass(&mut img[..n * d]);
            let mut tmp = T::into_buffer(x);
            tmp[..n * d].copy_from_slice(&img[..n * d]);
            let px: Vec<usize> = bag.pixels.iter().map(|&g| g as usize % hw).collect();
            img.par_chunks_mut(hw).enumerate().for_each(|(c, chan)| {
                chan.fill(T::ZERO);
                for (j, &q) in px.iter().enumerate() {
                    chan[q] = scale * tmp[j * d + c];
                }
            });
        }
        Target::Scattered(grad) => {
            let mut owned = vec![T::ZERO; n * d];
            dx_pass(&mut owned);
            drop(x);
            let out = SendPtr(grad.as_mut_ptr());
            owned.par_chunks(d * 64).enumerate().for_each(|(ci, chunk)| {
                for (k, row) in chunk.chunks(d).enumerate() {
                    let g = bag.pixels[ci * 64 + k] as usize;
                    let base = (g / hw) * d * hw + g % hw;
                    for (c, &v) in row.iter().enumerate() {
                        // SAFETY: `check` verified every pixel id is in range and appears in one
                        // bag row only, so no two rows (or bags) write the same element.
                        unsafe { *out.ptr().add(base + c * hw) = scale * v };
                    }
                }
            });
        }
    }
}

/// Cross-image terms of bag `b`, per row block: partner positives of its anchors, and its pixels as
/// positives of anchors in bags partnered with it.
fn partner_terms<T: FastMath>(
    p: &Problem<'_, T>,
    fwd: &Forward<T>,
    b: usize,
    blocks: &[(usize, usize)],
    x: &T::Feats,
    dx: &[Mutex<&mut [T]>],
) {
    let bag = &p.bags[b];
    let back: Vec<usize> =
        (0..p.bags.len()).filter(|&r| r != b && p.bags[r].partner == Some(b) && !p.bags[r].is_empty()).collect();
    if bag.partner.is_none() && back.is_empty() {
        return;
    }
    let d = p.d;
    let st = &fwd.states[b];
    let form = p.form;
    let gather = |r: usize| T::gather(p.feats, d, p.hw, &p.bags[r].pixels);
    let xq = bag.partner.map(gather);
    let back: Vec<(usize, T::Feats)> = back.into_iter().map(|r| (r, gather(r))).collect();
    blocks.par_iter().zip(dx).for_each_init(Vec::new, |sp, (&(r0, r1), dxb)| {
        let mut dxb = dxb.lock().expect("block lock");
        for (run, a, bb) in runs_in(bag, r0, r1) {
            let dxa = &mut dxb[(a - r0) * d..(bb - r0) * d];
            if let (Some(q), Some(xq)) = (bag.partner, xq.as_ref()) {
                let (ps, pe) = p.bags[q].class_rows(run.class);
                if pe > ps {
                    let plen = pe - ps;
                    resize(sp, (bb - a) * plen);
                    T::scores(p.inv_tau, x, a, bb - a, xq, ps, plen, d, sp, plen);
                    for i in a..bb {
                        let g = &mut sp[(i - a) * plen..(i - a + 1) * plen];
                        loops::anchor_side_partner_grad(form, g, st.l[i], st.c_pos[i], st.c_exp[i]);
                    }
                    T::product_add(bb - a, plen, p.inv_tau, sp, plen, 1, xq, ps, d, dxa);
                }
            }
            for (r, xr) in &back {
                let (rs, re) = p.bags[*r].class_rows(run.class);
                if re > rs {
                    let len = re - rs;
                    let sr = &fwd.states[*r];
                    resize(sp, (bb - a) * len);
                    T::scores(p.inv_tau, x, a, bb - a, xr, rs, len, d, sp, len);
                    for i in a..bb {
                        let g = &mut sp[(i - a) * len..(i - a + 1) * len];
                        loops::candidate_side_partner_grad(
                            form,
                            g,
                            &sr.l[rs..re],
                            &sr.c_pos[rs..re],
                            &sr.c_exp[rs..re],
                        );
                    }
                    T::product_add(bb - a, len, p.inv_tau, sp, len, 1, xr, rs, d, dxa);
                }
            }
        }
    });
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

/// Bytes of scratch one evaluation (forward + backward) allocates for bags of `n` pixels that each
/// own their image (within-image and cross-image modes), with `partners` extra gathered bags of the
/// same size, `d` channels, `threads` workers and element size `elem`: the gathered features, per
/// thread a tile, a product slab, a strip of partner scores (at most `STRIP_ROWS x n`) and an
/// exact-path row, and the per-anchor state. The gradient tensor itself is not included (the backward accumulates in
/// it); a bag spanning several images (batch mode) adds an `n x d` accumulator.
pub fn scratch_bytes(n: usize, d: usize, partners: usize, threads: usize, elem: usize) -> usize {
    let gathered = (1 + partners) * n.div_ceil(tile_gemm::PANEL) * tile_gemm::PANEL * d;
    let block = TILE + tile_gemm::PANEL;
    let per_thread = block * block + block * tile_gemm::PANEL + STRIP_ROWS * n + n;
    (gathered + threads * per_thread + 6 * n) * elem
}

/// Test data: `images` images of `hw` pixels (rows of width `w`) of `d`-d unit features, and one
/// bag per image whose pixels fall in 5 class bands along x (`partnered`: image `i`'s bag names the
/// other image's as its partner, for two images).
#[cfg(test)]
fn banded_unit_problem(images: usize, hw: usize, d: usize, w: usize, partnered: bool) -> (Vec<f32>, Vec<Bag>) {
    let mut feats: Vec<f32> = (0..images * hw * d).map(|i| (i * 7919 % 2003) as f32 / 2003.0 - 0.5).collect();
    for img in 0..images {
        for p in 0..hw {
            let at = |c: usize| img * d * hw + c * hw + p;
            let n = (0..d).map(|c| feats[at(c)].powi(2)).sum::<f32>().sqrt();
            (0..d).for_each(|c| feats[at(c)] /= n);
        }
    }
    let bags = (0..images)
        .map(|img| {
            let items = (0..hw).map(|p| (((p % w) * 5 / w) as u8, (img * hw + p) as u32)).collect();
            Bag::from_pixels(items, partnered.then(|| 1 - img), img)
        })
        .collect();
    (feats, bags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bag_weights_average_each_group_then_over_all_groups() {
        // Group 0: a pair of bags (3 and 1 pixels, mutual partners); group 1: one empty bag;
        // group 2: one bag of 2 pixels of different classes.
        let bags = [
            Bag::from_pixels(vec![(0, 0), (0, 1), (1, 2)], Some(1), 0),
            Bag::from_pixels(vec![(1, 10)], Some(0), 0),
            Bag::from_pixels(vec![], None, 1),
            Bag::from_pixels(vec![(0, 20), (2, 21)], None, 2),
        ];
        // Per-positive: every pixel counts; 4 anchors in group 0, 0 in group 1, 2 in group 2, and
        // the empty group still counts in G = 3.
        let w = bag_weights(&bags, Form::PerPositive);
        assert_eq!(w, [1.0 / 12.0, 1.0 / 12.0, 0.0, 1.0 / 6.0]);
        // SupCon: an anchor counts with a positive other than itself. Group 0: the two class-0
        // pixels, and the class-1 pixels of both bags (each the other's partner positive);
        // group 2: no anchor (singleton classes, no partner).
        let w = bag_weights(&bags, Form::SupCon);
        assert_eq!(w, [1.0 / 12.0, 1.0 / 12.0, 0.0, 0.0]);
        let alone = [Bag::from_pixels(vec![(1, 10)], None, 0), Bag::from_pixels(vec![(0, 0), (0, 1)], None, 1)];
        assert_eq!(bag_weights(&alone, Form::SupCon), [0.0, 1.0 / 4.0]);
    }

    /// The loops' AVX-512 build gives the AVX2 build's loss and gradient bit for bit (two 33x33
    /// images of 40-d unit features in 5 class bands, partner bags, both forms, one thread).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_loops_match_avx2_bit_for_bit() {
        if !tile_gemm::available() || crate::cpu::packed_gemm::kernel() != crate::cpu::packed_gemm::Kernel::Avx512 {
            eprintln!("skipped: the loops' AVX-512 build does not run here");
            return;
        }
        let (hw, d) = (1089usize, 40usize);
        let (feats, bags) = banded_unit_problem(2, hw, d, 33, true);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        for form in [Form::PerPositive, Form::SupCon] {
            let p = Problem { feats: &feats, d, hw, bags: &bags, inv_tau: 1.0 / 0.07, form };
            let run = || {
                let fwd = forward(&p);
                let mut grad = vec![0.0f32; feats.len()];
                backward(&p, &fwd, 1.0, &mut grad);
                (fwd.loss, grad)
            };
            let (wide_loss, wide_grad) = pool.install(run);
            let (loss, grad) = pool.install(|| loops::with_avx2_loops(run));
            assert!(loss.is_finite() && grad.iter().any(|&g| g != 0.0));
            assert_eq!(wide_loss.to_bits(), loss.to_bits(), "{form:?} loss");
            assert!(wide_grad.iter().zip(&grad).all(|(a, b)| a.to_bits() == b.to_bits()), "{form:?} gradient");
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test -p kernels --release --lib contrastive::timing -- --ignored --nocapture`: two
    /// 65x65 images of 256-d unit features (5 classes in bands), one bag each, on 1 and 2 threads,
    /// best of 5: how much of the second thread the rounds use.
    #[test]
    #[ignore]
    fn two_bags_on_one_and_two_threads() {
        let (hw, d) = (4225usize, 256usize);
        let (feats, bags) = banded_unit_problem(2, hw, d, 65, false);
        let p = Problem { feats: &feats, d, hw, bags: &bags, inv_tau: 1.0 / 0.07, form: Form::PerPositive };
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let best = |f: &mut dyn FnMut()| {
                    (0..5)
                        .map(|_| {
                            let t = std::time::Instant::now();
                            f();
                            t.elapsed().as_secs_f64()
                        })
                        .fold(f64::INFINITY, f64::min)
                };
                let fwd = forward(&p);
                let mut grad = vec![0.0f32; feats.len()];
                let tf = best(&mut || {
                    std::hint::black_box(forward(&p));
                });
                let tb = best(&mut || {
                    grad.fill(0.0);
                    backward(&p, &fwd, 1.0, &mut grad);
                });
                println!(
                    "two bags 4225 x 256, {threads} thread(s): forward {:.1} ms, backward {:.1} ms",
                    tf * 1e3,
                    tb * 1e3
                );
            });
        }
    }
}
