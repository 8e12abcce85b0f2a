//! Checkpoints: round trips (tensors, optimiser state, next step), metadata, PyTorch-compatible
//! dtypes, strict and non-strict loading, and clear errors for broken files.

mod common;

use common::{mse, regression_batch, state_bits, Mlp};
use engine::{DType, Rng, Tensor};
use nn::*;
use std::path::{Path, PathBuf};

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Train `m` for `steps` steps on a fixed batch.
fn train(m: &mut Mlp, opt: &mut Sgd, rng: &mut Rng, from: u64, steps: u64) -> Vec<f64> {
    let (x, t) = regression_batch(32, 6, 3, 9);
    let sched = LrSchedule::cosine(0.05, 20).unwrap();
    (from..from + steps)
        .map(|step| {
            let mut ctx = Ctx::train(rng.fork());
            let loss = mse(&m.forward(&x, &mut ctx).unwrap(), &t).unwrap();
            let g = ctx.backward(&loss).unwrap();
            opt.step(m, &g, sched.lr(step)).unwrap();
            loss.item().unwrap()
        })
        .collect()
}

fn sgd() -> Sgd {
    Sgd::new(SgdConfig { momentum: 0.9, nesterov: true, weight_decay: 1e-3, ..Default::default() }).unwrap()
}

fn save_trained(path: &Path) -> (Mlp, Sgd, Rng, CheckpointMeta) {
    let mut rng = Rng::new(21);
    let mut m = Mlp::new(6, 10, 3, &mut rng);
    let mut opt = sgd();
    train(&mut m, &mut opt, &mut rng, 0, 3);
    let mut meta = CheckpointMeta {
        step: 3,
        rng: Some(rng.clone()),
        config: "lr = 0.05\n[model]\nwidth = 10\n".into(),
        ..Default::default()
    };
    meta.extra.insert("stage".into(), "pretrain".into());
    save_checkpoint(path, &mut m, Some(&opt), &meta).unwrap();
    (m, opt, rng, meta)
}

#[test]
fn round_trip_restores_everything_and_the_next_step() {
    let dir = tmpdir();
    let path = dir.path().join("ckpt.safetensors");
    let (mut m, mut opt, mut rng, meta) = save_trained(&path);
    assert!(!PathBuf::from(format!("{}.tmp", path.display())).exists());

    let mut rng2 = Rng::new(999);
    let mut m2 = Mlp::new(6, 10, 3, &mut rng2);
    let mut opt2 = sgd();
    let (meta2, report) = load_checkpoint(&path, &mut m2, Some(&mut opt2), true).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.loaded, 6 + 4);
    assert_eq!(meta2, meta);
    assert_eq!(state_bits(&mut m2), state_bits(&mut m));
    assert_eq!(m2.calls, 3);
    assert_eq!(opt2.steps(), 3);
    let bits = |o: &Sgd| -> Vec<(String, Vec<u64>)> {
        o.momentum_buffers()
            .iter()
            .map(|(k, t)| (k.clone(), t.to_vec_f64().unwrap().iter().map(|v| v.to_bits()).collect()))
            .collect()
    };
    assert_eq!(bits(&opt2), bits(&opt));

    // The next steps are identical, bit for bit.
    let mut rng2 = meta2.rng.unwrap();
    let a = train(&mut m, &mut opt, &mut rng, 3, 2);
    let b = train(&mut m2, &mut opt2, &mut rng2, 3, 2);
    assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    assert_eq!(state_bits(&mut m2), state_bits(&mut m));
}

#[test]
fn stored_dtypes_and_names_are_pytorch_compatible() {
    let dir = tmpdir();
    let path = dir.path().join("ckpt.safetensors");
    let mut m = Sequential::new().with(BatchNorm2d::new(4));
    let mut opt = sgd();
    let mut g = Grads::new();
    for_each_param(&mut m, |_, p| g.insert(p, Tensor::ones([4], DType::F32)));
    opt.step(&mut m, &g, 0.1).unwrap();
    save_checkpoint(&path, &mut m, Some(&opt), &CheckpointMeta::default()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        [
            "0.bias",
            "0.num_batches_tracked",
            "0.running_mean",
            "0.running_var",
            "0.weight",
            "optim.momentum_buffer.0.bias",
            "optim.momentum_buffer.0.weight"
        ]
    );
    let nbt = st.tensor("0.num_batches_tracked").unwrap();
    assert_eq!(nbt.dtype(), safetensors::Dtype::I64);
    assert_eq!(nbt.shape(), &[] as &[usize]);
    let w = st.tensor("0.weight").unwrap();
    assert_eq!((w.dtype(), w.shape()), (safetensors::Dtype::F32, &[4usize][..]));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let md = header.metadata().as_ref().unwrap();
    assert_eq!(md["format"], FORMAT);
    assert_eq!(md["format_version"], FORMAT_VERSION.to_string());
}

