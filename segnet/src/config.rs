//! The run configuration: every knob of a training run, with the embedded default recipe as the
//! default values. Read from a TOML file (`--config`), overridden by flags, and written into the
//! run directory (and every checkpoint) so a run can be reproduced and resumed.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One training stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Stage 1: pixel-wise label-based contrastive pretraining with the projection head.
    Contrastive,
    /// Stage 2: cross-entropy fine-tuning of the whole network, starting from stage 1.
    Finetune,
    /// The baseline: cross-entropy from scratch, same data and budget.
    CeOnly,
    /// Semi-supervised: pseudo-label the unlabeled images with the current model, then retrain.
    Pseudo,
    /// Semi-supervised U2PL (Wang et al., CVPR 2022): a student and its EMA teacher, every step
    /// one labeled and one unlabeled batch; reliable pseudo-labels trained on, unreliable pixels
    /// used as negatives of the classes they are surely not (`[u2pl_settings]`).
    U2pl,
    /// Label-free DenseCL pretraining (Wang et al., CVPR 2021) on every training image: a query
    /// backbone and a momentum key encoder, global and dense contrast against queues of
    /// negatives (`[densecl_settings]`); the next stage starts from its backbone.
    Densecl,
}

impl Stage {
    /// The name used in logs, file names and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Contrastive => "contrastive",
            Stage::Finetune => "finetune",
            Stage::CeOnly => "ce-only",
            Stage::Pseudo => "pseudo",
            Stage::U2pl => "u2pl",
            Stage::Densecl => "densecl",
        }
    }
}

/// Which pixels the contrastive loss pairs. Every mode sees two views of each crop (same
/// geometry and labels): the original and a colour-distorted copy (see `train::objective`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossMode {
    /// Each image against itself, on the original and on the distorted views; the two losses
    /// are summed (the official code's `within_image_loss=True`).
    Within,
    /// Each original image with the distorted view of a shuffled image (a random permutation,
    /// possibly itself): anchors from both, positives from both, negatives from the anchor's own
    /// image (the official code's default).
    Cross,
    /// All pixels of the batch as one sampled bag, per view, summed over the two views (not in
    /// the official code).
    Batch,
}

/// The grid the contrastive loss is computed on. Features are bilinearly resized to it
/// (`align_corners = true`) from the decoder's stride-4 map, labels by the matching
/// `align_corners = true` nearest rule from the crop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossGrid {
    /// The decoder's own stride-4 map (no feature resize).
    Decoder,
    /// `(crop - 1) / 4 + 1` per side (129 for a 513 crop).
    Quarter,
    /// `(crop - 1) / 8 + 1` per side (65 for a 513 crop, DeepLab's stride-8 grid).
    Eighth,
}

impl LossGrid {
    /// The loss grid for an `h x w` crop; `None` = the decoder's map as it comes.
    pub fn size(self, h: usize, w: usize) -> Option<[usize; 2]> {
        let side = |n: usize, s: usize| (n.max(1) - 1) / s + 1;
        match self {
            LossGrid::Decoder => None,
            LossGrid::Quarter => Some([side(h, 4), side(w, 4)]),
            LossGrid::Eighth => Some([side(h, 8), side(w, 8)]),
        }
    }
}

/// Model shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// resnet18 | resnet34 | resnet50 | resnet101.
    pub backbone: String,
    /// Channel width multiplier for the backbone and the head (1.0 = the paper's sizes).
    pub width: f64,
    /// Output stride of the backbone: 8 or 16.
    pub output_stride: usize,
    /// Channels of ASPP, decoder and projection head (256 in the paper; scaled by `width`).
    pub head_channels: usize,
    /// ASPP atrous rates; default 6/12/18 at output stride 16 and 12/24/36 at 8. Small crops
    /// want smaller rates (a 64-pixel crop has a 4x4 map at stride 16).
    pub aspp_rates: Option<[usize; 3]>,
    /// Initial backbone weights (`--init-backbone`): a PyTorch `.pth` (e.g. torchvision's
    /// ImageNet ResNet as distributed), a safetensors state dict or a segnet checkpoint, with
    /// torchvision names. Loaded into every stage that would otherwise start from random
    /// weights; `None` = random initialisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_backbone: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        // The embedded default: a narrow ResNet-18 DeepLabV3+ that trains on 2 cores in minutes.
        ModelConfig {
            backbone: "resnet18".into(),
            width: 0.25,
            output_stride: 8,
            head_channels: 256,
            aspp_rates: Some([1, 2, 3]),
            init_backbone: None,
        }
    }
}

