//! Tests of the model: shapes at both output strides, torchvision/VainF state names and shapes,
//! parameter counts against torchvision's published figures, gradients reaching every parameter,
//! determinism of the initialisation.

use super::*;
use engine::{DType, Rng, Tensor};
use nn::{Ctx, Layer, Module, Slot};
use std::collections::BTreeMap;

/// `name -> dims` of every parameter and float buffer; counters as `[]` (PyTorch's int64 scalar).
fn state_shapes<M: Module>(m: &mut M) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    nn::visit_all(m, |name, slot| {
        let dims = match slot {
            Slot::Param(p) => p.value.dims().to_vec(),
            Slot::Buffer(b) => b.dims().to_vec(),
            Slot::Count(_) => vec![],
        };
        assert!(out.insert(name.to_string(), dims).is_none(), "duplicate state name {name}");
    });
    out
}

/// Every state value flattened, in visit order (for determinism checks).
fn state_values<M: Module>(m: &mut M) -> Vec<f64> {
    let mut out = Vec::new();
    nn::visit_all(m, |_, slot| match slot {
        Slot::Param(p) => out.extend(p.value.to_vec_f64().unwrap()),
        Slot::Buffer(b) => out.extend(b.to_vec_f64().unwrap()),
        Slot::Count(c) => out.push(*c as f64),
    });
    out
}

fn tiny_spec(os: usize) -> ModelSpec {
    ModelSpec { width: 0.25, output_stride: os, ..ModelSpec::new(Backbone::Resnet18, 3) }
}

#[test]
fn make_divisible_rounds_like_mobilenet() {
    assert_eq!(make_divisible(16.0, 8, 8), 16);
    assert_eq!(make_divisible(12.0, 8, 8), 16); // 12 rounds half up
    assert_eq!(make_divisible(17.7, 8, 8), 16); // rounds down when that loses < 10%
    assert_eq!(make_divisible(11.9, 8, 8), 16); // 8 would lose more than 10%
    assert_eq!(make_divisible(4.0, 8, 8), 8); // the floor of 8 channels
    assert_eq!(make_divisible(10.0, 8, 8), 16); // 8 would lose more than 10%
    assert_eq!(make_divisible(614.4, 8, 8), 616);
    let s = tiny_spec(16);
    assert_eq!(s.stage_planes(), [16, 32, 64, 128]);
    assert_eq!((s.head_width(), s.low_level_width()), (64, 16));
    let full = ModelSpec::new(Backbone::Resnet50, 21);
    assert_eq!(
        (full.head_width(), full.low_level_width(), full.backbone_out(), full.low_level_in()),
        (256, 48, 2048, 256)
    );
}

#[test]
fn spec_rejects_bad_settings_and_picks_rates_by_stride() {
    assert!("resnet152".parse::<Backbone>().is_err());
    assert_eq!("ResNet101".parse::<Backbone>().unwrap(), Backbone::Resnet101);
    let ok = ModelSpec::new(Backbone::Resnet18, 2);
    for bad in [
        ModelSpec { output_stride: 32, ..ok.clone() },
        ModelSpec { width: 0.0, ..ok.clone() },
        ModelSpec { width: f64::NAN, ..ok.clone() },
        ModelSpec { classes: 0, ..ok.clone() },
        ModelSpec { dropout: 1.0, ..ok.clone() },
        ModelSpec { aspp_rates: Some([1, 0, 2]), ..ok.clone() },
        ModelSpec { head_channels: 0, ..ok.clone() },
    ] {
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.starts_with("model: invalid setting"), "{err}");
        assert!(DeepLabV3Plus::new(&bad, &mut Rng::new(0)).is_err());
    }
    assert_eq!(ok.rates(), [6, 12, 18]);
    assert_eq!(ModelSpec { output_stride: 8, ..ok.clone() }.rates(), [12, 24, 36]);
    assert_eq!(ModelSpec { aspp_rates: Some([1, 2, 3]), ..ok.clone() }.rates(), [1, 2, 3]);
    let s = ModelSpec::from_config("resnet34", 0.5, 8, 128, Some([2, 4, 6]), 5).unwrap();
    assert_eq!(
        (s.backbone, s.width, s.output_stride, s.head_channels, s.rates(), s.classes),
        (Backbone::Resnet34, 0.5, 8, 128, [2, 4, 6], 5)
    );
    assert!(ModelSpec::from_config("vgg16", 1.0, 16, 256, None, 5).is_err());
}

