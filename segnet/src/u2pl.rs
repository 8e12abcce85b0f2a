//! U2PL (Wang et al., "Semi-Supervised Semantic Segmentation Using Unreliable Pseudo-Labels",
//! CVPR 2022) as a stage objective: the paper's definitions, not the released code's bugs.
//!
//! Every step sees one labeled batch `(x_l, y_l)` and one unlabeled batch `x_u` (the training
//! images outside the labeled subset; their labels are never read, only the crop's padding is
//! known). The objective owns an EMA teacher (a copy of the student's network, representation
//! head included) and one FIFO queue of negative keys per class.
//!
//! 1. **Teacher** (eval mode, no tape) on `[x_l; x_u]`: stride-4 logits, their softmax `p`, the
//!    unit representation `z_t` (the projection head on the decoder features), and the logits
//!    upsampled to the crop on `x_u`: pseudo-labels `y_hat = argmax` and the entropy
//!    `H = -sum_c p_c log(p_c + 1e-10)` per pixel.
//! 2. **CutMix** (probability `cutmix`, needs 2+ unlabeled images): per image `b` one box of half
//!    the crop's area (width uniform in `(W/2, W)`, as the released code), filled from image
//!    `(b + 1) mod B` of the *unmixed* batch; the pseudo-labels, entropies, padding mask and the
//!    teacher's stride-4 maps move with it (a grid cell follows the pixel the nearest rule samples
//!    it from, so the grid maps equal the nearest-downsampled mixed maps exactly). The teacher's
//!    maps of a mixed image are thus the mix of its maps of the two unmixed images: one teacher
//!    pass instead of the released code's second, train-mode pass on the mixed batch.
//! 3. **Student** (train mode) on `[x_l; mix(x_u)]`: logits and the unit representation `z_s`.
//!    With `labeled_from = student` (a named deviation, not in the paper) the teacher of step 1
//!    runs on `x_u` alone, and the student's own stride-4 softmax and representation on `x_l`
//!    (values only, no gradient through them) stand in for the teacher's in step 5's anchor
//!    filter, prototypes and labeled negatives: the teacher's forward on the labeled images is
//!    most of its cost when the unlabeled batch is the smaller one.
//! 4. `alpha_t = alpha_0 (1 - t/T)` (`t` the stage step, `T` its steps). A valid unlabeled pixel
//!    is *unreliable* when its entropy is at or above the `(100 - alpha_t)`-th percentile of the
//!    batch's valid pixels (numpy's linear rule), *reliable* otherwise.
//! 5. Loss `= L_s + L_u + lambda_c L_c`:
//!    * `L_s`: cross-entropy of the labeled batch (ignore 255);
//!    * `L_u = (1 / (B H W)) sum_{reliable} CE(student, y_hat)` (the paper's Eq.: the mean over the
//!      kept pixels times the kept fraction; unreliable and padded pixels are ignored);
//!    * `L_c` on the stride-4 grid (labels, pseudo-labels and masks nearest-downsampled), per
//!      class `c`:
//!      - anchor candidates: labeled pixels with `y = c` and reliable unlabeled pixels with
//!        `y_hat = c`, each with teacher `p_c > anchor_threshold`; `anchors` of them are sampled
//!        with replacement, their *student* features are the anchors;
//!      - positive: the prototype, the normalised mean *teacher* feature of the candidates before
//!        the probability filter (as the released code);
//!      - negatives (the paper's definition, fixing the code's always-empty labeled mask and its
//!        contradictory unlabeled one): labeled pixels with `y != c` whose rank of `c` in the
//!        teacher's sorted probabilities (0 = top) is below `low`, and unreliable unlabeled pixels
//!        with `y_hat != c` and `low <= rank(c) < high`; their teacher features are pushed into
//!        class `c`'s queue, then `negatives` keys per anchor are drawn from the queue (with
//!        replacement);
//!      - `[low, high)` = [`crate::config::U2plSettings::rank_range`]: `1 <= low < high <= C`
//!        (the code's fixed `low = 3` gives no negatives with 2 classes);
//!      - classes are indexed by class id throughout (the code's anchor list is indexed by the
//!        position among present classes); a class without anchors or with an empty queue is
//!        skipped;
//!      - `L_c` = [`engine::ops::info_nce_indexed`] of all sampled anchors against their keys at
//!        `tau` (the keys as rows of one bank: the prototypes, then the queues of the classes
//!        with anchors): the mean over classes of the mean over their anchors (every class has
//!        `anchors` rows).
//! 6. After each optimiser step the teacher follows the student: during the first
//!    `sup_only_steps` (supervised only: `L = L_s`, no teacher pass) it is a copy; then
//!    `teacher = d teacher + (1 - d) student` with `d = min(1 - 1/(k + 1), ema_momentum)`, `k`
//!    the steps since the warm-up. Batch-norm running statistics follow with the same `d` (the
//!    released code's teacher refreshes them in its train-mode pass, which we do not run).
//!
//! Evaluations score the teacher, and the stage's final weights are the teacher's (as the paper
//! reports the teacher). Checkpoints of the stage hold the student (the usual names), the teacher
//! (`objective.teacher.*`) and the queues (`objective.queue.<class>.{keys,len,head}`), so a
//! resumed stage repeats the uninterrupted one exactly. Queue memory is fixed at start:
//! `classes x queue_size x channels x 4` bytes.
//!
//! CPU only (the contrastive term's ops have no CUDA kernels).