/// Hyperparameters of one stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Peak learning rate (cosine decay to 0 after `warmup` steps).
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: usize,
    /// L2 weight decay (not applied to batch-norm parameters and biases).
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
}

impl StageConfig {
    fn new(steps: usize, lr: f64) -> Self {
        StageConfig { steps, lr, warmup: 0, weight_decay: 1e-4, momentum: 0.9 }
    }
}

impl Default for StageConfig {
    fn default() -> Self {
        StageConfig::new(100, 0.01)
    }
}

/// The contrastive loss settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContrastiveSettings {
    /// Temperature.
    pub tau: f64,
    /// Pairing of pixels.
    pub mode: LossMode,
    /// Use the SupCon denominator instead of the paper's per-positive one.
    pub supcon: bool,
    /// The grid the loss is computed on (`full_resolution = true` in older configs reads as
    /// `decoder`, `false` as `eighth`).
    pub grid: LossGrid,
    /// Pixel budget of the batch mode.
    pub max_pixels: usize,
    /// 1x1 convolutions of the projection head (3 in the paper; conv + BN + ReLU for all but
    /// the last).
    pub projection_layers: usize,
}

impl Default for ContrastiveSettings {
    fn default() -> Self {
        ContrastiveSettings {
            tau: 0.07,
            // Cross-image, the official code's default (`within_image_loss=False`), chosen by the
            // label-efficiency experiment (README): on the default task it gains ~+8 points at
            // 20 labels where within-image gains nothing.
            mode: LossMode::Cross,
            supcon: false,
            grid: LossGrid::Decoder,
            max_pixels: 10_000,
            projection_layers: 3,
        }
    }
}

/// Pseudo-label thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PseudoSettings {
    /// Keep a foreground pixel when its max probability is at least this.
    pub foreground: f64,
    /// Keep a background (class 0) pixel when its max probability is at least this.
    pub background: f64,
}

impl Default for PseudoSettings {
    fn default() -> Self {
        PseudoSettings { foreground: 0.8, background: 0.97 }
    }
}

/// Whose outputs on the labeled images feed U2PL's contrastive selection (see `u2pl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LabeledFrom {
    /// The EMA teacher's, from one eval pass over `[x_l; x_u]` (the paper and its code).
    #[default]
    Teacher,
    /// The student's own outputs on the labeled batch (its training forward computes them
    /// anyway), detached; the teacher runs on `x_u` only. Not in the paper: a named option that
    /// saves the teacher's forward on the labeled images (most of the teacher's cost when the
    /// unlabeled batch is smaller than the labeled one).
    Student,
}

/// The U2PL stage's settings (paper values unless said otherwise; see `objective::u2pl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct U2plSettings {
    /// Unlabeled images per step (`None` = the labeled batch size, as the paper).
    pub unlabeled_batch: Option<usize>,
    /// EMA momentum of the teacher (0.99); the effective momentum is `min(1 - 1/(k+1), this)`,
    /// `k` the steps since the supervised warm-up ended.
    pub ema_momentum: f64,
    /// Supervised-only warm-up steps at the start of the stage: the loss is the labeled
    /// cross-entropy alone and the teacher is a copy of the student.
    pub sup_only_steps: usize,
    /// Probability of CutMix on a step's unlabeled batch (0.5).
    pub cutmix: f64,
    /// `alpha_0` in percent (20): the share of highest-entropy unlabeled pixels that are
    /// unreliable, `alpha_t = alpha_0 (1 - t/T)`.
    pub unreliable_percent: f64,
    /// Take the entropy split per pseudo-class (`false`, the paper: one percentile over the
    /// batch). `true` drops the `alpha_t` % highest-entropy pixels *within each class* the
    /// teacher predicts, so a class whose pixels are all uncertain (a small, weak class) keeps the
    /// same share of its pseudo-labels as the confident ones instead of losing most of them: the
    /// class-balanced selection of self-training for segmentation (Zou et al., "Unsupervised
    /// Domain Adaptation for Semantic Segmentation via Class-Balanced Self-Training", ECCV 2018).
    /// Not in U2PL; a named option because the batch-wide split erodes the weakest class here.
    pub class_balanced_split: bool,
    /// Whose probabilities and representations of the labeled images the contrastive term's
    /// selection uses: the anchor filter, the prototypes' labeled members and the labeled
    /// negatives pushed into the queues (`teacher`, the paper). `student` takes the student's
    /// detached outputs instead and runs the teacher on the unlabeled batch only: a deviation
    /// for step cost, not in the paper.
    pub labeled_from: LabeledFrom,
    /// Weight of the contrastive term (0.1, the paper; the released code uses 1).
    pub lambda_c: f64,
    /// Temperature of the contrastive term (0.5).
    pub tau: f64,
    /// A pixel is an anchor of class `c` only if the teacher's probability of `c` is above this (0.3).
    pub anchor_threshold: f64,
    /// Rank range `[low_rank, high_rank)` of a class among an unreliable pixel's sorted teacher
    /// probabilities (0 = top) for the pixel to be its negative (3..20); clamped at run time to
    /// `1 <= low < high <= classes`. Labeled pixels are negatives of the classes ranked below
    /// `low_rank` that are not their label.
    pub low_rank: usize,
    /// See `low_rank`.
    pub high_rank: usize,
    /// Anchors sampled per class and step, with replacement (256).
    pub anchors: usize,
    /// Negatives drawn per anchor from the class's queue, with replacement (50).
    pub negatives: usize,
    /// Capacity of each class's negative queue, in pixels (FIFO). Memory: classes x this x
    /// representation channels x 4 bytes (the paper: 30000; 4096 x 64 channels = 1 MiB per class).
    pub queue_size: usize,
}