#[test]
fn dilation_replaces_stride_like_torchvision() {
    // torchvision _make_layer: the first block of a dilated stage keeps the previous dilation.
    let mut rng = Rng::new(0);
    let layout = |net: &ResNet| -> Vec<Vec<(usize, usize)>> {
        net.layers.iter().map(|l| l.blocks.iter().map(|b| (b.stride, b.dilation)).collect()).collect()
    };
    let spec = ModelSpec { width: 0.125, ..ModelSpec::new(Backbone::Resnet50, 2) };
    let os16 = ResNet::new(&spec, &mut rng).unwrap();
    assert_eq!(
        layout(&os16),
        vec![
            vec![(1, 1); 3],
            [vec![(2, 1)], vec![(1, 1); 3]].concat(),
            [vec![(2, 1)], vec![(1, 1); 5]].concat(),
            vec![(1, 1), (1, 2), (1, 2)]
        ]
    );
    let os8 = ResNet::new(&ModelSpec { output_stride: 8, ..spec.clone() }, &mut rng).unwrap();
    assert_eq!(
        layout(&os8),
        vec![
            vec![(1, 1); 3],
            [vec![(2, 1)], vec![(1, 1); 3]].concat(),
            [vec![(1, 1)], vec![(1, 2); 5]].concat(),
            vec![(1, 2), (1, 4), (1, 4)]
        ]
    );
    // Basic blocks follow the same rule (torchvision refuses dilated basic blocks; we allow them).
    let r18 = ModelSpec { backbone: Backbone::Resnet18, output_stride: 8, ..spec };
    let os8 = ResNet::new(&r18, &mut rng).unwrap();
    assert_eq!(layout(&os8), vec![vec![(1, 1); 2], vec![(2, 1), (1, 1)], vec![(1, 1), (1, 2)], vec![(1, 2), (1, 4)]]);
}

#[test]
fn shapes_at_output_stride_16_and_8() {
    for os in [16, 8] {
        let spec = tiny_spec(os);
        let mut rng = Rng::new(1);
        let mut net = DeepLabV3Plus::new(&spec, &mut rng).unwrap();
        let x = Tensor::randn([2, 3, 64, 64], 1.0, DType::F32, &mut rng);
        for mut ctx in [Ctx::eval(), Ctx::train(Rng::new(2))] {
            let f = net.backbone.forward_features(&x, &mut ctx).unwrap();
            assert_eq!(f.low_level.dims(), [2, 16, 16, 16], "os {os}");
            assert_eq!(f.out.dims(), [2, 128, 64 / os, 64 / os], "os {os}");
            let feats = net.features(&x, &mut ctx).unwrap();
            assert_eq!(feats.dims(), [2, 64, 16, 16]);
            assert_eq!(net.classify(&feats, &mut ctx).unwrap().dims(), [2, 3, 16, 16]);
            assert_eq!(net.forward(&x, &mut ctx).unwrap().dims(), [2, 3, 64, 64]);
        }
    }
}

#[test]
fn output_stride_holds_for_sizes_not_divisible_by_it() {
    // Every stride-2 layer maps H to ceil(H/2); dilation keeps sizes.
    let mut rng = Rng::new(3);
    for (os, hw, expect_out) in [(8, [50, 37], [7, 5]), (16, [50, 37], [4, 3])] {
        let spec = ModelSpec { width: 0.125, output_stride: os, ..ModelSpec::new(Backbone::Resnet18, 2) };
        let mut net = DeepLabV3Plus::new(&spec, &mut rng).unwrap();
        let x = Tensor::randn([1, 3, hw[0], hw[1]], 1.0, DType::F32, &mut rng);
        let mut ctx = Ctx::eval(); // a batch of one is fine in eval mode
        let f = net.backbone.forward_features(&x, &mut ctx).unwrap();
        assert_eq!(&f.out.dims()[2..], expect_out);
        assert_eq!(&f.low_level.dims()[2..], [13, 10]);
        assert_eq!(net.forward(&x, &mut ctx).unwrap().dims(), [1, 2, 50, 37]);
    }
}

