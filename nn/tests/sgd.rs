//! SGD, parameter groups and gradient clipping against hand-computed values.

use engine::{DType, Tensor};
use nn::{clip_grad_norm, grad_norm, Grads, Module, Param, ParamGroups, ParamKind, Sgd, SgdConfig, Visitor};

/// One named parameter of each kind, in f64 so the hand-computed values match to rounding.
struct Two {
    w: Param,
    b: Param,
}

impl Module for Two {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.param("w", &mut self.w);
        v.param("b", &mut self.b);
    }
}

fn two(w: &[f64], b: &[f64]) -> Two {
    Two {
        w: Param::new(Tensor::from_vec(w.to_vec(), [w.len()]).unwrap(), ParamKind::Weight),
        b: Param::new(Tensor::from_vec(b.to_vec(), [b.len()]).unwrap(), ParamKind::Bias),
    }
}

fn grads(m: &Two, gw: &[f64], gb: &[f64]) -> Grads {
    let mut g = Grads::new();
    g.insert(&m.w, Tensor::from_vec(gw.to_vec(), [gw.len()]).unwrap());
    g.insert(&m.b, Tensor::from_vec(gb.to_vec(), [gb.len()]).unwrap());
    g
}

fn vals(p: &Param) -> Vec<f64> {
    p.value.to_vec_f64().unwrap()
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
    }
}

#[test]
fn plain_sgd_is_p_minus_lr_g() {
    let mut m = two(&[1.0, -2.0], &[0.5]);
    let mut opt = Sgd::new(SgdConfig { momentum: 0.0, ..Default::default() }).unwrap();
    let g = grads(&m, &[0.25, -1.0], &[2.0]);
    assert_eq!(opt.step(&mut m, &g, 0.1).unwrap(), 2);
    close(&vals(&m.w), &[1.0 - 0.025, -2.0 + 0.1]);
    close(&vals(&m.b), &[0.5 - 0.2]);
    assert!(opt.momentum_buffers().is_empty());
}

#[test]
fn momentum_and_weight_decay_two_steps() {
    // p = 1, g = 0.5, wd = 0.1, m = 0.9, lr = 0.1
    // step 1: d = 0.5 + 0.1*1 = 0.6;  buf = 0.6;                 p = 1 - 0.06 = 0.94
    // step 2: d = 0.5 + 0.094 = 0.594; buf = 0.9*0.6 + 0.594 = 1.134; p = 0.94 - 0.1134 = 0.8266
    let mut m = two(&[1.0], &[0.0]);
    let mut opt = Sgd::new(SgdConfig { momentum: 0.9, weight_decay: 0.1, ..Default::default() }).unwrap();
    for _ in 0..2 {
        let g = grads(&m, &[0.5], &[0.0]);
        opt.step(&mut m, &g, 0.1).unwrap();
    }
    close(&vals(&m.w), &[0.8266]);
    close(&opt.momentum_buffers()["w"].to_vec_f64().unwrap(), &[1.134]);
    assert_eq!(opt.steps(), 2);
}

#[test]
fn dampening_scales_later_gradients_only() {
    // m = 0.9, dampening 0.5, lr = 1, p = 0, g = 1 each step, no decay.
    // step 1: buf = 1 (no dampening on the first step), p = -1
    // step 2: buf = 0.9 + 0.5 = 1.4, p = -2.4
    let mut m = two(&[0.0], &[0.0]);
    let mut opt = Sgd::new(SgdConfig { momentum: 0.9, dampening: 0.5, ..Default::default() }).unwrap();
    for _ in 0..2 {
        let g = grads(&m, &[1.0], &[0.0]);
        opt.step(&mut m, &g, 1.0).unwrap();
    }
    close(&vals(&m.w), &[-2.4]);
}

#[test]
fn nesterov_two_steps() {
    // p = 1, g = 0.5, wd = 0.1, m = 0.9, lr = 0.1, Nesterov
    // step 1: d = 0.6; buf = 0.6; d = 0.6 + 0.54 = 1.14; p = 1 - 0.114 = 0.886
    // step 2: d = 0.5 + 0.0886 = 0.5886; buf = 0.54 + 0.5886 = 1.1286;
    //         d = 0.5886 + 0.9*1.1286 = 1.60434; p = 0.886 - 0.160434 = 0.725566
    let mut m = two(&[1.0], &[0.0]);
    let cfg = SgdConfig { momentum: 0.9, weight_decay: 0.1, nesterov: true, ..Default::default() };
    let mut opt = Sgd::new(cfg).unwrap();
    let g = grads(&m, &[0.5], &[0.0]);
    opt.step(&mut m, &g, 0.1).unwrap();
    close(&vals(&m.w), &[0.886]);
    let g = grads(&m, &[0.5], &[0.0]);
    opt.step(&mut m, &g, 0.1).unwrap();
    close(&vals(&m.w), &[0.725566]);
}

