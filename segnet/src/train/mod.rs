//! The training run: stages in order (contrastive pretraining, fine-tuning, the CE-only
//! baseline, pseudo-label retraining, U2PL), with evaluation, metrics, checkpoints and resume.
//!
//! Reproducibility: every random choice derives from the config's seed and the position in the
//! run: the model's initialisation from (seed, stage), the batch order and augmentation from
//! (seed, stage, epoch, index) in the loader, dropout from (seed, stage, step). Checkpoints hold
//! the weights, batch-norm buffers, SGD momentum and the step, so a resumed run repeats the
//! uninterrupted one exactly (on the CPU, same thread count).

mod objective;
mod pseudo;
mod stage;

use crate::config::{Stage, TrainConfig};
use crate::data::{self, Source};
use crate::evaluate::evaluate;
use crate::metrics::Scores;
use crate::net::{self, Net};
use crate::run_dir::RunDir;
use anyhow::{bail, Context, Result};
use datasets::{choose_labeled, SampleSource};
use engine::Rng;
use nn::{load_checkpoint, read_checkpoint};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use stage::StageEnd;

/// Set by the Ctrl-C handler; the step loop checks it, saves a checkpoint and stops.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Options that are not part of the run's config.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Run directory.
    pub out: PathBuf,
    /// Resume from this checkpoint.
    pub resume: Option<PathBuf>,
    /// No progress bars.
    pub quiet: bool,
    /// Stop (with a checkpoint, as Ctrl-C would) after this many steps of this invocation.
    pub stop_after: Option<usize>,
    /// Where to train.
    pub device: engine::Device,
    /// Also score the final network on the labeled training images (no augmentation), to show
    /// how well it fits the labels it had against how well it generalises.
    pub score_train: bool,
    /// `(k, dir)`: the first `k` stages were already trained, with a config whose
    /// [`TrainConfig::prefix_key`]`(k)` equals this one's, in the run directory `dir`: their
    /// final checkpoints are copied from there instead of trained again (the experiment's
    /// recipes share their pretraining). The copies make the run directory complete, so
    /// `--resume` works on it as on any other.
    pub reuse: Option<(usize, PathBuf)>,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Scores on the validation set after the last stage (None if the run was interrupted).
    pub scores: Option<Scores>,
    /// The printable table.
    pub table: String,
    /// Scores on the labeled training images (only with [`RunOptions::score_train`]).
    pub train_scores: Option<Scores>,
    /// The run directory.
    pub dir: PathBuf,
    /// How the run ended.
    pub interrupted: bool,
}

/// A seed for one purpose, derived from the master seed.
pub fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    let mut h = seed ^ 0x6A09_E667_F3BC_C908;
    for &p in parts {
        h = (h ^ p).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
    }
    h
}

/// Where a resumed run picks up: stage `stage_index` at `step`, its state from `path` (`None`:
/// the stage starts afresh, the stages before it having finished).
struct ResumePoint {
    stage_index: usize,
    step: usize,
    path: Option<PathBuf>,
}

/// The newest valid checkpoint of run directory `dir` (its `checkpoints/*.safetensors`, each
/// read and checksummed; unreadable or damaged ones are skipped with a warning): the one latest
/// in the run, a stage's `-final` after its `-last` and before the next stage's.
pub fn newest_checkpoint(dir: &Path) -> Result<PathBuf> {
    let folder = dir.join("checkpoints");
    let entries = std::fs::read_dir(&folder)
        .with_context(|| format!("--resume {}: no checkpoints folder ({})", dir.display(), folder.display()))?;
    let mut best: Option<((usize, usize), PathBuf)> = None;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "safetensors") {
            continue; // e.g. a `.tmp` left by a kill
        }
        match read_resume(&path) {
            Ok((_, r)) => {
                // A stage's final checkpoint reads as "the next stage at step 0" (see read_resume).
                let key = (r.stage_index, r.step);
                if best.as_ref().is_none_or(|(k, _)| key > *k) {
                    best = Some((key, path));
                }
            }
            Err(err) => eprintln!("segnet: skipping {}: {err:#}", path.display()),
        }
    }
    best.map(|(_, p)| p)
        .with_context(|| format!("--resume {}: no valid checkpoint in {}", dir.display(), folder.display()))
}

