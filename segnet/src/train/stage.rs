//! One stage's step loop: batches, loss, backward, SGD, logging, evaluation, checkpoints. What the
//! stage minimises (and how its loader augments) is its [`objective::Objective`], built once here.

use super::objective::{self, WithState};
use super::{derive_seed, INTERRUPTED};
use crate::config::{Stage, TrainConfig};
use crate::data::{HiddenLabels, Source};
use crate::evaluate::evaluate;
use crate::net::Net;
use crate::run_dir::RunDir;
use anyhow::{bail, Context, Result};
use datasets::{Loader, LoaderConfig, SampleSource};
use engine::Rng;
use indicatif::{ProgressBar, ProgressStyle};
use nn::{load_checkpoint, save_checkpoint, CheckpointMeta, Ctx, LrSchedule, ParamGroups, Sgd, SgdConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// State shared by the stages of a run.
pub struct StageCtx<'a> {
    pub cfg: &'a TrainConfig,
    pub dir: &'a mut RunDir,
    pub val: Arc<Source>,
    pub quiet: bool,
    /// Steps this invocation may still take before stopping as if interrupted.
    pub budget: Option<usize>,
    /// Steps of the stages before this one (for the global step axis of the curves).
    pub global_offset: usize,
}

/// How a stage ended.
pub enum StageEnd {
    /// All steps done; the final checkpoint's path.
    Finished(PathBuf),
    /// Interrupted (Ctrl-C or the step budget); the checkpoint to resume from.
    Stopped(PathBuf),
}

fn meta(
    cfg: &TrainConfig,
    si: usize,
    stage: Stage,
    step: usize,
    classes: usize,
    source: &Source,
    val: &Source,
) -> CheckpointMeta {
    let mut extra = BTreeMap::new();
    extra.insert("stage".into(), stage.name().into());
    extra.insert("stage_index".into(), si.to_string());
    extra.insert("stage_step".into(), step.to_string());
    extra.insert("classes".into(), classes.to_string());
    let names = val.class_names();
    extra.insert("class_names".into(), names.join("\u{1f}"));
    if let Some(pal) = source.palette() {
        extra.insert(
            "palette".into(),
            pal.iter().map(|c| format!("{},{},{}", c[0], c[1], c[2])).collect::<Vec<_>>().join(";"),
        );
    }
    CheckpointMeta { step: step as u64, rng: None, config: cfg.to_toml(), extra }
}

