//! The pixel-wise label-based contrastive loss (Zhao et al., ICCV 2021), fused: O(N d) memory.
//!
//! # Forward
//! Features `f: [B, D, H, W]` (meant to be unit-normalised over `D`; any features are accepted and
//! the computation stays stable, but the loss is defined on whatever dot products they give), labels
//! `B x H x W` (`cfg.ignore` marks pixels that are neither anchors nor candidates). With
//! `s_ij = f_i . f_j / tau` and, per anchor `i` of class `y_i`:
//!
//! * `ContrastiveForm::PerPositive` (the paper): negatives `K_i` = candidates of another class from the
//!   anchor's own image (or bag), positives `P_i` = candidates of class `y_i` (i itself included),
//!   `l_ij = -log(e_ij / (e_ij + sum_{k in K_i} e_ik))`, `loss_i = mean_{j in P_i} l_ij`.
//! * `ContrastiveForm::SupCon`: candidates `C_i` = all candidates except `i` itself, positives
//!   `P_i` = those of class `y_i`, `l_ij = -log(e_ij / sum_{k in C_i} e_ik)`, `loss_i = mean_{j in P_i} l_ij`;
//!   anchors with no positive other than themselves are skipped.
//!
//! Reduction, as the official code's `compute_contrastive_loss`: an anchor *counts* when it has a
//! positive (every non-ignored pixel in the per-positive form, which includes `i` in `P_i`). The
//! loss averages `loss_i` over the counting anchors of each *unit* and then takes the plain mean
//! over the units, a unit without a counting anchor contributing 0 but still counted:
//!
//! `loss = (1/U) sum_u [n_u > 0] (1/n_u) sum_{i in u, i counts} loss_i`,
//!
//! i.e. `sum_i w_i loss_i` with `w_i = 1 / (U n_u)` for a counting anchor of unit `u` (0 otherwise),
//! `U` units and `n_u` counting anchors in unit `u`. The units are the `B` images (within- and
//! cross-image modes: the official `reduce_mean` over the batch), the `B` image pairs of
//! [`pixel_contrastive_loss_pair`] (the anchors of both images of a pair averaged together), and the
//! one batch bag (batch mode). The loss is 0 (with zero gradient) when no anchor counts.
//!
//! Modes ([`ContrastiveMode`]):
//! * `WithinImage`: each image contrasted with itself.
//! * `CrossImage`: image `b` is paired with image `perm[b]` ([`cross_image_partners`]: a random cyclic
//!   permutation from `cfg.seed`, so never itself when `B > 1`). Anchors are `b`'s pixels; positives are
//!   `b`'s and `perm[b]`'s pixels of the anchor's class; negatives (and, in SupCon, the other candidates)
//!   come from `b` only. With `B == 1` the image is its own partner, which would only duplicate every
//!   positive and leave every mean unchanged, so the loss equals the within-image loss.
//!   [`pixel_contrastive_loss_pair`] pairs image `b` of one view with image `b` of another view instead.
//! * `Batch`: all valid pixels of the batch in one bag, a uniform sample without replacement of at most
//!   `cfg.max_pixels` of them ([`batch_sample`], seeded by `cfg.seed`).
//!
//! # Backward
//! With `dS_ij = dloss/ds_ij` as in `kernels::cpu::contrastive` (per-positive form:
//! `-(w_i/|P_i|) sig(L_i - s_ij)` on positives and `(w_i/|P_i|) A_i e_ik / e^{L_i}` on negatives, where
//! `L_i = log sum_{K_i} e_ik` and `A_i = sum_{P_i} sig(L_i - s_ij)`; SupCon: `w_i e_ik / e^{L_i} - [k in P_i] w_i/|P_i|`),
//! `df_i = (g/tau) (sum_j dS_ij f_j + sum_a dS_ai f_a)`: each pixel gets its anchor-side and candidate-side
//! terms. Saved for backward: the (shared, not copied) input features, the bags (pixel ids grouped by
//! class) and a few numbers per anchor (`L_i`, two weights, the shifted sum): O(N). Forward and
//! backward walk the symmetric score matrix tile by tile, recomputing scores instead of storing them,
//! and never hold an `N x N` matrix (see `kernels::cpu::contrastive`).
//!
//! On `Device::Cuda` (feature `cuda`, f32) the same bags drive `kernels::cuda::contrastive`: one block
//! per anchor, the per-anchor state `(L_i, c_pos, c_exp)` kept on the device (O(N)), the per-anchor
//! terms summed on the host in f64 (one read-back per bag); the backward reads the scalar `g` back and
//! accumulates into a zeroed gradient. The pair loss lays the two views end to end on the device
//! (`[2B, D, H, W]`, saved for the backward) and splits the gradient. The kernels stage a D-vector
//! tile in shared memory, so at most `kernels::cuda::contrastive::MAX_CHANNELS` channels (5888).
//!
//! Errors: non-4-D features, `D == 0`, features and labels of different `B, H, W`, a label that is
//! neither `< classes` nor `ignore`, `tau <= 0` (or not finite), `max_pixels == 0` in batch mode.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, LabelMap, Result, Rng, Shape, Tensor};
use kernels::cpu::contrastive::{self as kc, Bag, FastMath, Form};
use std::borrow::Cow;

