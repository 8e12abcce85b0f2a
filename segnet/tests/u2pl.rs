//! The U2PL stage end to end on a tiny synthetic setup: `contrastive,u2pl` through the binary,
//! a bit-identical resume (student, teacher and queues restored), and the errors bad input gets.

use segnet::config::{Stage, TrainConfig};
use segnet::train::{run, RunOptions};
use std::path::Path;
mod common;
use common::{fails_with, ok, segnet};

const TINY: &str = r#"
labeled = 10
crop = 32
batch = 3
eval_every = 3
checkpoint_every = 2
seed = 3
stages = ["u2pl"]
[model]
backbone = "resnet18"
width = 0.125
output_stride = 8
head_channels = 64
aspp_rates = [1, 2, 3]
[contrastive]
steps = 3
lr = 0.05
[u2pl]
steps = 6
lr = 0.05
[u2pl_settings]
sup_only_steps = 2
queue_size = 128
anchors = 32
negatives = 8
[synth]
train_images = 16
val_images = 6
size = 32
seed = 5
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn same_checkpoints(a: &Path, b: &Path) {
    let x = nn::read_checkpoint(a).unwrap();
    let y = nn::read_checkpoint(b).unwrap();
    assert_eq!(x.model.len(), y.model.len());
    for (k, v) in &x.model {
        let w = &y.model[k];
        assert_eq!(format!("{v:?}"), format!("{w:?}"), "{k} differs after resume");
        if let (nn::StateValue::Float(p), nn::StateValue::Float(q)) = (v, w) {
            assert_eq!(p.to_vec_f64().unwrap(), q.to_vec_f64().unwrap(), "{k} differs after resume");
        }
    }
}

/// Loss records (step -> loss and its terms) of a run's metrics log.
fn losses(dir: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let mut v: Vec<(u64, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .map(|r| {
            let terms = ["loss", "l_sup", "l_unsup", "l_contra", "queue_fill"].map(|k| r[k].to_string()).join(" ");
            (r["step"].as_u64().unwrap(), terms)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn resume_continues_u2pl_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::from_toml(TINY).unwrap();
    assert_eq!(cfg.stages, [Stage::U2pl]);
    let a = tmp.path().join("a");
    run(&cfg, &RunOptions { out: a.clone(), quiet: true, ..Default::default() }).unwrap();
    let b = tmp.path().join("b");
    // Stop after 4 steps: two after the warm-up, so the teacher has moved by EMA and the queues
    // hold keys; the checkpoint must carry both.
    let s = run(&cfg, &RunOptions { out: b.clone(), quiet: true, stop_after: Some(4), ..Default::default() }).unwrap();
    assert!(s.interrupted);
    let ck = b.join("checkpoints/u2pl-last.safetensors");
    let data = nn::read_checkpoint(&ck).unwrap();
    assert!(data.model.keys().any(|k| k.starts_with("objective.teacher.backbone.")), "the teacher is saved");
    assert!(data.model.contains_key("objective.queue.0.keys"), "the queues are saved");
    match &data.model["objective.queue.0.len"] {
        nn::StateValue::Count(n) => assert!(*n > 0, "queue 0 is empty at the checkpoint"),
        other => panic!("{other:?}"),
    }
    assert!(data.model.contains_key("projection.0.weight") || data.model.keys().any(|k| k.starts_with("projection.")));
    run(&cfg, &RunOptions { out: b.clone(), quiet: true, resume: Some(ck), ..Default::default() }).unwrap();
    same_checkpoints(&a.join("checkpoints/u2pl-final.safetensors"), &b.join("checkpoints/u2pl-final.safetensors"));
    // Every step's loss terms and queue fill repeat, the resumed ones included.
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb);
    let fa: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("final_scores.json")).unwrap()).unwrap();
    let fb: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("final_scores.json")).unwrap()).unwrap();
    assert_eq!(fa["miou"], fb["miou"]);
}