/// `--resume PATH`: a checkpoint, or a run directory (its newest valid checkpoint).
pub fn resume_target(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        newest_checkpoint(path)
    } else {
        Ok(path.to_path_buf())
    }
}

fn read_resume(path: &Path) -> Result<(TrainConfig, ResumePoint)> {
    let data = read_checkpoint(path)?;
    let cfg = TrainConfig::from_toml(&data.meta.config)
        .map_err(|e| anyhow::anyhow!("{}: the checkpoint's run config does not parse: {e}", path.display()))?;
    let get =
        |k: &str| -> Result<usize> {
            data.meta.extra.get(k).and_then(|v| v.parse().ok()).with_context(|| {
                format!("{}: not a segnet training checkpoint (no {k:?} in its metadata)", path.display())
            })
        };
    let (stage_index, step) = (get("stage_index")?, get("stage_step")?);
    let is_final = data
        .meta
        .extra
        .get("stage")
        .is_some_and(|s| path.file_stem().is_some_and(|f| f.to_string_lossy() == format!("{s}-final")));
    // A stage's final checkpoint: that stage is done, the next one starts afresh.
    let point = if is_final {
        ResumePoint { stage_index: stage_index + 1, step: 0, path: None }
    } else {
        ResumePoint { stage_index, step, path: Some(path.to_path_buf()) }
    };
    Ok((cfg, point))
}

/// Resolve a resumed run's config and directory (the checkpoint's own).
pub fn resume_config(path: &Path) -> Result<(TrainConfig, PathBuf)> {
    let (cfg, _) = read_resume(path)?;
    let dir = path
        .parent()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .with_context(|| format!("{}: cannot find its run directory", path.display()))?;
    Ok((cfg, dir))
}

