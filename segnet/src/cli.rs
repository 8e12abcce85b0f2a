//! The command line: `segnet train | eval | predict | embed | data | experiment | bench`.

use crate::config::{LabeledFrom, LossGrid, LossMode, Stage};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// DeepLabV3+ with pixel-wise contrastive pretraining, trained from scratch on the CPU.
#[derive(Parser, Debug)]
#[command(name = "segnet", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train: with no arguments, the embedded default (synthetic data, contrastive + fine-tune).
    Train(TrainCmdArgs),
    /// Evaluate a checkpoint: confusion matrix, per-class IoU, mIoU, pixel accuracy.
    Eval(EvalArgs),
    /// Write label PNGs (with the palette), colour overlays and, with ground truth, image |
    /// prediction | ground truth side by side.
    Predict(PredictArgs),
    /// Map the learned pixel embeddings: sample labeled pixels of the validation images, project
    /// their features to 2-D with PCA, draw them coloured by class, and report the mean intra-
    /// and inter-class cosine similarity (compare a checkpoint before and after pretraining).
    Embed(EmbedArgs),
    /// Make, import and inspect data packs.
    #[command(subcommand)]
    Data(DataCommand),
    /// Experiments that compare recipes on the same data and budget.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
    /// Time a training step or the contrastive loss on random data.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `segnet train`: the shared training options plus the labeled count.
#[derive(Args, Debug, Clone, Default)]
pub struct TrainCmdArgs {
    /// Number of labeled training images, or `all` (the rest are treated as unlabeled).
    #[arg(long)]
    pub labeled: Option<LabeledCount>,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// Training options shared by `train` and `experiment` (the labeled count is each command's own:
/// one number for `train`, a list for `experiment`).
#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// TOML config file (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training pack (default: embedded synthetic data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation pack.
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Stages in order, e.g. `contrastive,finetune` or `ce-only` or `contrastive,finetune,pseudo`
    /// or `contrastive,u2pl` (U2PL: student + EMA teacher on labeled and unlabeled batches)
    /// or `densecl,finetune` / `densecl,contrastive,finetune` (DenseCL: label-free dense
    /// contrastive pretraining of the backbone on every training image).
    #[arg(long, value_delimiter = ',')]
    pub stages: Option<Vec<Stage>>,
    /// Backbone: resnet18 | resnet34 | resnet50 | resnet101.
    #[arg(long)]
    pub backbone: Option<String>,
    /// Channel width multiplier.
    #[arg(long)]
    pub width: Option<f64>,
    /// Output stride (8 or 16).
    #[arg(long)]
    pub output_stride: Option<usize>,
    /// Initial backbone weights: a PyTorch checkpoint as `torch.save` writes it (e.g.
    /// torchvision's `resnet50-0676ba61.pth`; read without Python), a safetensors state dict or
    /// a segnet checkpoint, with torchvision names (`module.` / `backbone.` prefixes are taken
    /// off). Every backbone tensor must fit (ImageNet weights need `--width 1` and the matching
    /// `--backbone`); `fc.*` is left out. Used by each stage that would start from random
    /// weights (contrastive, ce-only, densecl).
    #[arg(long, value_name = "FILE")]
    pub init_backbone: Option<std::path::PathBuf>,
    /// Square crop size.
    #[arg(long)]
    pub crop: Option<usize>,
    /// Batch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Steps of every stage in `--stages`.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Master seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Contrastive loss pairing.
    #[arg(long)]
    pub loss_mode: Option<LossMode>,
    /// Use the SupCon denominator.
    #[arg(long)]
    pub supcon: bool,
    /// The contrastive loss grid: decoder (the stride-4 map), quarter ((crop-1)/4+1) or eighth ((crop-1)/8+1).
    #[arg(long, value_enum)]
    pub loss_grid: Option<LossGrid>,
    /// Same as `--loss-grid decoder`: the contrastive loss at the decoder's full (stride 4) resolution.
    #[arg(long, conflicts_with = "loss_grid")]
    pub full_res_loss: bool,
    /// 1x1 convolutions of the projection head (3 in the paper).
    #[arg(long)]
    pub projection_layers: Option<usize>,
    /// U2PL: unlabeled images per step (default: the batch size).
    #[arg(long)]
    pub unlabeled_batch: Option<usize>,
    /// U2PL: capacity of each class's queue of negative pixels (memory: classes x this x
    /// representation channels x 4 bytes; default 4096).
    #[arg(long)]
    pub queue_size: Option<usize>,
    /// U2PL: supervised-only warm-up steps before the teacher's pseudo-labels are used (default 200).
    #[arg(long)]
    pub sup_only_steps: Option<usize>,
    /// U2PL: weight of the contrastive term (default 0.1, the paper's).
    #[arg(long)]
    pub lambda_c: Option<f64>,
    /// U2PL: take the entropy split within each pseudo-class instead of over the whole batch
    /// (class-balanced self-training; not in the paper).
    #[arg(long)]
    pub class_balanced_split: bool,
    /// U2PL: whose outputs on the labeled images the contrastive term's selection uses:
    /// teacher (the paper: the teacher runs on labeled and unlabeled images) or student (its own
    /// detached outputs; the teacher runs on the unlabeled images only; not in the paper).
    #[arg(long, value_enum)]
    pub labeled_from: Option<LabeledFrom>,
    /// DenseCL: momentum of the key encoder (default 0.999; 0.99 suits runs of a few thousand steps).
    #[arg(long)]
    pub key_momentum: Option<f64>,
    /// DenseCL: weight lambda of the dense term, loss = (1 - lambda) global + lambda dense (default 0.5).
    #[arg(long)]
    pub dense_lambda: Option<f64>,
    /// DenseCL: keys in each of its two queues of negatives (default 96, ~19% of the 500
    /// synthetic training images; the paper: 65536 of ImageNet's 1.28M).
    #[arg(long)]
    pub densecl_queue: Option<usize>,
    /// DenseCL: steps with lambda = 0 at the start (default 0).
    #[arg(long)]
    pub dense_warmup_steps: Option<usize>,
    /// Run directory (default: runs/<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Resume from a checkpoint written by an earlier run (its config is used), or from a run
    /// directory: its newest valid checkpoint (after a crash or a kill, damaged files skipped).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Device: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bars (logs only).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint to evaluate.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Pack to evaluate on (default: the synthetic validation split of the checkpoint's run).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also draw the per-class IoU as a bar chart (with the mIoU as a dashed line) into this PNG.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Device: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub infer: InferArgs,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Checkpoint of any stage but densecl: contrastive, finetune, ce-only, pseudo, u2pl.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Pack whose labeled images to embed (default: the synthetic validation split of the
    /// checkpoint's run, as `segnet eval`).
    #[arg(long, value_name = "PACK")]
    pub data: Option<PathBuf>,
    /// Labeled pixels to sample, stratified over the classes (an equal share per class present;
    /// ignore-label pixels are never sampled).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub pixels: usize,
    /// Seed of the pixel sample (the same seed, checkpoint and data give the same map).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Which embedding: `head` (the projection head's output; contrastive and U2PL checkpoints),
    /// `decoder` (the decoder's features before the classifier, L2-normalised per pixel), or
    /// `auto` (the head where the checkpoint has one, else the decoder).
    #[arg(long, value_enum, default_value = "auto")]
    pub features: FeatureKind,
    /// The map (PNG): the sample on its first two principal components, coloured by class.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the numbers (intra- and inter-class cosine similarity, separation, per class
    /// and per class pair) as JSON into this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Device: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `segnet embed --features`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum FeatureKind {
    Auto,
    Head,
    Decoder,
}