#[test]
fn f32_parameters_follow_f32_arithmetic() {
    let mut m = Two {
        w: Param::new(Tensor::from_vec(vec![1.0f32], [1]).unwrap(), ParamKind::Weight),
        b: Param::new(Tensor::from_vec(vec![0.0f32], [1]).unwrap(), ParamKind::Bias),
    };
    let mut opt = Sgd::new(SgdConfig { momentum: 0.9, weight_decay: 0.1, ..Default::default() }).unwrap();
    let mut g = Grads::new();
    g.insert(&m.w, Tensor::from_vec(vec![0.5f32], [1]).unwrap());
    opt.step(&mut m, &g, 0.1).unwrap();
    let (lr, wd) = (0.1f32, 0.1f32);
    let expect = 1.0f32 - lr * (0.5f32 + wd * 1.0f32);
    assert_eq!(m.w.value.dtype(), DType::F32);
    assert_eq!(m.w.value.to_vec_f32().unwrap()[0].to_bits(), expect.to_bits());
}

/// A tensor of several parallel chunks (the update splits at 16 Ki elements) follows the scalar
/// formulas bit for bit in every variant, including the chunk edges and a short last chunk.
#[test]
fn chunked_f32_update_matches_the_scalar_formulas_in_every_variant() {
    let n = 3 * (1 << 14) + 123;
    let wave = |i: usize, a: f32| ((i as f32) * a).sin();
    for (momentum, dampening, nesterov) in [(0.0, 0.0, false), (0.9, 0.0, false), (0.9, 0.3, false), (0.9, 0.0, true)] {
        let (lr, wd) = (0.05f32, 1e-3f32);
        let w0: Vec<f32> = (0..n).map(|i| wave(i, 0.37)).collect();
        let mut m = Two {
            w: Param::new(Tensor::from_vec(w0.clone(), [n]).unwrap(), ParamKind::Weight),
            b: Param::new(Tensor::from_vec(vec![0.0f32], [1]).unwrap(), ParamKind::Bias),
        };
        let cfg = SgdConfig { momentum, dampening, nesterov, weight_decay: wd as f64 };
        let mut opt = Sgd::new(cfg).unwrap();
        let (mut p, mut buf) = (w0, vec![0.0f32; n]);
        let (mf, omd) = (momentum as f32, 1.0 - dampening as f32);
        for step in 0..3 {
            let gv: Vec<f32> = (0..n).map(|i| wave(i + step, 0.11)).collect();
            let mut g = Grads::new();
            g.insert(&m.w, Tensor::from_vec(gv.clone(), [n]).unwrap());
            opt.step(&mut m, &g, lr as f64).unwrap();
            for i in 0..n {
                let mut d = gv[i] + wd * p[i];
                if momentum != 0.0 {
                    buf[i] = if step == 0 { d } else { mf * buf[i] + omd * d };
                    d = if nesterov { d + mf * buf[i] } else { buf[i] };
                }
                p[i] -= lr * d;
            }
            let got = m.w.value.to_vec_f32().unwrap();
            let bad = (0..n).find(|&i| got[i].to_bits() != p[i].to_bits());
            assert_eq!(bad, None, "momentum {momentum} dampening {dampening} nesterov {nesterov}, step {step}");
        }
    }
}

#[test]
fn groups_set_lr_multiplier_and_skip_decay_on_biases() {
    let mut m = two(&[1.0], &[1.0]);
    let groups = ParamGroups { lr_mult: vec![("b".into(), 0.5)], no_decay_norm_and_bias: true };
    let mut opt =
        Sgd::new(SgdConfig { momentum: 0.0, weight_decay: 0.1, ..Default::default() }).unwrap().with_groups(groups);
    let g = grads(&m, &[1.0], &[1.0]);
    opt.step(&mut m, &g, 0.1).unwrap();
    // w: decayed, full lr: 1 - 0.1 * (1 + 0.1) = 0.89
    // b: no decay, half lr: 1 - 0.05 * 1 = 0.95
    close(&vals(&m.w), &[0.89]);
    close(&vals(&m.b), &[0.95]);
}

#[test]
fn group_prefixes_match_whole_name_components() {
    let g = ParamGroups { lr_mult: vec![("backbone".into(), 0.1)], no_decay_norm_and_bias: false };
    assert_eq!(g.settings("backbone.layer1.0.conv1.weight", ParamKind::Weight, 1e-4), (0.1, 1e-4));
    assert_eq!(g.settings("backbone2.weight", ParamKind::Weight, 1e-4), (1.0, 1e-4));
    let g = ParamGroups { lr_mult: vec![], no_decay_norm_and_bias: true };
    assert_eq!(g.settings("bn1.weight", ParamKind::NormWeight, 1e-4), (1.0, 0.0));
    assert_eq!(g.settings("conv1.weight", ParamKind::Weight, 1e-4), (1.0, 1e-4));
}

