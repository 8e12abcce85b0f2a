//! A run directory: `config.toml`, `metrics.jsonl` (one JSON object per line), checkpoints under
//! `checkpoints/`, `curves.png` (kept up to date as the run goes, [`crate::plot::curves`]) and,
//! at the end, `final_scores.json` and `class_iou.png` ([`crate::plot::bars`]).

use crate::plot::curves::Curves;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An open run directory.
pub struct RunDir {
    /// The folder.
    pub path: PathBuf,
    metrics: File,
    /// Every record so far (those of an earlier invocation too, when resuming), for the plot.
    curves: Curves,
}

/// `runs/<UTC date>-<time>` for a new run.
pub fn default_path() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    PathBuf::from(format!("runs/{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// Write `bytes` to `path` without ever leaving a half-written file ([`nn::write_atomically`]:
/// temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    nn::write_atomically(path, bytes).with_context(|| format!("{}: cannot write", path.display()))
}

impl RunDir {
    /// Create (or reopen, when resuming) a run directory; metrics are appended.
    pub fn open(path: &Path) -> Result<RunDir> {
        fs::create_dir_all(path.join("checkpoints")).with_context(|| format!("cannot create {}", path.display()))?;
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.join("metrics.jsonl"))
            .with_context(|| format!("cannot open {}", path.join("metrics.jsonl").display()))?;
        let mut curves = Curves::new();
        // A resumed run's curves start with what the earlier invocations logged.
        if let Ok(text) = fs::read_to_string(path.join("metrics.jsonl")) {
            curves.add_jsonl(&text);
        }
        Ok(RunDir { path: path.to_path_buf(), metrics, curves })
    }

    /// Write a file into the run directory (atomically: temp file, fsync, rename).
    pub fn write(&self, name: &str, text: &str) -> Result<()> {
        write_atomic(&self.path.join(name), text.as_bytes())
    }

    /// Append one metrics record.
    pub fn log(&mut self, v: Value) -> Result<()> {
        writeln!(self.metrics, "{v}").context("cannot append to metrics.jsonl")?;
        self.curves.add(&v);
        Ok(())
    }

    /// Redraw `curves.png`.
    pub fn plot(&self) -> Result<()> {
        let title = format!("training curves: {}", self.path.display());
        let png = self.curves.png(&title)?;
        write_atomic(&self.path.join("curves.png"), &png)
    }

    /// Write `class_iou.png`: the per-class IoU of `scores` as bars (classes named `names`).
    pub fn plot_class_iou(&self, names: &[String], scores: &crate::metrics::Scores) -> Result<()> {
        let title = format!("validation IoU per class: {}", self.path.display());
        let png = crate::plot::bars::class_iou_png(&title, names, &scores.iou, scores.miou)?;
        write_atomic(&self.path.join("class_iou.png"), &png)
    }

    /// Drop the metrics records after global step `global`, and any line a kill cut short: a
    /// resumed run repeats those steps and logs them again. The file is rewritten atomically.
    pub fn forget_after(&mut self, global: usize) -> Result<()> {
        let file = self.path.join("metrics.jsonl");
        let text = fs::read_to_string(&file).unwrap_or_default();
        let step_of = |l: &str| serde_json::from_str::<Value>(l).ok().and_then(|v| v["global_step"].as_u64());
        let kept: String = text
            .lines()
            .filter(|l| step_of(l).is_some_and(|g| g as usize <= global))
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&file, kept.as_bytes())?;
        let path = self.path.clone();
        *self = RunDir::open(&path)?;
        Ok(())
    }

    /// Path of a checkpoint file.
    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.path.join("checkpoints").join(format!("{name}.safetensors"))
    }

    /// A JSON value for logging.
    pub fn record(stage: &str, step: usize, global: usize) -> Value {
        json!({ "stage": stage, "step": step, "global_step": global })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(stage: &str, step: usize, global: usize, loss: f64) -> Value {
        let mut r = RunDir::record(stage, step, global);
        r["loss"] = loss.into();
        r["lr"] = 0.1.into();
        r
    }

    /// A run stopped inside its second stage and reopened (as `--resume` does): the curves hold
    /// both invocations' records, odd lines are skipped, and the picture is redrawn.
    #[test]
    fn reopened_run_directory_keeps_its_curves() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run");
        {
            let mut d = RunDir::open(&path).unwrap();
            for s in 1..=4 {
                d.log(step("contrastive", s, s, 6.0 - s as f64 * 0.1)).unwrap();
            }
            d.log(json!({ "stage": "finetune", "global_step": 4, "reused_from": "x" })).unwrap();
            d.log(step("finetune", 1, 5, 1.0)).unwrap();
            d.log(json!({ "stage": "finetune", "step": 1, "global_step": 5, "miou": 0.2, "iou": [0.1, null] }))
                .unwrap();
            d.plot().unwrap();
        }
        // A line cut short by a crash.
        let mut f = OpenOptions::new().append(true).open(path.join("metrics.jsonl")).unwrap();
        writeln!(f, "{{\"stage\":\"finetune\",\"glo").unwrap();
        let mut d = RunDir::open(&path).unwrap();
        assert_eq!(d.curves.loss("contrastive").len(), 4);
        assert_eq!(d.curves.miou("finetune"), [(5.0, 20.0)]);
        d.log(step("finetune", 2, 6, 0.8)).unwrap();
        d.plot().unwrap();
        assert_eq!(d.curves.loss("finetune"), [(5.0, 1.0), (6.0, 0.8)]);
        let img = image::open(path.join("curves.png")).unwrap();
        assert_eq!((img.width(), img.height()), (crate::plot::curves::WIDTH, d.curves.height()));
    }
}