#[test]
fn saving_replaces_the_old_file_atomically() {
    let dir = tmpdir();
    let path = dir.path().join("sub/dir/ckpt.safetensors");
    let mut m = Mlp::new(2, 3, 1, &mut Rng::new(0));
    save_checkpoint(&path, &mut m, None, &CheckpointMeta { step: 1, ..Default::default() }).unwrap();
    save_checkpoint(&path, &mut m, None, &CheckpointMeta { step: 2, ..Default::default() }).unwrap();
    assert_eq!(read_checkpoint(&path).unwrap().meta.step, 2);
    let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, ["ckpt.safetensors"]);
}

fn err_of(path: &Path) -> String {
    let mut m = Mlp::new(6, 10, 3, &mut Rng::new(0));
    let e = load_checkpoint(path, &mut m, None, true).unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()), "error does not name the file: {e}");
    e
}

#[test]
fn truncated_corrupt_and_missing_files_are_clear_errors() {
    let dir = tmpdir();
    let path = dir.path().join("ckpt.safetensors");
    save_trained(&path);
    let good = std::fs::read(&path).unwrap();

    let cut = dir.path().join("cut.safetensors");
    for len in [0, 5, 12, good.len() / 2, good.len() - 1] {
        std::fs::write(&cut, &good[..len]).unwrap();
        let e = err_of(&cut);
        assert!(e.contains("not a valid safetensors file"), "len {len}: {e}");
    }

    // One flipped bit in the last tensor's data: the header is fine, the checksum is not.
    let flipped = dir.path().join("flipped.safetensors");
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 0x10;
    std::fs::write(&flipped, &bad).unwrap();
    assert!(err_of(&flipped).contains("checksum mismatch"));

    // A damaged header.
    let header = dir.path().join("header.safetensors");
    let mut bad = good.clone();
    bad[10] = b'#';
    std::fs::write(&header, &bad).unwrap();
    assert!(err_of(&header).contains("not a valid safetensors file"));

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint at all, just some text").unwrap();
    assert!(err_of(&garbage).contains("not a valid safetensors file"));

    assert!(err_of(&dir.path().join("absent.safetensors")).contains("cannot read"));
}

#[test]
fn strict_load_names_every_mismatch_and_changes_nothing() {
    let dir = tmpdir();
    let path = dir.path().join("ckpt.safetensors");
    save_trained(&path);
    // Wider hidden layer: fc1.*, fc2.weight and stats are mis-shaped; fc2.bias and calls fit.
    let mut other = Mlp::new(6, 12, 3, &mut Rng::new(5));
    let before = state_bits(&mut other);
    let e = load_checkpoint(&path, &mut other, None, true).unwrap_err().to_string();
    for name in ["fc1.weight", "fc1.bias", "fc2.weight", "stats"] {
        assert!(e.contains(name), "{name} not named in: {e}");
    }
    assert!(e.contains("mis-shaped") && e.contains("[12, 6]") && e.contains("[10, 6]"), "{e}");
    assert_eq!(state_bits(&mut other), before);

    // A model with an extra and a missing tensor.
    let mut seq = Sequential::new().with(BatchNorm2d::new(3));
    let e = load_checkpoint(&path, &mut seq, None, true).unwrap_err().to_string();
    assert!(e.contains("5 missing: 0.weight, 0.bias, 0.running_mean, 0.running_var, 0.num_batches_tracked"), "{e}");
    assert!(e.contains("6 unexpected: calls, fc1.bias, fc1.weight, fc2.bias, fc2.weight, stats"), "{e}");
}

#[test]
fn non_strict_load_takes_what_fits_and_reports_the_rest() {
    let dir = tmpdir();
    let path = dir.path().join("ckpt.safetensors");
    let (mut saved, ..) = save_trained(&path);
    let mut other = Mlp::new(6, 10, 5, &mut Rng::new(5)); // a new "classifier": fc2 differs
    let fc2_before = state_bits(&mut other.fc2);
    let mut opt = sgd();
    let (_, r) = load_checkpoint(&path, &mut other, Some(&mut opt), false).unwrap();
    assert_eq!(r.missing, Vec::<String>::new());
    assert_eq!(r.unexpected, Vec::<String>::new());
    let mis: Vec<&str> = r.mismatched.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(mis, ["fc2.weight", "fc2.bias", "optim.momentum_buffer.fc2.weight", "optim.momentum_buffer.fc2.bias"]);
    assert_eq!(r.mismatched[0], ("fc2.weight".into(), "f32 [3, 10]".into(), "f32 [5, 10]".into()));
    assert_eq!(r.loaded, 4 + 2);
    assert_eq!(state_bits(&mut other.fc1), state_bits(&mut saved.fc1));
    assert_eq!(state_bits(&mut other.fc2), fc2_before);
    assert_eq!(other.calls, 3);
    assert_eq!(opt.momentum_buffers().keys().collect::<Vec<_>>(), ["fc1.bias", "fc1.weight"]);
}