use crate::config::{LabeledFrom, TrainConfig, U2plSettings};
use crate::model::DeepLabV3Plus;
use crate::net::{self, Net};
use crate::objective::{train_augment, Objective};
use crate::train::derive_seed;
use anyhow::{bail, ensure, Context, Result};
use datasets::{AugmentConfig, Batch};
use engine::{ops, DType, Device, LabelMap, Rng, Tensor};
use nn::{visit_all, Ctx, Module, Slot, Visitor};
use rayon::prelude::*;
use serde_json::json;

/// The ignore label.
const IGNORE: u8 = 255;

/// `alpha_t = alpha_0 (1 - t / T)` in percent (0 when `T = 0`).
pub fn alpha_t(alpha0: f64, t: usize, total: usize) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (alpha0 * (1.0 - t as f64 / total as f64)).max(0.0)
}

/// The `q`-th percentile (`0..=100`) of `v` with numpy's default linear interpolation; `None`
/// for an empty slice.
pub fn percentile(v: &[f32], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = q.clamp(0.0, 100.0) / 100.0 * (s.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(s[lo] as f64 + (s[hi] as f64 - s[lo] as f64) * (rank - lo as f64))
}

/// The entropy split of the unlabeled pixels: `true` = unreliable (entropy at or above the
/// `(100 - alpha)`-th percentile of the valid pixels), for valid pixels only (invalid ones are
/// `false` and do not count in the percentile). Returns the mask and the threshold.
pub fn unreliable_mask(entropy: &[f32], valid: &[bool], alpha: f64) -> (Vec<bool>, Option<f64>) {
    let vals: Vec<f32> = entropy.iter().zip(valid).filter(|(_, &v)| v).map(|(&e, _)| e).collect();
    let Some(thr) = percentile(&vals, 100.0 - alpha) else { return (vec![false; entropy.len()], None) };
    (entropy.iter().zip(valid).map(|(&e, &v)| v && e as f64 >= thr).collect(), Some(thr))
}

/// The class-balanced entropy split (`class_balanced_split`): [`unreliable_mask`] taken
/// separately over the valid pixels of each pseudo-class `classes[i]`, so every class the teacher
/// predicts keeps the same `100 - alpha` % of its pixels. Returns the mask and the threshold of
/// each class (`None` for a class without valid pixels).
pub fn unreliable_mask_per_class(
    entropy: &[f32],
    valid: &[bool],
    classes: &[u8],
    n_classes: usize,
    alpha: f64,
) -> (Vec<bool>, Vec<Option<f64>>) {
    let mut mask = vec![false; entropy.len()];
    let mut thresholds = Vec::with_capacity(n_classes);
    for c in 0..n_classes {
        let in_class: Vec<bool> = valid.iter().zip(classes).map(|(&v, &k)| v && k as usize == c).collect();
        let (m, thr) = unreliable_mask(entropy, &in_class, alpha);
        for (dst, u) in mask.iter_mut().zip(m) {
            *dst |= u;
        }
        thresholds.push(thr);
    }
    (mask, thresholds)
}

/// Softmax over the channels of `[N, C, S]` logits (f32, in place into a new vector), with the
/// per-pixel argmax and entropy `-sum p log(p + 1e-10)`.
fn softmax_stats(logits: &[f32], n: usize, c: usize, s: usize) -> (Vec<f32>, Vec<u8>, Vec<f32>) {
    let mut p = vec![0f32; logits.len()];
    let (mut arg, mut ent) = (vec![0u8; n * s], vec![0f32; n * s]);
    for b in 0..n {
        for q in 0..s {
            let at = |k: usize| (b * c + k) * s + q;
            let (mut best, mut mx) = (0usize, f32::NEG_INFINITY);
            for k in 0..c {
                if logits[at(k)] > mx {
                    mx = logits[at(k)];
                    best = k;
                }
            }
            let z: f32 = (0..c).map(|k| (logits[at(k)] - mx).exp()).sum();
            let mut h = 0f32;
            for k in 0..c {
                let pk = (logits[at(k)] - mx).exp() / z;
                p[at(k)] = pk;
                h -= pk * (pk + 1e-10).ln();
            }
            arg[b * s + q] = best as u8;
            ent[b * s + q] = h;
        }
    }
    (p, arg, ent)
}

/// The rank of class `c` among the probabilities `p[k * stride]` (0 = the largest; ties broken
/// by class id, lower first).
pub fn class_rank(p: &[f32], classes: usize, stride: usize, c: usize) -> usize {
    let pc = p[c * stride];
    (0..classes).filter(|&k| k != c && (p[k * stride] > pc || (p[k * stride] == pc && k < c))).count()
}

/// CutMix boxes of one step: per image, `None` or `[y0, x0, h, w]` filled from image `(b + 1) mod B`.
#[derive(Clone, Debug, PartialEq)]
pub struct CutMix {
    /// Images.
    pub n: usize,
    /// Crop height and width.
    pub hw: [usize; 2],
    /// One box per image (or none).
    pub boxes: Vec<Option<[usize; 4]>>,
}

impl CutMix {
    /// With probability `p` (and 2+ images), one half-area box per image as the released
    /// code's `generate_cutout_mask`: width uniform in `[W/2 + 1, W - 1]`, height
    /// `round(H W / 2 / width)`, position uniform; otherwise no mixing.
    pub fn draw(n: usize, h: usize, w: usize, p: f64, rng: &mut Rng) -> CutMix {
        let on = n >= 2 && rng.uniform() < p;
        let boxes = (0..n)
            .map(|_| {
                on.then(|| {
                    let lo = (w / 2 + 1).min(w);
                    let bw = if w - 1 > lo { lo + rng.below(w - 1 - lo + 1) } else { lo.min(w) }.max(1);
                    let bh = ((h * w) as f64 / 2.0 / bw as f64).round().clamp(1.0, h as f64) as usize;
                    let x0 = rng.below(w - bw + 1);
                    let y0 = rng.below(h - bh + 1);
                    [y0, x0, bh, bw]
                })
            })
            .collect();
        CutMix { n, hw: [h, w], boxes }
    }

    /// No mixing.
    pub fn none(n: usize, h: usize, w: usize) -> CutMix {
        CutMix { n, hw: [h, w], boxes: vec![None; n] }
    }

    /// Whether any image is mixed.
    pub fn active(&self) -> bool {
        self.boxes.iter().any(Option::is_some)
    }

    /// The image pixel `(y, x)` of mixed image `b` comes from.
    pub fn source(&self, b: usize, y: usize, x: usize) -> usize {
        match self.boxes[b] {
            Some([y0, x0, bh, bw]) if (y0..y0 + bh).contains(&y) && (x0..x0 + bw).contains(&x) => (b + 1) % self.n,
            _ => b,
        }
    }

    /// Mix per-pixel data `[n, ch, gh, gw]` given on a grid of `gh x gw` cells, each cell
    /// sampled from crop pixel `(floor(gy H / gh), floor(gx W / gw))` (the nearest rule; the
    /// identity on the crop itself).
    pub fn apply<T: Copy>(&self, data: &[T], ch: usize, gh: usize, gw: usize) -> Vec<T> {
        let [h, w] = self.hw;
        let s = gh * gw;
        let mut out = data.to_vec();
        for b in 0..self.n {
            if self.boxes[b].is_none() {
                continue;
            }
            for gy in 0..gh {
                let y = (gy * h / gh).min(h - 1);
                for gx in 0..gw {
                    let x = (gx * w / gw).min(w - 1);
                    let src = self.source(b, y, x);
                    if src != b {
                        for k in 0..ch {
                            out[(b * ch + k) * s + gy * gw + gx] = data[(src * ch + k) * s + gy * gw + gx];
                        }
                    }
                }
            }
        }
        out
    }
}

/// Nearest-downsample (`F.interpolate(mode="nearest")`) of per-pixel values `[n, H, W]` to `[n, gh, gw]`.
fn nearest<T: Copy>(v: &[T], n: usize, [h, w]: [usize; 2], gh: usize, gw: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(n * gh * gw);
    for b in 0..n {
        for gy in 0..gh {
            let y = (gy * h / gh).min(h - 1);
            for gx in 0..gw {
                out.push(v[b * h * w + y * w + (gx * w / gw).min(w - 1)]);
            }
        }
    }
    out
}

/// What the contrastive term sees on the stride-4 grid of `[labeled; unlabeled]` (`n_l + n_u`
/// images of `s` cells each).
pub struct Grid<'a> {
    /// Classes.
    pub classes: usize,
    /// Cells per image.
    pub s: usize,
    /// Labeled images (they come first).
    pub n_l: usize,
    /// Labels of the labeled images (`n_l s`; 255 = ignore).
    pub labels: &'a [u8],
    /// Pseudo-labels of the unlabeled images (`n_u s`; 255 = padding).
    pub pseudo: &'a [u8],
    /// Reliable unlabeled cells (`n_u s`).
    pub reliable: &'a [bool],
    /// Unreliable unlabeled cells (`n_u s`).
    pub unreliable: &'a [bool],
    /// Teacher probabilities `[n_l + n_u, C, s]`.
    pub probs: &'a [f32],
}

