//! Small conv nets train: cross-entropy with conv + batch norm + max pool + dropout, and the
//! contrastive stage with the projection head. Plus an exact resume of a conv net.

mod common;

use common::state_bits;
use engine::ops::ContrastiveConfig;
use engine::{DType, LabelMap, Rng, Tensor};
use nn::*;

fn conv(cin: usize, cout: usize, k: usize, o: ConvOptions, rng: &mut Rng) -> Conv2d {
    Conv2d::with_options(cin, cout, k, o, rng).unwrap()
}

/// conv-bn-relu-maxpool-conv(dilated)-bn-relu-dropout-conv1x1: logits at half resolution.
fn tiny_net(classes: usize, rng: &mut Rng) -> Sequential {
    let p1 = ConvOptions::new().padding(1);
    Sequential::new()
        .with(conv(3, 8, 3, p1, rng))
        .with(BatchNorm2d::new(8))
        .with(ReLU)
        .with(MaxPool2d::new(2, 2, 0))
        .with(conv(8, 8, 3, ConvOptions::new().padding(2).dilation(2), rng))
        .with(BatchNorm2d::new(8))
        .with(ReLU)
        .with(Dropout::new(0.1).unwrap())
        .with(conv(8, classes, 1, ConvOptions::new().bias(true), rng))
}

/// A fixed batch whose labels depend on the image: class = which colour channel is brightest
/// in each 2x2 cell (at the logits' half resolution), with a few ignored pixels.
fn batch(rng: &mut Rng) -> (Tensor, LabelMap) {
    let (n, h, w) = (4, 8, 8);
    let x = Tensor::randn([n, 3, h, w], 1.0, DType::F32, rng);
    let v = x.to_vec_f32().unwrap();
    let (lh, lw) = (h / 2, w / 2);
    let mut labels = vec![0u8; n * lh * lw];
    for b in 0..n {
        for i in 0..lh {
            for j in 0..lw {
                let score = |c: usize| -> f32 {
                    (0..2)
                        .flat_map(|di| (0..2).map(move |dj| (di, dj)))
                        .map(|(di, dj)| v[((b * 3 + c) * h + 2 * i + di) * w + 2 * j + dj])
                        .sum()
                };
                let best = (0..3).max_by(|&a, &c| score(a).total_cmp(&score(c))).unwrap();
                labels[(b * lh + i) * lw + j] = if (i + j + b) % 7 == 0 { 255 } else { best as u8 };
            }
        }
    }
    (x, LabelMap::new(n, lh, lw, labels).unwrap())
}

fn ce_step(net: &mut Sequential, opt: &mut Sgd, x: &Tensor, y: &LabelMap, lr: f64, rng: &mut Rng) -> f64 {
    let mut ctx = Ctx::train(rng.fork());
    let logits = net.forward(x, &mut ctx).unwrap();
    let loss = CrossEntropyLoss::new(255).forward(&logits, y).unwrap();
    let mut g = ctx.backward(&loss).unwrap();
    assert_eq!(g.len(), 1 + 2 + 1 + 2 + 2);
    clip_grad_norm(&mut g, 5.0).unwrap();
    opt.step(net, &g, lr).unwrap();
    loss.item().unwrap()
}

#[test]
fn tiny_conv_net_trains_on_a_fixed_batch() {
    let mut rng = Rng::new(3);
    let mut net = tiny_net(3, &mut rng);
    let (x, y) = batch(&mut rng);
    let groups = ParamGroups { no_decay_norm_and_bias: true, ..Default::default() };
    let mut opt =
        Sgd::new(SgdConfig { momentum: 0.9, weight_decay: 1e-4, ..Default::default() }).unwrap().with_groups(groups);
    let sched = LrSchedule::cosine(0.05, 40).unwrap().with_warmup(3).unwrap();
    let losses: Vec<f64> = (0..40).map(|s| ce_step(&mut net, &mut opt, &x, &y, sched.lr(s), &mut rng)).collect();
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[39] < 0.5 * losses[0], "loss {:.4} -> {:.4}", losses[0], losses[39]);

    // Batch norm counted the batches and moved its statistics; eval mode uses them.
    let sd = state_dict(&mut net);
    assert!(matches!(sd["1.num_batches_tracked"], StateValue::Count(40)));
    let StateValue::Float(rm) = &sd["1.running_mean"] else { panic!() };
    assert!(rm.to_vec_f64().unwrap().iter().any(|v| v.abs() > 1e-3));
    let mut ctx = Ctx::eval();
    let eval_loss = CrossEntropyLoss::new(255).forward(&net.forward(&x, &mut ctx).unwrap(), &y).unwrap();
    assert!(eval_loss.item().unwrap() < losses[0], "eval {} vs first {}", eval_loss.item().unwrap(), losses[0]);
    assert!(matches!(state_dict(&mut net)["1.num_batches_tracked"], StateValue::Count(40)));
}