/// How `eval` and `predict` run the network on whole images (`segnet::infer`).
#[derive(Args, Debug, Clone, Default)]
pub struct InferArgs {
    /// Sliding-window inference: an image larger than N pixels in height or width is cut into
    /// N x N windows, overlapping by N - stride, whose logits are averaged (default: every image in
    /// one pass, whatever its size). `crop`: the checkpoint's training crop.
    #[arg(long, value_name = "N|crop")]
    pub window: Option<WindowArg>,
    /// Sliding-window step in pixels, 1..=window (default: two thirds of the window).
    #[arg(long, value_name = "S")]
    pub stride: Option<usize>,
    /// Also run the left-right mirrored image and average the logits.
    #[arg(long)]
    pub flip: bool,
    /// Multi-scale inference: resize the image by each factor, run it, resize the logits back and
    /// average them, e.g. `0.75,1,1.25` (default: 1).
    #[arg(long, value_delimiter = ',', value_name = "F,F,...", allow_negative_numbers = true)]
    pub scales: Option<Vec<f64>>,
}

impl InferArgs {
    /// The checked options; `crop` is the checkpoint's training crop (for `--window crop`).
    pub fn options(&self, crop: usize) -> anyhow::Result<crate::infer::InferOptions> {
        let window = self.window.map(|w| match w {
            WindowArg::Crop => crop,
            WindowArg::N(n) => n,
        });
        crate::infer::InferOptions::new(window, self.stride, self.flip, self.scales.clone())
    }
}

/// `--window`: a size in pixels or `crop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowArg {
    /// The checkpoint's training crop.
    Crop,
    /// This many pixels.
    N(usize),
}

