use super::views::*;
use super::*;
use crate::config::{Stage, TrainConfig};
use crate::model::{Backbone, ModelSpec};
use nn::{for_each_param, CheckpointMeta};

fn tiny_spec() -> ModelSpec {
    ModelSpec {
        width: 0.125,
        output_stride: 8,
        head_channels: 64,
        aspp_rates: Some([1, 2, 3]),
        dropout: 0.0,
        ..ModelSpec::new(Backbone::Resnet18, 3)
    }
}

fn tiny_cfg() -> TrainConfig {
    let mut c = TrainConfig::default();
    c.seed = 5;
    c.batch = 4;
    c.crop = 32;
    c.densecl_settings.queue_size = 6;
    c.densecl_settings.dim = 16;
    c
}

fn started(cfg: &TrainConfig) -> (Net, DenseCl) {
    let mut net = new_net(&tiny_spec(), &cfg.densecl_settings, &mut Rng::new(4)).unwrap();
    let mut obj = DenseCl::new(cfg);
    obj.start(&mut net).unwrap();
    (net, obj)
}

fn random_images(n: usize, s: usize, seed: u64) -> Vec<f32> {
    Tensor::randn([n, 3, s, s], 1.0, DType::F32, &mut Rng::new(seed)).to_vec_f32().unwrap()
}

fn batch(n: usize, s: usize) -> Batch {
    Batch {
        epoch: 0,
        step: 0,
        indices: (0..n).collect(),
        images: random_images(n, s, 11),
        image_shape: [n, 3, s, s],
        labels: vec![255; n * s * s],
        label_shape: [n, s, s],
        distorted: None,
    }
}

#[test]
fn queue_is_a_fifo_ring_of_unit_vectors() {
    let mut q = Queue::random(3, 2, &mut Rng::new(1));
    let rows = q.keys().to_vec_f32().unwrap();
    for r in rows.chunks(2) {
        assert!(((r[0] * r[0] + r[1] * r[1]).sqrt() - 1.0).abs() < 1e-6, "{r:?}");
    }
    q.push(&[1.0, 0.0, 0.0, 1.0]).unwrap();
    assert_eq!(q.head(), 2);
    let k = q.keys().to_vec_f32().unwrap();
    assert_eq!(&k[..4], &[1.0, 0.0, 0.0, 1.0]);
    assert_eq!(&k[4..], &rows[4..], "the third (oldest untouched) row stays");
    // Two more: the third slot, then wrap around to the first (the oldest).
    q.push(&[0.6, 0.8, -1.0, 0.0]).unwrap();
    assert_eq!(q.head(), 1);
    assert_eq!(q.keys().to_vec_f32().unwrap(), [-1.0, 0.0, 0.0, 1.0, 0.6, 0.8]);
    // More rows than the queue holds (from slot 1 on): only the newest three remain.
    q.push(&[1., 1., 2., 2., 3., 3., 4., 4.]).unwrap();
    assert_eq!(q.head(), 2);
    assert_eq!(q.keys().to_vec_f32().unwrap(), [3., 3., 4., 4., 2., 2.]);
    assert!(q.push(&[1.0]).unwrap_err().to_string().contains("rows of 2"));
}

#[test]
fn momentum_update_matches_hand_values_on_parameters_only() {
    let cfg = tiny_cfg();
    let (mut net, mut obj) = started(&cfg);
    let key = &mut obj.state.as_mut().unwrap().key;
    let set = |t: &mut Tensor, v: f32| t.update_cpu::<f32>(|x| x.iter_mut().for_each(|a| *a = v)).unwrap();
    for_each_param(&mut net, |_, p| set(&mut p.value, 3.0));
    for_each_param(key, |_, p| set(&mut p.value, 1.0));
    let mut bufs = 0;
    visit_all(key, |_, slot| {
        if let Slot::Buffer(b) = slot {
            set(b, 7.0);
            bufs += 1;
        }
    });
    assert!(bufs > 0);
    momentum_update(key, &mut net, 0.9).unwrap();
    // 0.9 * 1 + 0.1 * 3 = 1.2 everywhere; buffers (BN running stats) untouched; query untouched.
    for_each_param(key, |name, p| {
        assert!(p.value.to_vec_f32().unwrap().iter().all(|&v| (v - 1.2).abs() < 1e-6), "{name}")
    });
    visit_all(key, |name, slot| {
        if let Slot::Buffer(b) = slot {
            assert!(b.to_vec_f32().unwrap().iter().all(|&v| v == 7.0), "{name}");
        }
    });
    for_each_param(&mut net, |name, p| assert!(p.value.to_vec_f32().unwrap().iter().all(|&v| v == 3.0), "{name}"));
    // Twice more at 0.5: 1.2 -> 2.1 -> 2.55; m = 1 keeps, m = 0 copies.
    momentum_update(key, &mut net, 0.5).unwrap();
    momentum_update(key, &mut net, 0.5).unwrap();
    momentum_update(key, &mut net, 1.0).unwrap();
    for_each_param(key, |_, p| assert!(p.value.to_vec_f32().unwrap().iter().all(|&v| (v - 2.55).abs() < 1e-6)));
    momentum_update(key, &mut net, 0.0).unwrap();
    for_each_param(key, |_, p| assert!(p.value.to_vec_f32().unwrap().iter().all(|&v| v == 3.0)));
}

