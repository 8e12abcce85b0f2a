//! `segnet experiment label-efficiency`: recipes against the CE-only baseline at several labeled
//! counts, several seeds each, run as a paper would.
//!
//! The rules, the same for every recipe:
//! - seed `k` runs with master seed `base + k`: a different labeled subset and initialisation, and
//!   the same subset for every recipe of that seed (a paired comparison);
//! - the score is the *final* checkpoint's validation mIoU (no choosing the best step on val);
//! - each cell is the mean and the sample standard deviation over the seeds;
//! - two budget protocols for the baseline: `same-schedule` gives CE-only the fine-tuning stage's
//!   steps (the paper's comparison: the same fine-tuning with pretraining on top), `equal-steps`
//!   gives it the pretraining steps plus the fine-tuning steps (equal total optimiser steps).
//!
//! Everything lands in the output folder: one run directory per run, `results.json` (every run,
//! with per-class IoU and the training-subset mIoU, plus the cell summaries), `results.md` (the
//! table) and `label_efficiency.png` (mIoU against the labeled count, one line per recipe, error
//! bars of one standard deviation, [`crate::plot::lines`]). `segnet experiment plot` redraws the
//! picture from a `results.json` (one of several invocations merged by hand, say).

use crate::cli::{LabelEfficiencyArgs, LabeledCount};
use crate::commands::{check_device, in_pool, resolve_config, set_threads};
use crate::config::{LossGrid, LossMode, Stage, TrainConfig};
use crate::plot::lines::{lines_png, LineSeries};
use crate::run_dir::{self, write_atomic};
use crate::train::{self, RunOptions};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A column of the experiment: how the labeled images are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Recipe {
    /// Cross-entropy from scratch (run once per budget protocol).
    CeOnly,
    /// Cross-entropy (same-schedule budget) from the `--init-backbone` weights, e.g.
    /// torchvision's ImageNet ResNet: the paper's baseline. The other columns start from random
    /// weights; the flag is only for this column.
    ImagenetCe,
    /// Contrastive pretraining with the config's loss settings, then fine-tuning.
    Contrastive,
    /// As `contrastive`, with the within-image loss.
    ContrastiveWithin,
    /// As `contrastive`, with the cross-image loss.
    ContrastiveCross,
    /// As `contrastive`, with the loss on the decoder's full stride-4 map.
    ContrastiveDecoder,
    /// As `contrastive`, with the loss on the (crop-1)/4+1 grid.
    ContrastiveQuarter,
    /// As `contrastive`, with the loss on the (crop-1)/8+1 grid.
    ContrastiveEighth,
    /// Contrastive, fine-tune, then pseudo-label retraining on the unlabeled images.
    Pseudo,
    /// Contrastive, then U2PL (in place of fine-tuning: its steps and learning rate) on the
    /// labeled subset and every unlabeled training image.
    U2pl,
    /// Contrastive, fine-tune, then U2PL with the pseudo stage's steps and learning rate: the
    /// same start and budget as `pseudo`, so the two semi-supervised methods differ only in
    /// their third stage. The teacher starts as the fine-tuned model, so there is no
    /// supervised-only warm-up (`sup_only_steps = 0`).
    U2plFinetuned,
    /// Label-free DenseCL pretraining on every training image, then fine-tuning.
    Densecl,
    /// DenseCL, then label-based contrastive pretraining, then fine-tuning (one more
    /// pretraining stage than `contrastive`: the fine-tuning budget is the same, the
    /// `equal-steps` baseline does not count the DenseCL steps).
    DenseclContrastive,
}

