//! What a user keeps when things go wrong: SIGKILL at random points of training (checkpoint
//! writes included) and of packing, repeated, and a full disk (simulated with `ulimit -f`, which
//! fails writes past the limit the way a full disk does). Afterwards every file under its final
//! name is complete and valid or absent, `--resume RUN_DIR` continues from the newest valid
//! checkpoint to the same final weights as an uninterrupted run, and the previous pack or
//! checkpoint survives a failed write. Unix only (signals, `sh`).
#![cfg(unix)]

mod common;

use common::{checkpoint_floats, ok, segnet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Two stages, a checkpoint after every step: kills land in steps, evaluations and writes.
const TINY: &str = r#"
labeled = 12
crop = 32
batch = 4
eval_every = 3
checkpoint_every = 1
seed = 11
stages = ["contrastive", "finetune"]
[model]
backbone = "resnet18"
width = 0.125
output_stride = 8
head_channels = 64
aspp_rates = [1, 2, 3]
[contrastive]
steps = 10
lr = 0.05
[finetune]
steps = 10
lr = 0.05
[synth]
train_images = 16
val_images = 8
size = 32
seed = 5
"#;

/// A small deterministic generator for the kill times (xorshift).
struct Xorshift(u64);
impl Xorshift {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Start `segnet args`, SIGKILL it after `after` unless it ended first; true if it was killed.
fn run_and_kill(args: &[&str], after: Duration) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_segnet"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn segnet");
    let t0 = Instant::now();
    while t0.elapsed() < after {
        if child.try_wait().expect("wait").is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
    child.wait().expect("reap");
    true
}

/// Every checkpoint under its final name reads and checksums; metrics.jsonl has at most one
/// cut line, the last; returns the checkpoint names.
fn assert_run_dir_valid(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("checkpoints")) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                nn::read_checkpoint(&p)
                    .unwrap_or_else(|err| panic!("{} is not valid after a kill: {err}", p.display()));
                names.push(p.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) {
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let parsed = serde_json::from_str::<serde_json::Value>(l).is_ok();
            assert!(parsed || i + 1 == lines.len(), "metrics.jsonl line {i} is cut: {l}");
        }
    }
    for f in ["config.toml", "subset.json"] {
        if let Ok(t) = std::fs::read_to_string(dir.join(f)) {
            assert!(!t.is_empty(), "{f} is empty");
        }
    }
    names.sort();
    names
}

#[test]
fn sigkill_during_training_then_resume_gives_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let c = cfg.to_str().unwrap();
    let clean = tmp.path().join("clean");
    let t0 = Instant::now();
    ok(&segnet(&["train", "--config", c, "--quiet", "--out", clean.to_str().unwrap()]));
    let whole = t0.elapsed();

    let run = tmp.path().join("killed");
    let r = run.to_str().unwrap();
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let mut kills = 0;
    let mut finished = false;
    for _ in 0..6 {
        // Somewhere in what is left of the run (the first try includes start-up).
        let after = whole.mul_f64(0.05 + 0.3 * rng.unit());
        let has_checkpoint = !assert_run_dir_valid(&run).is_empty();
        let args: Vec<&str> = if has_checkpoint {
            vec!["train", "--resume", r, "--quiet"]
        } else {
            vec!["train", "--config", c, "--quiet", "--out", r]
        };
        if run_and_kill(&args, after) {
            kills += 1;
            assert_run_dir_valid(&run);
        } else {
            finished = true;
            break;
        }
    }
    assert!(kills >= 2, "the test killed the run only {kills} time(s); the kill times are too late");
    if !finished {
        ok(&segnet(&["train", "--resume", r, "--quiet"]));
    }
    let names = assert_run_dir_valid(&run);
    assert!(names.contains(&"finetune-final.safetensors".to_string()), "{names:?}");
    for name in ["contrastive-final", "finetune-final"] {
        let a = checkpoint_floats(&clean.join(format!("checkpoints/{name}.safetensors")));
        let b = checkpoint_floats(&run.join(format!("checkpoints/{name}.safetensors")));
        assert_eq!(a, b, "{name}: the killed-and-resumed run differs from the uninterrupted one");
    }
    let sa = std::fs::read_to_string(clean.join("final_scores.json")).unwrap();
    let sb = std::fs::read_to_string(run.join("final_scores.json")).unwrap();
    assert_eq!(sa, sb);
    // The repeated steps were logged once: one loss record per global step.
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut steps: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["global_step"].as_u64().unwrap())
        .collect();
    let n = steps.len();
    steps.dedup();
    assert_eq!(steps.len(), n, "a step was logged twice");
    assert_eq!(steps, (1..=20).collect::<Vec<u64>>());
}