impl Default for U2plSettings {
    fn default() -> Self {
        U2plSettings {
            unlabeled_batch: None,
            ema_momentum: 0.99,
            sup_only_steps: 200,
            cutmix: 0.5,
            unreliable_percent: 20.0,
            class_balanced_split: false,
            labeled_from: LabeledFrom::Teacher,
            lambda_c: 0.1,
            tau: 0.5,
            anchor_threshold: 0.3,
            low_rank: 3,
            high_rank: 20,
            anchors: 256,
            negatives: 50,
            queue_size: 4096,
        }
    }
}

impl U2plSettings {
    /// The effective negative rank range `[low, high)` for `classes` classes: `high <=
    /// classes`, `1 <= low < high` (the released code's fixed `low = 3` leaves no negative at
    /// all with 2 or 3 classes; here 2 classes give `[1, 2)`, 4 give `[3, 4)`).
    pub fn rank_range(&self, classes: usize) -> (usize, usize) {
        let high = self.high_rank.min(classes).max(2);
        let low = self.low_rank.clamp(1, high - 1);
        (low, high)
    }

    /// Check every value, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let k = "u2pl_settings";
        if self.unlabeled_batch == Some(0) {
            return Err(format!("{k}.unlabeled_batch must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.ema_momentum) {
            return Err(format!("{k}.ema_momentum must be in [0, 1), got {}", self.ema_momentum));
        }
        if !(0.0..=1.0).contains(&self.cutmix) {
            return Err(format!("{k}.cutmix must be a probability in [0, 1], got {}", self.cutmix));
        }
        if !(0.0..=100.0).contains(&self.unreliable_percent) {
            return Err(format!("{k}.unreliable_percent must be in [0, 100], got {}", self.unreliable_percent));
        }
        if !(self.lambda_c >= 0.0 && self.lambda_c.is_finite()) {
            return Err(format!("{k}.lambda_c must be a number >= 0, got {}", self.lambda_c));
        }
        if !(self.tau > 0.0 && self.tau.is_finite()) {
            return Err(format!("{k}.tau must be > 0, got {}", self.tau));
        }
        if !(0.0..1.0).contains(&self.anchor_threshold) {
            return Err(format!("{k}.anchor_threshold must be in [0, 1), got {}", self.anchor_threshold));
        }
        if self.low_rank == 0 || self.high_rank <= self.low_rank {
            return Err(format!(
                "{k}.low_rank and high_rank must satisfy 1 <= low_rank < high_rank, got {} and {}",
                self.low_rank, self.high_rank
            ));
        }
        if self.anchors == 0 || self.negatives == 0 {
            return Err(format!("{k}.anchors and {k}.negatives must be at least 1"));
        }
        if self.queue_size == 0 || self.queue_size > 1 << 24 {
            return Err(format!("{k}.queue_size must be in 1..=16777216 pixels, got {}", self.queue_size));
        }
        Ok(())
    }
}

/// The DenseCL stage's settings (the paper's values unless said otherwise; see `densecl`).
/// Scaled down for 2 cores and the default 64x64 synthetic task: the queue holds 96 keys (the
/// paper: 65536), about 19% of the 500 training images, because false negatives grow with the
/// queue's share of the data set (a key of the same image family is more likely in a large queue
/// of a small data set; the notes' rule: 10-20% of the images); the heads' hidden width is the
/// backbone's (128 channels at the default width 0.25, as Lightly's 512-512-128 on ResNet-18) and
/// the output 128 (the paper's); the dense grid is the backbone's own 8x8 stride-8 map of a 64
/// crop (the paper's 7x7 at stride 32 of 224), no extra pooling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DenseclSettings {
    /// Momentum of the key encoder (0.999, the paper's; the notes suggest 0.99 for runs of a few
    /// thousand steps).
    pub key_momentum: f64,
    /// Weight of the dense term: loss = (1 - lambda) global + lambda dense (0.5).
    pub lambda: f64,
    /// Temperature of both terms (0.2).
    pub tau: f64,
    /// Keys in each of the two queues (global, dense); one key per image per step enters each.
    pub queue_size: usize,
    /// Output dimension of both heads (128).
    pub dim: usize,
    /// Hidden width of both heads; none = the backbone's output channels.
    pub hidden: Option<usize>,
    /// Smallest area fraction of the random resized crop (MoCo v2: 0.2; 0.3 keeps the two views
    /// of a 64-pixel crop overlapping).
    pub min_scale: f64,
    /// Chunks of separate batch-norm statistics for the query and the shuffled key batch
    /// (emulated shuffle-BN; 1 = off). The batch must give every chunk 2 or more images.
    pub bn_chunks: usize,
    /// Steps at the start with lambda = 0 (the optional warm-up of the released hook; 0 = off,
    /// as the released configs).
    pub dense_warmup_steps: usize,
}