/// Per class: anchor candidates, prototype members, negatives (flat cell indices `b s + q`
/// into `[labeled; unlabeled]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// Anchor candidates of each class (teacher probability above the threshold).
    pub anchors: Vec<Vec<usize>>,
    /// The cells whose mean teacher feature is the class prototype.
    pub members: Vec<Vec<usize>>,
    /// The cells that are negatives of each class this step.
    pub negatives: Vec<Vec<usize>>,
}

/// Select anchors, prototype members and negatives per class (see the module docs, step 5).
pub fn select(g: &Grid<'_>, (low, high): (usize, usize), threshold: f64) -> Selection {
    let (c_n, s) = (g.classes, g.s);
    let mut sel =
        Selection { anchors: vec![Vec::new(); c_n], members: vec![Vec::new(); c_n], negatives: vec![Vec::new(); c_n] };
    let n_u = g.pseudo.len() / s.max(1);
    for b in 0..g.n_l + n_u {
        for q in 0..s {
            let cell = b * s + q;
            let p = &g.probs[b * c_n * s + q..];
            let prob = |c: usize| p[c * s] as f64;
            if b < g.n_l {
                let y = g.labels[cell];
                if y == IGNORE {
                    continue;
                }
                let y = y as usize;
                sel.members[y].push(cell);
                if prob(y) > threshold {
                    sel.anchors[y].push(cell);
                }
                for c in (0..c_n).filter(|&c| c != y) {
                    if class_rank(p, c_n, s, c) < low {
                        sel.negatives[c].push(cell);
                    }
                }
            } else {
                let u = cell - g.n_l * s;
                let y = g.pseudo[u];
                if y == IGNORE {
                    continue;
                }
                let y = y as usize;
                if g.reliable[u] {
                    sel.members[y].push(cell);
                    if prob(y) > threshold {
                        sel.anchors[y].push(cell);
                    }
                } else if g.unreliable[u] {
                    for c in (0..c_n).filter(|&c| c != y) {
                        let r = class_rank(p, c_n, s, c);
                        if (low..high).contains(&r) {
                            sel.negatives[c].push(cell);
                        }
                    }
                }
            }
        }
    }
    sel
}

