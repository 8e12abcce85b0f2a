//! What each subcommand does.

use crate::cli::{Command, ExperimentCommand, LabeledCount, TrainArgs, TrainCmdArgs};
use crate::config::TrainConfig;
use crate::train::{self, RunOptions};
use crate::{bench, data_cmd, embed, evaluate, experiment, predict, run_dir};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::PathBuf;

/// Dispatch a parsed command.
pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Train(a) => train_cmd(a),
        // Inference on a worker of the (default-sized) pool, as training (`in_pool`).
        Command::Eval(a) => {
            let dev = check_device(&a.device)?;
            in_pool(|| evaluate_cmd(&a.checkpoint, a.data.as_ref(), a.json, a.plot.as_deref(), dev, &a.infer))
        }
        Command::Predict(a) => in_pool(|| predict::run(&a)),
        Command::Embed(a) => in_pool(|| embed::run(&a)),
        Command::Data(d) => data_cmd::run(d),
        Command::Experiment(ExperimentCommand::LabelEfficiency(a)) => experiment::label_efficiency(a),
        Command::Experiment(ExperimentCommand::Plot(a)) => {
            experiment::plot_results(&a.results, &a.out, a.json.as_deref())
        }
        Command::Bench(b) => bench::run(b),
    }
}

/// Check a `--device` value (CUDA needs a `--features cuda` build).
pub fn check_device(device: &str) -> Result<engine::Device> {
    crate::net::parse_device(device)
}

/// Build rayon's global pool (once per process).
pub fn set_threads(n: usize) {
    if n > 0 {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
}

/// Run `f` on a worker thread of the global pool (set up by [`set_threads`] first), so that the
/// parallel loops of the kernels start on a worker and split with the others. Called from a
/// thread outside the pool, every loop is injected into the pool while the calling thread blocks
/// and is woken again: a few thousand sleeps and wake-ups per step (`perf stat` on `bench step
/// --backbone resnet18 --crop 129`, 22 steps: 41 k context switches outside the pool, 6 k inside).
/// The other workers are kept awake meanwhile ([`crate::keep_awake`]).
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    crate::keep_awake::run(f)
}

/// The config of a `train` invocation: defaults, then the TOML file, then flags (`labeled` is
/// the `train` command's own flag; experiments set it per run).
pub fn resolve_config(a: &TrainArgs, labeled: Option<LabeledCount>) -> Result<TrainConfig> {
    let mut cfg = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("--config {}: cannot read", p.display()))?;
            TrainConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("--config {}: {e}", p.display()))?
        }
        None => TrainConfig::default(),
    };
    if let Some(v) = &a.data {
        cfg.data = Some(v.clone());
    }
    if let Some(v) = &a.val_data {
        cfg.val_data = Some(v.clone());
    }
    match labeled {
        Some(LabeledCount::N(n)) => cfg.labeled = Some(n),
        Some(LabeledCount::All) => cfg.labeled = None,
        None => {}
    }
    if let Some(v) = &a.stages {
        cfg.stages = v.clone();
    }
    if let Some(v) = &a.backbone {
        cfg.model.backbone = v.clone();
    }
    if let Some(v) = a.width {
        cfg.model.width = v;
    }
    if let Some(v) = a.output_stride {
        cfg.model.output_stride = v;
    }
    if let Some(v) = &a.init_backbone {
        if !v.is_file() {
            anyhow::bail!("--init-backbone {}: no such file", v.display());
        }
        cfg.model.init_backbone = Some(v.clone());
    }
    if let Some(v) = a.crop {
        cfg.crop = v;
    }
    if let Some(v) = a.batch {
        cfg.batch = v;
    }
    if let Some(v) = a.steps {
        for stage in [
            &mut cfg.contrastive,
            &mut cfg.finetune,
            &mut cfg.ce_only,
            &mut cfg.pseudo,
            &mut cfg.u2pl,
            &mut cfg.densecl,
        ] {
            stage.steps = v;
        }
    }
    if let Some(v) = a.seed {
        cfg.seed = v;
    }
    if let Some(v) = a.threads {
        cfg.threads = v;
    }
    if let Some(v) = a.loss_mode {
        cfg.loss.mode = v;
    }
    if a.supcon {
        cfg.loss.supcon = true;
    }
    if a.full_res_loss {
        cfg.loss.grid = crate::config::LossGrid::Decoder;
    }
    if let Some(v) = a.loss_grid {
        cfg.loss.grid = v;
    }
    if let Some(v) = a.projection_layers {
        cfg.loss.projection_layers = v;
    }
    if let Some(v) = a.unlabeled_batch {
        if v == 0 {
            bail!("--unlabeled-batch must be at least 1");
        }
        cfg.u2pl_settings.unlabeled_batch = Some(v);
    }
    if let Some(v) = a.queue_size {
        if v == 0 {
            bail!("--queue-size must be at least 1");
        }
        cfg.u2pl_settings.queue_size = v;
    }
    if let Some(v) = a.sup_only_steps {
        cfg.u2pl_settings.sup_only_steps = v;
    }
    if let Some(v) = a.lambda_c {
        if !(v >= 0.0 && v.is_finite()) {
            bail!("--lambda-c must be a number >= 0, got {v}");
        }
        cfg.u2pl_settings.lambda_c = v;
    }
    if a.class_balanced_split {
        cfg.u2pl_settings.class_balanced_split = true;
    }
    if let Some(v) = a.labeled_from {
        cfg.u2pl_settings.labeled_from = v;
    }
    if let Some(v) = a.key_momentum {
        if !(0.0..=1.0).contains(&v) {
            bail!("--key-momentum must be in [0, 1], got {v}");
        }
        cfg.densecl_settings.key_momentum = v;
    }
    if let Some(v) = a.dense_lambda {
        if !(0.0..=1.0).contains(&v) {
            bail!("--dense-lambda must be in [0, 1], got {v}");
        }
        cfg.densecl_settings.lambda = v;
    }
    if let Some(v) = a.densecl_queue {
        if v == 0 {
            bail!("--densecl-queue must be at least 1");
        }
        cfg.densecl_settings.queue_size = v;
    }
    if let Some(v) = a.dense_warmup_steps {
        cfg.densecl_settings.dense_warmup_steps = v;
    }
    cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(cfg)
}