/// Train `net` for one stage on the records `indices` of `source`; `unlabeled` are the records
/// an objective that asks for unlabeled batches ([`objective::Objective::unlabeled`]) draws
/// them from (their labels hidden).
#[allow(clippy::too_many_arguments)]
pub fn train_stage(
    sc: &mut StageCtx<'_>,
    si: usize,
    stage: Stage,
    net: &mut Net,
    source: Arc<Source>,
    indices: Vec<usize>,
    unlabeled: Vec<usize>,
    resume: Option<(&Path, usize)>,
) -> Result<StageEnd> {
    let cfg = sc.cfg;
    let sc_cfg = cfg.stage(stage);
    let classes = source.num_classes();
    if indices.len() < cfg.batch {
        bail!(
            "{}: {} training images but the batch size is {} (use a smaller --batch or more --labeled images)",
            stage.name(),
            indices.len(),
            cfg.batch
        );
    }
    let mut objective = objective::for_stage(stage, cfg, classes);
    let aug = objective.augment(cfg);
    let loader = Loader::new(
        source.clone(),
        Some(indices),
        LoaderConfig::train(cfg.batch, derive_seed(cfg.seed, &[3, si as u64]), aug),
    )?;
    let bpe = loader.batches_per_epoch();
    let unlabeled_loader = match objective.unlabeled(cfg) {
        None => None,
        Some((ub, uaug)) => {
            if unlabeled.len() < ub.max(1) {
                bail!(
                    "{}: {} unlabeled training images but {} per step are needed (use fewer --labeled images or a smaller --unlabeled-batch)",
                    stage.name(),
                    unlabeled.len(),
                    ub
                );
            }
            let hidden = Arc::new(HiddenLabels::new(source.clone(), &unlabeled)?);
            let lc = LoaderConfig::train(ub, derive_seed(cfg.seed, &[5, si as u64]), uaug);
            let l = Loader::new(hidden, Some(unlabeled), lc)?;
            let n = l.batches_per_epoch();
            Some((l, n))
        }
    };
    let groups = ParamGroups { lr_mult: vec![], no_decay_norm_and_bias: true };
    let mut opt =
        Sgd::new(SgdConfig { momentum: sc_cfg.momentum, weight_decay: sc_cfg.weight_decay, ..SgdConfig::default() })?
            .with_groups(groups);
    let sched = LrSchedule::cosine(sc_cfg.lr, sc_cfg.steps as u64)?.with_warmup(sc_cfg.warmup as u64)?;
    let mut start = 0;
    objective.start(net)?;
    if let Some(line) = objective.describe().filter(|_| !sc.quiet) {
        eprintln!("segnet: {line}");
    }
    if let Some((path, step)) = resume {
        load_checkpoint(path, &mut WithState { net, state: objective.state() }, Some(&mut opt), true)?;
        start = step;
        if !sc.quiet {
            eprintln!("segnet: resumed {} at step {step} from {}", stage.name(), path.display());
        }
    }
    let pb = if sc.quiet {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(sc_cfg.steps as u64);
        pb.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_prefix(stage.name().to_string());
        pb
    };
    pb.set_position(start as u64);
    let save = |m: &mut WithState<'_>, opt: &Sgd, name: &str, step: usize, dir: &RunDir| -> Result<PathBuf> {
        let path = dir.checkpoint(name);
        save_checkpoint(&path, m, Some(opt), &meta(cfg, si, stage, step, classes, &source, &sc.val))?;
        Ok(path)
    };
    let mut step = start;
    while step < sc_cfg.steps {
        if INTERRUPTED.load(Ordering::SeqCst) || sc.budget == Some(0) {
            let mut m = WithState { net, state: objective.state() };
            let path = save(&mut m, &opt, &format!("{}-last", stage.name()), step, sc.dir)?;
            pb.abandon_with_message("stopped");
            return Ok(StageEnd::Stopped(path));
        }
        let t0 = Instant::now();
        let batch = loader.batch((step / bpe) as u64, step % bpe)?;
        let mut ctx = Ctx::train(Rng::new(derive_seed(cfg.seed, &[4, si as u64, step as u64])));
        let loss = match &unlabeled_loader {
            Some((u, ubpe)) => {
                let ub = u.batch((step / ubpe) as u64, step % ubpe)?;
                objective.loss_semi(net, &batch, &ub, step, &mut ctx)?
            }
            None => objective.loss(net, &batch, step, &mut ctx)?,
        };
        let lv = loss.item()?;
        if !lv.is_finite() {
            pb.abandon_with_message("non-finite loss");
            bail!(
                "{}: the loss became {lv} at step {step}; stopping. The last good checkpoint is in {} (lower the learning rate, currently {})",
                stage.name(),
                sc.dir.path.join("checkpoints").display(),
                sc_cfg.lr
            );
        }
        let grads = ctx.backward(&loss)?;
        let lr = sched.lr(step as u64);
        opt.step(net, &grads, lr)?;
        drop(grads);
        objective.after_step(net)?;
        step += 1;
        if let Some(b) = sc.budget.as_mut() {
            *b -= 1;
        }
        let mut rec = RunDir::record(stage.name(), step, sc.global_offset + step);
        rec["loss"] = lv.into();
        rec["lr"] = lr.into();
        rec["secs"] = t0.elapsed().as_secs_f64().into();
        if let Some(serde_json::Value::Object(extra)) = objective.step_metrics() {
            for (k, v) in extra {
                rec[k] = v;
            }
        }
        sc.dir.log(rec)?;
        pb.set_position(step as u64);
        pb.set_message(format!("loss {lv:.4}"));
        let at_end = step == sc_cfg.steps;
        // Evaluation needs a classifier (the contrastive stage's network has none).
        let scored = objective.eval_net(net);
        if scored.head.classifier.is_some() && (step % cfg.eval_every.max(1) == 0 || at_end) {
            let cm = evaluate(scored, &sc.val)?;
            let s = cm.scores();
            let mut rec = RunDir::record(stage.name(), step, sc.global_offset + step);
            rec["miou"] = s.miou.into();
            rec["pixel_accuracy"] = s.pixel_accuracy.into();
            rec["iou"] = serde_json::to_value(&s.iou)?;
            sc.dir.log(rec)?;
            pb.println(format!(
                "{:>12} step {step}: val mIoU {:.2}%, pixel accuracy {:.2}%",
                stage.name(),
                s.miou * 100.0,
                s.pixel_accuracy * 100.0
            ));
            sc.dir.plot()?;
        }
        if step % cfg.checkpoint_every.max(1) == 0 && !at_end {
            let mut m = WithState { net, state: objective.state() };
            save(&mut m, &opt, &format!("{}-last", stage.name()), step, sc.dir)?;
        }
    }
    pb.finish_with_message("done");
    objective.finish(net)?;
    let mut m = WithState { net, state: None };
    let path =
        save(&mut m, &opt, &format!("{}-final", stage.name()), step, sc.dir).context("saving the final checkpoint")?;
    sc.dir.plot()?;
    Ok(StageEnd::Finished(path))
}