/// `[images][dim][cells]` values as `[images cells][dim]`: each cell's channels contiguous.
fn cells_major(v: &[f32], images: usize, dim: usize, cells: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for b in 0..images {
        let (src, dst) = (&v[b * dim * cells..][..dim * cells], &mut out[b * cells * dim..][..cells * dim]);
        for (k, plane) in src.chunks_exact(cells).enumerate() {
            for (q, &x) in plane.iter().enumerate() {
                dst[q * dim + k] = x;
            }
        }
    }
    out
}

/// One FIFO queue of negative keys per class, of fixed capacity (allocated once).
pub struct Queues {
    /// Key length.
    pub dim: usize,
    /// Capacity per class.
    pub cap: usize,
    keys: Vec<Tensor>,
    len: Vec<i64>,
    head: Vec<i64>,
}

impl Queues {
    /// Empty queues of `cap` keys of `dim` values for `classes` classes.
    pub fn new(classes: usize, cap: usize, dim: usize) -> Queues {
        Queues {
            dim,
            cap,
            keys: (0..classes).map(|_| Tensor::zeros([cap, dim], DType::F32)).collect(),
            len: vec![0; classes],
            head: vec![0; classes],
        }
    }

    /// Bytes of key storage.
    pub fn bytes(&self) -> usize {
        self.keys.len() * self.cap * self.dim * 4
    }

    /// Keys held for class `c`.
    pub fn len(&self, c: usize) -> usize {
        self.len[c] as usize
    }

    /// Whether class `c`'s queue is empty.
    pub fn is_empty(&self, c: usize) -> bool {
        self.len[c] == 0
    }

    /// Push `rows` (`k x dim` values) into class `c`'s queue, the oldest keys leaving first.
    pub fn push(&mut self, c: usize, rows: &[f32]) -> Result<()> {
        ensure!(rows.len() % self.dim == 0, "queue push: {} values are not rows of {}", rows.len(), self.dim);
        let (dim, cap) = (self.dim, self.cap);
        let (mut head, mut len) = (self.head[c] as usize, self.len[c] as usize);
        self.keys[c].update_cpu::<f32>(|k| {
            for r in rows.chunks(dim) {
                k[head * dim..(head + 1) * dim].copy_from_slice(r);
                head = (head + 1) % cap;
                len = (len + 1).min(cap);
            }
        })?;
        (self.head[c], self.len[c]) = (head as i64, len as i64);
        Ok(())
    }

