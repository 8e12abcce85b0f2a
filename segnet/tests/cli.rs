//! End to end through the `segnet` binary on a tiny synthetic setup: train (both stages), eval,
//! predict, data commands, resume, and the errors bad input must get.

use std::path::{Path, PathBuf};
mod common;
use common::{checkpoint_floats, fails_with, ok, segnet};

const TINY: &str = r#"
labeled = 12
crop = 32
batch = 4
eval_every = 4
checkpoint_every = 2
seed = 3
[model]
backbone = "resnet18"
width = 0.125
output_stride = 8
head_channels = 64
aspp_rates = [1, 2, 3]
[contrastive]
steps = 4
lr = 0.05
[finetune]
steps = 4
lr = 0.05
[ce_only]
steps = 4
lr = 0.05
[pseudo]
steps = 2
lr = 0.01
[synth]
train_images = 16
val_images = 8
size = 32
seed = 5
"#;

fn tiny_config(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(&p, TINY).unwrap();
    p
}

#[test]
fn train_eval_predict_on_tiny_synthetic_data() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path());
    let run = tmp.path().join("run");
    let out = ok(&segnet(&["train", "--config", cfg.to_str().unwrap(), "--out", run.to_str().unwrap(), "--quiet"]));
    assert!(out.contains("mIoU"), "{out}");
    for f in ["config.toml", "metrics.jsonl", "curves.png", "subset.json", "final_scores.json"] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let ckpt = run.join("checkpoints/finetune-final.safetensors");
    assert!(ckpt.is_file());
    assert!(run.join("checkpoints/contrastive-final.safetensors").is_file());
    // metrics: 8 loss records plus evaluations
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 8);
    assert!(metrics.lines().any(|l| l.contains("\"miou\"")));

    let ev = ok(&segnet(&["eval", "--checkpoint", ckpt.to_str().unwrap(), "--json"]));
    let v: serde_json::Value = serde_json::from_str(ev.trim()).unwrap();
    let miou = v["miou"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&miou));
    let final_scores: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("final_scores.json")).unwrap()).unwrap();
    assert!((final_scores["miou"].as_f64().unwrap() - miou).abs() < 1e-12, "eval must reproduce the run's score");

    // predict on an image written by `data synth` + a folder export is overkill; write a PNG here.
    let img = tmp.path().join("img.png");
    let mut rgb = vec![0u8; 32 * 32 * 3];
    for (i, v) in rgb.iter_mut().enumerate() {
        *v = (i * 37 % 251) as u8;
    }
    let f = std::fs::File::create(&img).unwrap();
    let mut enc = png::Encoder::new(f, 32, 32);
    enc.set_color(png::ColorType::Rgb);
    enc.write_header().unwrap().write_image_data(&rgb).unwrap();
    let pred = tmp.path().join("pred");
    ok(&segnet(&[
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
        img.to_str().unwrap(),
    ]));
    assert!(pred.join("img_label.png").is_file() && pred.join("img_overlay.png").is_file());

    // A contrastive checkpoint has no classifier: a clear error.
    let c1 = run.join("checkpoints/contrastive-final.safetensors");
    fails_with(&segnet(&["eval", "--checkpoint", c1.to_str().unwrap()]), "classifier");
}