#[test]
fn loads_a_plain_state_dict_and_converts_dtypes() {
    // A file as `safetensors.torch.save_file` would write it: no metadata at all.
    let dir = tmpdir();
    let path = dir.path().join("plain.safetensors");
    let w: Vec<u8> = [1.5f64, -2.0, 0.25, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let n: Vec<u8> = 7i64.to_le_bytes().to_vec();
    let tensors = vec![
        ("0.weight", safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![4], &w).unwrap()),
        ("0.num_batches_tracked", safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![], &n).unwrap()),
    ];
    std::fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();
    let mut m = Sequential::new().with(BatchNorm2d::new(4));
    let (meta, r) = load_checkpoint(&path, &mut m, None, false).unwrap();
    assert_eq!(meta, CheckpointMeta::default());
    assert_eq!(r.loaded, 2);
    assert_eq!(r.missing, ["0.bias", "0.running_mean", "0.running_var"]);
    let sd = state_dict(&mut m);
    let StateValue::Float(wt) = &sd["0.weight"] else { panic!() };
    assert_eq!(wt.dtype(), DType::F32);
    assert_eq!(wt.to_vec_f64().unwrap(), [1.5, -2.0, 0.25, 4.0]);
    assert!(matches!(sd["0.num_batches_tracked"], StateValue::Count(7)));
}

#[test]
fn other_formats_and_newer_versions_are_refused() {
    let dir = tmpdir();
    let path = dir.path().join("x.safetensors");
    let w: Vec<u8> = 1.0f32.to_le_bytes().to_vec();
    for (k, v, want) in [("format", "something-else", "is not"), ("format_version", "99", "newer")] {
        let mut md = std::collections::HashMap::new();
        md.insert("format".to_string(), FORMAT.to_string());
        md.insert("format_version".to_string(), "1".to_string());
        md.insert(k.to_string(), v.to_string());
        let t = vec![("a", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &w).unwrap())];
        std::fs::write(&path, safetensors::serialize(t, Some(md)).unwrap()).unwrap();
        let e = read_checkpoint(&path).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

/// Stage 1: backbone + projection head. Stage 2: the same backbone + a classifier.
struct Staged {
    backbone: Sequential,
    head: Option<ProjectionHead>,
    classifier: Option<Conv2d>,
}

impl Module for Staged {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("backbone", &mut self.backbone);
        if let Some(h) = &mut self.head {
            v.child("head", h);
        }
        if let Some(c) = &mut self.classifier {
            v.child("classifier", c);
        }
    }
}

fn backbone(rng: &mut Rng) -> Sequential {
    Sequential::new().with(Conv2d::new(3, 4, 3, rng)).with(BatchNorm2d::new(4)).with(ReLU)
}

#[test]
fn stage_one_weights_load_into_the_stage_two_model() {
    let dir = tmpdir();
    let path = dir.path().join("stage1.safetensors");
    let mut rng = Rng::new(1);
    let mut s1 = Staged {
        backbone: backbone(&mut rng),
        head: Some(ProjectionHead::new(4, 8, 8, &mut rng).unwrap()),
        classifier: None,
    };
    let opt = sgd();
    save_checkpoint(&path, &mut s1, Some(&opt), &CheckpointMeta { step: 100, ..Default::default() }).unwrap();

    let classifier = Conv2d::with_options(4, 21, 1, ConvOptions::new().bias(true), &mut rng).unwrap();
    let mut s2 = Staged { backbone: backbone(&mut Rng::new(2)), head: None, classifier: Some(classifier) };
    assert!(load_checkpoint(&path, &mut s2, None, true).is_err());
    let (meta, r) = load_checkpoint(&path, &mut s2, None, false).unwrap();
    assert_eq!(meta.step, 100);
    assert_eq!(r.missing, ["classifier.weight", "classifier.bias"]);
    // Every tensor of the projection head (convs and its batch norms) is left out, nothing else.
    let mut head_keys: Vec<String> =
        state_names(s1.head.as_mut().unwrap()).into_iter().map(|k| format!("head.{k}")).collect();
    head_keys.sort();
    assert_eq!(head_keys.len(), 14);
    assert_eq!(r.unexpected, head_keys);
    assert!(r.mismatched.is_empty());
    assert_eq!(r.loaded, 6);
    assert_eq!(state_bits(&mut s2.backbone), state_bits(&mut s1.backbone));
}
