//! What a stage minimises. Each stage builds one [`Objective`] ([`for_stage`]); the step loop owns
//! it for the whole stage, asks it for the loader's augmentation and for every batch's loss, and
//! calls [`Objective::after_step`] after each optimiser step. An objective may keep state across
//! steps (an EMA teacher, memory queues, a momentum encoder); the loop has no per-stage cases.
//!
//! The contrastive objective follows the official code of Zhao et al. (google-research
//! `supervised_pixel_contrastive_loss`): every crop comes as two views with the same geometry and
//! labels, the original and a colour-distorted one; each view goes through the network on its own
//! (its own batch-norm statistics), its decoder features are bilinearly resized to the loss grid
//! (`align_corners = true`) and projected, and the crop's labels are resized to the grid by the
//! matching `align_corners = true` nearest rule. Then, per [`LossMode`]:
//!
//! * `within`: `L(original) + L(distorted)`, each view's images contrasted with themselves
//!   (`within_image_loss=True`); each `L` averages every image's anchors, then takes the mean over
//!   the `B` images (an image without a valid pixel counts as 0);
//! * `cross`: original image `b` paired with the distorted view of image `perm[b]`, `perm` a
//!   uniformly random permutation ([`batch_shuffle`], `tf.random.shuffle` of the indices, so
//!   `perm[b] == b` can happen): anchors from both images of the pair, positives of the anchor's
//!   class in both, negatives from the anchor's own image ([`ops::pixel_contrastive_loss_pair`]);
//!   the anchors of a pair's `2N` pixels are averaged together, then the mean is taken over the
//!   `B` pairs (a pair without a valid pixel counts as 0), as the official code reduces;
//! * `batch` (not in the official code): the batch bag of each view, summed.

use crate::config::{ContrastiveSettings, LossMode, TrainConfig};
use crate::net::{self, Net};
use crate::train::derive_seed;
use anyhow::{Context, Result};
use datasets::{AugmentConfig, Batch, ColorJitter};
use engine::ops::{self, ContrastiveConfig, ContrastiveForm, ContrastiveMode};
use engine::{LabelMap, Rng, Tensor};
use nn::{Ctx, Module, Visitor};

/// A stage's training objective.
///
/// The step loop calls, in order: [`Objective::start`] once (then, on resume, loads the
/// checkpoint's [`Objective::state`] over what it built), per step [`Objective::loss`] (or
/// [`Objective::loss_semi`] when [`Objective::unlabeled`] asks for unlabeled batches), backward,
/// SGD, [`Objective::after_step`]; evaluations score [`Objective::eval_net`]; after the last step
/// [`Objective::finish`], then the final checkpoint. Every method but `loss` has a default that
/// leaves the plain stages as they were. `Send`: the loop runs on a worker of the thread pool
/// (`commands::in_pool`).
pub trait Objective: Send {
    /// The augmentation of the stage's loader (default: the fine-tuning recipe of `cfg`).
    fn augment(&self, cfg: &TrainConfig) -> AugmentConfig {
        train_augment(cfg)
    }
    /// The loss of one batch at stage step `step`, recorded on `ctx`'s tape.
    fn loss(&mut self, net: &mut Net, batch: &Batch, step: usize, ctx: &mut Ctx) -> Result<Tensor>;
    /// Called after every optimiser step (EMA updates, queue pushes). Default: nothing.
    fn after_step(&mut self, _net: &mut Net) -> Result<()> {
        Ok(())
    }
    /// Unlabeled images per step and their loader's augmentation, for an objective that also
    /// trains on the stage's unlabeled images (their labels hidden). Default: none.
    fn unlabeled(&self, _cfg: &TrainConfig) -> Option<(usize, AugmentConfig)> {
        None
    }
    /// The loss of a step with a labeled and an unlabeled batch (called instead of
    /// [`Objective::loss`] when [`Objective::unlabeled`] is `Some`). Default: the labeled loss.
    fn loss_semi(
        &mut self,
        net: &mut Net,
        labeled: &Batch,
        _unlabeled: &Batch,
        step: usize,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        self.loss(net, labeled, step, ctx)
    }
    /// Called once before the stage's first step (on resume too, before the checkpoint's state
    /// is loaded over what it built), with the network as the stage starts. Default: nothing.
    fn start(&mut self, _net: &mut Net) -> Result<()> {
        Ok(())
    }
    /// State kept across steps that checkpoints must hold (a teacher, queues), saved under
    /// `objective.` beside the network. Default: none.
    fn state(&mut self) -> Option<&mut dyn Module> {
        None
    }
    /// The network evaluations score (default: the trained one).
    fn eval_net<'a>(&'a mut self, net: &'a mut Net) -> &'a mut Net {
        net
    }
    /// Called after the last step, before the final checkpoint (which holds `net` only).
    /// Default: nothing.
    fn finish(&mut self, _net: &mut Net) -> Result<()> {
        Ok(())
    }
    /// Numbers of the last step for its metrics record (loss terms, ...). Default: none.
    fn step_metrics(&self) -> Option<serde_json::Value> {
        None
    }
    /// A line for the log at the stage's start. Default: none.
    fn describe(&self) -> Option<String> {
        None
    }
}