impl std::str::FromStr for WindowArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "crop" => Ok(WindowArg::Crop),
            t => t
                .parse::<usize>()
                .map(WindowArg::N)
                .map_err(|_| format!("{t:?} is not a window size (a number of pixels or `crop`)")),
        }
    }
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Checkpoint to use.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Images (PNG or JPEG), folders (their images, sorted) or glob patterns such as
    /// 'photos/*.jpg' (expanded here, for shells that do not).
    #[arg(required_unless_present = "pack")]
    pub images: Vec<PathBuf>,
    /// Ground-truth folder: `<stem>.png` label masks (class indices); where one exists, also write
    /// `<stem>_compare.png` (image | prediction | ground truth) and print the pixel accuracy.
    #[arg(long, value_name = "DIR")]
    pub labels: Option<PathBuf>,
    /// Also predict every record of this pack (labeled records get the side-by-side picture).
    #[arg(long, value_name = "PACK")]
    pub pack: Option<PathBuf>,
    #[command(flatten)]
    pub infer: InferArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PackKind {
    Voc,
    Cityscapes,
    Folder,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Import a dataset folder into a pack.
    Pack(PackArgs),
    /// Write the synthetic dataset as a pack.
    Synth(SynthArgs),
    /// Describe a pack (and verify every record's checksum with --verify).
    Info {
        /// The pack.
        pack: PathBuf,
        /// Read and check every record.
        #[arg(long)]
        verify: bool,
    },
}

#[derive(Args, Debug)]
pub struct PackArgs {
    /// Dataset kind.
    pub kind: PackKind,
    /// Dataset root (VOCdevkit or VOC2012; the Cityscapes root; for `folder`, the images folder).
    pub root: PathBuf,
    /// Split name (VOC: train/val/trainval or a list name; Cityscapes: train/val/test).
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Output pack file.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// VOC: use SegmentationClassAug (grey labels) instead of SegmentationClass.
    #[arg(long)]
    pub aug: bool,
    /// Cityscapes: `train-ids` (map label ids to the 19 train ids) or `identity`.
    #[arg(long, default_value = "train-ids")]
    pub label_map: String,
    /// Folder: the masks folder (default: ROOT/../masks).
    #[arg(long)]
    pub masks: Option<PathBuf>,
    /// Own class names, comma separated, in label order (label value k is class k; their count is
    /// the class count). Required for `folder`; for `voc` instead of the 21 PASCAL classes; for
    /// `cityscapes` they name train ids 0..n with `--label-map train-ids`, raw label ids 0..n with
    /// `identity`. Own classes get the VOC colour map.
    #[arg(long, value_delimiter = ',', conflicts_with = "classes_file")]
    pub classes: Option<Vec<String>>,
    /// Own class names from a file, one per line in label order (blank lines and lines starting
    /// with `#` are skipped); as `--classes`.
    #[arg(long, value_name = "FILE")]
    pub classes_file: Option<PathBuf>,
    /// A label value that is neither a class nor the ignore value 255: `error` (stop, naming the
    /// file and the value) or `ignore` (store 255 and count such pixels).
    #[arg(long, value_enum, default_value = "error")]
    pub unknown_labels: UnknownLabelsArg,
}

/// `--unknown-labels`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum UnknownLabelsArg {
    Error,
    Ignore,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output pack file.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 200)]
    pub images: usize,
    /// Image side.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Generator seed (the embedded default's training split is seed 7, its validation split
    /// seed 18581050384).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Classes including background, 2..=6 (background, stripes, checker, dots, blotches, rings).
    #[arg(long, default_value_t = 4)]
    pub classes: usize,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// CE-only vs contrastive + fine-tune at several labeled counts, same data and budget.
    LabelEfficiency(LabelEfficiencyArgs),
    /// Redraw the label-efficiency plot (mIoU against labeled images, error bars of one std)
    /// and print its table from one or several results.json of `label-efficiency`, merged.
    Plot(ExperimentPlotArgs),
}