impl Recipe {
    /// The name in tables and folders.
    pub fn name(self) -> &'static str {
        match self {
            Recipe::CeOnly => "ce-only",
            Recipe::ImagenetCe => "imagenet-ce",
            Recipe::Contrastive => "contrastive",
            Recipe::ContrastiveWithin => "contrastive-within",
            Recipe::ContrastiveCross => "contrastive-cross",
            Recipe::ContrastiveDecoder => "contrastive-decoder",
            Recipe::ContrastiveQuarter => "contrastive-quarter",
            Recipe::ContrastiveEighth => "contrastive-eighth",
            Recipe::Pseudo => "pseudo",
            Recipe::U2pl => "u2pl",
            Recipe::U2plFinetuned => "u2pl-finetuned",
            Recipe::Densecl => "densecl",
            Recipe::DenseclContrastive => "densecl-contrastive",
        }
    }

    /// The run config of this recipe over `base`.
    fn config(self, base: &TrainConfig, protocol: Protocol) -> TrainConfig {
        let mut cfg = base.clone();
        cfg.stages = vec![Stage::Contrastive, Stage::Finetune];
        if self != Recipe::ImagenetCe {
            cfg.model.init_backbone = None;
        }
        match self {
            Recipe::CeOnly => {
                cfg.stages = vec![Stage::CeOnly];
                cfg.ce_only.steps = match protocol {
                    Protocol::SameSchedule => base.finetune.steps,
                    Protocol::EqualSteps => base.contrastive.steps + base.finetune.steps,
                };
            }
            Recipe::ImagenetCe => {
                cfg.stages = vec![Stage::CeOnly];
                cfg.ce_only.steps = base.finetune.steps;
            }
            Recipe::Contrastive => {}
            Recipe::ContrastiveWithin => cfg.loss.mode = LossMode::Within,
            Recipe::ContrastiveCross => cfg.loss.mode = LossMode::Cross,
            Recipe::ContrastiveDecoder => cfg.loss.grid = LossGrid::Decoder,
            Recipe::ContrastiveQuarter => cfg.loss.grid = LossGrid::Quarter,
            Recipe::ContrastiveEighth => cfg.loss.grid = LossGrid::Eighth,
            Recipe::Pseudo => cfg.stages.push(Stage::Pseudo),
            Recipe::U2pl => {
                // The fine-tuning budget: U2PL replaces the fine-tuning stage.
                cfg.stages = vec![Stage::Contrastive, Stage::U2pl];
                cfg.u2pl.steps = base.finetune.steps;
                cfg.u2pl.lr = base.finetune.lr;
            }
            Recipe::U2plFinetuned => {
                cfg.stages = vec![Stage::Contrastive, Stage::Finetune, Stage::U2pl];
                cfg.u2pl.steps = base.pseudo.steps;
                cfg.u2pl.lr = base.pseudo.lr;
                cfg.u2pl_settings.sup_only_steps = 0;
            }
            Recipe::Densecl => cfg.stages = vec![Stage::Densecl, Stage::Finetune],
            Recipe::DenseclContrastive => cfg.stages = vec![Stage::Densecl, Stage::Contrastive, Stage::Finetune],
        }
        cfg
    }
}

/// Which budget protocols to run the baseline under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolChoice {
    /// CE-only steps = fine-tuning steps.
    SameSchedule,
    /// CE-only steps = pretraining + fine-tuning steps.
    EqualSteps,
    /// Both.
    Both,
}

/// One budget protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// (a) the same fine-tuning schedule.
    SameSchedule,
    /// (b) equal total optimiser steps.
    EqualSteps,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::SameSchedule => "same-schedule",
            Protocol::EqualSteps => "equal-steps",
        }
    }
}

/// A column of the table: a recipe, and for the baseline its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Column {
    recipe: Recipe,
    protocol: Option<Protocol>,
}

impl Column {
    fn name(&self) -> String {
        match self.protocol {
            Some(p) => format!("{} ({})", self.recipe.name(), p.name()),
            None => self.recipe.name().to_string(),
        }
    }
    fn folder(&self) -> String {
        match self.protocol {
            Some(p) => format!("{}-{}", self.recipe.name(), p.name()),
            None => self.recipe.name().to_string(),
        }
    }
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, var.sqrt())
}

fn columns(recipes: &[Recipe], protocol: ProtocolChoice) -> Vec<Column> {
    let protocols: Vec<Protocol> = match protocol {
        ProtocolChoice::SameSchedule => vec![Protocol::SameSchedule],
        ProtocolChoice::EqualSteps => vec![Protocol::EqualSteps],
        ProtocolChoice::Both => vec![Protocol::SameSchedule, Protocol::EqualSteps],
    };
    let mut cols = Vec::new();
    for &r in recipes {
        if cols.iter().any(|c: &Column| c.recipe == r) {
            continue; // a recipe named twice is one column (or one per protocol)
        }
        if r == Recipe::CeOnly {
            cols.extend(protocols.iter().map(|&p| Column { recipe: r, protocol: Some(p) }));
        } else {
            cols.push(Column { recipe: r, protocol: None });
        }
    }
    cols
}