#[test]
fn resume_gives_the_same_weights_as_an_uninterrupted_run() {
    use segnet::config::TrainConfig;
    use segnet::train::{run, RunOptions};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::from_toml(TINY).unwrap();
    let a = tmp.path().join("a");
    run(&cfg, &RunOptions { out: a.clone(), quiet: true, ..Default::default() }).unwrap();
    let b = tmp.path().join("b");
    // Stop after 3 steps (inside stage 1), then after 3 more (inside stage 2), then finish.
    let s = run(&cfg, &RunOptions { out: b.clone(), quiet: true, stop_after: Some(3), ..Default::default() }).unwrap();
    assert!(s.interrupted);
    let ck = b.join("checkpoints/contrastive-last.safetensors");
    let s = run(
        &cfg,
        &RunOptions { out: b.clone(), quiet: true, resume: Some(ck), stop_after: Some(3), ..Default::default() },
    )
    .unwrap();
    assert!(s.interrupted);
    let ck = b.join("checkpoints/finetune-last.safetensors");
    run(&cfg, &RunOptions { out: b.clone(), quiet: true, resume: Some(ck), ..Default::default() }).unwrap();
    for name in ["contrastive-final", "finetune-final"] {
        let x = nn::read_checkpoint(a.join(format!("checkpoints/{name}.safetensors"))).unwrap();
        let y = nn::read_checkpoint(b.join(format!("checkpoints/{name}.safetensors"))).unwrap();
        assert_eq!(x.model.len(), y.model.len());
        for (k, v) in &x.model {
            let w = &y.model[k];
            assert_eq!(format!("{v:?}"), format!("{w:?}"), "{name}: {k} differs after resume");
            if let (nn::StateValue::Float(p), nn::StateValue::Float(q)) = (v, w) {
                assert_eq!(p.to_vec_f64().unwrap(), q.to_vec_f64().unwrap(), "{name}: {k} differs after resume");
            }
        }
    }
}

#[test]
fn reused_stages_give_the_same_run_as_training_them_again() {
    use segnet::config::{Stage, TrainConfig};
    use segnet::train::{run, RunOptions};
    let tmp = tempfile::tempdir().unwrap();
    let first = TrainConfig::from_toml(TINY).unwrap(); // contrastive, finetune
    let mut cfg = first.clone();
    cfg.stages = vec![Stage::Contrastive, Stage::Finetune, Stage::Pseudo];
    assert_eq!(first.prefix_key(2), cfg.prefix_key(2));
    let a = tmp.path().join("a");
    run(&first, &RunOptions { out: a.clone(), quiet: true, ..Default::default() }).unwrap();
    let full = tmp.path().join("full");
    run(&cfg, &RunOptions { out: full.clone(), quiet: true, ..Default::default() }).unwrap();
    let reused = tmp.path().join("reused");
    let s =
        run(&cfg, &RunOptions { out: reused.clone(), quiet: true, reuse: Some((2, a.clone())), ..Default::default() })
            .unwrap();
    assert!(s.scores.is_some());
    for name in ["contrastive-final", "finetune-final", "pseudo-final"] {
        let x = checkpoint_floats(&full.join(format!("checkpoints/{name}.safetensors")));
        let y = checkpoint_floats(&reused.join(format!("checkpoints/{name}.safetensors")));
        assert_eq!(x, y, "{name} differs between the full and the reusing run");
    }
    let log = std::fs::read_to_string(reused.join("metrics.jsonl")).unwrap();
    assert!(log.contains("reused_from"), "the reuse is logged");
    // A run directory without the stage to reuse: an error naming the file.
    let e = run(
        &cfg,
        &RunOptions {
            out: tmp.path().join("bad"),
            quiet: true,
            reuse: Some((2, tmp.path().join("none"))),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("contrastive-final.safetensors"), "{e:#}");
}

#[test]
fn data_commands_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("s.pack");
    ok(&segnet(&["data", "synth", "-o", pack.to_str().unwrap(), "--images", "6", "--size", "32"]));
    let info = ok(&segnet(&["data", "info", pack.to_str().unwrap(), "--verify"]));
    assert!(info.contains("records    6"), "{info}");

    fails_with(&segnet(&["train", "--bogus-flag"]), "bogus");
    fails_with(&segnet(&["train", "--backbone", "vgg16"]), "backbone");
    fails_with(
        &segnet(&["train", "--data", "/nonexistent.pack", "--val-data", "/nonexistent.pack"]),
        "nonexistent.pack",
    );
    fails_with(&segnet(&["train", "--data", pack.to_str().unwrap()]), "--val-data");
    fails_with(&segnet(&["eval", "--checkpoint", pack.to_str().unwrap()]), "s.pack");
    fails_with(&segnet(&["data", "info", tmp.path().join("missing.pack").to_str().unwrap()]), "missing.pack");
    fails_with(&segnet(&["train", "--device", "tpu"]), "device");
    fails_with(&segnet(&["train", "--labeled", "0"]), "at least 1");
    fails_with(&segnet(&["train", "--labeled", "many"]), "not a labeled count");
    let garbage = tmp.path().join("garbage.png");
    std::fs::write(&garbage, b"not a png").unwrap();
    let cfg = tiny_config(tmp.path());
    let run = tmp.path().join("r");
    ok(&segnet(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--quiet",
        "--stages",
        "ce-only",
    ]));
    let ck = run.join("checkpoints/ce-only-final.safetensors");
    // `--labeled all` uses every labeled training image; more than there are is an error.
    let all = tmp.path().join("all");
    ok(&segnet(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        all.to_str().unwrap(),
        "--quiet",
        "--stages",
        "ce-only",
        "--steps",
        "1",
        "--labeled",
        "all",
    ]));
    let subset: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(all.join("subset.json")).unwrap()).unwrap();
    assert_eq!(subset["labeled"].as_array().unwrap().len(), 16, "{subset}");
    fails_with(
        &segnet(&[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            tmp.path().join("x").to_str().unwrap(),
            "--quiet",
            "--labeled",
            "17",
        ]),
        "only 16 labeled images",
    );
    fails_with(
        &segnet(&[
            "predict",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--out",
            tmp.path().join("p").to_str().unwrap(),
            garbage.to_str().unwrap(),
        ]),
        "garbage.png",
    );
    // A pack whose class count disagrees with the model.
    let three = tmp.path().join("three.pack");
    let sc = datasets::SynthConfig { num_images: 4, height: 32, width: 32, num_classes: 3, ..Default::default() };
    datasets::synth_pack(&three, &sc).unwrap();
    fails_with(&segnet(&["eval", "--checkpoint", ck.to_str().unwrap(), "--data", three.to_str().unwrap()]), "classes");
}

