//! `--init-backbone`: torchvision-named weights written by PyTorch (nn's fixture
//! `tests/fixtures/torch/resnet18-w0.125.pth`, a ResNet-18 at width 1/8) land in our backbone
//! tensor for tensor; wrong files are clear errors.

mod common;

use common::{fails_with, ok, segnet};
use segnet::config::TrainConfig;
use segnet::net;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../nn/tests/fixtures/torch").join(name)
}

/// The tiny model of the fixture's shape: ResNet-18 at width 1/8.
const TINY: &str = r#"
labeled = 8
crop = 32
batch = 4
eval_every = 100
checkpoint_every = 100
stages = ["ce-only"]
[model]
backbone = "resnet18"
width = 0.125
output_stride = 8
head_channels = 64
aspp_rates = [1, 2, 3]
[ce_only]
steps = 2
lr = 0.01
[finetune]
steps = 2
[synth]
train_images = 16
val_images = 4
size = 32
"#;

#[test]
fn torchvision_weights_load_into_the_backbone_exactly() {
    let cfg = TrainConfig::from_toml(TINY).unwrap();
    let spec = net::spec(&cfg, 4).unwrap();
    let mut model = net::new_net(&spec, false, &mut engine::Rng::new(1)).unwrap();
    // Values copied out now (tensors may share storage with the model).
    let before: Vec<(String, Vec<f64>)> = nn::state_dict(&mut model)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("backbone."))
        .filter_map(|(k, v)| match v {
            nn::StateValue::Float(t) => Some((k, t.to_vec_f64().unwrap())),
            _ => None,
        })
        .collect();
    let path = fixture("resnet18-w0.125.pth");
    let line = segnet::init_backbone::load(&path, &mut model.backbone).unwrap();
    let file = nn::read_pth(&path).unwrap();
    let backbone_tensors = file.tensors.keys().filter(|k| !k.starts_with("fc.")).count();
    assert!(line.starts_with(&format!("{backbone_tensors} backbone tensors loaded")), "{line}");
    assert!(line.contains("2 left out") && line.contains("fc.bias") && line.contains("fc.weight"), "{line}");
    let state = nn::state_dict(&mut model);
    for (name, v) in &file.tensors {
        if name.starts_with("fc.") {
            continue;
        }
        let ours = &state[&format!("backbone.{name}")];
        match (v, ours) {
            (nn::StateValue::Float(a), nn::StateValue::Float(b)) => {
                assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap(), "{name}")
            }
            (nn::StateValue::Count(a), nn::StateValue::Count(b)) => assert_eq!(a, b, "{name}"),
            _ => panic!("{name}: kinds differ"),
        }
    }
    // Everything outside the backbone is untouched.
    for (name, v) in &before {
        let nn::StateValue::Float(now) = &state[name] else { panic!("{name}: kind changed") };
        assert_eq!(&now.to_vec_f64().unwrap(), v, "{name} changed");
    }
    assert!(before.len() > 10, "the head has tensors ({})", before.len());
}

#[test]
fn train_with_init_backbone_and_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("tiny.toml");
    std::fs::write(&cfg, TINY).unwrap();
    let c = cfg.to_str().unwrap();
    let good = fixture("resnet18-w0.125.pth");
    let run = tmp.path().join("run");
    let o =
        segnet(&["train", "--config", c, "--init-backbone", good.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("ce-only starts its backbone from --init-backbone"), "{err}");
    // The path is part of the run's config (and so of its checkpoints).
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("init_backbone"), "{saved}");
    // A segnet checkpoint works as the source too (its backbone.* names).
    let ck = run.join("checkpoints/ce-only-final.safetensors");
    let o2 = segnet(&[
        "train",
        "--config",
        c,
        "--init-backbone",
        ck.to_str().unwrap(),
        "--out",
        tmp.path().join("r2").to_str().unwrap(),
    ]);
    ok(&o2);
    assert!(String::from_utf8_lossy(&o2.stderr).contains("backbone tensors loaded"));

    // Another width: every mis-shaped tensor listed, with the hint.
    let o = segnet(&[
        "train",
        "--config",
        c,
        "--width",
        "0.25",
        "--init-backbone",
        good.to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    fails_with(&o, "mis-shaped");
    fails_with(&o, "--width 1");
    fails_with(&o, "the file holds a resnet18 at width 0.125");
    // A PyTorch file that is not a backbone.
    let misc = fixture("misc.pth");
    fails_with(
        &segnet(&[
            "train",
            "--config",
            c,
            "--init-backbone",
            misc.to_str().unwrap(),
            "--out",
            tmp.path().join("y").to_str().unwrap(),
        ]),
        "none of its",
    );
    // Not a checkpoint at all, and no file.
    let junk = tmp.path().join("junk.pth");
    std::fs::write(&junk, b"junk").unwrap();
    let z = tmp.path().join("z");
    let z = z.to_str().unwrap();
    fails_with(&segnet(&["train", "--config", c, "--init-backbone", junk.to_str().unwrap(), "--out", z]), "junk.pth");
    fails_with(&segnet(&["train", "--config", c, "--init-backbone", "/no/such.pth", "--out", z]), "no such file");
    // The experiment: the flag belongs to the imagenet-ce column.
    let exp = tmp.path().join("exp");
    let out = ok(&segnet(&[
        "experiment",
        "label-efficiency",
        "--config",
        c,
        "--labeled",
        "8",
        "--seeds",
        "1",
        "--recipes",
        "ce-only,imagenet-ce",
        "--protocol",
        "same-schedule",
        "--init-backbone",
        good.to_str().unwrap(),
        "--out",
        exp.to_str().unwrap(),
    ]));
    assert!(out.contains("imagenet-ce"), "{out}");
    let col = std::fs::read_to_string(exp.join("n8-s0-imagenet-ce/config.toml")).unwrap();
    assert!(col.contains("init_backbone"), "{col}");
    let base = std::fs::read_to_string(exp.join("n8-s0-ce-only-same-schedule/config.toml")).unwrap();
    assert!(!base.contains("init_backbone"), "the ce-only column starts from random weights: {base}");
    fails_with(
        &segnet(&["experiment", "label-efficiency", "--config", c, "--recipes", "imagenet-ce", "--out", z]),
        "needs --init-backbone",
    );
    fails_with(
        &segnet(&[
            "experiment",
            "label-efficiency",
            "--config",
            c,
            "--recipes",
            "ce-only",
            "--init-backbone",
            good.to_str().unwrap(),
            "--out",
            z,
        ]),
        "imagenet-ce",
    );
}
