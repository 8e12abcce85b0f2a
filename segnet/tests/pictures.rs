//! The pictures end to end on a tiny run: `curves.png` and `class_iou.png` in the run directory,
//! `segnet eval --plot`, and `segnet embed` on the contrastive and the fine-tuned checkpoint,
//! with the errors of bad input.

mod common;

use common::{fails_with, ok, segnet};
use std::path::Path;

const TINY: &str = r#"
labeled = 12
crop = 32
batch = 4
eval_every = 2
checkpoint_every = 2
seed = 3
[model]
backbone = "resnet18"
width = 0.125
output_stride = 8
head_channels = 64
aspp_rates = [1, 2, 3]
[contrastive]
steps = 3
lr = 0.05
[finetune]
steps = 4
lr = 0.05
[synth]
train_images = 16
val_images = 8
size = 32
seed = 5
"#;

/// Decode a PNG file; its size and how many pixels are not white.
fn picture(path: &Path) -> (u32, u32, usize) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    (img.width(), img.height(), inked)
}

#[test]
fn run_pictures_eval_plot_and_embedding_maps() {
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let run = tmp.path().join("run");
    ok(&segnet(&["train", "--config", &s(&cfg), "--out", &s(&run), "--quiet"]));

    // curves.png: two loss panels in a row, lr and mIoU below.
    let (w, h, inked) = picture(&run.join("curves.png"));
    assert_eq!((w, h), (1200, 656));
    assert!(inked > 20_000, "curves.png is mostly blank ({inked} pixels drawn)");
    // class_iou.png: one bar per class of the 4.
    let (w, h, inked) = picture(&run.join("class_iou.png"));
    assert_eq!((w, h), (900, 110 + 30 * 4));
    assert!(inked > 3000);

    // eval --plot
    let ft = run.join("checkpoints/finetune-final.safetensors");
    let bars = tmp.path().join("eval_iou.png");
    let out = ok(&segnet(&["eval", "--checkpoint", &s(&ft), "--plot", &s(&bars)]));
    assert!(out.contains("class IoU chart"), "{out}");
    assert_eq!(picture(&bars).0, 900);
    fails_with(&segnet(&["eval", "--checkpoint", &s(&ft), "--plot", &s(&tmp.path().join("nowhere/x.png"))]), "--plot");

    // embed: the contrastive checkpoint (projection head) and the fine-tuned one (decoder).
    let ct = run.join("checkpoints/contrastive-final.safetensors");
    for (ck, features) in [(&ct, "head"), (&ft, "decoder")] {
        let map = tmp.path().join(format!("{features}.png"));
        let json = tmp.path().join(format!("{features}.json"));
        let out = ok(&segnet(&[
            "embed",
            "--checkpoint",
            &s(ck),
            "--pixels",
            "300",
            "--seed",
            "1",
            "--out",
            &s(&map),
            "--json",
            &s(&json),
        ]));
        assert!(out.contains("intra-class") && out.contains("separation"), "{out}");
        let (w, h, inked) = picture(&map);
        assert_eq!((w, h), (900, 760));
        assert!(inked > 5000, "{features}: the map is mostly blank");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["features"], features, "{v}");
        assert_eq!(v["pixels"], 300, "{v}");
        let intra = v["intra_class_cosine"].as_f64().unwrap();
        let inter = v["inter_class_cosine"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&intra) && (-1.0..=1.0).contains(&inter), "{v}");
        assert!((v["separation"].as_f64().unwrap() - (intra - inter)).abs() < 1e-12);
        let counts: Vec<u64> = v["classes"].as_array().unwrap().iter().map(|c| c["pixels"].as_u64().unwrap()).collect();
        assert_eq!(counts.iter().sum::<u64>(), 300);
        assert!(counts.iter().filter(|&&c| c > 0).count() >= 2, "stratified over the classes: {counts:?}");
        // The same seed gives the same numbers.
        if features == "head" {
            let again = tmp.path().join("again.json");
            ok(&segnet(&[
                "embed",
                "--checkpoint",
                &s(ck),
                "--pixels",
                "300",
                "--seed",
                "1",
                "--out",
                &s(&map),
                "--json",
                &s(&again),
            ]));
            let w: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
            assert_eq!(w["intra_class_cosine"], v["intra_class_cosine"]);
        }
    }
    // The fine-tuned network's decoder features can be asked for on a contrastive checkpoint too.
    let map = tmp.path().join("dec.png");
    ok(&segnet(&["embed", "--checkpoint", &s(&ct), "--features", "decoder", "--pixels", "50", "--out", &s(&map)]));

    // Bad input names the flag or the file.
    let out = s(&tmp.path().join("m.png"));
    fails_with(
        &segnet(&["embed", "--checkpoint", &s(&tmp.path().join("ghost.safetensors")), "--out", &out]),
        "ghost.safetensors",
    );
    fails_with(&segnet(&["embed", "--checkpoint", &s(&ft), "--pixels", "0", "--out", &out]), "--pixels");
    fails_with(&segnet(&["embed", "--checkpoint", &s(&ft), "--features", "head", "--out", &out]), "--features head");
    let garbage = tmp.path().join("garbage.pack");
    std::fs::write(&garbage, b"not a pack").unwrap();
    fails_with(&segnet(&["embed", "--checkpoint", &s(&ft), "--data", &s(&garbage), "--out", &out]), "garbage.pack");
    fails_with(&segnet(&["embed", "--checkpoint", &s(&ft), "--out", &s(&tmp.path().join("no/dir/m.png"))]), "--out");
    fails_with(&segnet(&["embed", "--checkpoint", &s(&ft)]), "--out");

    let help = String::from_utf8_lossy(&segnet(&["embed", "--help"]).stdout).into_owned();
    for flag in ["--checkpoint", "--data", "--pixels", "--seed", "--features", "--out", "--json", "--device"] {
        assert!(help.contains(flag), "embed --help lists {flag}: {help}");
    }
    let help = String::from_utf8_lossy(&segnet(&["eval", "--help"]).stdout).into_owned();
    assert!(help.contains("--plot"), "{help}");
}