/// The experiment command.
pub fn label_efficiency(a: LabelEfficiencyArgs) -> Result<()> {
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if a.recipes.is_empty() {
        bail!("--recipes: name at least one recipe");
    }
    let base = resolve_config(&a.train, None)?;
    match (a.recipes.contains(&Recipe::ImagenetCe), &base.model.init_backbone) {
        (true, None) => bail!("--recipes imagenet-ce needs --init-backbone FILE (e.g. torchvision's resnet18 ImageNet weights with --width 1)"),
        (false, Some(_)) => bail!("--init-backbone is the imagenet-ce column's weights: add imagenet-ce to --recipes (the other columns start from random weights)"),
        _ => {}
    }
    set_threads(base.threads);
    in_pool(|| run_grid(&a, base))
}

/// The runs of [`label_efficiency`] once its arguments are checked and the threads set.
fn run_grid(a: &LabelEfficiencyArgs, base: TrainConfig) -> Result<()> {
    let device = check_device(&a.train.device)?;
    let out = a.train.out.clone().unwrap_or_else(|| run_dir::default_path().with_extension("label-efficiency"));
    // The labeled images there are, to resolve `all` and to refuse counts larger than that.
    let available = {
        let (train, _) = crate::data::open(&base)?;
        train.labeled_indices()?.len()
    };
    let mut counts = Vec::new();
    for c in &a.labeled {
        let n = match *c {
            LabeledCount::All => available,
            LabeledCount::N(n) if n > available => {
                bail!("--labeled {n}: the training data has only {available} labeled images")
            }
            LabeledCount::N(n) => n,
        };
        if !counts.contains(&n) {
            counts.push(n);
        }
    }
    // Only once the arguments are known good: a refused command leaves no folder behind.
    std::fs::create_dir_all(&out).with_context(|| format!("--out {}: cannot create", out.display()))?;
    let cols = columns(&a.recipes, a.protocol);
    let total_runs = counts.len() * a.seeds as usize * cols.len();
    println!(
        "label efficiency: {} labeled counts x {} seeds x {} columns = {total_runs} runs; pretraining {} + fine-tuning {} steps, CE-only {} (same-schedule) / {} (equal-steps) steps; final checkpoints; output {}",
        counts.len(),
        a.seeds,
        cols.len(),
        base.contrastive.steps,
        base.finetune.steps,
        base.finetune.steps,
        base.contrastive.steps + base.finetune.steps,
        out.display()
    );
    let t0 = Instant::now();
    let mut runs: Vec<Value> = Vec::new();
    let mut table = String::new();
    let mut done = 0usize;
    for &n in &counts {
        for seed in 0..a.seeds {
            let mut trained: Vec<(TrainConfig, PathBuf)> = Vec::new();
            for col in &cols {
                let mut cfg = col.recipe.config(&base, col.protocol.unwrap_or(Protocol::SameSchedule));
                cfg.labeled = Some(n);
                cfg.seed = base.seed + seed;
                // With fewer labeled images than the batch, every step sees all of them once.
                cfg.batch = base.batch.min(n.max(2));
                let dir = out.join(format!("n{n}-s{seed}-{}", col.folder()));
                // Recipes that begin with the same stages (same seed and settings) train them once:
                // the longest prefix an earlier run of this cell row trained is copied from it.
                let reuse = (1..cfg.stages.len()).rev().find_map(|k| {
                    let key = cfg.prefix_key(k);
                    trained
                        .iter()
                        .find(|(c, _): &&(TrainConfig, PathBuf)| c.stages.len() >= k && c.prefix_key(k) == key)
                        .map(|(_, d)| (k, d.clone()))
                });
                let opts = RunOptions {
                    out: dir.clone(),
                    quiet: true,
                    device,
                    score_train: true,
                    reuse: reuse.clone(),
                    ..Default::default()
                };
                let t = Instant::now();
                let s = train::run(&cfg, &opts)?;
                if s.interrupted {
                    eprintln!("interrupted; results so far are in {}", out.display());
                    std::process::exit(130);
                }
                let secs = t.elapsed().as_secs_f64();
                trained.push((cfg.clone(), dir.clone()));
                let val = s.scores.expect("a finished run has scores");
                let tr = s.train_scores.expect("score_train was set");
                done += 1;
                let elapsed = t0.elapsed().as_secs_f64();
                let eta = elapsed / done as f64 * (total_runs - done) as f64;
                println!(
                    "[{done}/{total_runs}] labeled {n:>4} seed {seed} {:<34} val mIoU {:>6.2}%  train mIoU {:>6.2}%  {:>5.0} s  (eta {})",
                    col.name(),
                    val.miou * 100.0,
                    tr.miou * 100.0,
                    secs,
                    hms(eta)
                );
                runs.push(json!({
                    "labeled": n, "seed": seed, "master_seed": cfg.seed, "recipe": col.recipe.name(),
                    "protocol": col.protocol.map(|p| p.name()), "column": col.name(),
                    "stages": cfg.stages.iter().map(|s| s.name()).collect::<Vec<_>>(),
                    "steps": cfg.stages.iter().map(|s| cfg.stage(*s).steps).collect::<Vec<_>>(),
                    "miou": val.miou, "pixel_accuracy": val.pixel_accuracy, "iou": val.iou,
                    "train_miou": tr.miou, "train_iou": tr.iou, "secs": secs, "dir": dir,
                    "reused_stages": reuse.map(|(k, d)| json!({ "stages": k, "from": d })),
                }));
                // Written after every run, so an interrupted experiment keeps what it measured.
                table = write_results(&out, &base, &counts, &cols, &runs, a.seeds)?;
            }
        }
    }
    println!("\n{table}");
    println!(
        "results: {} (every run), {} (table), {} (plot)",
        out.join("results.json").display(),
        out.join("results.md").display(),
        out.join("label_efficiency.png").display()
    );
    Ok(())
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The per-cell summaries, the markdown table, the plot and the JSON; returns the table.
fn write_results(
    out: &Path,
    base: &TrainConfig,
    counts: &[usize],
    cols: &[Column],
    runs: &[Value],
    seeds: u64,
) -> Result<String> {
    let scores = |n: usize, col: &Column, key: &str| -> Vec<f64> {
        runs.iter()
            .filter(|r| r["labeled"] == n && r["column"] == col.name().as_str())
            .filter_map(|r| r[key].as_f64())
            .map(|v| v * 100.0)
            .collect()
    };
    let mut cells = Vec::new();
    let mut md = String::new();
    md.push_str(&format!(
        "Validation mIoU (%) of the final checkpoint, mean ± std over {seeds} seed(s) (each a different labeled subset and init); in brackets the mIoU on the labeled training images. Pretraining {} + fine-tuning {} steps; CE-only {} steps (same-schedule) or {} (equal-steps).\n\n",
        base.contrastive.steps,
        base.finetune.steps,
        base.finetune.steps,
        base.contrastive.steps + base.finetune.steps
    ));
    md.push_str("| labeled |");
    for c in cols {
        md.push_str(&format!(" {} |", c.name()));
    }
    md.push_str("\n|---:|");
    md.push_str(&"---:|".repeat(cols.len()));
    md.push('\n');
    for &n in counts {
        md.push_str(&format!("| {n} |"));
        for c in cols {
            let v = scores(n, c, "miou");
            let t = scores(n, c, "train_miou");
            if v.is_empty() {
                md.push_str(" |");
                continue;
            }
            let (m, s) = mean_std(&v);
            let (tm, _) = mean_std(&t);
            md.push_str(&format!(" {m:.2} ± {s:.2} [{tm:.1}] |"));
            cells.push(
                json!({ "labeled": n, "column": c.name(), "mean": m, "std": s, "runs": v.len(), "train_mean": tm }),
            );
        }
        md.push('\n');
    }
    // Paired differences against each baseline protocol (same seed = same labeled subset).
    let baselines: Vec<&Column> = cols.iter().filter(|c| c.recipe == Recipe::CeOnly).collect();
    let others: Vec<&Column> = cols.iter().filter(|c| c.recipe != Recipe::CeOnly).collect();
    if !baselines.is_empty() && !others.is_empty() {
        md.push_str(
            "\nGain over CE-only (points; mean ± std of the per-seed paired differences):\n\n| labeled | recipe |",
        );
        for b in &baselines {
            md.push_str(&format!(" vs {} |", b.name()));
        }
        md.push_str("\n|---:|---|");
        md.push_str(&"---:|".repeat(baselines.len()));
        md.push('\n');
        for &n in counts {
            for o in &others {
                md.push_str(&format!("| {n} | {} |", o.name()));
                for b in &baselines {
                    let d: Vec<f64> = (0..seeds)
                        .filter_map(|s| {
                            let get = |c: &Column| {
                                runs.iter()
                                    .find(|r| r["labeled"] == n && r["seed"] == s && r["column"] == c.name().as_str())
                                    .and_then(|r| r["miou"].as_f64())
                            };
                            Some((get(o)? - get(b)?) * 100.0)
                        })
                        .collect();
                    if d.is_empty() {
                        md.push_str(" |");
                    } else {
                        let (m, s) = mean_std(&d);
                        md.push_str(&format!(" {m:+.2} ± {s:.2} |"));
                        cells.push(json!({
                            "labeled": n, "column": o.name(), "versus": b.name(), "gain_mean": m, "gain_std": s, "pairs": d.len()
                        }));
                    }
                }
                md.push('\n');
            }
        }
    }
    write_atomic(&out.join("label_efficiency.png"), &label_efficiency_png(&cells)?)?;
    let doc = json!({ "config": base.to_toml(), "seeds": seeds, "labeled": counts, "runs": runs, "cells": cells });
    write_atomic(&out.join("results.json"), serde_json::to_string_pretty(&doc)?.as_bytes())?;
    write_atomic(&out.join("results.md"), md.as_bytes())?;
    Ok(md)
}

/// The lines of the label-efficiency plot from the cell summaries of a `results.json`
/// (`{labeled, column, mean, std}` in percent; the paired-gain cells, without a `mean`, are
/// skipped): one line per column, in the order the columns first appear.
pub fn series_from_cells(cells: &[Value]) -> Vec<LineSeries> {
    // CE-only greys first (the baselines of the default column order), then colours.
    let colours: [[u8; 3]; 8] = [
        [90, 90, 90],
        [150, 150, 150],
        [214, 39, 40],
        [31, 119, 180],
        [44, 160, 44],
        [148, 103, 189],
        [255, 127, 14],
        [23, 190, 207],
    ];
    let mut series: Vec<LineSeries> = Vec::new();
    for c in cells {
        let (Some(col), Some(n), Some(m)) = (c["column"].as_str(), c["labeled"].as_f64(), c["mean"].as_f64()) else {
            continue;
        };
        let point = (n, m, c["std"].as_f64().unwrap_or(0.0));
        match series.iter_mut().find(|s| s.name == col) {
            Some(s) => s.points.push(point),
            None => {
                let color = colours[series.len() % colours.len()];
                series.push(LineSeries { name: col.to_string(), color, points: vec![point] });
            }
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

/// `label_efficiency.png` from the cell summaries (as [`series_from_cells`] reads them).
fn label_efficiency_png(cells: &[Value]) -> Result<Vec<u8>> {
    lines_png("validation mIoU against labeled images", "labeled images", "val mIoU (%)", &series_from_cells(cells))
}

/// `segnet experiment plot`: merge the runs of `results` (results.json files), recompute each
/// cell (labeled count x column: mean and std over master seeds) and the paired gains over every
/// CE-only column, draw the plot into `out`, print the table; `json` gets the merged document.
pub fn plot_results(results: &[std::path::PathBuf], out: &Path, json_out: Option<&Path>) -> Result<()> {
    let mut runs: Vec<Value> = Vec::new();
    for f in results {
        let text = std::fs::read_to_string(f).with_context(|| format!("{}: cannot read", f.display()))?;
        let doc: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not a JSON document", f.display()))?;
        let Some(rs) = doc["runs"].as_array() else {
            bail!("{}: no `runs` (not a results.json of `segnet experiment label-efficiency`?)", f.display());
        };
        for r in rs {
            let key = |r: &Value| (r["labeled"].clone(), r["master_seed"].clone(), r["column"].clone());
            if r["miou"].as_f64().is_none() || r["master_seed"].as_u64().is_none() {
                bail!("{}: a run without miou or master_seed: {r}", f.display());
            }
            if !runs.iter().any(|q| key(q) == key(r)) {
                runs.push(r.clone());
            }
        }
    }
    if runs.is_empty() {
        bail!("{}: no runs to plot", results.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let mut counts: Vec<u64> = runs.iter().filter_map(|r| r["labeled"].as_u64()).collect();
    counts.sort_unstable();
    counts.dedup();
    let mut columns: Vec<String> = Vec::new();
    for r in &runs {
        let c = r["column"].as_str().unwrap_or("?").to_string();
        if !columns.contains(&c) {
            columns.push(c);
        }
    }
    let pick = |n: u64, col: &str| -> Vec<(u64, f64)> {
        let mut v: Vec<(u64, f64)> = runs
            .iter()
            .filter(|r| r["labeled"].as_u64() == Some(n) && r["column"].as_str() == Some(col))
            .map(|r| (r["master_seed"].as_u64().unwrap_or(0), r["miou"].as_f64().unwrap_or(f64::NAN) * 100.0))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    };
    let mut cells = Vec::new();
    let mut md = String::from("| labeled | column | val mIoU (%) | seeds |\n|---:|---|---:|---|\n");
    for &n in &counts {
        for col in &columns {
            let v = pick(n, col);
            if v.is_empty() {
                continue;
            }
            let (m, s) = mean_std(&v.iter().map(|x| x.1).collect::<Vec<_>>());
            let seeds: Vec<String> = v.iter().map(|(k, x)| format!("{k}: {x:.2}")).collect();
            md.push_str(&format!("| {n} | {col} | {m:.2} ± {s:.2} | {} |\n", seeds.join(", ")));
            cells.push(json!({ "labeled": n, "column": col, "mean": m, "std": s, "runs": v.len() }));
        }
    }
    md.push_str(
        "\nPaired gains (points, same master seeds):\n\n| labeled | column | versus | gain |\n|---:|---|---|---:|\n",
    );
    for &n in &counts {
        for base in columns.iter().filter(|c| c.starts_with("ce-only")) {
            let b = pick(n, base);
            for col in columns.iter().filter(|c| *c != base) {
                let d: Vec<f64> =
                    pick(n, col).iter().filter_map(|(k, x)| b.iter().find(|q| q.0 == *k).map(|q| x - q.1)).collect();
                if d.is_empty() {
                    continue;
                }
                let (m, s) = mean_std(&d);
                md.push_str(&format!("| {n} | {col} | {base} | {m:+.2} ± {s:.2} ({} pairs) |\n", d.len()));
                cells.push(json!({ "labeled": n, "column": col, "versus": base, "gain_mean": m, "gain_std": s, "pairs": d.len() }));
            }
        }
    }
    write_atomic(out, &label_efficiency_png(&cells)?)?;
    if let Some(j) = json_out {
        let doc = json!({ "merged_from": results, "runs": runs, "cells": cells });
        write_atomic(j, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    println!("{md}\nplot: {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plot from the checked-in results of the v3 round: its three columns, both counts.
    #[test]
    fn plot_from_a_results_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/results/label-efficiency-v3-merged.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let s = series_from_cells(doc["cells"].as_array().unwrap());
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ce-only (same-schedule)", "ce-only (equal-steps)", "contrastive"]);
        assert!(s.iter().all(|s| s.points.first().map(|p| p.0) == Some(20.0)), "sorted by count");
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("le.png");
        let merged = tmp.path().join("merged.json");
        // The same file twice: repeats count once; cells come from the runs, not the stored cells.
        plot_results(&[path.clone(), path.clone()], &out, Some(&merged)).unwrap();
        let img = image::open(&out).unwrap();
        assert_eq!((img.width(), img.height()), crate::plot::lines::SIZE);
        let m: Value = serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
        assert_eq!(m["runs"].as_array().unwrap().len(), doc["runs"].as_array().unwrap().len());
        let all_contrastive: Vec<f64> = doc["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["labeled"] == 500 && r["column"] == "contrastive")
            .map(|r| r["miou"].as_f64().unwrap() * 100.0)
            .collect();
        let cell = m["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["labeled"] == 500 && c["column"] == "contrastive" && c.get("mean").is_some())
            .unwrap()
            .clone();
        assert_eq!(cell["runs"].as_u64().unwrap() as usize, all_contrastive.len());
        assert!((cell["mean"].as_f64().unwrap() - mean_std(&all_contrastive).0).abs() < 1e-9);
        let bad = tmp.path().join("bad.json");
        std::fs::write(&bad, "{\"runs\": []}").unwrap();
        assert!(format!("{:#}", plot_results(&[bad.clone()], &out, None).unwrap_err()).contains("bad.json"));
        let none = tmp.path().join("none.json");
        assert!(format!("{:#}", plot_results(&[none], &out, None).unwrap_err()).contains("none.json"));
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12);
        assert!((s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }

    #[test]
    fn baseline_budgets_follow_the_protocol() {
        let base = TrainConfig::default();
        let a = Recipe::CeOnly.config(&base, Protocol::SameSchedule);
        let b = Recipe::CeOnly.config(&base, Protocol::EqualSteps);
        assert_eq!(a.stages, vec![Stage::CeOnly]);
        assert_eq!(a.ce_only.steps, base.finetune.steps);
        assert_eq!(b.ce_only.steps, base.contrastive.steps + base.finetune.steps);
        let c = Recipe::Contrastive.config(&base, Protocol::SameSchedule);
        assert_eq!(c.stages, vec![Stage::Contrastive, Stage::Finetune]);
        assert_eq!(Recipe::ContrastiveCross.config(&base, Protocol::SameSchedule).loss.mode, LossMode::Cross);
        assert_eq!(Recipe::ContrastiveDecoder.config(&base, Protocol::SameSchedule).loss.grid, LossGrid::Decoder);
        let cols = columns(&[Recipe::CeOnly, Recipe::Contrastive], ProtocolChoice::Both);
        assert_eq!(cols.len(), 3);
        // U2PL takes the fine-tuning stage's place and budget; pseudo adds its stage on top.
        let u = Recipe::U2pl.config(&base, Protocol::SameSchedule);
        assert_eq!(u.stages, vec![Stage::Contrastive, Stage::U2pl]);
        assert_eq!((u.u2pl.steps, u.u2pl.lr), (base.finetune.steps, base.finetune.lr));
        let uf = Recipe::U2plFinetuned.config(&base, Protocol::SameSchedule);
        assert_eq!(uf.stages, vec![Stage::Contrastive, Stage::Finetune, Stage::U2pl]);
        assert_eq!((uf.u2pl.steps, uf.u2pl.lr), (base.pseudo.steps, base.pseudo.lr));
        assert_eq!(uf.u2pl_settings.sup_only_steps, 0);
        let p = Recipe::Pseudo.config(&base, Protocol::SameSchedule);
        assert_eq!(p.stages, vec![Stage::Contrastive, Stage::Finetune, Stage::Pseudo]);
        assert_eq!(columns(&[Recipe::CeOnly, Recipe::Pseudo, Recipe::U2pl], ProtocolChoice::SameSchedule).len(), 3);
        let d = Recipe::Densecl.config(&base, Protocol::SameSchedule);
        assert_eq!(d.stages, vec![Stage::Densecl, Stage::Finetune]);
        assert_eq!(d.finetune, base.finetune);
        let dc = Recipe::DenseclContrastive.config(&base, Protocol::SameSchedule);
        assert_eq!(dc.stages, vec![Stage::Densecl, Stage::Contrastive, Stage::Finetune]);
        assert_eq!(Recipe::Densecl.name(), "densecl");
        assert_eq!(Recipe::DenseclContrastive.name(), "densecl-contrastive");
    }
}