impl Default for DenseclSettings {
    fn default() -> Self {
        DenseclSettings {
            key_momentum: 0.999,
            lambda: 0.5,
            tau: 0.2,
            queue_size: 96,
            dim: 128,
            hidden: None,
            min_scale: 0.3,
            bn_chunks: 2,
            dense_warmup_steps: 0,
        }
    }
}

impl DenseclSettings {
    /// Check every value, naming the key; `batch` is the run's batch size.
    pub fn validate(&self, batch: usize) -> Result<(), String> {
        let k = "densecl_settings";
        if !(0.0..=1.0).contains(&self.key_momentum) {
            return Err(format!("{k}.key_momentum must be in [0, 1], got {}", self.key_momentum));
        }
        if !(0.0..=1.0).contains(&self.lambda) {
            return Err(format!("{k}.lambda must be in [0, 1], got {}", self.lambda));
        }
        if !(self.tau > 0.0 && self.tau.is_finite()) {
            return Err(format!("{k}.tau must be > 0, got {}", self.tau));
        }
        if self.queue_size == 0 || self.queue_size > 1 << 20 {
            return Err(format!("{k}.queue_size must be in 1..=1048576 keys, got {}", self.queue_size));
        }
        if self.dim == 0 || self.hidden == Some(0) {
            return Err(format!("{k}.dim and {k}.hidden must be at least 1"));
        }
        if !(self.min_scale > 0.0 && self.min_scale <= 1.0) {
            return Err(format!("{k}.min_scale must be in (0, 1], got {}", self.min_scale));
        }
        if self.bn_chunks == 0 || batch < 2 * self.bn_chunks {
            return Err(format!(
                "{k}.bn_chunks must be at least 1 and leave 2 or more images per chunk, got {} chunks for batch {batch}",
                self.bn_chunks
            ));
        }
        Ok(())
    }
}

/// The synthetic dataset used when no pack is given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthSettings {
    /// Training images.
    pub train_images: usize,
    /// Validation images.
    pub val_images: usize,
    /// Image side in pixels.
    pub size: usize,
    /// Generator seed.
    pub seed: u64,
    /// Classes including background (2..=6: background, stripes, checker, dots, blotches, rings).
    pub classes: usize,
}

impl Default for SynthSettings {
    fn default() -> Self {
        SynthSettings { train_images: 500, val_images: 100, size: 64, seed: 7, classes: 4 }
    }
}