const OP: &str = "pixel_contrastive_loss";
const OP_PAIR: &str = "pixel_contrastive_loss_pair";

/// Which pixels are contrasted with which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ContrastiveMode {
    /// Each image against itself (the paper's default).
    #[default]
    WithinImage,
    /// Each image paired with a partner image: positives from both, negatives from its own.
    CrossImage,
    /// All pixels of the batch as one bag, randomly subsampled to at most `max_pixels`.
    Batch,
}

/// The denominator of each positive pair's term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ContrastiveForm {
    /// Zhao et al.: `e_ij / (e_ij + sum of negatives of i)`.
    #[default]
    PerPositive,
    /// SupCon: `e_ij / sum over all k != i of e_ik`.
    SupCon,
}

/// Settings of [`pixel_contrastive_loss`].
#[derive(Clone, Debug)]
pub struct ContrastiveConfig {
    /// Temperature (> 0), default 0.07.
    pub tau: f64,
    /// Pairing of pixels.
    pub mode: ContrastiveMode,
    /// Denominator form.
    pub form: ContrastiveForm,
    /// Number of classes (labels must be `< classes` or `ignore`).
    pub classes: usize,
    /// The ignore label.
    pub ignore: u8,
    /// Pixel budget of the batch mode.
    pub max_pixels: usize,
    /// Seed for the batch mode's sample and the cross-image partner shuffle.
    pub seed: u64,
}

impl Default for ContrastiveConfig {
    fn default() -> Self {
        ContrastiveConfig {
            tau: 0.07,
            mode: ContrastiveMode::WithinImage,
            form: ContrastiveForm::PerPositive,
            classes: 256,
            ignore: 255,
            max_pixels: 10_000,
            seed: 0,
        }
    }
}

/// The loss for features `[B, D, H, W]` and labels `B x H x W`; a scalar tensor. See the module docs.
pub fn pixel_contrastive_loss(features: &Tensor, labels: &LabelMap, cfg: &ContrastiveConfig) -> Result<Tensor> {
    let [b, d, h, w] = validate(OP, features, labels, cfg)?;
    let hw = h * w;
    let bags = match cfg.mode {
        // One unit (group) per image in the within- and cross-image modes, one for the batch bag.
        ContrastiveMode::WithinImage => image_bags(labels, cfg.ignore, &vec![None; b], |i| i),
        ContrastiveMode::CrossImage => {
            let partners: Vec<Option<usize>> =
                cross_image_partners(b, cfg.seed).into_iter().enumerate().map(|(i, p)| (p != i).then_some(p)).collect();
            image_bags(labels, cfg.ignore, &partners, |i| i)
        }
        ContrastiveMode::Batch => {
            let ids = batch_sample(labels, cfg.ignore, cfg.max_pixels, cfg.seed);
            vec![Bag::from_pixels(ids.into_iter().map(|g| (labels.data[g as usize], g)).collect(), None, 0)]
        }
    };
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = features.device() {
        return on_cuda::single(features, d, hw, bags, cfg);
    }
    let geo = Geometry { d, hw, inv_tau: 1.0 / cfg.tau, form: form_of(cfg.form) };
    with_dtype!(features.dtype(), T, {
        let fwd = kc::forward(&geo.problem(features.cpu_slice::<T>(OP)?, &bags));
        let out = Tensor::from_cpu(T::wrap(vec![T::from_f64(fwd.loss)]), Shape(vec![]));
        let src = Source::Single(features.detach());
        record(OP, &[features], out, || Box::new(ContrastiveBackward::<T> { src, bags, fwd, geo }))
    })
}