#[test]
fn the_key_encoder_starts_as_a_copy_of_the_query_with_the_same_names() {
    let cfg = tiny_cfg();
    let (mut net, mut obj) = started(&cfg);
    let q = query_tensors(&mut net, false);
    let mut n = 0;
    visit_all(&mut obj.state.as_mut().unwrap().key, |name, slot| {
        let t = match slot {
            Slot::Param(p) => p.value.clone(),
            Slot::Buffer(b) => b.clone(),
            Slot::Count(_) => return,
        };
        assert_eq!(t.to_vec_f32().unwrap(), q[name].to_vec_f32().unwrap(), "{name}");
        n += 1;
    });
    assert_eq!(n, q.len());
    assert!(q.keys().any(|k| k.starts_with("densecl.global.0")) && q.keys().any(|k| k.starts_with("densecl.dense.2")));
}

#[test]
fn views_keep_their_geometry() {
    let (h, w) = (6, 8);
    let base: Vec<f32> = (0..3 * h * w).map(|i| i as f32 * 0.1).collect();
    // The identity view is the crop; the flipped one its mirror.
    assert_eq!(render(&base, h, w, &ViewGeom::identity(h, w)), base);
    let flip = ViewGeom { flip: true, ..ViewGeom::identity(h, w) };
    let f = render(&base, h, w, &flip);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                assert!((f[(c * h + y) * w + x] - base[(c * h + y) * w + w - 1 - x]).abs() < 1e-5);
            }
        }
    }
    // The left half, zoomed: view pixel x samples base x / 2.
    let half = ViewGeom { w: 4.0, ..ViewGeom::identity(h, w) };
    assert_eq!(half.to_base(1.0, 8.0, h, w), (1.0, 4.0));
    assert_eq!(half.from_base(1.0, 2.0, h, w), Some((1.0, 4.0)));
    assert_eq!(half.from_base(1.0, 5.0, h, w), None);
    // True correspondence: identity vs flip mirrors the cells; vs the half view, the left half.
    let id = ViewGeom::identity(h, w);
    let t = true_correspondence(&id, &flip, [h, w], [2, 4]);
    assert_eq!(t, [3, 2, 1, 0, 7, 6, 5, 4].map(Some));
    let t = true_correspondence(&id, &half, [h, w], [2, 4]);
    assert_eq!(t, [Some(1), Some(3), None, None, Some(5), Some(7), None, None]);
    // Random draws stay inside the crop with an area of at least min_scale (up to rounding).
    let mut rng = Rng::new(3);
    let mut flips = 0;
    for _ in 0..200 {
        let g = draw_geom(64, 64, 0.3, &mut rng);
        assert!(g.y0 >= 0.0 && g.x0 >= 0.0 && g.y0 + g.h <= 64.0 && g.x0 + g.w <= 64.0, "{g:?}");
        assert!(g.h * g.w >= 0.28 * 64.0 * 64.0, "{g:?}");
        flips += usize::from(g.flip);
    }
    assert!((60..=140).contains(&flips), "{flips}");
}