/// Run every stage of `cfg`.
pub fn run(cfg: &TrainConfig, opts: &RunOptions) -> Result<RunSummary> {
    cfg.validate().map_err(|e| anyhow::anyhow!("config: {e}"))?;
    let resume = match &opts.resume {
        Some(p) => Some(read_resume(p)?.1),
        None => None,
    };
    let (train, val) = data::open(cfg)?;
    let classes = train.num_classes();
    let class_names = train.class_names();
    let spec = net::spec(cfg, classes)?;

    let mut dir = RunDir::open(&opts.out)?;
    dir.write("config.toml", &cfg.to_toml())?;
    // The steps after the checkpoint are run (and logged) again; a fresh run into a folder that
    // holds an earlier (e.g. killed) attempt starts a fresh log.
    let done_steps = match &resume {
        Some(r) => {
            cfg.stages[..r.stage_index.min(cfg.stages.len())].iter().map(|s| cfg.stage(*s).steps).sum::<usize>()
                + r.step
        }
        None => 0,
    };
    dir.forget_after(done_steps)?;

    // The labeled subset: chosen once from the seed, recorded in the run.
    let candidates = train.labeled_indices()?;
    let n_labeled = match cfg.labeled {
        Some(n) if n > candidates.len() => anyhow::bail!(
            "labeled = {n} (--labeled): the training data has only {} labeled images (`--labeled all` uses every one)",
            candidates.len()
        ),
        Some(n) => n,
        None => candidates.len(),
    };
    let subset = choose_labeled(train.len(), &candidates, n_labeled, derive_seed(cfg.seed, &[1]))?;
    dir.write(
        "subset.json",
        &serde_json::to_string_pretty(&json!({ "labeled": subset.labeled, "unlabeled": subset.unlabeled }))?,
    )?;
    if !opts.quiet {
        eprintln!(
            "segnet: {} training images ({} labeled), {} validation images, {} classes; run directory {}",
            train.len(),
            subset.labeled.len(),
            val.len(),
            classes,
            opts.out.display()
        );
    }

    let mut ctx = stage::StageCtx {
        cfg,
        dir: &mut dir,
        val: val.clone(),
        quiet: opts.quiet,
        budget: opts.stop_after,
        global_offset: 0,
    };
    let mut current: Option<Net> = None;
    let mut last_final: Option<PathBuf> = None;
    let mut prev_stage: Option<Stage> = None;
    for (si, &stage) in cfg.stages.iter().enumerate() {
        let steps = cfg.stage(stage).steps;
        if let Some(r) = &resume {
            if si < r.stage_index {
                // Finished before the checkpoint: its final weights are on disk.
                ctx.global_offset += steps;
                last_final = Some(ctx.dir.checkpoint(&format!("{}-final", stage.name())));
                prev_stage = Some(stage);
                continue;
            }
        }
        if let Some((k, from)) = &opts.reuse {
            if si < *k {
                let src = from.join("checkpoints").join(format!("{}-final.safetensors", stage.name()));
                let dst = ctx.dir.checkpoint(&format!("{}-final", stage.name()));
                let bytes = std::fs::read(&src)
                    .with_context(|| format!("{}: cannot read the {} stage to reuse", src.display(), stage.name()))?;
                crate::run_dir::write_atomic(&dst, &bytes)?;
                ctx.dir.log(json!({ "stage": stage.name(), "global_step": ctx.global_offset, "reused_from": src }))?;
                if !opts.quiet {
                    eprintln!("segnet: {} reused from {} (same seed and settings)", stage.name(), src.display());
                }
                ctx.global_offset += steps;
                last_final = Some(dst);
                prev_stage = Some(stage);
                continue;
            }
        }
        let mut init_rng = Rng::new(derive_seed(cfg.seed, &[2, si as u64]));
        let mut net = if stage == Stage::Densecl {
            crate::densecl::new_net(&spec, &cfg.densecl_settings, &mut init_rng)?
        } else {
            net::new_net(&spec, stage == Stage::Contrastive, &mut init_rng)?
        };
        if stage == Stage::U2pl {
            // U2PL's representation head beside the classifier (a contrastive stage's trained
            // projection head loads into it below).
            net.add_projection(&mut init_rng)?;
        }
        let from_densecl = prev_stage == Some(Stage::Densecl) && !matches!(stage, Stage::CeOnly | Stage::Densecl);
        match stage {
            // After DenseCL, the next pretraining or fine-tuning stage takes its query backbone
            // alone, by name (heads, key encoder and queues stay behind).
            _ if from_densecl => {
                drop(current.take());
                let path = last_final.as_ref().context("no DenseCL checkpoint to start from")?;
                let line = crate::densecl::load_backbone(path, &mut net)?;
                if !opts.quiet {
                    eprintln!("segnet: {} starts from {}: {line}", stage.name(), path.display());
                }
            }
            Stage::Contrastive | Stage::CeOnly | Stage::Densecl => init_backbone(cfg, &mut net, stage, opts.quiet)?,
            Stage::Finetune | Stage::Pseudo | Stage::U2pl => {
                // Start from the previous stage's final weights: the projection head (if any) is
                // left out and the classifier starts fresh when coming from the contrastive stage.
                drop(current.take()); // free the previous network before loading its checkpoint
                match &last_final {
                    Some(path) => {
                        let (_, report) = load_checkpoint(path, &mut net, None, false)?;
                        if !opts.quiet {
                            eprintln!("segnet: {} starts from {}: {}", stage.name(), path.display(), report);
                        }
                    }
                    None if cfg.model.init_backbone.is_some() => init_backbone(cfg, &mut net, stage, opts.quiet)?,
                    None if !opts.quiet => {
                        eprintln!("segnet: {} has no earlier stage to start from: training from scratch", stage.name())
                    }
                    None => {}
                }
            }
        }
        nn::to_device(&mut net, opts.device)?;
        let (source, indices, unlabeled): (Arc<Source>, Vec<usize>, Vec<usize>) = if stage == Stage::Pseudo {
            let pseudo = pseudo::pseudo_label(&mut net, &train, &subset.labeled, &subset.unlabeled, cfg, opts.quiet)?;
            ctx.dir.log(json!({ "stage": "pseudo", "global_step": ctx.global_offset, "pseudo": pseudo.stats }))?;
            let n = pseudo.source.len();
            (Arc::new(pseudo.source), (0..n).collect(), vec![])
        } else if stage == Stage::Densecl {
            // Label-free: every training image (its labels are never read).
            (train.clone(), (0..train.len()).collect(), vec![])
        } else {
            (train.clone(), subset.labeled.clone(), subset.unlabeled.clone())
        };
        let resume_here =
            resume.as_ref().filter(|r| r.stage_index == si).and_then(|r| r.path.as_deref().map(|p| (p, r.step)));
        let end = stage::train_stage(&mut ctx, si, stage, &mut net, source, indices, unlabeled, resume_here)?;
        ctx.global_offset += steps;
        match end {
            StageEnd::Finished(path) => {
                prev_stage = Some(stage);
                last_final = Some(path);
                current = Some(net);
            }
            StageEnd::Stopped(path) => {
                eprintln!("segnet: stopped; resume with: segnet train --resume {}", path.display());
                return Ok(RunSummary {
                    scores: None,
                    train_scores: None,
                    table: String::new(),
                    dir: opts.out.clone(),
                    interrupted: true,
                });
            }
        }
    }
    // Final evaluation of the last network that can classify.
    let mut net = match current {
        Some(n) if n.head.classifier.is_some() => n,
        _ => {
            let last = cfg.stages.last().copied();
            if last == Some(Stage::Densecl) {
                bail!("the run ended with the densecl stage, which has no classifier: add `finetune` to --stages (e.g. --stages densecl,finetune) to get a segmentation model");
            }
            if last == Some(Stage::Contrastive) {
                bail!("the run ended with the contrastive stage, which has no classifier: add `finetune` to --stages to get a segmentation model");
            }
            let mut n = net::new_net(&spec, false, &mut Rng::new(0))?;
            let path = last_final.context("no final checkpoint")?;
            // Non-strict: a U2PL checkpoint also holds the representation head.
            let (_, report) = load_checkpoint(&path, &mut n, None, false)?;
            if !report.missing.is_empty() || !report.mismatched.is_empty() {
                bail!("{}: does not fit the model: {report}", path.display());
            }
            nn::to_device(&mut n, opts.device)?;
            n
        }
    };
    let cm = evaluate(&mut net, &val)?;
    let scores = cm.scores();
    let table = cm.table(&class_names);
    dir.write("final_scores.json", &serde_json::to_string_pretty(&scores)?)?;
    dir.plot_class_iou(&class_names, &scores)?;
    let train_scores = if opts.score_train {
        let s = crate::evaluate::evaluate_records(&mut net, &train, subset.labeled.clone())?.scores();
        dir.write("final_train_scores.json", &serde_json::to_string_pretty(&s)?)?;
        Some(s)
    } else {
        None
    };
    dir.plot()?;
    Ok(RunSummary { scores: Some(scores), train_scores, table, dir: opts.out.clone(), interrupted: false })
}