/// The cross-view loss: image `b` of `features_a` is paired with image `b` of `features_b` (for
/// example two augmentations of the same crop, or the original and a shuffled distorted view).
/// Anchors are the pixels of both images of a pair; an anchor's positives are the pixels of its
/// class in its own image and in the other image of the pair, its negatives (and SupCon
/// candidates) come from its own image only. The reduction (see the module docs) averages the
/// counting anchors of each pair's `2N` pixels together, then takes the mean over the `B` pairs:
///
/// `loss = (1/B) sum_b [n_b + n'_b > 0] (sum_{i in A_b} loss_i + sum_{i in A'_b} loss_i) / (n_b + n'_b)`,
///
/// `A_b`, `A'_b` the counting anchors of image `b` of `features_a` and of `features_b` and `n_b`,
/// `n'_b` their numbers: a pair without a counting anchor contributes 0 and still counts in `B`,
/// and the image of a pair with more valid pixels weighs more. Gradients flow to both feature tensors.
/// `cfg.mode` is not consulted (the pairing is given).
///
/// This is `cross_image_supervised_pixel_contrastive_loss` of Zhao et al.'s official code (2N-pixel
/// pairs, positives by label anywhere in the pair, negatives masked to the anchor's own image,
/// weights `valid_i / max(1e-6, sum valid)` over the 2N anchors, `reduce_mean` over the batch).
pub fn pixel_contrastive_loss_pair(
    features_a: &Tensor,
    labels_a: &LabelMap,
    features_b: &Tensor,
    labels_b: &LabelMap,
    cfg: &ContrastiveConfig,
) -> Result<Tensor> {
    let [b, d, h, w] = validate(OP_PAIR, features_a, labels_a, cfg)?;
    validate(OP_PAIR, features_b, labels_b, cfg)?;
    if features_a.dims() != features_b.dims() {
        return Err(Error::shape(
            OP_PAIR,
            format!("the two views differ: {} vs {}", features_a.shape(), features_b.shape()),
        ));
    }
    if features_a.dtype() != features_b.dtype() {
        return Err(Error::DType { op: OP_PAIR, lhs: features_a.dtype(), rhs: features_b.dtype() });
    }
    if features_a.device() != features_b.device() {
        let msg = format!("the two views are on {} and {}", features_a.device(), features_b.device());
        return Err(Error::Device { op: OP_PAIR, msg });
    }
    let both = LabelMap { n: 2 * b, h, w, data: labels_a.data.iter().chain(&labels_b.data).copied().collect() };
    let partners: Vec<Option<usize>> = (0..2 * b).map(|i| Some((i + b) % (2 * b))).collect();
    // Image b of either view is in pair (group) b: its anchors are averaged with its partner's.
    let bags = image_bags(&both, cfg.ignore, &partners, |i| i % b);
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = features_a.device() {
        return on_cuda::pair(features_a, features_b, [b, d, h, w], bags, cfg);
    }
    let geo = Geometry { d, hw: h * w, inv_tau: 1.0 / cfg.tau, form: form_of(cfg.form) };
    let src = Source::Pair(features_a.detach(), features_b.detach());
    with_dtype!(features_a.dtype(), T, {
        let feats = src.concat::<T>()?;
        let fwd = kc::forward(&geo.problem(&feats, &bags));
        drop(feats);
        let out = Tensor::from_cpu(T::wrap(vec![T::from_f64(fwd.loss)]), Shape(vec![]));
        record(OP_PAIR, &[features_a, features_b], out, || Box::new(ContrastiveBackward::<T> { src, bags, fwd, geo }))
    })
}

/// The cross-image partner of each of `b` images: a uniformly random cyclic permutation (Sattolo's
/// algorithm) drawn from `Rng::new(seed)`, so `perm[i] != i` whenever `b > 1`; `[0]` when `b == 1`.
pub fn cross_image_partners(b: usize, seed: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..b).collect();
    let mut rng = Rng::new(seed);
    for i in (1..b).rev() {
        let j = rng.below(i);
        perm.swap(i, j);
    }
    perm
}

/// The batch mode's pixels: global ids `image * h * w + y * w + x` of non-ignored pixels, all of them
/// if there are at most `max_pixels`, else a uniform sample without replacement (a partial
/// Fisher-Yates shuffle driven by `Rng::new(seed)`); ascending.
pub fn batch_sample(labels: &LabelMap, ignore: u8, max_pixels: usize, seed: u64) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..labels.data.len() as u32).filter(|&g| labels.data[g as usize] != ignore).collect();
    if ids.len() > max_pixels {
        let mut rng = Rng::new(seed);
        for k in 0..max_pixels {
            let j = k + rng.below(ids.len() - k);
            ids.swap(k, j);
        }
        ids.truncate(max_pixels);
        ids.sort_unstable();
    }
    ids
}