#[test]
fn photometric_ops_stay_in_range_and_grayscale_equalises_channels() {
    let (h, w) = (8, 8);
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    // A valid image: raw values in [0, 1], normalised.
    let raw = Tensor::rand_uniform([3, 8, 8], 0.0, 1.0, DType::F32, &mut Rng::new(2)).to_vec_f32().unwrap();
    let base: Vec<f32> = raw.iter().enumerate().map(|(i, v)| (v - mean[i / 64]) / std[i / 64]).collect();
    let mut rng = Rng::new(9);
    let mut kinds = [0usize; 3];
    for _ in 0..50 {
        let p = draw_photometric(64, &mut rng);
        kinds[0] += usize::from(!p.jitter.is_empty());
        kinds[1] += usize::from(p.gray);
        kinds[2] += usize::from(p.blur.is_some());
        if let Some(s) = p.blur {
            assert!((0.1 * 64.0 / 224.0 - 1e-6..=2.0 * 64.0 / 224.0 + 1e-6).contains(&(s as f64)), "{s}");
        }
        let mut img = base.clone();
        apply_photometric(&mut img, h, w, &p, mean, std);
        for c in 0..3 {
            for v in &img[c * 64..(c + 1) * 64] {
                let raw = v * std[c] + mean[c];
                assert!((-1e-5..=1.0 + 1e-5).contains(&raw), "{raw}");
            }
        }
    }
    assert!(kinds[0] > 25 && kinds[1] > 2 && kinds[2] > 10, "{kinds:?}");
    let mut img = base.clone();
    apply_photometric(&mut img, h, w, &Photometric { gray: true, ..Default::default() }, mean, std);
    for i in 0..64 {
        let raw: Vec<f32> = (0..3).map(|c| img[c * 64 + i] * std[c] + mean[c]).collect();
        assert!((raw[0] - raw[1]).abs() < 1e-5 && (raw[1] - raw[2]).abs() < 1e-5);
    }
    // No op: the image comes back (up to rounding).
    let mut img = base.clone();
    apply_photometric(&mut img, h, w, &Photometric::default(), mean, std);
    let clamp = |c: usize, v: f32| ((v * std[c] + mean[c]).clamp(0.0, 1.0) - mean[c]) / std[c];
    for c in 0..3 {
        for i in 0..64 {
            assert!((img[c * 64 + i] - clamp(c, base[c * 64 + i])).abs() < 1e-4);
        }
    }
}

/// A smooth, locally distinctive feature field over the crop: random Fourier features.
fn field(c: usize, seed: u64) -> impl Fn(f32, f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let waves: Vec<(f32, f32, f32)> = (0..c)
        .map(|_| {
            let a = (rng.uniform() * std::f64::consts::TAU) as f32;
            let f = (0.05 + 0.1 * rng.uniform()) as f32;
            (f * a.cos(), f * a.sin(), (rng.uniform() * std::f64::consts::TAU) as f32)
        })
        .collect();
    move |y, x| waves.iter().map(|(fy, fx, p)| (fy * y + fx * x + p).cos()).collect()
}

/// `[1, C, S]` features of a view: the field at each cell centre's base point.
fn view_features(f: &dyn Fn(f32, f32) -> Vec<f32>, g: &ViewGeom, hw: usize, side: usize, c: usize) -> Vec<f32> {
    let s = side * side;
    let mut out = vec![0f32; c * s];
    for i in 0..s {
        let vy = (i / side) as f32 + 0.5;
        let vx = (i % side) as f32 + 0.5;
        let k = hw as f32 / side as f32;
        let (by, bx) = g.to_base(vy * k, vx * k, hw, hw);
        for (ch, v) in f(by, bx).into_iter().enumerate() {
            out[ch * s + i] = v;
        }
    }
    out
}

#[test]
fn argmax_matching_finds_the_true_cell_under_flips_and_crops() {
    let (hw, side, c) = (64, 8, 32);
    let f = field(c, 21);
    // A flip of the same crop: every cell matches its mirror exactly.
    let id = ViewGeom::identity(hw, hw);
    let flip = ViewGeom { flip: true, ..id };
    let j =
        match_cells(&view_features(&f, &id, hw, side, c), &view_features(&f, &flip, hw, side, c), 1, c, side * side);
    let truth = true_correspondence(&id, &flip, [hw, hw], [side, side]);
    assert!(truth.iter().zip(&j).all(|(t, &j)| *t == Some(j)), "{j:?} vs {truth:?}");
    // Random resized crops and flips (two views of one crop, as the stage draws them): the argmax
    // finds the cell the geometry says in most cells where the views overlap.
    let mut rng = Rng::new(5);
    let (mut hits, mut total) = (0, 0);
    for _ in 0..20 {
        let (g1, g2) = (draw_geom(hw, hw, 0.3, &mut rng), draw_geom(hw, hw, 0.3, &mut rng));
        let j =
            match_cells(&view_features(&f, &g1, hw, side, c), &view_features(&f, &g2, hw, side, c), 1, c, side * side);
        for (i, t) in true_correspondence(&g1, &g2, [hw, hw], [side, side]).into_iter().enumerate() {
            if let Some(t) = t {
                total += 1;
                hits += usize::from(j[i] == t);
            }
        }
    }
    assert!(total > 300, "{total} overlapping cells");
    assert!(hits as f64 > 0.6 * total as f64, "{hits} of {total} cells matched the true cell");
    // Per image: the argmax never leaves the image.
    let two = [view_features(&f, &id, hw, side, c), view_features(&f, &id, hw, side, c)].concat();
    let j = match_cells(&two, &two, 2, c, side * side);
    assert_eq!(j, (0..2 * side * side).collect::<Vec<_>>());
}