/// A network and, if its objective has any, the objective's state under `objective.`: what a
/// stage's checkpoints hold. Without state it visits exactly as the network (the same names).
pub struct WithState<'a> {
    /// The trained network (names at the root).
    pub net: &'a mut Net,
    /// The objective's state.
    pub state: Option<&'a mut dyn Module>,
}

impl Module for WithState<'_> {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        self.net.visit(v);
        if let Some(s) = self.state.as_mut() {
            v.child("objective", &mut **s);
        }
    }
}

/// The objective of `stage`: the pixel contrastive loss for the contrastive stage, U2PL for the
/// U2PL stage, cross-entropy for the others.
pub fn for_stage(stage: crate::config::Stage, cfg: &TrainConfig, classes: usize) -> Box<dyn Objective> {
    match stage {
        crate::config::Stage::Contrastive => Box::new(PixelContrast::new(cfg, classes)),
        crate::config::Stage::U2pl => Box::new(crate::u2pl::U2pl::new(cfg, classes)),
        crate::config::Stage::Densecl => Box::new(crate::densecl::DenseCl::new(cfg)),
        _ => Box::new(CrossEntropy { ignore: 255 }),
    }
}

/// Random scale, crop and flip as `cfg.augment` sets them, no colour distortion.
pub fn train_augment(cfg: &TrainConfig) -> AugmentConfig {
    let mut aug = AugmentConfig::train(cfg.crop);
    let [lo, hi] = cfg.augment.scale;
    aug.scale = (lo != 1.0 || hi != 1.0).then_some((lo as f32, hi as f32));
    aug.hflip = cfg.augment.hflip;
    aug
}

/// Pixel-wise cross-entropy against the batch's labels (fine-tuning, CE-only, pseudo-labels).
pub struct CrossEntropy {
    /// The ignore label.
    pub ignore: u8,
}

impl Objective for CrossEntropy {
    fn loss(&mut self, net: &mut Net, b: &Batch, _step: usize, ctx: &mut Ctx) -> Result<Tensor> {
        let x = net::input(net, b.images.clone(), b.image_shape)?;
        let [n, h, w] = b.label_shape;
        let labels = LabelMap::new(n, h, w, b.labels.clone())?;
        Ok(ops::cross_entropy(&net::logits(net, &x, ctx)?, &labels, self.ignore)?)
    }
}

/// The pixel-wise label-based contrastive loss on two views of every crop (see the module docs).
pub struct PixelContrast {
    settings: ContrastiveSettings,
    /// Colour distortion of the second view.
    color: bool,
    classes: usize,
    seed: u64,
}

impl PixelContrast {
    /// The objective `cfg.loss` describes, for `classes` classes.
    pub fn new(cfg: &TrainConfig, classes: usize) -> PixelContrast {
        PixelContrast { settings: cfg.loss.clone(), color: cfg.augment.color, classes, seed: cfg.seed }
    }

