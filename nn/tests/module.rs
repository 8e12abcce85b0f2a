//! Module machinery: torchvision-style names, initialisation, freezing, dtype conversion, and an
//! MLP that trains with SGD (matmul + relu + MSE only).

mod common;

use common::{mse, regression_batch, Mlp};
use engine::{DType, Rng, Tensor};
use nn::*;

/// torchvision's `Bottleneck` layout (enough of it to check the names).
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<Sequential>,
}

impl Module for Block {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("conv1", &mut self.conv1);
        v.child("bn1", &mut self.bn1);
        v.child("conv2", &mut self.conv2);
        v.child("bn2", &mut self.bn2);
        if let Some(d) = &mut self.downsample {
            v.child("downsample", d);
        }
    }
}

impl Layer for Block {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = self.bn1.forward(&self.conv1.forward(x, ctx)?, ctx)?.relu()?;
        let h = self.bn2.forward(&self.conv2.forward(&h, ctx)?, ctx)?;
        let skip = match &mut self.downsample {
            Some(d) => d.forward(x, ctx)?,
            None => x.clone(),
        };
        Ok(h.add(&skip)?.relu()?)
    }
}

struct Backbone {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layer1: Sequential,
}

impl Module for Backbone {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("conv1", &mut self.conv1);
        v.child("bn1", &mut self.bn1);
        v.child("layer1", &mut self.layer1);
    }
}

struct Net {
    backbone: Backbone,
    head: ProjectionHead,
}

impl Module for Net {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("backbone", &mut self.backbone);
        v.child("head", &mut self.head);
    }
}

fn net(rng: &mut Rng) -> Net {
    let block = |cin: usize, cout: usize, down: bool, rng: &mut Rng| Block {
        conv1: Conv2d::new(cin, cout, 1, rng),
        bn1: BatchNorm2d::new(cout),
        conv2: Conv2d::with_options(cout, cout, 3, ConvOptions::new().padding(1), rng).unwrap(),
        bn2: BatchNorm2d::new(cout),
        downsample: down.then(|| Sequential::new().with(Conv2d::new(cin, cout, 1, rng)).with(BatchNorm2d::new(cout))),
    };
    Net {
        backbone: Backbone {
            conv1: Conv2d::with_options(3, 4, 7, ConvOptions::new().stride(2).padding(3), rng).unwrap(),
            bn1: BatchNorm2d::new(4),
            layer1: Sequential::new().with(block(4, 8, true, rng)).with(block(8, 8, false, rng)),
        },
        head: ProjectionHead::new(8, 6, 5, rng).unwrap(),
    }
}

#[test]
fn names_follow_torchvision() {
    let mut n = net(&mut Rng::new(0));
    let names = state_names(&mut n);
    let bn = |p: &str| -> Vec<String> {
        ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
            .iter()
            .map(|s| format!("{p}.{s}"))
            .collect()
    };
    let mut expect = vec!["backbone.conv1.weight".to_string()];
    expect.extend(bn("backbone.bn1"));
    for (i, down) in [(0, true), (1, false)] {
        let p = format!("backbone.layer1.{i}");
        expect.push(format!("{p}.conv1.weight"));
        expect.extend(bn(&format!("{p}.bn1")));
        expect.push(format!("{p}.conv2.weight"));
        expect.extend(bn(&format!("{p}.bn2")));
        if down {
            expect.push(format!("{p}.downsample.0.weight"));
            expect.extend(bn(&format!("{p}.downsample.1")));
        }
    }
    // Projection head: conv (no bias), BN, ReLU, conv, BN, ReLU, conv (bias).
    for i in [0, 3] {
        expect.push(format!("head.{i}.weight"));
        expect.extend(bn(&format!("head.{}", i + 1)));
    }
    expect.push("head.6.weight".into());
    expect.push("head.6.bias".into());
    assert_eq!(names, expect);
    let params = param_names(&mut n);
    assert!(params.iter().all(|p| !p.contains("running") && !p.contains("num_batches")));
    assert_eq!(params.len(), 1 + 2 + 2 * (1 + 2 + 1 + 2) + (1 + 2) + (1 + 2 + 1 + 2 + 2));
}