/// Data augmentation of the training stages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSettings {
    /// Random scale range `[min, max]` (DeepLab: 0.5-2.0); equal values turn scaling off.
    pub scale: [f64; 2],
    /// Random left-right flips.
    pub hflip: bool,
    /// Colour distortion of the contrastive stage's second view (off: both views are the
    /// original crop).
    pub color: bool,
}

impl Default for AugmentSettings {
    fn default() -> Self {
        // DeepLab's 0.5-2.0 would shrink the synthetic 3-px patterns below what the stride-2 stem
        // resolves; 0.75-1.5 keeps them visible. Real data (a pack) usually wants [0.5, 2.0].
        AugmentSettings { scale: [0.75, 1.5], hflip: true, color: true }
    }
}

/// Everything a run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Training pack; `None` = the embedded synthetic data.
    pub data: Option<PathBuf>,
    /// Validation pack; `None` = the synthetic validation split (or the training pack's unlabeled part is not used).
    pub val_data: Option<PathBuf>,
    /// Labeled training images (the rest are unlabeled); `None` = all.
    pub labeled: Option<usize>,
    /// Stages in order.
    pub stages: Vec<Stage>,
    /// Model shape.
    pub model: ModelConfig,
    /// Square training crop.
    pub crop: usize,
    /// Images per step.
    pub batch: usize,
    /// Master seed (initialisation, data order, augmentation).
    pub seed: u64,
    /// Rayon threads (0 = all cores).
    pub threads: usize,
    /// Evaluate on the validation set every this many steps (and at the end of each stage).
    pub eval_every: usize,
    /// Save a checkpoint every this many steps (and at the end of each stage).
    pub checkpoint_every: usize,
    /// Stage 1.
    pub contrastive: StageConfig,
    /// Stage 2.
    pub finetune: StageConfig,
    /// The CE-only baseline.
    pub ce_only: StageConfig,
    /// The pseudo-label retraining stage.
    pub pseudo: StageConfig,
    /// The U2PL stage.
    pub u2pl: StageConfig,
    /// The DenseCL stage.
    pub densecl: StageConfig,
    /// Contrastive loss settings.
    pub loss: ContrastiveSettings,
    /// Pseudo-label thresholds.
    pub pseudo_labels: PseudoSettings,
    /// U2PL settings.
    pub u2pl_settings: U2plSettings,
    /// DenseCL settings.
    pub densecl_settings: DenseclSettings,
    /// Synthetic data settings.
    pub synth: SynthSettings,
    /// Augmentation.
    pub augment: AugmentSettings,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: None,
            val_data: None,
            labeled: Some(20),
            stages: vec![Stage::Contrastive, Stage::Finetune],
            model: ModelConfig::default(),
            crop: 64,
            batch: 8,
            seed: 0,
            threads: 0,
            eval_every: 250,
            checkpoint_every: 250,
            // Pretraining at the paper's lr 0.1, 800 steps: the default run then stays within 5
            // minutes on 2 cores (a contrastive step, two views, costs ~2.6 CE steps).
            // Fine-tuning continues at the same lr: pretraining grows the weights that batch norm
            // rescales (the stem conv's norm 2.5 -> 18.7), and SGD's effective step on such a
            // weight is lr / |w|^2, so at lr 0.03 fine-tuning barely moves the early layers and,
            // with all 500 labels, ended 7-10 mIoU below CE-only (one seed, 1000 pretraining
            // steps: 63.2 at 0.03, 52.7 at 0.007, 70.7 at 0.1, CE-only 72.3); at 20 labels 0.03
            // and 0.1 gave the same (46.1 / 45.0). CE-only keeps 0.03 (at 0.1: 68.9 with all
            // labels, 36.6 at 20, no better).
            contrastive: StageConfig::new(800, 0.1),
            finetune: StageConfig::new(1000, 0.1),
            ce_only: StageConfig::new(1000, 0.03),
            pseudo: StageConfig::new(1000, 0.03),
            u2pl: StageConfig::new(1000, 0.03),
            // DenseCL at the paper's lr 0.03 (not its batch-scaled 0.03 B / 256, which would be
            // 0.001 at batch 8 and hardly move in 1000 steps).
            densecl: StageConfig::new(1000, 0.03),
            loss: ContrastiveSettings::default(),
            pseudo_labels: PseudoSettings::default(),
            u2pl_settings: U2plSettings::default(),
            densecl_settings: DenseclSettings::default(),
            synth: SynthSettings::default(),
            augment: AugmentSettings::default(),
        }
    }
}