/// Bytes of scratch one forward + backward of the within-image loss allocates for an image of `n`
/// pixels and `d` channels in f32 on the current rayon pool (gathered features, per-thread tiles,
/// per-anchor state); the gradient tensor itself is not included.
pub fn contrastive_scratch_bytes(n: usize, d: usize) -> usize {
    kc::scratch_bytes(n, d, 0, rayon::current_num_threads(), 4)
}

fn form_of(f: ContrastiveForm) -> Form {
    match f {
        ContrastiveForm::PerPositive => Form::PerPositive,
        ContrastiveForm::SupCon => Form::SupCon,
    }
}

fn validate(op: &'static str, f: &Tensor, labels: &LabelMap, cfg: &ContrastiveConfig) -> Result<[usize; 4]> {
    let &[b, d, h, w] = f.dims() else {
        return Err(Error::shape(op, format!("features must be [B, D, H, W], got {}", f.shape())));
    };
    if d == 0 {
        return Err(Error::invalid(op, format!("features {} have no channels", f.shape())));
    }
    if (labels.n, labels.h, labels.w) != (b, h, w) {
        return Err(Error::shape(
            op,
            format!(
                "features {} vs labels {}x{}x{}: batch and spatial sizes must match",
                f.shape(),
                labels.n,
                labels.h,
                labels.w
            ),
        ));
    }
    if !(cfg.tau > 0.0 && cfg.tau.is_finite()) {
        return Err(Error::invalid(op, format!("temperature tau must be positive and finite, got {}", cfg.tau)));
    }
    if cfg.mode == ContrastiveMode::Batch && cfg.max_pixels == 0 {
        return Err(Error::invalid(op, "batch mode needs max_pixels >= 1"));
    }
    if 2 * b * h * w > u32::MAX as usize {
        return Err(Error::invalid(op, format!("{} pixels exceed the u32 pixel index", b * h * w)));
    }
    labels.validate(op, cfg.classes, cfg.ignore)?;
    Ok([b, d, h, w])
}