#[test]
fn shapes_follow_pytorch_layouts() {
    let mut n = net(&mut Rng::new(0));
    let sd = state_dict(&mut n);
    assert_eq!(sd["backbone.conv1.weight"].dims(), [4, 3, 7, 7]);
    assert_eq!(sd["backbone.layer1.0.conv2.weight"].dims(), [8, 8, 3, 3]);
    assert_eq!(sd["backbone.bn1.running_var"].dims(), [4]);
    assert!(matches!(sd["backbone.bn1.num_batches_tracked"], StateValue::Count(0)));
    assert_eq!(sd["head.6.weight"].dims(), [5, 6, 1, 1]);
    assert_eq!(sd["head.6.bias"].dims(), [5]);
    let g = Conv2d::with_options(8, 16, 3, ConvOptions::new().groups(4), &mut Rng::new(0)).unwrap();
    assert_eq!(g.weight.value.dims(), [16, 2, 3, 3]);
}

fn stats(t: &Tensor) -> (f64, f64) {
    let v = t.to_vec_f64().unwrap();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    (mean, var.sqrt())
}

#[test]
fn kaiming_normal_fan_out_matches_torch_formula() {
    let mut rng = Rng::new(7);
    // fan_out = 128 * 3 * 3; 73728 samples: the std estimate is within ~0.3% (1 sigma).
    let c = Conv2d::new(64, 128, 3, &mut rng);
    let (mean, std) = stats(&c.weight.value);
    let want = (2.0f64 / (128.0 * 9.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.02, "std {std} vs {want}");
    assert!(mean.abs() < 0.02 * want, "mean {mean}");
    // torch does not divide fan_out by groups.
    let g = Conv2d::with_options(64, 128, 3, ConvOptions::new().groups(8), &mut rng).unwrap();
    let (_, std) = stats(&g.weight.value);
    assert!((std / want - 1.0).abs() < 0.05, "grouped std {std} vs {want}");
    assert_eq!(init::fans(&[128, 8, 3, 3]), (72, 1152));
    let bn = BatchNorm2d::new(3);
    assert_eq!(bn.weight.value.to_vec_f64().unwrap(), [1.0; 3]);
    assert_eq!(bn.bias.value.to_vec_f64().unwrap(), [0.0; 3]);
    assert_eq!(bn.running_var.to_vec_f64().unwrap(), [1.0; 3]);
    assert_eq!((bn.momentum, bn.eps), (0.1, 1e-5));
    assert_eq!(bn.weight.kind, ParamKind::NormWeight);
}

#[test]
fn same_seed_same_model() {
    let a = common::state_bits(&mut net(&mut Rng::new(3)));
    let b = common::state_bits(&mut net(&mut Rng::new(3)));
    let c = common::state_bits(&mut net(&mut Rng::new(4)));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn bad_layer_settings_are_errors() {
    let mut rng = Rng::new(0);
    assert!(Conv2d::with_options(6, 8, 3, ConvOptions::new().groups(4), &mut rng).is_err());
    assert!(Conv2d::with_options(6, 8, 3, ConvOptions::new().stride(0), &mut rng).is_err());
    assert!(Conv2d::with_options(6, 8, 0, ConvOptions::new(), &mut rng).is_err());
    assert!(Dropout::new(1.0).is_err());
    assert!(Dropout::new(-0.1).is_err());
}

#[test]
fn freezing_by_prefix() {
    let mut n = net(&mut Rng::new(0));
    let (trainable, total) = num_params(&mut n);
    assert_eq!(trainable, total);
    let frozen = set_frozen(&mut n, "backbone", true);
    assert_eq!(frozen, param_names(&mut n).iter().filter(|p| p.starts_with("backbone.")).count());
    let (trainable, _) = num_params(&mut n);
    // The head: conv 8->6 (no bias), BN(6), conv 6->6 (no bias), BN(6), conv 6->5 with bias.
    assert_eq!(trainable, 6 * 8 + 2 * 6 + 6 * 6 + 2 * 6 + 5 * 6 + 5);
    assert_eq!(set_frozen(&mut n, "backbone", true), 0);
    assert_eq!(set_frozen(&mut n, "", false), frozen);
}

#[test]
fn frozen_parameters_get_no_gradient() {
    let mut rng = Rng::new(1);
    let mut m = Mlp::new(4, 8, 2, &mut rng);
    set_frozen(&mut m, "fc1", true);
    let (x, t) = regression_batch(16, 4, 2, 5);
    let mut ctx = Ctx::train(rng.fork());
    let loss = mse(&m.forward(&x, &mut ctx).unwrap(), &t).unwrap();
    let g = ctx.backward(&loss).unwrap();
    assert!(g.get(&m.fc1.weight).is_none() && g.get(&m.fc1.bias).is_none());
    assert!(g.get(&m.fc2.weight).is_some() && g.get(&m.fc2.bias).is_some());
    assert_eq!(g.len(), 2);
}

#[test]
fn eval_context_records_nothing() {
    let mut rng = Rng::new(1);
    let mut m = Mlp::new(4, 8, 2, &mut rng);
    let (x, t) = regression_batch(16, 4, 2, 5);
    let mut ctx = Ctx::eval();
    let y = m.forward(&x, &mut ctx).unwrap();
    assert!(!y.is_tracked());
    assert_eq!(m.calls, 0);
    let loss = mse(&y, &t).unwrap();
    assert!(ctx.backward(&loss).is_err());
}

#[test]
fn shared_parameter_gradients_add_up() {
    // y = sum(x W^T W^T...) with the same layer applied twice: one leaf, both uses' gradients.
    let mut rng = Rng::new(2);
    let mut l = common::Linear::new(3, 3, &mut rng);
    let x = Tensor::randn([2, 3], 1.0, DType::F32, &mut rng);
    let mut ctx = Ctx::train(rng.fork());
    let h = l.forward(&x, &mut ctx).unwrap();
    let y = l.forward(&h, &mut ctx).unwrap().sum_all().unwrap();
    let g = ctx.backward(&y).unwrap();
    // d/db of sum(W(Wx + b) + b) = (column sums of W) + n (per output), times batch 2.
    let w = l.weight.value.to_vec_f64().unwrap();
    let gb = g.get(&l.bias).unwrap().to_vec_f64().unwrap();
    for j in 0..3 {
        let col: f64 = (0..3).map(|i| w[i * 3 + j]).sum();
        assert!((gb[j] - 2.0 * (col + 1.0)).abs() < 1e-5, "{gb:?}");
    }
}

#[test]
fn convert_dtype_converts_params_and_buffers() {
    let mut m = Mlp::new(4, 8, 2, &mut Rng::new(0));
    convert_dtype(&mut m, DType::F64).unwrap();
    for (_, v) in state_dict(&mut m) {
        if let StateValue::Float(t) = v {
            assert_eq!(t.dtype(), DType::F64);
        }
    }
}

#[test]
fn mlp_trains_with_sgd() {
    let mut rng = Rng::new(11);
    let mut m = Mlp::new(8, 32, 3, &mut rng);
    let (x, t) = regression_batch(64, 8, 3, 12);
    let mut opt = Sgd::new(SgdConfig { momentum: 0.9, weight_decay: 1e-4, ..Default::default() }).unwrap();
    let sched = LrSchedule::cosine(0.05, 100).unwrap().with_warmup(5).unwrap();
    let mut losses = vec![];
    for step in 0..100 {
        let mut ctx = Ctx::train(rng.fork());
        let loss = mse(&m.forward(&x, &mut ctx).unwrap(), &t).unwrap();
        losses.push(loss.item().unwrap());
        let mut g = ctx.backward(&loss).unwrap();
        clip_grad_norm(&mut g, 10.0).unwrap();
        assert_eq!(opt.step(&mut m, &g, sched.lr(step)).unwrap(), 4);
    }
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[99] < 0.2 * losses[0], "loss {} -> {}", losses[0], losses[99]);
    assert_eq!(m.calls, 100);
}