#[test]
fn contrastive_stage_trains_with_the_projection_head() {
    let mut rng = Rng::new(8);
    let mut body = Sequential::new()
        .with(conv(3, 16, 3, ConvOptions::new().padding(1), &mut rng))
        .with(BatchNorm2d::new(16))
        .with(ReLU)
        .with(MaxPool2d::new(2, 2, 0));
    let mut head = ProjectionHead::new(16, 16, 8, &mut rng).unwrap();
    let (x, y) = batch(&mut rng);
    let loss_fn = PixelContrastiveLoss::new(ContrastiveConfig { classes: 3, tau: 0.5, ..Default::default() });
    let mut opt = Sgd::new(SgdConfig { momentum: 0.9, ..Default::default() }).unwrap();
    let mut opt_head = Sgd::new(SgdConfig { momentum: 0.9, ..Default::default() }).unwrap();
    let mut losses = vec![];
    for _ in 0..30 {
        let mut ctx = Ctx::train(rng.fork());
        let f = head.forward(&body.forward(&x, &mut ctx).unwrap(), &mut ctx).unwrap();
        // Unit vectors over channels.
        let norms = f.mul(&f).unwrap().sum(&[1], false).unwrap().to_vec_f64().unwrap();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4));
        let loss = loss_fn.forward(&f, &y).unwrap();
        losses.push(loss.item().unwrap());
        let g = ctx.backward(&loss).unwrap();
        assert_eq!(opt.step(&mut body, &g, 0.05).unwrap(), 3);
        assert_eq!(opt_head.step(&mut head, &g, 0.05).unwrap(), 8);
    }
    assert!(losses[29] < 0.8 * losses[0], "loss {:.4} -> {:.4}", losses[0], losses[29]);
}

#[test]
fn conv_net_resumes_exactly_from_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conv.safetensors");
    let mut rng = Rng::new(5);
    let mut net = tiny_net(3, &mut rng);
    let (x, y) = batch(&mut rng.clone());
    let mut opt =
        Sgd::new(SgdConfig { momentum: 0.9, nesterov: true, weight_decay: 1e-4, ..Default::default() }).unwrap();
    for _ in 0..3 {
        ce_step(&mut net, &mut opt, &x, &y, 0.02, &mut rng);
    }
    let meta = CheckpointMeta { step: 3, rng: Some(rng.clone()), ..Default::default() };
    save_checkpoint(&path, &mut net, Some(&opt), &meta).unwrap();

    let mut net2 = tiny_net(3, &mut Rng::new(77));
    let mut opt2 = Sgd::new(*opt.config()).unwrap();
    let (meta2, report) = load_checkpoint(&path, &mut net2, Some(&mut opt2), true).unwrap();
    assert!(report.is_clean());
    let mut rng2 = meta2.rng.unwrap();
    let a: Vec<u64> = (0..2).map(|_| ce_step(&mut net, &mut opt, &x, &y, 0.02, &mut rng).to_bits()).collect();
    let b: Vec<u64> = (0..2).map(|_| ce_step(&mut net2, &mut opt2, &x, &y, 0.02, &mut rng2).to_bits()).collect();
    assert_eq!(a, b);
    assert_eq!(state_bits(&mut net), state_bits(&mut net2));
}