/// One bag per image of its non-ignored pixels, with the given partners, image `i` in group `group(i)`.
fn image_bags(labels: &LabelMap, ignore: u8, partners: &[Option<usize>], group: impl Fn(usize) -> usize) -> Vec<Bag> {
    let hw = labels.h * labels.w;
    (0..labels.n)
        .map(|i| {
            let items = (i * hw..(i + 1) * hw)
                .filter(|&g| labels.data[g] != ignore)
                .map(|g| (labels.data[g], g as u32))
                .collect();
            Bag::from_pixels(items, partners[i], group(i))
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Geometry {
    d: usize,
    hw: usize,
    inv_tau: f64,
    form: Form,
}

impl Geometry {
    fn problem<'a, T: Element>(&self, feats: &'a [T], bags: &'a [Bag]) -> kc::Problem<'a, T> {
        kc::Problem { feats, d: self.d, hw: self.hw, bags, inv_tau: T::from_f64(self.inv_tau), form: self.form }
    }
}

/// The features the bags index into: one tensor, or two views laid end to end.
enum Source {
    Single(Tensor),
    Pair(Tensor, Tensor),
}

impl Source {
    fn concat<T: Element>(&self) -> Result<Cow<'_, [T]>> {
        Ok(match self {
            Source::Single(t) => Cow::Borrowed(t.cpu_slice::<T>(OP)?),
            Source::Pair(a, b) => {
                Cow::Owned(a.cpu_slice::<T>(OP_PAIR)?.iter().chain(b.cpu_slice::<T>(OP_PAIR)?).copied().collect())
            }
        })
    }
}

struct ContrastiveBackward<T> {
    src: Source,
    bags: Vec<Bag>,
    fwd: kc::Forward<T>,
    geo: Geometry,
}

impl<T: Element + FastMath> Backward for ContrastiveBackward<T> {
    fn name(&self) -> &'static str {
        match self.src {
            Source::Single(_) => OP,
            Source::Pair(..) => OP_PAIR,
        }
    }
    fn saved_bytes(&self) -> usize {
        let feats = match &self.src {
            Source::Single(t) => t.nbytes(),
            Source::Pair(a, b) => a.nbytes() + b.nbytes(),
        };
        let bags: usize = self.bags.iter().map(|b| 4 * b.len() + 24 * b.runs.len()).sum();
        let states: usize = self.fwd.states.iter().map(|s| s.bytes()).sum();
        feats + bags + states
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs.iter().any(|&n| n) {
            return Ok(vec![None; needs.len()]);
        }
        let scale = T::from_f64(g.item()?);
        let feats = self.src.concat::<T>()?;
        let mut grad = vec![T::ZERO; feats.len()];
        kc::backward(&self.geo.problem(&feats, &self.bags), &self.fwd, scale, &mut grad);
        drop(feats);
        Ok(match &self.src {
            Source::Single(t) => vec![Some(Tensor::from_cpu(T::wrap(grad), t.shape().clone()))],
            Source::Pair(a, b) => {
                let gb = grad.split_off(a.numel());
                vec![
                    needs[0].then(|| Tensor::from_cpu(T::wrap(grad), a.shape().clone())),
                    needs[1].then(|| Tensor::from_cpu(T::wrap(gb), b.shape().clone())),
                ]
            }
        })
    }
}

/// The f32 CUDA path through `kernels::cuda::contrastive`, over the bags built above.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::{form_of, ContrastiveConfig, OP, OP_PAIR};
    use crate::cuda::{buf, place, take, wrap};
    use crate::tape::record;
    use crate::{Backward, Error, Result, Tensor};
    use kernels::cpu::contrastive::Bag;
    use kernels::cuda::contrastive::{self as kc, Saved, MAX_CHANNELS};

    /// A clear error before any upload: the kernels' shared-memory tile holds `MAX_CHANNELS` channels.
    fn check_channels(op: &'static str, d: usize) -> Result<()> {
        if d > MAX_CHANNELS {
            return Err(Error::invalid(
                op,
                format!(
                    "{d} feature channels exceed the CUDA kernel's shared-memory tile (at most {MAX_CHANNELS}); \
                     project to fewer channels or compute the loss on the CPU"
                ),
            ));
        }
        Ok(())
    }

    /// Loss of `feats` (`[images, D, H, W]` on the device) over `bags`, and the saved state.
    fn run(
        op: &'static str,
        feats: &Tensor,
        d: usize,
        hw: usize,
        bags: &[Bag],
        cfg: &ContrastiveConfig,
    ) -> Result<(Tensor, Saved)> {
        check_channels(op, d)?;
        let fb = buf(feats, op)?;
        let (loss, saved) = kc::forward(fb, d, hw, bags, (1.0 / cfg.tau) as f32, form_of(cfg.form))?;
        Ok((wrap(fb.device().upload(&[loss as f32])?, vec![]), saved))
    }

    pub(super) fn single(
        features: &Tensor,
        d: usize,
        hw: usize,
        bags: Vec<Bag>,
        cfg: &ContrastiveConfig,
    ) -> Result<Tensor> {
        let (out, saved) = run(OP, features, d, hw, &bags, cfg)?;
        record(OP, &[features], out, || Box::new(ContrastiveBackward { feats: features.detach(), saved, split: None }))
    }

    pub(super) fn pair(
        features_a: &Tensor,
        features_b: &Tensor,
        [b, d, h, w]: [usize; 4],
        bags: Vec<Bag>,
        cfg: &ContrastiveConfig,
    ) -> Result<Tensor> {
        check_channels(OP_PAIR, d)?;
        let both = place(OP_PAIR, &[2 * b, d, h, w], 0, &[(features_a, 0), (features_b, b)])?;
        let (out, saved) = run(OP_PAIR, &both, d, h * w, &bags, cfg)?;
        record(OP_PAIR, &[features_a, features_b], out, || {
            Box::new(ContrastiveBackward { feats: both, saved, split: Some(b) })
        })
    }

    /// Saves the features the bags index into (the input itself, shared, or the two views laid end
    /// to end, `split` = images per view) and the device-side bags and per-anchor state.
    struct ContrastiveBackward {
        feats: Tensor,
        saved: Saved,
        split: Option<usize>,
    }

    impl Backward for ContrastiveBackward {
        fn name(&self) -> &'static str {
            match self.split {
                None => OP,
                Some(_) => OP_PAIR,
            }
        }
        fn saved_bytes(&self) -> usize {
            self.feats.nbytes() + self.saved.bytes()
        }
        fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
            if !needs.iter().any(|&n| n) {
                return Ok(vec![None; needs.len()]);
            }
            let op = self.name();
            let fb = buf(&self.feats, op)?;
            let scale = g.item()? as f32;
            let mut grad = fb.device().alloc_zeros::<f32>(self.feats.numel())?;
            kc::backward(fb, &self.saved, scale, &mut grad)?;
            let grad = wrap(grad, self.feats.dims().to_vec());
            Ok(match self.split {
                None => vec![Some(grad)],
                Some(b) => vec![
                    needs[0].then(|| take(op, &grad, 0, 0, b)).transpose()?,
                    needs[1].then(|| take(op, &grad, 0, b, b)).transpose()?,
                ],
            })
        }
    }
}