impl TrainConfig {
    /// Parse a TOML file over the defaults: a key the file leaves out keeps the default *run*
    /// value (so `[finetune] lr = 0.5` keeps the fine-tuning stage's default steps, not a generic
    /// stage default). Unknown keys are errors naming the key.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let mut file: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        upgrade_legacy_keys(&mut file)?;
        let mut merged = toml::Table::try_from(TrainConfig::default()).map_err(|e| e.to_string())?;
        merge(&mut merged, file);
        merged.try_into().map_err(|e: toml::de::Error| e.to_string())
    }
    /// Serialise to TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
    /// What the first `k` stages of this run depend on, as text: the config with the stage list
    /// cut to those `k` and every setting that only a later stage reads put back to its default.
    /// Two runs with equal keys train their first `k` stages identically (every random choice
    /// derives from the seed and the stage's position), so an experiment may reuse one run's
    /// stage checkpoints in the other ([`crate::train::RunOptions::reuse`]).
    pub fn prefix_key(&self, k: usize) -> String {
        let d = TrainConfig::default();
        let mut c = self.clone();
        c.stages.truncate(k);
        let has = |s: Stage| c.stages.contains(&s);
        let (ct, ft, ce, ps, u2, dc) = (
            has(Stage::Contrastive),
            has(Stage::Finetune),
            has(Stage::CeOnly),
            has(Stage::Pseudo),
            has(Stage::U2pl),
            has(Stage::Densecl),
        );
        if !ct {
            c.contrastive = d.contrastive.clone();
            c.loss = d.loss.clone();
        }
        if !ft {
            c.finetune = d.finetune.clone();
        }
        if !ce {
            c.ce_only = d.ce_only.clone();
        }
        if !ps {
            c.pseudo = d.pseudo.clone();
            c.pseudo_labels = d.pseudo_labels.clone();
        }
        if !u2 {
            c.u2pl = d.u2pl.clone();
            c.u2pl_settings = d.u2pl_settings.clone();
        }
        if !dc {
            c.densecl = d.densecl.clone();
            c.densecl_settings = d.densecl_settings.clone();
        }
        c.to_toml()
    }
    /// The settings of a stage.
    pub fn stage(&self, s: Stage) -> &StageConfig {
        match s {
            Stage::Contrastive => &self.contrastive,
            Stage::Finetune => &self.finetune,
            Stage::CeOnly => &self.ce_only,
            Stage::Pseudo => &self.pseudo,
            Stage::U2pl => &self.u2pl,
            Stage::Densecl => &self.densecl,
        }
    }
    /// Check values that would fail later with a less clear message.
    pub fn validate(&self) -> Result<(), String> {
        if !["resnet18", "resnet34", "resnet50", "resnet101"].contains(&self.model.backbone.as_str()) {
            return Err(format!(
                "model.backbone: unknown backbone {:?} (resnet18|resnet34|resnet50|resnet101)",
                self.model.backbone
            ));
        }
        if ![8, 16].contains(&self.model.output_stride) {
            return Err(format!("model.output_stride must be 8 or 16, got {}", self.model.output_stride));
        }
        if !(self.model.width > 0.0 && self.model.width <= 4.0) {
            return Err(format!("model.width must be in (0, 4], got {}", self.model.width));
        }
        if self.crop < 16 {
            return Err(format!("crop must be at least 16 pixels, got {}", self.crop));
        }
        if self.batch < 2 {
            // Batch norm in training mode (the ASPP pooling branch sees one value per channel per
            // image) needs at least two images, as in PyTorch.
            return Err(format!(
                "batch must be at least 2 (batch norm needs two values per channel), got {}",
                self.batch
            ));
        }
        let [lo, hi] = self.augment.scale;
        if !(lo > 0.0 && hi >= lo && hi <= 8.0) {
            return Err(format!("augment.scale must satisfy 0 < min <= max <= 8, got [{lo}, {hi}]"));
        }
        if self.stages.is_empty() {
            return Err("stages: at least one stage is needed".into());
        }
        if self.loss.tau <= 0.0 {
            return Err(format!("loss.tau must be > 0, got {}", self.loss.tau));
        }
        if self.loss.projection_layers == 0 {
            return Err("loss.projection_layers must be at least 1".into());
        }
        if self.stages.contains(&Stage::U2pl) {
            self.u2pl_settings.validate()?;
        }
        if self.stages.contains(&Stage::Densecl) {
            self.densecl_settings.validate(self.batch)?;
        }
        for s in &self.stages {
            let c = self.stage(*s);
            if !(c.lr > 0.0 && c.lr.is_finite()) {
                return Err(format!("{}.lr must be a positive number, got {}", s.name(), c.lr));
            }
        }
        Ok(())
    }
}