/// Load `model.init_backbone` (if set) into a stage's fresh network.
fn init_backbone(cfg: &TrainConfig, net: &mut Net, stage: Stage, quiet: bool) -> Result<()> {
    let Some(path) = &cfg.model.init_backbone else { return Ok(()) };
    let line = crate::init_backbone::load(path, &mut net.backbone)?;
    if !quiet {
        eprintln!("segnet: {} starts its backbone from --init-backbone: {line}", stage.name());
    }
    Ok(())
}

/// What [`load_for_inference`] returns: the network, its run config, the class names and the
/// pack's palette (if it has one).
pub type LoadedModel = (Net, TrainConfig, Vec<String>, Option<Vec<[u8; 3]>>);

/// What a segnet checkpoint says about itself, read before a model is built for it.
struct CheckpointInfo {
    data: nn::CheckpointData,
    cfg: TrainConfig,
    spec: crate::model::ModelSpec,
    names: Vec<String>,
    palette: Option<Vec<[u8; 3]>>,
    /// The stage that wrote it (`None` for a checkpoint without the key).
    stage: Option<String>,
}

fn read_info(path: &Path) -> Result<CheckpointInfo> {
    let data = read_checkpoint(path)?;
    let cfg = TrainConfig::from_toml(&data.meta.config)
        .map_err(|e| anyhow::anyhow!("{}: the checkpoint's run config does not parse: {e}", path.display()))?;
    let classes: usize = data
        .meta
        .extra
        .get("classes")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{}: not a segnet checkpoint (no class count in its metadata)", path.display()))?;
    let names: Vec<String> = data
        .meta
        .extra
        .get("class_names")
        .map(|s| s.split('\u{1f}').map(String::from).collect())
        .unwrap_or_else(|| (0..classes).map(|k| format!("class {k}")).collect());
    let palette = data.meta.extra.get("palette").map(|s| {
        s.split(';')
            .filter_map(|c| {
                let v: Vec<u8> = c.split(',').filter_map(|x| x.parse().ok()).collect();
                (v.len() == 3).then(|| [v[0], v[1], v[2]])
            })
            .collect()
    });
    let spec = net::spec(&cfg, classes)?;
    let stage = data.meta.extra.get("stage").cloned();
    Ok(CheckpointInfo { data, cfg, spec, names, palette, stage })
}