    /// The `i`-th held key of class `c` (`i < len(c)`; the order is the storage order).
    pub fn key(&self, c: usize, i: usize) -> Result<&[f32]> {
        ensure!(i < self.len(c), "queue {c}: key {i} of {}", self.len(c));
        Ok(&self.held(c)?[i * self.dim..(i + 1) * self.dim])
    }

    /// Every held key of class `c`, `len(c) x dim` values in storage order.
    pub fn held(&self, c: usize) -> Result<&[f32]> {
        Ok(&self.keys[c].cpu_slice::<f32>("queue")?[..self.len(c) * self.dim])
    }
}

impl Module for Queues {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        for c in 0..self.keys.len() {
            v.buffer(&format!("{c}.keys"), &mut self.keys[c]);
            v.count(&format!("{c}.len"), &mut self.len[c]);
            v.count(&format!("{c}.head"), &mut self.head[c]);
        }
    }
}

/// The objective's saved state: the teacher and the queues.
pub struct State {
    /// The EMA teacher.
    pub teacher: Net,
    /// The negative queues.
    pub queues: Queues,
}

impl Module for State {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("teacher", &mut self.teacher);
        v.child("queue", &mut self.queues);
    }
}

/// `dst = d dst + (1 - d) src` on every float tensor (parameters and buffers), counters copied;
/// `d = 0` copies. The two networks must have the same state names.
pub fn ema(dst: &mut Net, src: &mut Net, d: f64) -> Result<()> {
    let mut vals: Vec<(String, Option<Tensor>, i64)> = Vec::new();
    visit_all(src, |name, slot| {
        vals.push(match slot {
            Slot::Param(p) => (name.to_string(), Some(p.value.clone()), 0),
            Slot::Buffer(b) => (name.to_string(), Some(b.clone()), 0),
            Slot::Count(c) => (name.to_string(), None, *c),
        })
    });
    let mut i = 0;
    let mut result = Ok(());
    visit_all(dst, |name, slot| {
        if result.is_err() {
            return;
        }
        let Some((sname, t, count)) = vals.get(i) else {
            result = Err(anyhow::anyhow!("ema: the teacher has more state than the student ({name})"));
            return;
        };
        i += 1;
        if sname != name {
            result = Err(anyhow::anyhow!("ema: teacher {name} vs student {sname}"));
            return;
        }
        let blend = |mine: &mut Tensor, theirs: &Tensor| -> Result<()> {
            if d == 0.0 {
                mine.assign(theirs)?;
            } else if mine.device() == Device::Cpu
                && theirs.device() == Device::Cpu
                && mine.dtype() == theirs.dtype()
                && mine.dims() == theirs.dims()
            {
                blend_in_place(mine, theirs, d)?;
            } else {
                let v = ops::add(&ops::affine(mine, d, 0.0)?, &ops::affine(theirs, 1.0 - d, 0.0)?)?;
                mine.assign(&v)?;
            }
            Ok(())
        };
        result = match (slot, t) {
            (Slot::Param(p), Some(t)) => blend(&mut p.value, t),
            (Slot::Buffer(b), Some(t)) => blend(b, t),
            (Slot::Count(c), None) => {
                *c = *count;
                Ok(())
            }
            _ => Err(anyhow::anyhow!("ema: {name} is a different kind of state in the teacher")),
        };
    });
    result?;
    ensure!(i == vals.len(), "ema: the student has more state than the teacher");
    Ok(())
}

/// `mine = (d mine + 0) + ((1 - d) theirs + 0)` in place on the CPU: the values of
/// `add(affine(mine, d, 0), affine(theirs, 1 - d, 0))` (the device path), bit for bit, without
/// its three new tensors per state tensor.
fn blend_in_place(mine: &mut Tensor, theirs: &Tensor, d: f64) -> Result<()> {
    engine::with_dtype!(mine.dtype(), T, {
        let ts = theirs.cpu_slice::<T>("ema")?;
        let (a, b, zero) = (T::from_f64(d), T::from_f64(1.0 - d), T::from_f64(0.0));
        mine.update_cpu::<T>(|ms| {
            ms.par_chunks_mut(1 << 14).zip(ts.par_chunks(1 << 14)).for_each(|(ms, ts)| {
                for (m, &t) in ms.iter_mut().zip(ts) {
                    *m = (a * *m + zero) + (b * t + zero);
                }
            });
        })?;
    });
    Ok(())
}

/// The U2PL objective (see the module docs).
pub struct U2pl {
    s: U2plSettings,
    classes: usize,
    seed: u64,
    steps: usize,
    batch: usize,
    state: Option<State>,
    last_step: usize,
    metrics: serde_json::Value,
}

impl U2pl {
    /// The objective `cfg` describes, for `classes` classes.
    pub fn new(cfg: &TrainConfig, classes: usize) -> U2pl {
        U2pl {
            s: cfg.u2pl_settings.clone(),
            classes,
            seed: cfg.seed,
            steps: cfg.u2pl.steps,
            batch: cfg.batch,
            state: None,
            last_step: 0,
            metrics: serde_json::Value::Null,
        }
    }