#[test]
fn key_batch_is_unshuffled_after_the_shuffled_forward() {
    let cfg = tiny_cfg();
    let (_, mut obj) = started(&cfg);
    let key = &mut obj.state.as_mut().unwrap().key;
    let images = random_images(4, 32, 3);
    let shape = [4, 3, 32, 32];
    // One chunk: batch-norm statistics over the same images, so the permutation must not matter
    // (up to summation order) once the outputs are put back in batch order.
    let a = key_forward(key, &images, shape, &[0, 1, 2, 3], 1).unwrap();
    let b = key_forward(key, &images, shape, &[2, 0, 3, 1], 1).unwrap();
    let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-4);
    assert!(close(&a.c5, &b.c5) && close(&a.dense, &b.dense) && close(&a.global, &b.global));
    assert!(close(&a.pooled, &b.pooled));
    assert!(!close(&a.global[..16], &a.global[16..32]), "images differ");
    // Two chunks: each image keeps its place, its statistics come from its chunk.
    let c = key_forward(key, &images, shape, &[2, 0, 3, 1], 2).unwrap();
    assert_eq!(c.global.len(), a.global.len());
    let unit = |v: &[f32]| v.chunks(16).all(|r| (r.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-4);
    assert!(unit(&c.global) && unit(&c.pooled));
}

#[test]
fn loss_trains_the_query_only_and_identical_views_match_themselves() {
    let mut cfg = tiny_cfg();
    cfg.densecl_settings.bn_chunks = 1;
    let (mut net, mut obj) = started(&cfg);
    let b = batch(4, 32);
    // Identical, un-augmented views: the argmax of the backbone features is the identity.
    let v = Views { query: b.images.clone(), key: b.images.clone(), geom: vec![[ViewGeom::identity(32, 32); 2]; 4] };
    let mut ctx = Ctx::train(Rng::new(1));
    let loss = obj.views_loss(&mut net, &v, b.image_shape, 0, &mut ctx).unwrap();
    assert!(loss.item().unwrap().is_finite());
    let m = obj.step_metrics().unwrap();
    assert!(m["match_true"].as_f64().unwrap() > 0.9, "{m}");
    let (lg, ld) = (m["l_global"].as_f64().unwrap(), m["l_dense"].as_f64().unwrap());
    assert!((loss.item().unwrap() - 0.5 * (lg + ld)).abs() < 1e-5);
    let grads = ctx.backward(&loss).unwrap();
    let mut missing = vec![];
    nn::for_each_param(&mut net, |name, p| {
        if shared_name(name) && grads.get(p).is_none() {
            missing.push(name.to_string());
        }
    });
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    nn::for_each_param(&mut obj.state.as_mut().unwrap().key, |name, p| {
        assert!(grads.get(p).is_none(), "the key encoder got a gradient for {name}")
    });
    // The keys enter the queues after the step, one per image each.
    let before = obj.state_ref().unwrap().global.keys().to_vec_f32().unwrap();
    obj.after_step(&mut net).unwrap();
    let st = obj.state_ref().unwrap();
    assert_eq!((st.global.head(), st.dense.head()), (4, 4));
    assert_ne!(st.global.keys().to_vec_f32().unwrap()[..64], before[..64]);
    assert_eq!(st.global.keys().to_vec_f32().unwrap()[64..], before[64..]);
    // lambda = 0 during the warm-up: the loss is the global term alone.
    cfg.densecl_settings.dense_warmup_steps = 5;
    let (mut net, mut obj) = started(&cfg);
    let l = obj.views_loss(&mut net, &v, b.image_shape, 2, &mut Ctx::train(Rng::new(1))).unwrap();
    let m = obj.step_metrics().unwrap();
    assert!((l.item().unwrap() - m["l_global"].as_f64().unwrap()).abs() < 1e-6 && m["lambda"] == 0.0);
    // The whole objective on a batch (views drawn from its seed) runs and is seeded.
    let (mut net, mut obj) = started(&tiny_cfg());
    let x = obj.loss(&mut net, &b, 3, &mut Ctx::train(Rng::new(1))).unwrap().item().unwrap();
    let (mut net, mut obj) = started(&tiny_cfg());
    let y = obj.loss(&mut net, &b, 3, &mut Ctx::train(Rng::new(1))).unwrap().item().unwrap();
    assert_eq!(x, y);
    // The loader gives plain crops: the objective draws the views itself.
    let a = obj.augment(&tiny_cfg());
    assert!(a.scale.is_none() && !a.hflip && a.color.is_none() && !a.two_views);
}

