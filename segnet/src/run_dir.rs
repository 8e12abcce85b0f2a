//! A run directory: `config.toml`, `metrics.jsonl` (one JSON object per line), checkpoints under
//! `checkpoints/`, and `curves.png`, kept up to date as the run goes.

use crate::plot::{write_png, Series};
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
    losses: Vec<(f64, f64)>,
    mious: Vec<(f64, f64)>,
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
        let mut r = RunDir { path: path.to_path_buf(), metrics, losses: Vec::new(), mious: Vec::new() };
        r.reload_curves();
        Ok(r)
    }

    fn reload_curves(&mut self) {
        let Ok(text) = fs::read_to_string(self.path.join("metrics.jsonl")) else { return };
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                self.track(&v);
            }
        }
    }

    fn track(&mut self, v: &Value) {
        let x = v["global_step"].as_f64().unwrap_or(0.0);
        if let Some(l) = v["loss"].as_f64() {
            self.losses.push((x, l));
        }
        if let Some(m) = v["miou"].as_f64() {
            self.mious.push((x, m * 100.0));
        }
    }

    /// Write a file into the run directory (atomically: temp file, fsync, rename).
    pub fn write(&self, name: &str, text: &str) -> Result<()> {
        write_atomic(&self.path.join(name), text.as_bytes())
    }

    /// Append one metrics record.
    pub fn log(&mut self, v: Value) -> Result<()> {
        writeln!(self.metrics, "{v}").context("cannot append to metrics.jsonl")?;
        self.track(&v);
        Ok(())
    }

    /// Redraw `curves.png`.
    pub fn plot(&self) -> Result<()> {
        let panels = [
            Series { title: "TRAINING LOSS / STEP", points: &self.losses, color: [200, 40, 40] },
            Series { title: "VAL MIOU % / STEP", points: &self.mious, color: [30, 90, 200] },
        ];
        write_png(&self.path.join("curves.png"), &panels).context("cannot write curves.png")
    }

    /// Drop the metrics records after global step `global`, and any line a kill cut short: a
    /// resumed run repeats those steps and logs them again. The file is rewritten atomically.
    pub fn forget_after(&mut self, global: usize) -> Result<()> {
        let file = self.path.join("metrics.jsonl");
        let text = fs::read_to_string(&file).unwrap_or_default();
        let step_of = |l: &str| serde_json::from_str::<Value>(l).ok().and_then(|v| v["global_step"].as_u64());
        let kept: String =
            text.lines().filter(|l| step_of(l).is_some_and(|g| g as usize <= global)).map(|l| format!("{l}\n")).collect();
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