    /// The teacher and the queues (after [`Objective::start`]).
    pub fn state_ref(&self) -> Option<&State> {
        self.state.as_ref()
    }

    fn step_seed(&self, step: usize) -> u64 {
        derive_seed(self.seed, &[8, step as u64])
    }

    /// `L_s`, and for steps after the warm-up `L_u + lambda_c L_c` (see the module docs).
    fn semi_loss(&mut self, net: &mut Net, lb: &Batch, ub: &Batch, step: usize, ctx: &mut Ctx) -> Result<Tensor> {
        let [n_l, h, w] = lb.label_shape;
        let [n_u, hu, wu] = ub.label_shape;
        ensure!([hu, wu] == [h, w], "u2pl: labeled crops {h}x{w} but unlabeled crops {hu}x{wu}");
        let c_n = self.classes;
        let labels_l = LabelMap::new(n_l, h, w, lb.labels.clone())?;
        let warm = step < self.s.sup_only_steps;
        if warm {
            // Supervised only: the labeled batch alone through the student.
            let x = net::input(net, lb.images.clone(), lb.image_shape)?;
            let l_s = ops::cross_entropy(&net::logits(net, &x, ctx)?, &labels_l, IGNORE)?;
            self.metrics = json!({ "l_sup": l_s.item()?, "warmup": true });
            return Ok(l_s);
        }
        let mut rng = Rng::new(self.step_seed(step));
        let st = self.state.as_mut().context("u2pl: the objective was not started")?;

        // 1. Teacher on [x_l; x_u] (on x_u alone with `labeled_from = student`), eval mode, no tape.
        let teacher_labeled = self.s.labeled_from == LabeledFrom::Teacher;
        let n_t = if teacher_labeled { n_l } else { 0 };
        let mut both = if teacher_labeled { lb.images.clone() } else { Vec::new() };
        both.extend_from_slice(&ub.images);
        let xt = net::input(&mut st.teacher, both, [n_t + n_u, 3, h, w])?;
        let mut ectx = Ctx::eval();
        let ft = st.teacher.features(&xt, &mut ectx)?;
        let lt4 = st.teacher.classify(&ft, &mut ectx)?;
        let zt = st.teacher.project(&ft, &mut ectx)?;
        drop((xt, ft));
        let (gh, gw) = (lt4.dim(2), lt4.dim(3));
        let (gs, dim) = (gh * gw, zt.dim(1));
        let lt_u =
            if teacher_labeled { ops::split(&lt4, &[n_l, n_u], 0)?.pop().expect("two parts") } else { lt4.clone() };
        let lt_full = DeepLabV3Plus::upsample(&lt_u, [h, w])?.to_vec_f32()?;
        let (_, pseudo, entropy) = softmax_stats(&lt_full, n_u, c_n, h * w);
        let (p4, _, _) = softmax_stats(&lt4.to_vec_f32()?, n_t + n_u, c_n, gs);
        let zt = zt.to_vec_f32()?;
        drop(lt4);

        // 2. CutMix of the unlabeled images, their pseudo-labels, entropies and teacher maps.
        let mix = CutMix::draw(n_u, h, w, self.s.cutmix, &mut rng);
        let x_u = mix.apply(&ub.images, 3, h, w);
        let valid: Vec<bool> = ub.labels.iter().map(|&l| l != IGNORE).collect();
        let valid = mix.apply(&valid, 1, h, w);
        let pseudo = mix.apply(&pseudo, 1, h, w);
        let entropy = mix.apply(&entropy, 1, h, w);
        // The teacher's labeled part stays in place, the unlabeled part moves out (no copy at all
        // when the teacher saw no labeled image).
        let split_off = |mut v: Vec<f32>, per: usize| {
            let u = v.split_off(n_t * per);
            (v, u)
        };
        let (p4_l, p4_u) = split_off(p4, c_n * gs);
        let (zt_l, zt_u) = split_off(zt, dim * gs);

        // 3. Student on [x_l; mix(x_u)].
        let mut xs = lb.images.clone();
        xs.extend_from_slice(&x_u);
        let x = net::input(net, xs, [n_l + n_u, 3, h, w])?;
        let feats = net.features(&x, ctx)?;
        drop(x);
        let logits4 = net.classify(&feats, ctx)?;
        let logits = DeepLabV3Plus::upsample(&logits4, [h, w])?;
        let zs = net.project(&feats, ctx)?;
        // The labeled images' probabilities and representations for the contrastive selection:
        // the teacher's, or the student's own values (no gradient flows through them).
        let (p4_l, zt_l) = if teacher_labeled {
            (p4_l, zt_l)
        } else {
            let (l4, z) = (logits4.to_vec_f32()?, zs.to_vec_f32()?);
            ensure!([logits4.dim(2), logits4.dim(3)] == [gh, gw], "u2pl: student and teacher grids differ");
            (softmax_stats(&l4[..n_l * c_n * gs], n_l, c_n, gs).0, z[..n_l * dim * gs].to_vec())
        };
        let p4 = [p4_l, mix.apply(&p4_u, c_n, gh, gw)].concat();
        let zt = [zt_l, mix.apply(&zt_u, dim, gh, gw)].concat();
        drop(logits4);
        let mut parts = ops::split(&logits, &[n_l, n_u], 0)?;
        let logits_u = parts.pop().expect("two parts");
        let logits_l = parts.pop().expect("two parts");

        // 4. The entropy split.
        let alpha = alpha_t(self.s.unreliable_percent, step, self.steps);
        let (unreliable, thr) = if self.s.class_balanced_split {
            let (m, per_class) = unreliable_mask_per_class(&entropy, &valid, &pseudo, c_n, alpha);
            // Logged: the smallest per-class threshold (the strictest class: its kept pixels have the
            // lowest entropy cap).
            (m, per_class.into_iter().flatten().reduce(f64::min))
        } else {
            unreliable_mask(&entropy, &valid, alpha)
        };
        let target: Vec<u8> =
            (0..pseudo.len()).map(|i| if valid[i] && !unreliable[i] { pseudo[i] } else { IGNORE }).collect();
        let kept = target.iter().filter(|&&t| t != IGNORE).count();

        // 5. The three terms.
        let l_s = ops::cross_entropy(&logits_l, &labels_l, IGNORE)?;
        let l_u = ops::cross_entropy(&logits_u, &LabelMap::new(n_u, h, w, target)?, IGNORE)?;
        let l_u = ops::affine(&l_u, kept as f64 / (n_u * h * w) as f64, 0.0)?;
        let grid_pseudo = nearest(&pseudo, n_u, [h, w], gh, gw);
        let grid_valid = nearest(&valid, n_u, [h, w], gh, gw);
        let grid_unrel = nearest(&unreliable, n_u, [h, w], gh, gw);
        let grid_rel: Vec<bool> = grid_valid.iter().zip(&grid_unrel).map(|(&v, &u)| v && !u).collect();
        let grid_labels = nearest(&lb.labels, n_l, [h, w], gh, gw);
        let grid = Grid {
            classes: c_n,
            s: gs,
            n_l,
            labels: &grid_labels,
            pseudo: &grid_pseudo,
            reliable: &grid_rel,
            unreliable: &grid_unrel,
            probs: &p4,
        };
        let sel = select(&grid, self.s.rank_range(c_n), self.s.anchor_threshold);
        // The teacher features cell by cell (row `b gs + q`: the `dim` channels of cell `q` of
        // image `b`), so that each cell's feature is one contiguous slice.
        let zt_cells = cells_major(&zt, n_l + n_u, dim, gs);
        let feature = |cell: usize| &zt_cells[cell * dim..][..dim];
        for c in 0..c_n {
            let mut rows = Vec::with_capacity(sel.negatives[c].len() * dim);
            for &cell in &sel.negatives[c] {
                rows.extend_from_slice(feature(cell));
            }
            st.queues.push(c, &rows)?;
        }
        // Per class with anchors and keys: its prototype; per anchor, which prototype is its
        // positive and the queue keys drawn, in the order of one anchor after another, its negatives
        // after it.
        let negatives = self.s.negatives;
        let (mut anchor_idx, mut proto_of, mut protos) = (Vec::new(), Vec::new(), Vec::new());
        let mut drawn: Vec<usize> = Vec::new();
        for c in 0..c_n {
            if sel.anchors[c].is_empty() || st.queues.is_empty(c) {
                continue;
            }
            let mut proto = vec![0f64; dim];
            for &cell in &sel.members[c] {
                for (p, &v) in proto.iter_mut().zip(feature(cell)) {
                    *p += v as f64;
                }
            }
            let norm = proto.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            protos.push((c, proto.iter().map(|v| (v / norm) as f32).collect::<Vec<f32>>()));
            for _ in 0..self.s.anchors {
                anchor_idx.push(sel.anchors[c][rng.below(sel.anchors[c].len())]);
                proto_of.push(protos.len() - 1);
                drawn.extend((0..negatives).map(|_| rng.below(st.queues.len(c))));
            }
        }
        let used = protos.len();
        // The key bank: the prototypes, then the held keys of each class with anchors; each
        // anchor's keys are bank rows (its prototype, then its negatives), so the `anchors x
        // (1 + negatives) x dim` key tensor is never written.
        let mut bank: Vec<f32> = protos.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let mut queue_row = vec![0usize; c_n];
        for (c, _) in &protos {
            queue_row[*c] = bank.len() / dim;
            bank.extend_from_slice(st.queues.held(*c)?);
        }
        let mut key_idx = Vec::with_capacity(anchor_idx.len() * (1 + negatives));
        for (a, &p) in proto_of.iter().enumerate() {
            key_idx.push(p);
            key_idx.extend(drawn[a * negatives..(a + 1) * negatives].iter().map(|&i| queue_row[protos[p].0] + i));
        }
        let rows = bank.len() / dim;
        let bank = Tensor::from_vec(bank, vec![rows, dim])?;
        let l_c =
            ops::info_nce_indexed(&ops::gather_pixels(&zs, &anchor_idx)?, &bank, &key_idx, 1 + negatives, self.s.tau)?;
        self.metrics = json!({
            "l_sup": l_s.item()?, "l_unsup": l_u.item()?, "l_contra": l_c.item()?, "alpha": alpha,
            "entropy_threshold": thr, "kept_fraction": kept as f64 / (n_u * h * w) as f64,
            "contrast_classes": used, "cutmix": mix.active(), "teacher_images": n_t + n_u,
            "queue_fill": (0..c_n).map(|c| st.queues.len(c)).collect::<Vec<_>>(),
        });
        Ok(l_s.add(&l_u)?.add(&ops::affine(&l_c, self.s.lambda_c, 0.0)?)?)
    }
}