/// The label-efficiency experiment end to end on the tiny setup: two counts (one of them `all`),
/// two seeds, both protocols; every run is in the JSON with per-class IoU, the table and the plot
/// are written, and the help lists `--labeled` once.
#[test]
fn label_efficiency_experiment_writes_table_json_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let out = dir.path().join("exp");
    let o = segnet(&[
        "experiment",
        "label-efficiency",
        "--config",
        cfg.to_str().unwrap(),
        "--labeled",
        "4,all",
        "--seeds",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = ok(&o);
    // 2 counts x 2 seeds x (CE-only twice + contrastive) = 12 runs, each with a progress line.
    assert!(stdout.contains("[12/12]"), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let runs = doc["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 12);
    for r in runs {
        assert_eq!(r["iou"].as_array().unwrap().len(), 4, "{r}");
        assert!(r["train_miou"].as_f64().is_some());
    }
    // `all` resolved to the 16 training images; CE-only budgets follow the protocols.
    assert!(runs.iter().any(|r| r["labeled"] == 16));
    let ce_steps = |p: &str| runs.iter().find(|r| r["protocol"] == p).map(|r| r["steps"][0].as_u64().unwrap()).unwrap();
    assert_eq!(ce_steps("same-schedule"), 4);
    assert_eq!(ce_steps("equal-steps"), 8);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("| 4 |") && md.contains("| 16 |") && md.contains("±"), "{md}");
    let png = std::fs::read(out.join("label_efficiency.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");

    let help = String::from_utf8_lossy(&segnet(&["experiment", "label-efficiency", "--help"]).stdout).into_owned();
    // One `--labeled` flag (the experiment's counts replace the training option of that name);
    // `--labeled-from` is another flag.
    assert_eq!(help.lines().filter(|l| l.trim_start().starts_with("--labeled <")).count(), 1, "{help}");
    fails_with(&segnet(&["experiment", "label-efficiency", "--labeled", "0"]), "at least 1");
    fails_with(
        &segnet(&["experiment", "label-efficiency", "--config", cfg.to_str().unwrap(), "--labeled", "999"]),
        "only 16 labeled images",
    );
}

/// A dataset of one's own in VOC layout: `n` images of 40x48, labels 0..3 (left, middle and
/// right bands, each band's colour its class) with a void border column; returns the root.
fn own_voc_dataset(dir: &Path, split: &str, n: usize, seed: u64) {
    let base = dir.join("VOC2012");
    for sub in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
        std::fs::create_dir_all(base.join(sub)).unwrap();
    }
    let (h, w) = (40u32, 48u32);
    let mut ids = Vec::new();
    for k in 0..n {
        let id = format!("{split}_{k:03}");
        let shift = ((k as u64 * 7 + seed) % 9) as u32;
        let class_at = |x: u32| ((x + shift) * 3 / (w + 9)).min(2) as u8;
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let c = class_at(x);
            let noise = ((x * 31 + y * 17 + k as u32 * 13) % 23) as u8;
            image::Rgb(match c {
                0 => [20 + noise, 40, 200],
                1 => [220, 200 - noise, 120],
                _ => [90, 90 + noise, 90],
            })
        });
        img.save_with_format(base.join(format!("JPEGImages/{id}.jpg")), image::ImageFormat::Jpeg).unwrap();
        let label: Vec<u8> = (0..h).flat_map(|_| (0..w).map(|x| if x == 0 { 255 } else { class_at(x) })).collect();
        let f = std::fs::File::create(base.join(format!("SegmentationClass/{id}.png"))).unwrap();
        let mut enc = png::Encoder::new(f, w, h);
        enc.set_color(png::ColorType::Indexed);
        enc.set_palette((0..256 * 3).map(|i| (i * 5 % 256) as u8).collect::<Vec<u8>>());
        enc.write_header().unwrap().write_image_data(&label).unwrap();
        ids.push(id);
    }
    std::fs::write(base.join(format!("ImageSets/Segmentation/{split}.txt")), ids.join("\n") + "\n").unwrap();
}