/// Load `path` into `n` (non-strict: a final U2PL checkpoint also holds its representation head,
/// a pretraining one its projection head), refusing one that leaves parts of `n` unfilled.
fn load_fitting(path: &Path, n: &mut Net) -> Result<()> {
    let (_, report) = load_checkpoint(path, n, None, false)?;
    if !report.missing.is_empty() || !report.mismatched.is_empty() {
        bail!("{}: does not fit the model its config describes: {}", path.display(), report);
    }
    Ok(())
}

/// Load a segmentation checkpoint for eval/predict: its model is rebuilt from the run config it
/// carries, so a checkpoint of another architecture cannot be loaded into the wrong model.
pub fn load_for_inference(path: &Path) -> Result<LoadedModel> {
    let info = read_info(path)?;
    // The stage first: a pretraining checkpoint would otherwise fail the fit below with a list
    // of missing classifier tensors instead of the reason.
    if info.stage.as_deref() == Some("densecl") {
        bail!(
            "{}: a densecl-stage checkpoint has no trained classifier; use a finetune or ce-only checkpoint",
            path.display()
        );
    }
    if info.stage.as_deref() == Some("contrastive") {
        bail!(
            "{}: a contrastive-stage checkpoint has no trained classifier; use a finetune or ce-only checkpoint",
            path.display()
        );
    }
    let mut n = net::new_net(&info.spec, false, &mut Rng::new(0))?;
    load_fitting(path, &mut n)?;
    Ok((n, info.cfg, info.names, info.palette))
}

/// A network of any stage whose features can be looked at ([`load_for_features`]).
pub struct FeatureModel {
    /// The network: with the projection head when the checkpoint has one, with the classifier
    /// when it has one.
    pub net: Net,
    /// Its run config.
    pub cfg: TrainConfig,
    /// The class names it was trained with.
    pub names: Vec<String>,
    /// The stage that wrote the checkpoint (`"unknown"` when it does not say).
    pub stage: String,
}

impl FeatureModel {
    /// Whether the network has a (trained) projection head.
    pub fn has_projection(&self) -> bool {
        self.net.projection.is_some()
    }
}

/// Load a checkpoint of any stage that trains the decoder, for `segnet embed`: unlike
/// [`load_for_inference`] a contrastive checkpoint is welcome (it has a projection head and no
/// classifier). The model is rebuilt from the run config the checkpoint carries, with the
/// projection head when the checkpoint has `projection.*` tensors (a contrastive or U2PL stage)
/// and the classifier when it has `classifier.classifier.6.*`. A DenseCL checkpoint is refused:
/// that stage trains the backbone alone, its decoder is untrained.
pub fn load_for_features(path: &Path) -> Result<FeatureModel> {
    let info = read_info(path)?;
    if info.stage.as_deref() == Some("densecl") {
        bail!(
            "{}: a densecl-stage checkpoint trains only the backbone (its decoder and projection are untrained); embed the checkpoint of the stage after it",
            path.display()
        );
    }
    let has = |prefix: &str| info.data.model.keys().any(|k| k.starts_with(prefix));
    let (projection, classifier) = (has("projection."), has("classifier.classifier.6."));
    let mut rng = Rng::new(0);
    let mut n = net::new_net(&info.spec, projection && !classifier, &mut rng)?;
    if projection && classifier {
        n.add_projection(&mut rng)?;
    }
    load_fitting(path, &mut n)?;
    Ok(FeatureModel { net: n, cfg: info.cfg, names: info.names, stage: info.stage.unwrap_or_else(|| "unknown".into()) })
}