#[test]
fn only_the_backbone_transfers_by_name() {
    let cfg = tiny_cfg();
    let spec = tiny_spec();
    let mut pre = new_net(&spec, &cfg.densecl_settings, &mut Rng::new(1)).unwrap();
    let names = nn::state_names(&mut pre);
    assert!(names.iter().any(|n| n == "backbone.conv1.weight") && names.iter().any(|n| n == "densecl.global.0.weight"));
    assert!(pre.head.classifier.is_none() && pre.projection.is_none());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("d.safetensors");
    let meta = CheckpointMeta { step: 0, rng: None, config: String::new(), extra: Default::default() };
    nn::save_checkpoint(&path, &mut pre, None, &meta).unwrap();
    let mut ft = DeepLabV3Plus::new(&spec, &mut Rng::new(2)).unwrap();
    let fresh = query_like(&mut ft, "classifier.");
    let line = load_backbone(&path, &mut ft).unwrap();
    assert!(line.contains("backbone"), "{line}");
    let want = query_like(&mut pre, "backbone.");
    assert_eq!(query_like(&mut ft, "backbone."), want, "the backbone transfers");
    assert_eq!(query_like(&mut ft, "classifier."), fresh, "ASPP, decoder and classifier keep their init");
    // A different backbone is a clear error naming the tensors.
    let mut other = DeepLabV3Plus::new(&ModelSpec { width: 0.25, ..spec }, &mut Rng::new(2)).unwrap();
    let err = load_backbone(&path, &mut other).unwrap_err().to_string();
    assert!(err.contains("backbone"), "{err}");
}

fn query_like(net: &mut Net, prefix: &str) -> Vec<(String, Vec<f32>)> {
    let mut v = vec![];
    visit_all(net, |name, slot| {
        if !name.starts_with(prefix) {
            return;
        }
        match slot {
            Slot::Param(p) => v.push((name.to_string(), p.value.to_vec_f32().unwrap())),
            Slot::Buffer(b) => v.push((name.to_string(), b.to_vec_f32().unwrap())),
            Slot::Count(_) => {}
        }
    });
    v
}

#[test]
fn bad_settings_are_errors_naming_the_key() {
    let mut c = TrainConfig { stages: vec![Stage::Densecl, Stage::Finetune], ..TrainConfig::default() };
    assert!(c.validate().is_ok());
    c.densecl_settings.bn_chunks = 5;
    assert!(c.validate().unwrap_err().contains("densecl_settings.bn_chunks"));
    c.densecl_settings.bn_chunks = 2;
    c.densecl_settings.key_momentum = 1.5;
    assert!(c.validate().unwrap_err().contains("densecl_settings.key_momentum"));
    c.densecl_settings.key_momentum = 0.99;
    c.densecl_settings.tau = 0.0;
    assert!(c.validate().unwrap_err().contains("densecl_settings.tau"));
    c.densecl_settings.tau = 0.2;
    c.densecl_settings.queue_size = 0;
    assert!(c.validate().unwrap_err().contains("densecl_settings.queue_size"));
    let e = TrainConfig::from_toml("[densecl_settings]\nqueue = 3\n").unwrap_err();
    assert!(e.contains("queue"), "{e}");
    let t = TrainConfig::from_toml("stages = [\"densecl\", \"contrastive\", \"finetune\"]\n[densecl]\nsteps = 7\n")
        .unwrap();
    assert_eq!((t.stages[0], t.densecl.steps, t.densecl.lr), (Stage::Densecl, 7, 0.03));
    // Flags.
    use clap::Parser;
    let parse = |args: &[&str]| {
        let cli = crate::cli::Cli::try_parse_from(args).unwrap();
        match cli.command {
            crate::cli::Command::Train(t) => crate::commands::resolve_config(&t.train, t.labeled),
            _ => unreachable!(),
        }
    };
    let ok =
        parse(&["segnet", "train", "--stages", "densecl,finetune", "--key-momentum", "0.99", "--densecl-queue", "32"])
            .unwrap();
    assert_eq!((ok.densecl_settings.key_momentum, ok.densecl_settings.queue_size), (0.99, 32));
    let e = parse(&["segnet", "train", "--stages", "densecl,finetune", "--key-momentum", "2"]).unwrap_err();
    assert!(e.to_string().contains("--key-momentum"), "{e}");
    let e = parse(&["segnet", "train", "--dense-lambda=-1"]).unwrap_err();
    assert!(e.to_string().contains("--dense-lambda"), "{e}");
    let e = parse(&["segnet", "train", "--stages", "densecl,finetune", "--batch", "2"]).unwrap_err();
    assert!(e.to_string().contains("bn_chunks"), "{e}");
}