/// Own classes end to end: a VOC-layout folder with 3 classes of one's own is packed with
/// `--classes-file`, `data info` shows the names, a short training run, `eval` and `predict`
/// name them; whole-image inference options on the same checkpoint; the errors of bad class lists
/// and bad inference flags.
#[test]
fn own_classes_flow_from_a_voc_layout_folder_to_eval_and_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mydata");
    own_voc_dataset(&root, "train", 6, 0);
    own_voc_dataset(&root, "val", 3, 4);
    let names = tmp.path().join("names.txt");
    std::fs::write(&names, "# my three classes\nsea\n\nsand\nrock\n").unwrap();
    let (train, val) = (tmp.path().join("train.pack"), tmp.path().join("val.pack"));
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    for (split, out) in [("train", &train), ("val", &val)] {
        let o = ok(&segnet(&[
            "data",
            "pack",
            "voc",
            &s(&root),
            "--split",
            split,
            "-o",
            &s(out),
            "--classes-file",
            &s(&names),
        ]));
        assert!(o.contains("classes: sea, sand, rock"), "{o}");
    }
    let info = ok(&segnet(&["data", "info", &s(&train), "--verify"]));
    assert!(info.contains("classes    3: sea, sand, rock"), "{info}");
    // --classes gives the same pack.
    let again = tmp.path().join("again.pack");
    ok(&segnet(&["data", "pack", "voc", &s(&root), "-o", &s(&again), "--classes", "sea,sand,rock"]));
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&train).unwrap());

    let cfg = tiny_config(tmp.path());
    let run = tmp.path().join("run");
    let t = ok(&segnet(&[
        "train",
        "--config",
        &s(&cfg),
        "--data",
        &s(&train),
        "--val-data",
        &s(&val),
        "--labeled",
        "all",
        "--stages",
        "ce-only",
        "--steps",
        "2",
        "--out",
        &s(&run),
        "--quiet",
    ]));
    for n in ["sea", "sand", "rock"] {
        assert!(t.contains(n), "the training table names {n}: {t}");
    }
    let ck = s(&run.join("checkpoints/ce-only-final.safetensors"));
    let ev = ok(&segnet(&["eval", "--checkpoint", &ck, "--data", &s(&val)]));
    for n in ["sea", "sand", "rock"] {
        assert!(ev.contains(n), "eval names {n}: {ev}");
    }
    assert!(ev.contains("inference: whole image"), "{ev}");
    let json = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["eval", "--checkpoint", ck.as_str(), "--data", val.to_str().unwrap(), "--json"];
        a.extend_from_slice(args);
        serde_json::from_str(ok(&segnet(&a)).trim()).unwrap()
    };
    let plain = json(&[]);
    assert_eq!(plain["class_names"], serde_json::json!(["sea", "sand", "rock"]));
    for key in ["checkpoint", "miou", "pixel_accuracy", "pixels", "iou", "confusion", "classes", "protocol"] {
        assert!(plain.get(key).is_some(), "eval --json keeps {key}: {plain}");
    }
    assert_eq!(plain["inference"]["window"], serde_json::Value::Null);
    // A window no smaller than the 40x48 images is the same single pass.
    let big = json(&["--window", "48", "--stride", "16"]);
    assert_eq!(big["confusion"], plain["confusion"], "window >= image must equal one pass");
    // Sliding windows (the 32 crop), flip and scales run and say so.
    let tta = json(&["--window", "crop", "--stride", "16", "--flip", "--scales", "0.75,1,1.25"]);
    assert_eq!(tta["inference"]["window"], 32);
    assert_eq!(tta["inference"]["stride"], 16);
    assert_eq!(tta["inference"]["flip"], true);
    assert_eq!(tta["inference"]["scales"], serde_json::json!([0.75, 1.0, 1.25]));
    assert_eq!(tta["pixels"], plain["pixels"], "every labeled pixel is scored once");
    let m = tta["miou"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&m));

    let img = root.join("VOC2012/JPEGImages/val_000.jpg");
    let pred = tmp.path().join("pred");
    let p = ok(&segnet(&["predict", "--checkpoint", &ck, "--out", &s(&pred), "--window", "32", "--flip", &s(&img)]));
    assert!(["sea", "sand", "rock"].iter().any(|n| p.contains(n)), "predict names the classes: {p}");
    assert!(pred.join("val_000_label.png").is_file());
    assert!(!pred.join("val_000_compare.png").exists(), "no ground truth, no comparison");

    // Folders and glob patterns (quoted: expanded by segnet), ground truth side by side.
    let jpegs = root.join("VOC2012/JPEGImages");
    let gt = root.join("VOC2012/SegmentationClass");
    let side = tmp.path().join("side");
    let pattern = format!("{}/val_*.jpg", jpegs.display());
    let p = ok(&segnet(&["predict", "--checkpoint", &ck, "--out", &s(&side), "--labels", &s(&gt), &pattern]));
    assert_eq!(p.matches("pixel accuracy").count(), 3, "{p}");
    for k in 0..3 {
        let cmp = image::open(side.join(format!("val_{k:03}_compare.png"))).unwrap();
        assert_eq!((cmp.width(), cmp.height()), (3 * 48 + 8, 40), "image | prediction | ground truth");
    }
    assert!(!side.join("train_000_label.png").exists(), "the pattern picks the val images only");
    let all = tmp.path().join("all");
    let p = ok(&segnet(&["predict", "--checkpoint", &ck, "--out", &s(&all), &s(&jpegs)]));
    assert!(p.contains("for 9 images"), "a folder gives all its images: {p}");
    let packed = tmp.path().join("packed");
    let p = ok(&segnet(&["predict", "--checkpoint", &ck, "--out", &s(&packed), "--pack", &s(&val)]));
    assert_eq!(p.matches("pixel accuracy").count(), 3, "{p}");
    assert!(packed.join("val_002_compare.png").is_file());
    let nothing = format!("{}/*.bmp", jpegs.display());
    fails_with(&segnet(&["predict", "--checkpoint", &ck, "--out", &s(&all), &nothing]), "matches no file");
    let emptydir = tmp.path().join("emptydir");
    std::fs::create_dir_all(&emptydir).unwrap();
    fails_with(&segnet(&["predict", "--checkpoint", &ck, "--out", &s(&all), &s(&emptydir)]), "emptydir");
    fails_with(
        &segnet(&["predict", "--checkpoint", &ck, "--out", &s(&all), &s(&tmp.path().join("ghost.jpg"))]),
        "ghost.jpg: no such file",
    );
    fails_with(
        &segnet(&[
            "predict",
            "--checkpoint",
            &ck,
            "--out",
            &s(&all),
            "--labels",
            &s(&tmp.path().join("nolabels")),
            &s(&img),
        ]),
        "--labels",
    );

    // Bad inference flags name the flag.
    let evfail = |args: &[&str], needle: &str| {
        let mut a = vec!["eval", "--checkpoint", ck.as_str(), "--data", val.to_str().unwrap()];
        a.extend_from_slice(args);
        fails_with(&segnet(&a), needle);
    };
    evfail(&["--window", "32", "--stride", "0"], "--stride");
    evfail(&["--window", "16", "--stride", "17"], "--stride 17 is larger than --window 16");
    evfail(&["--stride", "8"], "--stride needs --window");
    evfail(&["--scales", "1,0"], "--scales");
    evfail(&["--scales", "-1"], "--scales");
    evfail(&["--scales", "big"], "--scales");
    evfail(&["--window", "huge"], "--window");
    fails_with(&segnet(&["predict", "--checkpoint", &ck, "--out", &s(&pred), "--scales", "0", &s(&img)]), "--scales");

    // Bad class lists, and labels outside the list.
    let x = s(&tmp.path().join("x.pack"));
    let r = s(&root);
    fails_with(
        &segnet(&["data", "pack", "voc", &r, "-o", &x, "--classes", "a,b", "--classes-file", &s(&names)]),
        "cannot be used with",
    );
    fails_with(&segnet(&["data", "pack", "voc", &r, "-o", &x, "--classes", ""]), "--classes: the class list is empty");
    fails_with(&segnet(&["data", "pack", "voc", &r, "-o", &x, "--classes", "a,,b"]), "empty name");
    fails_with(&segnet(&["data", "pack", "voc", &r, "-o", &x, "--classes", "a,b,a"]), "listed twice");
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "# none\n").unwrap();
    fails_with(&segnet(&["data", "pack", "voc", &r, "-o", &x, "--classes-file", &s(&empty)]), "empty.txt");
    fails_with(
        &segnet(&["data", "pack", "voc", &r, "-o", &x, "--classes-file", &s(&tmp.path().join("nope.txt"))]),
        "nope.txt",
    );
    let o = segnet(&["data", "pack", "voc", &r, "-o", &x, "--classes", "sea,sand"]);
    fails_with(&o, "label value 2");
    fails_with(&o, ".png");
    fails_with(&o, "--unknown-labels ignore");
    assert!(!Path::new(&x).exists(), "a failed pack leaves no file");
    let o = ok(&segnet(&["data", "pack", "voc", &r, "-o", &x, "--classes", "sea,sand", "--unknown-labels", "ignore"]));
    assert!(o.contains("set to the ignore value 255"), "{o}");
    let info = ok(&segnet(&["data", "info", &x, "--verify"]));
    assert!(info.contains("classes    2: sea, sand"), "{info}");
    // Without own classes a VOC pack still claims the 21 PASCAL classes.
    let voc = s(&tmp.path().join("voc.pack"));
    ok(&segnet(&["data", "pack", "voc", &r, "-o", &voc]));
    assert!(ok(&segnet(&["data", "info", &voc])).contains("classes    21: background, aeroplane"));

    // Every new flag is in --help.
    let help = String::from_utf8_lossy(&segnet(&["data", "pack", "--help"]).stdout).into_owned();
    for f in ["--classes", "--classes-file", "--unknown-labels"] {
        assert!(help.contains(f), "{help}");
    }
    for cmd in ["eval", "predict"] {
        let help = String::from_utf8_lossy(&segnet(&[cmd, "--help"]).stdout).into_owned();
        let extra: &[&str] = if cmd == "predict" { &["--labels", "--pack"] } else { &[] };
        for f in ["--window", "--stride", "--flip", "--scales"].iter().chain(extra) {
            assert!(help.contains(f), "{cmd} --help lacks {f}: {help}");
        }
    }
}