#[test]
fn contrastive_then_u2pl_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "tiny.toml", TINY);
    let run_dir = tmp.path().join("run");
    let out = ok(&segnet(&[
        "train",
        "--config",
        &cfg,
        "--stages",
        "contrastive,u2pl",
        "--queue-size",
        "64",
        "--out",
        run_dir.to_str().unwrap(),
        "--quiet",
    ]));
    assert!(out.contains("mIoU") && out.contains("contrastive -> u2pl"), "{out}");
    let ck = run_dir.join("checkpoints/u2pl-final.safetensors");
    assert!(ck.is_file());
    let saved = nn::read_checkpoint(&ck).unwrap();
    assert!(!saved.model.keys().any(|k| k.starts_with("objective.")), "the final checkpoint is the network alone");
    let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(config.contains("queue_size = 64"), "{config}");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().any(|l| l.contains("\"l_contra\"") && l.contains("\"stage\":\"u2pl\"")), "{metrics}");
    // The final checkpoint evaluates as any segmentation checkpoint, to the run's own score.
    let ev = ok(&segnet(&["eval", "--checkpoint", ck.to_str().unwrap(), "--json"]));
    let v: serde_json::Value = serde_json::from_str(ev.trim()).unwrap();
    let fs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("final_scores.json")).unwrap()).unwrap();
    assert!((v["miou"].as_f64().unwrap() - fs["miou"].as_f64().unwrap()).abs() < 1e-12);
    // bench step runs the U2PL objective.
    let b = ok(&segnet(&[
        "bench",
        "step",
        "--stage",
        "u2pl",
        "--backbone",
        "resnet18",
        "--width",
        "0.125",
        "--crop",
        "33",
        "--batch",
        "2",
        "--classes",
        "3",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(b.trim()).unwrap();
    assert_eq!(v["stage"], "u2pl");
    assert_eq!(v["unlabeled_batch"], 2);
    assert!(v["objective"].as_str().unwrap().contains("MiB"), "{v}");
    // A smaller unlabeled batch, as `train --unlabeled-batch`; refused where it means nothing.
    let small = ["bench", "step", "--backbone", "resnet18", "--width", "0.125", "--crop", "33", "--batch", "2"];
    let tail = ["--classes", "3", "--iters", "1", "--warmup", "0", "--json"];
    let args = [&small[..], &["--stage", "u2pl", "--unlabeled-batch", "1"], &tail[..]].concat();
    let v: serde_json::Value = serde_json::from_str(ok(&segnet(&args)).trim()).unwrap();
    assert_eq!(v["unlabeled_batch"], 1);
    fails_with(
        &segnet(&[&small[..], &["--stage", "u2pl", "--unlabeled-batch", "0"], &tail[..]].concat()),
        "--unlabeled-batch",
    );
    fails_with(&segnet(&[&small[..], &["--unlabeled-batch", "1"], &tail[..]].concat()), "--stage u2pl");
    // The teacher on the unlabeled images only, as `train --labeled-from student`.
    let args = [&small[..], &["--stage", "u2pl", "--labeled-from", "student"], &tail[..]].concat();
    let v: serde_json::Value = serde_json::from_str(ok(&segnet(&args)).trim()).unwrap();
    assert!(v["objective"].as_str().unwrap().contains("labeled outputs from the student"), "{v}");
    fails_with(&segnet(&[&small[..], &["--labeled-from", "student"], &tail[..]].concat()), "--stage u2pl");
}

#[test]
fn bad_u2pl_input_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "tiny.toml", TINY);
    let out = tmp.path().join("r");
    let o = out.to_str().unwrap();
    // Every training image labeled: nothing to draw unlabeled batches from.
    fails_with(&segnet(&["train", "--config", &cfg, "--labeled", "16", "--out", o, "--quiet"]), "unlabeled");
    fails_with(&segnet(&["train", "--config", &cfg, "--unlabeled-batch", "9", "--out", o, "--quiet"]), "unlabeled");
    fails_with(&segnet(&["train", "--config", &cfg, "--unlabeled-batch", "0"]), "--unlabeled-batch");
    fails_with(&segnet(&["train", "--config", &cfg, "--queue-size", "0"]), "--queue-size");
    fails_with(&segnet(&["train", "--config", &cfg, "--lambda-c=-1"]), "--lambda-c");
    fails_with(&segnet(&["train", "--config", &cfg, "--lambda-c", "x"]), "lambda-c");
    fails_with(&segnet(&["train", "--config", &cfg, "--labeled-from", "both"]), "--labeled-from");
    for (text, key) in [
        ("ema_momentum = 1.5", "u2pl_settings.ema_momentum"),
        ("cutmix = 2.0", "u2pl_settings.cutmix"),
        ("low_rank = 0", "u2pl_settings.low_rank"),
        ("tau = 0.0", "u2pl_settings.tau"),
        ("unreliable_percent = 120.0", "u2pl_settings.unreliable_percent"),
        ("high_rank = 3", "high_rank"),
        ("anchor_threshold = 1.0", "u2pl_settings.anchor_threshold"),
        ("labeled_from = \"both\"", "labeled_from"),
        ("bogus = 1", "bogus"),
    ] {
        let bad =
            write(tmp.path(), "bad.toml", &TINY.replace("[u2pl_settings]\n", &format!("[u2pl_settings]\n{text}\n")));
        fails_with(&segnet(&["train", "--config", &bad]), key);
    }
    let help = String::from_utf8_lossy(&segnet(&["train", "--help"]).stdout).into_owned();
    for flag in ["--queue-size", "--unlabeled-batch", "--sup-only-steps", "--lambda-c", "--labeled-from", "u2pl"] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
}