impl Objective for U2pl {
    fn unlabeled(&self, cfg: &TrainConfig) -> Option<(usize, AugmentConfig)> {
        Some((self.s.unlabeled_batch.unwrap_or(self.batch), train_augment(cfg)))
    }

    fn start(&mut self, net: &mut Net) -> Result<()> {
        if net::device_of(net) != Device::Cpu {
            bail!("u2pl: runs on the CPU only (its contrastive term has no CUDA kernels); use --device cpu");
        }
        ensure!(net.projection.is_some(), "u2pl: the network needs a representation (projection) head");
        ensure!(net.head.classifier.is_some(), "u2pl: the network needs a classifier");
        let mut teacher = DeepLabV3Plus::new(&net.spec, &mut Rng::new(0))?;
        teacher.add_projection(&mut Rng::new(0))?;
        ema(&mut teacher, net, 0.0)?;
        let dim = net.feature_channels();
        self.state = Some(State { teacher, queues: Queues::new(self.classes, self.s.queue_size, dim) });
        Ok(())
    }

    fn loss(&mut self, _net: &mut Net, _b: &Batch, _step: usize, _ctx: &mut Ctx) -> Result<Tensor> {
        bail!("u2pl: every step needs an unlabeled batch besides the labeled one")
    }

    fn loss_semi(&mut self, net: &mut Net, lb: &Batch, ub: &Batch, step: usize, ctx: &mut Ctx) -> Result<Tensor> {
        self.last_step = step;
        self.semi_loss(net, lb, ub, step, ctx)
    }