#[test]
fn resnet50_state_names_and_shapes_match_torchvision_and_vainf() {
    let spec = ModelSpec::new(Backbone::Resnet50, 21);
    let mut net = DeepLabV3Plus::new(&spec, &mut Rng::new(0)).unwrap();
    let s = state_shapes(&mut net);
    let expect: &[(&str, &[usize])] = &[
        ("backbone.conv1.weight", &[64, 3, 7, 7]),
        ("backbone.bn1.weight", &[64]),
        ("backbone.bn1.bias", &[64]),
        ("backbone.bn1.running_mean", &[64]),
        ("backbone.bn1.running_var", &[64]),
        ("backbone.bn1.num_batches_tracked", &[]),
        ("backbone.layer1.0.conv1.weight", &[64, 64, 1, 1]),
        ("backbone.layer1.0.conv2.weight", &[64, 64, 3, 3]),
        ("backbone.layer1.0.conv3.weight", &[256, 64, 1, 1]),
        ("backbone.layer1.0.bn3.running_var", &[256]),
        ("backbone.layer1.0.downsample.0.weight", &[256, 64, 1, 1]),
        ("backbone.layer1.0.downsample.1.weight", &[256]),
        ("backbone.layer1.0.downsample.1.num_batches_tracked", &[]),
        ("backbone.layer2.0.conv2.weight", &[128, 128, 3, 3]),
        ("backbone.layer2.0.downsample.0.weight", &[512, 256, 1, 1]),
        ("backbone.layer3.5.conv3.weight", &[1024, 256, 1, 1]),
        ("backbone.layer4.0.downsample.0.weight", &[2048, 1024, 1, 1]),
        ("backbone.layer4.2.conv3.weight", &[2048, 512, 1, 1]),
        ("backbone.layer4.2.bn3.bias", &[2048]),
        ("classifier.project.0.weight", &[48, 256, 1, 1]),
        ("classifier.project.1.running_mean", &[48]),
        ("classifier.aspp.convs.0.0.weight", &[256, 2048, 1, 1]),
        ("classifier.aspp.convs.0.1.weight", &[256]),
        ("classifier.aspp.convs.1.0.weight", &[256, 2048, 3, 3]),
        ("classifier.aspp.convs.2.0.weight", &[256, 2048, 3, 3]),
        ("classifier.aspp.convs.3.0.weight", &[256, 2048, 3, 3]),
        ("classifier.aspp.convs.3.1.num_batches_tracked", &[]),
        ("classifier.aspp.convs.4.1.weight", &[256, 2048, 1, 1]),
        ("classifier.aspp.convs.4.2.running_var", &[256]),
        ("classifier.aspp.project.0.weight", &[256, 1280, 1, 1]),
        ("classifier.aspp.project.1.bias", &[256]),
        ("classifier.classifier.0.weight", &[256, 304, 3, 3]),
        ("classifier.classifier.1.weight", &[256]),
        ("classifier.classifier.3.weight", &[256, 256, 3, 3]),
        ("classifier.classifier.4.running_mean", &[256]),
        ("classifier.classifier.6.weight", &[21, 256, 1, 1]),
        ("classifier.classifier.6.bias", &[21]),
    ];
    for (name, dims) in expect {
        assert_eq!(s.get(*name).map(Vec::as_slice), Some(*dims), "{name}");
    }
    // Nothing torchvision/VainF would not have: no fc, no biases on BN-followed convs, and the
    // pool branch has no index 0 (the pool itself).
    for name in s.keys() {
        assert!(!name.starts_with("backbone.fc") && !name.starts_with("classifier.aspp.convs.4.0"), "{name}");
        if name.ends_with(".bias") && !name.contains("bn") {
            // Only BN biases (downsample.1, .1/.2/.4 BNs) and the classifier's bias exist.
            let owner = &name[..name.len() - 5];
            assert!(s.contains_key(&format!("{owner}.running_mean")) || owner == "classifier.classifier.6", "{name}");
        }
    }
    // torchvision resnet50: 53 convs + 53 BNs (5 entries each) = 318 keys without fc.
    assert_eq!(s.keys().filter(|k| k.starts_with("backbone.")).count(), 318);
    assert!(!s.keys().any(|k| k.starts_with("projection.")));
}

#[test]
fn backbone_parameter_counts_match_torchvision() {
    // torchvision's published parameter counts (model docs, `num_params`) minus the 1000-way fc
    // (512*1000+1000 = 513_000 for 18/34, 2048*1000+1000 = 2_049_000 for 50/101).
    for (bb, total_with_fc, fc) in [
        (Backbone::Resnet18, 11_689_512, 513_000),
        (Backbone::Resnet34, 21_797_672, 513_000),
        (Backbone::Resnet50, 25_557_032, 2_049_000),
        (Backbone::Resnet101, 44_549_160, 2_049_000),
    ] {
        let mut net = ResNet::new(&ModelSpec::new(bb, 2), &mut Rng::new(0)).unwrap();
        assert_eq!(nn::num_params(&mut net), (total_with_fc - fc, total_with_fc - fc), "{bb}");
    }
}