const TINY: &str = r#"
labeled = 8
crop = 32
batch = 4
eval_every = 4
checkpoint_every = 2
seed = 3
stages = ["densecl", "finetune"]
[model]
backbone = "resnet18"
width = 0.125
output_stride = 8
head_channels = 64
aspp_rates = [1, 2, 3]
[densecl]
steps = 4
lr = 0.05
[finetune]
steps = 2
lr = 0.05
[densecl_settings]
queue_size = 6
dim = 16
key_momentum = 0.9
[synth]
train_images = 12
val_images = 4
size = 32
seed = 5
"#;

#[test]
fn resume_inside_densecl_is_bit_identical_and_checkpoints_hold_the_state() {
    use crate::train::{run, RunOptions};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::from_toml(TINY).unwrap();
    let a = tmp.path().join("a");
    let s = run(&cfg, &RunOptions { out: a.clone(), quiet: true, ..Default::default() }).unwrap();
    assert!(s.scores.is_some());
    let b = tmp.path().join("b");
    let s = run(&cfg, &RunOptions { out: b.clone(), quiet: true, stop_after: Some(3), ..Default::default() }).unwrap();
    assert!(s.interrupted);
    let ck = b.join("checkpoints/densecl-last.safetensors");
    let data = nn::read_checkpoint(&ck).unwrap();
    for k in [
        "backbone.conv1.weight",
        "densecl.dense.0.weight",
        "objective.key.backbone.conv1.weight",
        "objective.key.backbone.bn1.running_mean",
        "objective.key.densecl.global.2.bias",
        "objective.queue.global.keys",
        "objective.queue.dense.head",
    ] {
        assert!(data.model.contains_key(k), "{k} missing from the checkpoint");
    }
    run(&cfg, &RunOptions { out: b.clone(), quiet: true, resume: Some(ck), ..Default::default() }).unwrap();
    for name in ["densecl-final", "finetune-final"] {
        let x = nn::read_checkpoint(a.join(format!("checkpoints/{name}.safetensors"))).unwrap();
        let y = nn::read_checkpoint(b.join(format!("checkpoints/{name}.safetensors"))).unwrap();
        assert_eq!(x.model.len(), y.model.len());
        for (k, v) in &x.model {
            assert_eq!(format!("{v:?}"), format!("{:?}", y.model[k]), "{name}: {k} differs after resume");
            if let (nn::StateValue::Float(p), nn::StateValue::Float(q)) = (v, &y.model[k]) {
                assert_eq!(p.to_vec_f64().unwrap(), q.to_vec_f64().unwrap(), "{name}: {k} differs after resume");
            }
        }
    }
    // The fine-tuning stage started from the DenseCL backbone: a run that ends with densecl has
    // no segmentation model (a clear error), and a densecl checkpoint is refused for inference.
    let only = TrainConfig { stages: vec![Stage::Densecl], ..cfg.clone() };
    let e = run(&only, &RunOptions { out: tmp.path().join("c"), quiet: true, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("densecl"), "{e}");
    let e = crate::train::load_for_inference(&a.join("checkpoints/densecl-final.safetensors")).err().unwrap();
    assert!(e.to_string().contains("densecl"), "{e}");
}