fn train_cmd(t: TrainCmdArgs) -> Result<()> {
    let a = &t.train;
    let device = check_device(&a.device)?;
    let resume = a.resume.as_deref().map(train::resume_target).transpose()?;
    if let Some(ck) = resume.as_ref().filter(|_| !a.quiet) {
        eprintln!("segnet: resuming from {}", ck.display());
    }
    let (cfg, out) = match &resume {
        Some(ck) => train::resume_config(ck)?,
        None => (resolve_config(a, t.labeled)?, a.out.clone().unwrap_or_else(run_dir::default_path)),
    };
    set_threads(cfg.threads);
    let t0 = std::time::Instant::now();
    let s = in_pool(|| {
        train::run(
            &cfg,
            &RunOptions { out, resume, quiet: a.quiet, stop_after: None, device, score_train: false, reuse: None },
        )
    })?;
    if s.interrupted {
        std::process::exit(130);
    }
    println!(
        "\nvalidation after {} ({:.0} s):",
        cfg.stages.iter().map(|s| s.name()).collect::<Vec<_>>().join(" -> "),
        t0.elapsed().as_secs_f64()
    );
    print!("{}", s.table);
    println!(
        "run directory: {} (config.toml, metrics.jsonl, curves.png, class_iou.png, checkpoints/)",
        s.dir.display()
    );
    Ok(())
}

fn evaluate_cmd(
    ckpt: &PathBuf,
    data: Option<&PathBuf>,
    as_json: bool,
    plot: Option<&std::path::Path>,
    dev: engine::Device,
    infer_args: &crate::cli::InferArgs,
) -> Result<()> {
    if let Some(p) = plot {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            bail!("--plot {}: the folder {} does not exist", p.display(), parent.display());
        }
    }
    let (mut net, mut cfg, names, _) = train::load_for_inference(ckpt)?;
    let opts = infer_args.options(cfg.crop)?;
    nn::to_device(&mut net, dev)?;
    cfg.val_data = data.cloned();
    if data.is_none() && cfg.data.is_some() {
        bail!("--data is required: the checkpoint was trained on a pack");
    }
    let val = match data {
        Some(p) => std::sync::Arc::new(crate::data::Source::Pack(datasets::Pack::open(p)?)),
        None => crate::data::open(&TrainConfig { data: None, val_data: None, ..cfg.clone() })?.1,
    };
    let classes = datasets::SampleSource::num_classes(&*val);
    if classes != names.len() {
        bail!(
            "{}: has {classes} classes but the checkpoint's model predicts {}",
            data.map(|p| p.display().to_string()).unwrap_or_default(),
            names.len()
        );
    }
    if let Some(p) = data {
        let pack_names = val.class_names();
        if pack_names != names {
            eprintln!(
                "warning: {} names its classes [{}], the checkpoint [{}]; reporting the checkpoint's names",
                p.display(),
                pack_names.join(", "),
                names.join(", ")
            );
        }
    }
    let cm = evaluate::evaluate_with(&mut net, &val, &opts)?;
    let s = cm.scores();
    if as_json {
        let v = json!({
            "checkpoint": ckpt, "miou": s.miou, "pixel_accuracy": s.pixel_accuracy, "pixels": s.pixels,
            "iou": s.iou, "class_names": names, "confusion": cm.counts(), "classes": classes,
            "protocol": "classes absent from both ground truth and predictions are left out of the mean",
            "inference": opts.to_json(),
        });
        println!("{v}");
    } else {
        println!("inference: {}", opts.describe());
        println!("confusion matrix (rows: ground truth, columns: prediction):");
        let c = cm.classes();
        for g in 0..c {
            let row: Vec<String> = (0..c).map(|p| format!("{:>9}", cm.counts()[g * c + p])).collect();
            println!("{:<16}{}", names.get(g).map(String::as_str).unwrap_or(""), row.join(""));
        }
        println!();
        print!("{}", cm.table(&names));
    }
    if let Some(p) = plot {
        let file = ckpt.file_name().map_or(ckpt.display().to_string(), |f| f.to_string_lossy().into_owned());
        let on = data.map_or("synthetic validation split".to_string(), |d| d.display().to_string());
        let png = crate::plot::bars::class_iou_png(&format!("IoU per class: {file} on {on}"), &names, &s.iou, s.miou)?;
        run_dir::write_atomic(p, &png)?;
        if !as_json {
            println!("class IoU chart: {}", p.display());
        }
    }
    Ok(())
}