#[test]
fn frozen_and_gradless_parameters_are_left_alone() {
    let mut m = two(&[1.0], &[1.0]);
    m.b.frozen = true;
    let mut opt = Sgd::new(SgdConfig::default()).unwrap();
    let g = grads(&m, &[1.0], &[1.0]);
    assert_eq!(opt.step(&mut m, &g, 0.1).unwrap(), 1);
    close(&vals(&m.b), &[1.0]);
    assert!(!opt.momentum_buffers().contains_key("b"));
    m.b.frozen = false;
    let mut only_w = Grads::new();
    only_w.insert(&m.w, Tensor::from_vec(vec![1.0f64], [1]).unwrap());
    assert_eq!(opt.step(&mut m, &only_w, 0.1).unwrap(), 1);
    close(&vals(&m.b), &[1.0]);
}

#[test]
fn invalid_settings_are_errors() {
    assert!(Sgd::new(SgdConfig { momentum: -0.1, ..Default::default() }).is_err());
    assert!(Sgd::new(SgdConfig { weight_decay: -1.0, ..Default::default() }).is_err());
    assert!(Sgd::new(SgdConfig { momentum: 0.0, nesterov: true, ..Default::default() }).is_err());
    assert!(Sgd::new(SgdConfig { momentum: 0.9, dampening: 0.1, nesterov: true, ..Default::default() }).is_err());
    let mut m = two(&[1.0], &[1.0]);
    let mut opt = Sgd::new(SgdConfig::default()).unwrap();
    let g = grads(&m, &[1.0], &[1.0]);
    assert!(opt.step(&mut m, &g, f64::NAN).is_err());
    assert!(opt.step(&mut m, &g, -1.0).is_err());
    let bad = grads(&m, &[1.0, 2.0], &[1.0]);
    let e = opt.step(&mut m, &bad, 0.1).unwrap_err().to_string();
    assert!(e.contains("gradient of w"), "{e}");
}

#[test]
fn clip_grad_norm_scales_to_max_norm() {
    // norm = sqrt(3^2 + 4^2 + 12^2) = 13
    let m = two(&[0.0, 0.0], &[0.0]);
    let mut g = grads(&m, &[3.0, 4.0], &[12.0]);
    let n = clip_grad_norm(&mut g, 6.5).unwrap();
    assert!((n - 13.0).abs() < 1e-12);
    let c = 6.5 / (13.0 + 1e-6);
    close(&g.get(&m.w).unwrap().to_vec_f64().unwrap(), &[3.0 * c, 4.0 * c]);
    close(&g.get(&m.b).unwrap().to_vec_f64().unwrap(), &[12.0 * c]);
    assert!((grad_norm(&g).unwrap() - 6.5).abs() < 1e-6);
    // Below the limit: untouched.
    let mut g = grads(&m, &[3.0, 4.0], &[12.0]);
    assert!((clip_grad_norm(&mut g, 20.0).unwrap() - 13.0).abs() < 1e-12);
    close(&g.get(&m.b).unwrap().to_vec_f64().unwrap(), &[12.0]);
    assert!(clip_grad_norm(&mut g, 0.0).is_err());
}

mod torch_ref {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sgd.rs"));
}

/// Four steps with changing learning rates, against `torch.optim.SGD` (f64, fixtures from
/// tests/fixtures/gen_sgd.py): parameters and momentum buffers after every step.
#[test]
fn matches_torch_sgd_trajectories() {
    use torch_ref::*;
    let cases = [
        ("plain", SGD_PLAIN_HYPER, SGD_PLAIN_PARAMS, SGD_PLAIN_BUFS),
        ("momentum + wd", SGD_MOMENTUM_WD_HYPER, SGD_MOMENTUM_WD_PARAMS, SGD_MOMENTUM_WD_BUFS),
        ("dampening", SGD_DAMPENING_HYPER, SGD_DAMPENING_PARAMS, SGD_DAMPENING_BUFS),
        ("nesterov", SGD_NESTEROV_HYPER, SGD_NESTEROV_PARAMS, SGD_NESTEROV_BUFS),
    ];
    let n = SGD_P0.len();
    for (name, [momentum, dampening, nesterov, weight_decay], params, bufs) in cases {
        let mut m = two(SGD_P0, &[0.0]);
        let cfg = SgdConfig { momentum, dampening, nesterov: nesterov != 0.0, weight_decay };
        let mut opt = Sgd::new(cfg).unwrap();
        for (s, &lr) in SGD_LRS.iter().enumerate() {
            let g = grads(&m, &SGD_GRADS[s * n..(s + 1) * n], &[0.0]);
            opt.step(&mut m, &g, lr).unwrap();
            let p = vals(&m.w);
            let want = &params[s * n..(s + 1) * n];
            for (a, b) in p.iter().zip(want) {
                assert!((a - b).abs() < 1e-14, "{name} step {s}: {p:?} vs torch {want:?}");
            }
            if momentum != 0.0 {
                let buf = opt.momentum_buffers()["w"].to_vec_f64().unwrap();
                let want = &bufs[s * n..(s + 1) * n];
                for (a, b) in buf.iter().zip(want) {
                    assert!((a - b).abs() < 1e-14, "{name} step {s} buffer: {buf:?} vs torch {want:?}");
                }
            }
        }
    }
}