#[test]
fn resume_from_a_run_directory_picks_the_newest_valid_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let run = tmp.path().join("run");
    ok(&segnet(&["train", "--config", cfg.to_str().unwrap(), "--quiet", "--out", run.to_str().unwrap()]));
    // Damage the newest checkpoint: resuming skips it with a warning and uses the one before.
    let newest = run.join("checkpoints/finetune-final.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let o = segnet(&["train", "--resume", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(&o);
    assert!(err.contains("skipping") && err.contains("finetune-final"), "{err}");
    assert!(err.contains("resuming from") && err.contains("finetune-last"), "{err}");
    nn::read_checkpoint(&newest).expect("the stage was finished again and its final checkpoint rewritten");
    // No checkpoint at all: a clear error.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("checkpoints")).unwrap();
    common::fails_with(&segnet(&["train", "--resume", empty.to_str().unwrap()]), "no valid checkpoint");
}

fn pack_ok(p: &Path) -> bool {
    segnet(&["data", "info", p.to_str().unwrap(), "--verify"]).status.success()
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[test]
fn sigkill_during_packing_leaves_the_old_pack_or_the_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("synth.pack");
    let p = pack.to_str().unwrap();
    ok(&segnet(&["data", "synth", "-o", p, "--images", "4", "--size", "32"]));
    let old = std::fs::read(&pack).unwrap();
    let t0 = Instant::now();
    let big = tmp.path().join("big.pack");
    ok(&segnet(&["data", "synth", "-o", big.to_str().unwrap(), "--images", "400", "--size", "64"]));
    let whole = t0.elapsed();
    let mut rng = Xorshift(42);
    let mut kills = 0;
    for _ in 0..4 {
        let after = whole.mul_f64(0.1 + 0.8 * rng.unit());
        if run_and_kill(&["data", "synth", "-o", p, "--images", "400", "--size", "64"], after) {
            kills += 1;
        }
        assert!(pack_ok(&pack), "after a kill the pack must still be valid");
        let now = std::fs::read(&pack).unwrap();
        assert!(now == old || now == std::fs::read(&big).unwrap(), "the pack is neither the old nor the new one");
    }
    assert!(kills >= 2, "only {kills} kills landed");
    // A new writer of the same pack removes what killed writers left behind.
    ok(&segnet(&["data", "synth", "-o", p, "--images", "4", "--size", "32"]));
    assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));
}

/// `segnet args` with writes limited to `blocks` 512-byte blocks (SIGXFSZ ignored, so a write
/// past the limit fails with EFBIG, as one on a full disk fails with ENOSPC).
fn with_file_limit(blocks: u64, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -f {blocks} && trap '' XFSZ && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_segnet"))
        .args(args)
        .output()
        .expect("run sh")
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_previous_file_survives() {
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("synth.pack");
    let p = pack.to_str().unwrap();
    ok(&segnet(&["data", "synth", "-o", p, "--images", "4", "--size", "32"]));
    let old = std::fs::read(&pack).unwrap();
    let o = with_file_limit(64, &["data", "synth", "-o", p, "--images", "400", "--size", "64"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "the write past the limit must fail");
    assert!(err.contains("synth.pack") && !err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(&pack).unwrap(), old, "the previous pack is intact");
    assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));

    // A checkpoint: the resumed run (at the stage's last step) cannot write its final
    // checkpoint; the one it resumed from is unchanged and no temporary file stays.
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let run = tmp.path().join("run");
    ok(&segnet(&["train", "--config", cfg.to_str().unwrap(), "--quiet", "--out", run.to_str().unwrap()]));
    let last = run.join("checkpoints/contrastive-last.safetensors");
    let before = std::fs::read(&last).unwrap();
    assert!(before.len() > 64 * 512, "the checkpoint ({} bytes) must exceed the limit", before.len());
    let o = with_file_limit(64, &["train", "--resume", last.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(err.contains("contrastive-final.safetensors") && err.contains("cannot write"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(&last).unwrap(), before, "the previous checkpoint is intact");
    assert!(leftovers(&run.join("checkpoints")).is_empty(), "{:?}", leftovers(&run.join("checkpoints")));
}