#[derive(Args, Debug)]
pub struct ExperimentPlotArgs {
    /// results.json files of `label-efficiency`: their runs are merged (a run is identified by
    /// labeled count, master seed and column; the first file wins a repeat) and every cell is
    /// recomputed from the runs, so experiments run in parts (other seeds, other columns) make
    /// one table.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Also write the merged runs and cells as one results.json here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Output PNG.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct LabelEfficiencyArgs {
    /// Labeled-image counts to compare (`all` = every labeled training image).
    #[arg(long, value_delimiter = ',', default_value = "10,20,all")]
    pub labeled: Vec<LabeledCount>,
    /// Seeds per cell: seed k uses master seed `--seed + k`, i.e. a different labeled subset and init.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Recipes (columns): ce-only, imagenet-ce (CE-only from the --init-backbone weights),
    /// contrastive (+ fine-tune), contrastive-within, contrastive-cross,
    /// contrastive-decoder, contrastive-quarter, contrastive-eighth (loss variants), pseudo
    /// (contrastive, fine-tune, pseudo-labels), u2pl (contrastive, then U2PL with the fine-tuning
    /// stage's steps and learning rate), u2pl-finetuned (contrastive, fine-tune, then U2PL with the
    /// pseudo stage's steps and learning rate: pseudo's start and budget), densecl (label-free DenseCL on all training images, then
    /// fine-tune), densecl-contrastive (DenseCL, label contrastive, fine-tune).
    #[arg(long, value_delimiter = ',', default_value = "ce-only,contrastive")]
    pub recipes: Vec<crate::experiment::Recipe>,
    /// Budget protocols for the CE-only baseline: same-schedule (its steps = the fine-tuning
    /// steps, the paper's comparison), equal-steps (its steps = pretraining + fine-tuning), or both.
    #[arg(long, value_enum, default_value = "both")]
    pub protocol: crate::experiment::ProtocolChoice,
    /// Base training options (config, data, steps, ...).
    #[command(flatten)]
    pub train: TrainArgs,
}

/// A labeled count on the command line: a number or `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabeledCount {
    /// This many labeled images.
    N(usize),
    /// Every labeled training image.
    All,
}

impl std::str::FromStr for LabeledCount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => Ok(LabeledCount::All),
            t => match t.parse::<usize>() {
                Ok(0) => Err("a labeled count must be at least 1 (or `all`)".into()),
                Ok(n) => Ok(LabeledCount::N(n)),
                Err(_) => Err(format!("{t:?} is not a labeled count (a positive number or `all`)")),
            },
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Median time and peak memory of one training step on random data.
    Step(BenchStepArgs),
    /// The fused contrastive loss on random unit features.
    Loss(BenchLossArgs),
    /// Every distinct convolution of the model's forward at these shapes, timed alone: forward,
    /// input gradient and weight gradient (the shapes for `benches/torch/convs.py`).
    Convs(BenchConvsArgs),
}

#[derive(Args, Debug)]
pub struct BenchConvsArgs {
    #[command(flatten)]
    pub model: BenchModelArgs,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed calls per conv and pass (after one untimed call); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// One JSON object on one line instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The model and input shapes a bench builds (`bench step`, `bench convs`).
#[derive(Args, Debug, Clone)]
pub struct BenchModelArgs {
    #[arg(long, default_value = "resnet50")]
    pub backbone: String,
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    #[arg(long, default_value_t = 257)]
    pub crop: usize,
    #[arg(long, default_value_t = 16)]
    pub output_stride: usize,
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
    #[arg(long, default_value_t = 21)]
    pub classes: usize,
}

#[derive(Args, Debug)]
pub struct BenchStepArgs {
    #[command(flatten)]
    pub model: BenchModelArgs,
    #[arg(long, value_enum, default_value = "finetune")]
    pub stage: Stage,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// The contrastive stage's loss form (default: the training default, `cross`); `within` is
    /// what `benches/torch/deeplab_step.py --views 2` computes.
    #[arg(long, value_enum)]
    pub loss_mode: Option<LossMode>,
    /// The contrastive stage's loss grid (default: the training default, `decoder`).
    #[arg(long, value_enum)]
    pub loss_grid: Option<LossGrid>,
    /// U2PL only: images per unlabeled batch (default: `--batch`, the paper's setting), as
    /// `segnet train --unlabeled-batch`.
    #[arg(long)]
    pub unlabeled_batch: Option<usize>,
    /// U2PL only: whose outputs on the labeled images the contrastive term uses, as `segnet
    /// train --labeled-from` (default: teacher, the paper's).
    #[arg(long, value_enum)]
    pub labeled_from: Option<LabeledFrom>,
    /// Also report wall time per op (forward, backward) and for the optimiser, averaged over the
    /// timed steps (`engine::profile`; a forward row includes untracked work since the op before).
    #[arg(long)]
    pub op_profile: bool,
    /// Also meter the packed GEMM inside the timed steps (CPU): its useful GFLOP per step, the
    /// threads' time in it, and its rate against this machine's FMA peak (probed before and after
    /// the steps, the faster probe counting); in total and per GEMM shape
    /// (`kernels::cpu::packed_gemm::meter`). The meter's clock reads add a little to the step time.
    #[arg(long)]
    pub gemm_meter: bool,
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct BenchLossArgs {
    #[arg(long, default_value_t = 65)]
    pub size: usize,
    #[arg(long, default_value_t = 256)]
    pub dim: usize,
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    #[arg(long, default_value_t = 21)]
    pub classes: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}