    fn after_step(&mut self, net: &mut Net) -> Result<()> {
        let warm = self.s.sup_only_steps;
        let st = self.state.as_mut().context("u2pl: the objective was not started")?;
        let d = if self.last_step < warm {
            0.0
        } else {
            let k = (self.last_step - warm) as f64;
            (1.0 - 1.0 / (k + 1.0)).min(self.s.ema_momentum)
        };
        ema(&mut st.teacher, net, d)
    }

    fn state(&mut self) -> Option<&mut dyn Module> {
        self.state.as_mut().map(|s| s as &mut dyn Module)
    }

    fn eval_net<'a>(&'a mut self, net: &'a mut Net) -> &'a mut Net {
        match self.state.as_mut() {
            Some(s) => &mut s.teacher,
            None => net,
        }
    }

    fn finish(&mut self, net: &mut Net) -> Result<()> {
        let st = self.state.as_mut().context("u2pl: the objective was not started")?;
        ema(net, &mut st.teacher, 0.0)
    }

    fn step_metrics(&self) -> Option<serde_json::Value> {
        (!self.metrics.is_null()).then(|| self.metrics.clone())
    }

    fn describe(&self) -> Option<String> {
        let (lo, hi) = self.s.rank_range(self.classes);
        let q = self.state.as_ref().map_or(0, |s| s.queues.bytes());
        Some(format!(
            "u2pl: unlabeled batch {}, labeled outputs from the {}, {} supervised-only steps, negative ranks [{lo}, {hi}) of {} classes, queues {} x {} keys ({:.1} MiB)",
            self.s.unlabeled_batch.unwrap_or(self.batch),
            match self.s.labeled_from {
                LabeledFrom::Teacher => "teacher",
                LabeledFrom::Student => "student",
            },
            self.s.sup_only_steps,
            self.classes,
            self.classes,
            self.s.queue_size,
            q as f64 / (1 << 20) as f64
        ))
    }
}

#[cfg(test)]
mod tests;