    /// The seed of step `step`'s random choices (cross-image shuffle, batch-mode sample).
    pub fn step_seed(&self, step: usize) -> u64 {
        derive_seed(self.seed, &[7, step as u64])
    }

    /// The loss op's settings for one view (or pair) at step `step`.
    pub fn loss_config(&self, mode: ContrastiveMode, step: usize) -> ContrastiveConfig {
        ContrastiveConfig {
            tau: self.settings.tau,
            mode,
            form: if self.settings.supcon { ContrastiveForm::SupCon } else { ContrastiveForm::PerPositive },
            classes: self.classes,
            ignore: 255,
            max_pixels: self.settings.max_pixels,
            seed: self.step_seed(step),
        }
    }
}

impl Objective for PixelContrast {
    fn augment(&self, cfg: &TrainConfig) -> AugmentConfig {
        AugmentConfig { color: self.color.then(ColorJitter::default), two_views: true, ..train_augment(cfg) }
    }

    fn loss(&mut self, net: &mut Net, b: &Batch, step: usize, ctx: &mut Ctx) -> Result<Tensor> {
        let distorted = b
            .distorted
            .as_ref()
            .context("the contrastive objective needs two-view batches (AugmentConfig::two_views)")?;
        let [n, h, w] = b.label_shape;
        let grid = self.settings.grid.size(h, w);
        let x = net::input(net, b.images.clone(), b.image_shape)?;
        let z_orig = net::embed(net, &x, grid, ctx)?;
        drop(x);
        let x = net::input(net, distorted.clone(), b.image_shape)?;
        let z_dist = net::embed(net, &x, grid, ctx)?;
        drop(x);
        let labels = LabelMap::new(n, h, w, b.labels.clone())?;
        let lab = ops::resize_nearest_labels_align_corners(&labels, [z_orig.dim(2), z_orig.dim(3)])?;
        let single = |mode, z: &Tensor| ops::pixel_contrastive_loss(z, &lab, &self.loss_config(mode, step));
        Ok(match self.settings.mode {
            LossMode::Within => {
                single(ContrastiveMode::WithinImage, &z_orig)?.add(&single(ContrastiveMode::WithinImage, &z_dist)?)?
            }
            LossMode::Batch => {
                single(ContrastiveMode::Batch, &z_orig)?.add(&single(ContrastiveMode::Batch, &z_dist)?)?
            }
            LossMode::Cross => {
                let perm = batch_shuffle(n, self.step_seed(step));
                let (z_perm, lab_perm) = (gather_images(&z_dist, &perm)?, gather_labels(&lab, &perm));
                let cc = self.loss_config(ContrastiveMode::CrossImage, step);
                ops::pixel_contrastive_loss_pair(&z_orig, &lab, &z_perm, &lab_perm, &cc)?
            }
        })
    }
}

/// A uniformly random permutation of `0..n` (Fisher-Yates from `Rng::new(seed)`), like
/// `tf.random.shuffle(tf.range(n))`: unlike a cyclic partner choice, `perm[b] == b` can happen.
pub fn batch_shuffle(n: usize, seed: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    perm
}

/// Images `perm[0], perm[1], ...` of `[N, ...]` (differentiable: split + concat).
pub fn gather_images(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let parts = ops::split(x, &vec![1; x.dim(0)], 0)?;
    Ok(ops::concat(&perm.iter().map(|&i| &parts[i]).collect::<Vec<_>>(), 0)?)
}