#[test]
fn pretraining_and_segmentation_models_differ_only_in_their_ends() {
    let spec = tiny_spec(16);
    let mut seg = DeepLabV3Plus::new(&spec, &mut Rng::new(0)).unwrap();
    let mut pre = DeepLabV3Plus::for_pretraining(&spec, &mut Rng::new(0)).unwrap();
    let (a, b) = (state_shapes(&mut seg), state_shapes(&mut pre));
    let only_seg: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let only_pre: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    assert_eq!(only_seg, ["classifier.classifier.6.bias", "classifier.classifier.6.weight"]);
    // The official head: two hidden 1x1 conv (no bias) + BN (+ ReLU) layers, a final 1x1 conv.
    let bn = |i: usize| {
        ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"]
            .map(move |k| format!("projection.{i}.{k}"))
    };
    let mut want: Vec<String> = vec!["projection.0.weight".into()];
    want.extend(bn(1));
    want.push("projection.3.weight".into());
    want.extend(bn(4));
    want.extend(["projection.6.bias".into(), "projection.6.weight".into()]);
    assert_eq!(only_pre, want);
    assert_eq!(b["projection.0.weight"], [64, 64, 1, 1]);
    assert_eq!(b["projection.4.running_var"], [64]);
    assert_eq!(b["projection.6.weight"], [64, 64, 1, 1]);
    let two = ModelSpec { projection_layers: 2, ..spec.clone() };
    let mut pre2 = DeepLabV3Plus::for_pretraining(&two, &mut Rng::new(0)).unwrap();
    let s2 = state_shapes(&mut pre2);
    assert!(s2.contains_key("projection.3.bias") && !s2.contains_key("projection.4.weight"));
    assert!(
        DeepLabV3Plus::for_pretraining(&ModelSpec { projection_layers: 0, ..spec.clone() }, &mut Rng::new(0)).is_err()
    );
    // Without the ends, classify/project refuse clearly.
    let x = Tensor::randn([2, 3, 32, 32], 1.0, DType::F32, &mut Rng::new(1));
    let mut ctx = Ctx::eval();
    let f = pre.features(&x, &mut ctx).unwrap();
    assert!(pre.classify(&f, &mut ctx).unwrap_err().to_string().contains("no classifier"));
    assert!(seg.project(&f, &mut ctx).unwrap_err().to_string().contains("no projection head"));
    // Embeddings have unit length at every pixel.
    let e = pre.project(&f, &mut ctx).unwrap();
    let (c, hw) = (e.dim(1), e.dim(2) * e.dim(3));
    let v = e.to_vec_f64().unwrap();
    for n in 0..2 {
        for p in 0..hw {
            let norm: f64 = (0..c).map(|k| v[(n * c + k) * hw + p].powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "pixel {p}: norm {norm}");
        }
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let mut net = DeepLabV3Plus::new(&tiny_spec(16), &mut Rng::new(0)).unwrap();
    let mut ctx = Ctx::eval();
    let err = net.forward(&Tensor::zeros([1, 4, 32, 32], DType::F32), &mut ctx).unwrap_err().to_string();
    assert!(err.contains("[N, 3, H, W]") && err.contains("4"), "{err}");
    assert!(net.forward(&Tensor::zeros([3, 32, 32], DType::F32), &mut ctx).is_err());
    assert!(net.classify(&Tensor::zeros([1, 7, 8, 8], DType::F32), &mut ctx).is_err());
}

#[test]
fn same_seed_same_init_other_seed_other_init() {
    let spec = tiny_spec(8);
    let a = state_values(&mut DeepLabV3Plus::for_pretraining(&spec, &mut Rng::new(11)).unwrap());
    let b = state_values(&mut DeepLabV3Plus::for_pretraining(&spec, &mut Rng::new(11)).unwrap());
    let c = state_values(&mut DeepLabV3Plus::for_pretraining(&spec, &mut Rng::new(12)).unwrap());
    assert_eq!(a, b);
    assert_eq!(a.len(), c.len());
    assert_ne!(a, c);
}

#[test]
fn initialisation_follows_torchvision_and_vainf() {
    // Backbone convs: kaiming fan_out (std sqrt(2 / (out k k))); head convs: kaiming fan_in.
    let spec = ModelSpec::new(Backbone::Resnet18, 4);
    let mut net = DeepLabV3Plus::new(&spec, &mut Rng::new(5)).unwrap();
    let mut stds = BTreeMap::new();
    nn::for_each_param(&mut net, |name, p| {
        let v = p.value.to_vec_f64().unwrap();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        stds.insert(name.to_string(), (mean, std));
    });
    let check = |name: &str, want: f64| {
        let (_, std) = stds[name];
        assert!((std / want - 1.0).abs() < 0.05, "{name}: std {std}, want {want}");
    };
    check("backbone.layer4.1.conv2.weight", (2.0f64 / (512.0 * 9.0)).sqrt());
    check("backbone.layer3.0.downsample.0.weight", (2.0f64 / 256.0).sqrt());
    check("classifier.aspp.project.0.weight", (2.0f64 / 1280.0).sqrt());
    check("classifier.classifier.0.weight", (2.0f64 / (304.0 * 9.0)).sqrt());
    assert_eq!(stds["backbone.bn1.weight"], (1.0, 0.0));
    let bias = net.head.classifier.as_ref().unwrap().bias.as_ref().unwrap().value.to_vec_f64().unwrap();
    assert!(bias.iter().all(|b| b.abs() <= 1.0 / 16.0) && bias.iter().any(|b| *b != 0.0));
}

#[test]
fn forward_backward_reaches_every_trainable_parameter() {
    let spec = ModelSpec { aspp_rates: Some([1, 2, 3]), width: 0.125, ..ModelSpec::new(Backbone::Resnet18, 3) };
    let mut rng = Rng::new(9);
    let mut net = DeepLabV3Plus::new(&spec, &mut rng).unwrap();
    net.add_projection(&mut rng).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], 1.0, DType::F32, &mut rng);
    let r_logits = Tensor::randn([2, 3, 32, 32], 1.0, DType::F32, &mut rng);
    let r_embed = Tensor::randn([2, 32, 8, 8], 1.0, DType::F32, &mut rng);
    for freeze_backbone in [false, true] {
        nn::set_frozen(&mut net, "backbone", freeze_backbone);
        let mut ctx = Ctx::train(Rng::new(4));
        // Both ends at once: the classifier on the upsampled logits, the projection on the features.
        let feats = net.features(&x, &mut ctx).unwrap();
        let logits = DeepLabV3Plus::upsample(&net.classify(&feats, &mut ctx).unwrap(), [32, 32]).unwrap();
        let emb = net.project(&feats, &mut ctx).unwrap();
        let loss = logits
            .mul(&r_logits)
            .unwrap()
            .sum_all()
            .unwrap()
            .add(&emb.mul(&r_embed).unwrap().sum_all().unwrap())
            .unwrap();
        let grads = ctx.backward(&loss).unwrap();
        let mut with_grad = 0;
        nn::for_each_param(&mut net, |name, p| {
            let g = grads.get(p);
            if p.frozen {
                assert!(g.is_none(), "{name} is frozen but got a gradient");
                return;
            }
            let g = g.unwrap_or_else(|| panic!("{name}: no gradient")).to_vec_f64().unwrap();
            assert_eq!(g.len(), p.value.numel(), "{name}");
            assert!(
                g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0),
                "{name}: gradient all zero or not finite"
            );
            with_grad += 1;
        });
        assert_eq!(with_grad, grads.len());
        let (trainable, total) = nn::num_params(&mut net);
        assert_eq!(trainable < total, freeze_backbone);
    }
}

#[test]
fn batch_norm_statistics_update_only_in_training() {
    let mut net = DeepLabV3Plus::new(&tiny_spec(16), &mut Rng::new(0)).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], 1.0, DType::F32, &mut Rng::new(1));
    net.forward(&x, &mut Ctx::eval()).unwrap();
    let before = state_values(&mut net);
    net.forward(&x, &mut Ctx::eval()).unwrap();
    assert_eq!(state_values(&mut net), before, "eval changed the state");
    net.forward(&x, &mut Ctx::train(Rng::new(0))).unwrap();
    let mut counts = Vec::new();
    nn::visit_all(&mut net, |name, slot| {
        if let Slot::Count(c) = slot {
            counts.push((name.to_string(), *c));
        }
    });
    assert!(counts.iter().all(|(_, c)| *c == 1), "{counts:?}");
    assert_ne!(state_values(&mut net), before);
}