/// Rewrite keys of older configs (for example the run config inside an old checkpoint) into
/// their current form: `loss.full_resolution = true | false` becomes `loss.grid = "decoder" |
/// "eighth"` (what it meant then) unless the file also sets `loss.grid`.
fn upgrade_legacy_keys(file: &mut toml::Table) -> Result<(), String> {
    if let Some(toml::Value::Table(loss)) = file.get_mut("loss") {
        if let Some(v) = loss.remove("full_resolution") {
            let full = v.as_bool().ok_or_else(|| format!("loss.full_resolution must be true or false, got {v}"))?;
            if !loss.contains_key("grid") {
                loss.insert("grid".into(), toml::Value::String(if full { "decoder" } else { "eighth" }.into()));
            }
        }
    }
    Ok(())
}

/// Overlay `over` onto `base`, recursing into tables (a table in `over` updates, not replaces).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_unknown_key_error() {
        let c = TrainConfig::default();
        assert_eq!(TrainConfig::from_toml(&c.to_toml()).unwrap(), c);
        let e = TrainConfig::from_toml("crop = 64\nbogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let partial = TrainConfig::from_toml("[finetune]\nlr = 0.5\n").unwrap();
        // The prefix key ignores what only later stages read, and nothing the prefix reads.
        let mut a = TrainConfig::default();
        a.stages = vec![Stage::Contrastive, Stage::Finetune, Stage::Pseudo];
        let mut b = a.clone();
        b.stages = vec![Stage::Contrastive, Stage::Finetune, Stage::U2pl];
        b.u2pl_settings.sup_only_steps = 0;
        b.pseudo.steps = 7;
        assert_eq!(a.prefix_key(2), b.prefix_key(2));
        assert_ne!(a.prefix_key(3), b.prefix_key(3));
        b.finetune.lr = 0.2;
        assert_eq!(a.prefix_key(1), b.prefix_key(1));
        assert_ne!(a.prefix_key(2), b.prefix_key(2));
        b.seed = 5;
        assert_ne!(a.prefix_key(1), b.prefix_key(1));
        assert_eq!(partial.finetune.lr, 0.5);
        assert_eq!(partial.finetune.steps, TrainConfig::default().finetune.steps);
    }

    #[test]
    fn loss_grid_reads_its_names_and_the_legacy_flag() {
        for (text, want) in
            [("decoder", LossGrid::Decoder), ("quarter", LossGrid::Quarter), ("eighth", LossGrid::Eighth)]
        {
            let c = TrainConfig::from_toml(&format!("[loss]\ngrid = \"{text}\"\n")).unwrap();
            assert_eq!(c.loss.grid, want);
            assert!(c.to_toml().contains(&format!("grid = \"{text}\"")));
        }
        assert!(TrainConfig::from_toml("[loss]\ngrid = \"half\"\n").is_err());
        let old = |v: &str| TrainConfig::from_toml(&format!("[loss]\nfull_resolution = {v}\n"));
        assert_eq!(old("true").unwrap().loss.grid, LossGrid::Decoder);
        assert_eq!(old("false").unwrap().loss.grid, LossGrid::Eighth);
        assert!(old("3").unwrap_err().contains("full_resolution"));
        let both = TrainConfig::from_toml("[loss]\nfull_resolution = true\ngrid = \"quarter\"\n").unwrap();
        assert_eq!(both.loss.grid, LossGrid::Quarter);
        // Grid sizes: (crop - 1) / s + 1 per side; the decoder grid is the map as it comes.
        assert_eq!(LossGrid::Eighth.size(513, 64), Some([65, 8]));
        assert_eq!(LossGrid::Quarter.size(513, 64), Some([129, 16]));
        assert_eq!(LossGrid::Decoder.size(513, 64), None);
    }
}