/// Label maps `perm[0], perm[1], ...` of a batch.
pub fn gather_labels(l: &LabelMap, perm: &[usize]) -> LabelMap {
    let hw = l.h * l.w;
    let data = perm.iter().flat_map(|&i| l.data[i * hw..(i + 1) * hw].iter().copied()).collect();
    LabelMap { n: perm.len(), h: l.h, w: l.w, data }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LossGrid;
    use crate::model::{Backbone, DeepLabV3Plus, ModelSpec};
    use engine::DType;

    /// A small pretraining network without dropout, so a view's embedding is a function of its
    /// input alone (train-mode batch norm, no random masks).
    fn tiny_net() -> Net {
        let spec = ModelSpec {
            width: 0.125,
            output_stride: 8,
            head_channels: 64,
            aspp_rates: Some([1, 2, 3]),
            dropout: 0.0,
            ..ModelSpec::new(Backbone::Resnet18, 3)
        };
        DeepLabV3Plus::for_pretraining(&spec, &mut Rng::new(4)).unwrap()
    }

    /// Two views of random crops (the second a colour map of the first plus noise), blocky labels
    /// with some ignored pixels.
    fn two_view_batch(n: usize, s: usize) -> Batch {
        let mut rng = Rng::new(11);
        let images = Tensor::randn([n, 3, s, s], 1.0, DType::F32, &mut rng).to_vec_f32().unwrap();
        let noise = Tensor::randn([n, 3, s, s], 0.3, DType::F32, &mut rng).to_vec_f32().unwrap();
        let distorted = images.iter().zip(&noise).map(|(x, e)| 0.7 * x + 0.2 + e).collect();
        let labels = (0..n * s * s)
            .map(|i| {
                let (b, y, x) = (i / (s * s), i / s % s, i % s);
                if (y + x + b) % 11 == 0 {
                    255
                } else {
                    ((b + y / 5 + x / 7) % 3) as u8
                }
            })
            .collect();
        Batch {
            epoch: 0,
            step: 0,
            indices: (0..n).collect(),
            images,
            image_shape: [n, 3, s, s],
            labels,
            label_shape: [n, s, s],
            distorted: Some(distorted),
        }
    }

    fn cfg(mode: LossMode, grid: LossGrid) -> TrainConfig {
        let mut c = TrainConfig::default();
        c.loss.mode = mode;
        c.loss.grid = grid;
        c.seed = 5;
        c
    }

    /// One view's embedding on a fresh training context (detached), and the labels on its grid.
    fn view(net: &mut Net, images: &[f32], b: &Batch, grid: LossGrid) -> (Tensor, LabelMap) {
        let [n, h, w] = b.label_shape;
        let x = net::input(net, images.to_vec(), b.image_shape).unwrap();
        let z = net::embed(net, &x, grid.size(h, w), &mut Ctx::train(Rng::new(0))).unwrap().detach();
        let labels = LabelMap::new(n, h, w, b.labels.clone()).unwrap();
        let lab = ops::resize_nearest_labels_align_corners(&labels, [z.dim(2), z.dim(3)]).unwrap();
        (z, lab)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-5 * b.abs().max(1.0)
    }

    #[test]
    fn within_loss_is_the_sum_of_the_two_single_view_losses() {
        let b = two_view_batch(3, 32);
        for grid in [LossGrid::Eighth, LossGrid::Quarter, LossGrid::Decoder] {
            let mut net = tiny_net();
            let c = cfg(LossMode::Within, grid);
            let mut obj = PixelContrast::new(&c, 3);
            let got = obj.loss(&mut net, &b, 2, &mut Ctx::train(Rng::new(1))).unwrap().item().unwrap();
            let cc = obj.loss_config(ContrastiveMode::WithinImage, 2);
            let (zo, lab) = view(&mut net, &b.images, &b, grid);
            let (zd, lab_d) = view(&mut net, b.distorted.as_ref().unwrap(), &b, grid);
            assert_eq!(lab.data, lab_d.data, "both views share the labels");
            let want = [(&zo, &lab), (&zd, &lab_d)]
                .map(|(z, l)| ops::pixel_contrastive_loss(z, l, &cc).unwrap().item().unwrap());
            assert!((want[0] - want[1]).abs() > 1e-3, "{grid:?}: the views give different losses {want:?}");
            assert!(close(got, want[0] + want[1]), "{grid:?}: {got} vs {} + {}", want[0], want[1]);
            let side = match grid {
                LossGrid::Eighth => 4,
                _ => 8, // (32 - 1) / 4 + 1 and the decoder's stride-4 map of a 32 crop
            };
            assert_eq!([zo.dim(2), zo.dim(3)], [side, side], "{grid:?}");
        }
    }

    #[test]
    fn cross_loss_pairs_each_original_with_the_shuffled_distorted_batch() {
        let b = two_view_batch(4, 32);
        let c = cfg(LossMode::Cross, LossGrid::Eighth);
        let mut obj = PixelContrast::new(&c, 3);
        // A step whose shuffle is not the identity, so the pairing matters.
        let step = (0..50).find(|&s| batch_shuffle(4, obj.step_seed(s)) != [0, 1, 2, 3]).unwrap();
        let perm = batch_shuffle(4, obj.step_seed(step));
        let mut net = tiny_net();
        let got = obj.loss(&mut net, &b, step, &mut Ctx::train(Rng::new(1))).unwrap().item().unwrap();
        let (zo, lab) = view(&mut net, &b.images, &b, LossGrid::Eighth);
        let (zd, lab_d) = view(&mut net, b.distorted.as_ref().unwrap(), &b, LossGrid::Eighth);
        let cc = obj.loss_config(ContrastiveMode::CrossImage, step);
        let pair = |p: &[usize]| {
            let (zp, lp) = (gather_images(&zd, p).unwrap(), gather_labels(&lab_d, p));
            ops::pixel_contrastive_loss_pair(&zo, &lab, &zp, &lp, &cc).unwrap().item().unwrap()
        };
        let want = pair(&perm);
        assert!(close(got, want), "{got} vs {want} (perm {perm:?})");
        assert!(!close(got, pair(&[0, 1, 2, 3])), "the shuffle changes the loss");
    }

    #[test]
    fn gradients_reach_the_network_through_both_views() {
        let b = two_view_batch(2, 32);
        for mode in [LossMode::Within, LossMode::Cross, LossMode::Batch] {
            let mut net = tiny_net();
            let mut obj = PixelContrast::new(&cfg(mode, LossGrid::Eighth), 3);
            let mut ctx = Ctx::train(Rng::new(1));
            let loss = obj.loss(&mut net, &b, 0, &mut ctx).unwrap();
            assert!(loss.item().unwrap().is_finite());
            let grads = ctx.backward(&loss).unwrap();
            let mut missing = vec![];
            nn::for_each_param(&mut net, |name, p| {
                if grads.get(p).is_none() {
                    missing.push(name.to_string());
                }
            });
            assert!(missing.is_empty(), "{mode:?}: no gradient for {missing:?}");
        }
        // A batch without the second view is a clear error.
        let one = Batch { distorted: None, ..b };
        let err = PixelContrast::new(&cfg(LossMode::Within, LossGrid::Eighth), 3)
            .loss(&mut tiny_net(), &one, 0, &mut Ctx::train(Rng::new(1)))
            .unwrap_err();
        assert!(err.to_string().contains("two-view"), "{err}");
    }

    #[test]
    fn batch_shuffle_is_a_seeded_permutation_with_fixed_points_allowed() {
        let mut fixed = 0;
        for seed in 0..200 {
            let p = batch_shuffle(4, seed);
            let mut s = p.clone();
            s.sort_unstable();
            assert_eq!(s, [0, 1, 2, 3]);
            assert_eq!(p, batch_shuffle(4, seed));
            fixed += p.iter().enumerate().filter(|(i, &v)| *i == v).count();
        }
        // A uniform permutation has one fixed point on average (a cyclic one has none).
        assert!((120..=280).contains(&fixed), "{fixed} fixed points in 200 shuffles of 4");
        assert_eq!(batch_shuffle(1, 3), [0]);
        assert!(batch_shuffle(0, 3).is_empty());
    }

    #[test]
    fn the_contrastive_loader_asks_for_two_views() {
        let c = cfg(LossMode::Within, LossGrid::Eighth);
        let a = PixelContrast::new(&c, 3).augment(&c);
        assert!(a.two_views && a.color.is_some() && a.hflip);
        let off =
            TrainConfig { augment: crate::config::AugmentSettings { color: false, ..c.augment.clone() }, ..c.clone() };
        assert!(PixelContrast::new(&off, 3).augment(&off).color.is_none());
        let ce = CrossEntropy { ignore: 255 }.augment(&c);
        assert!(!ce.two_views && ce.color.is_none());
    }
}
