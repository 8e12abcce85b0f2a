//! The projection head: the official code's layer structure (1x1 conv without bias + BN + ReLU,
//! final 1x1 conv with bias, L2 normalisation), PyTorch `nn.Sequential` names, and a train-mode
//! forward checked against a hand computation.

use engine::{DType, Rng, Tensor};
use nn::*;

#[test]
fn names_and_shapes_follow_an_nn_sequential_of_conv_bn_relu() {
    let mut head = ProjectionHead::new(6, 4, 5, &mut Rng::new(0)).unwrap();
    assert_eq!((head.layers(), ProjectionHead::DEFAULT_LAYERS), (3, 3));
    let bn =
        |i: usize| ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"].map(|s| format!("{i}.{s}"));
    let mut want = vec!["0.weight".to_string()];
    want.extend(bn(1));
    want.push("3.weight".into());
    want.extend(bn(4));
    want.extend(["6.weight".to_string(), "6.bias".to_string()]);
    assert_eq!(state_names(&mut head), want);
    let sd = state_dict(&mut head);
    assert_eq!(sd["0.weight"].dims(), [4, 6, 1, 1]);
    assert_eq!(sd["3.weight"].dims(), [4, 4, 1, 1]);
    assert_eq!(sd["6.weight"].dims(), [5, 4, 1, 1]);
    assert_eq!(sd["6.bias"].dims(), [5]);
    assert_eq!(sd["4.running_var"].dims(), [4]);

    // One layer is the final conv alone; two layers have a single hidden block.
    let mut one = ProjectionHead::with_layers(6, 4, 5, 1, &mut Rng::new(0)).unwrap();
    assert_eq!(state_names(&mut one), ["0.weight", "0.bias"]);
    assert_eq!(state_dict(&mut one)["0.weight"].dims(), [5, 6, 1, 1]);
    let mut two = ProjectionHead::with_layers(6, 4, 5, 2, &mut Rng::new(0)).unwrap();
    let names = state_names(&mut two);
    assert_eq!(names.first().map(String::as_str), Some("0.weight"));
    assert_eq!(&names[names.len() - 2..], ["3.weight", "3.bias"]);
    assert!(ProjectionHead::with_layers(6, 4, 5, 0, &mut Rng::new(0)).is_err());
}

/// `y[n, o, p] = sum_c w[o, c] x[n, c, p] (+ b[o])` for `[N, C, P]` data.
fn conv1x1(x: &[f64], n: usize, c: usize, p: usize, w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let o = w.len() / c;
    let mut y = vec![0.0; n * o * p];
    for i in 0..n {
        for oc in 0..o {
            for q in 0..p {
                let s: f64 = (0..c).map(|k| w[oc * c + k] * x[(i * c + k) * p + q]).sum();
                y[(i * o + oc) * p + q] = s + b.map_or(0.0, |b| b[oc]);
            }
        }
    }
    y
}

/// Train-mode batch norm (biased batch variance), then ReLU.
fn bn_relu(x: &[f64], n: usize, c: usize, p: usize, gamma: &[f64], beta: &[f64]) -> Vec<f64> {
    let mut y = x.to_vec();
    for k in 0..c {
        let vals: Vec<f64> =
            (0..n).flat_map(|i| (0..p).map(move |q| (i, q))).map(|(i, q)| x[(i * c + k) * p + q]).collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
        for i in 0..n {
            for q in 0..p {
                let j = (i * c + k) * p + q;
                y[j] = (gamma[k] * (x[j] - mean) / (var + 1e-5).sqrt() + beta[k]).max(0.0);
            }
        }
    }
    y
}

#[test]
fn train_forward_is_conv_bn_relu_conv_bn_relu_conv_then_l2_normalise() {
    let mut rng = Rng::new(3);
    let mut head = ProjectionHead::new(3, 4, 2, &mut rng).unwrap();
    convert_dtype(&mut head, DType::F64).unwrap();
    // Non-trivial BN affine parameters and final bias, so each of them is exercised.
    for_each_param(&mut head, |name, p| {
        if name.starts_with('1') || name.starts_with('4') || name == "6.bias" {
            p.value = Tensor::randn(p.value.shape().clone(), 0.5, DType::F64, &mut Rng::new(name.len() as u64));
        }
    });
    let (n, c, p) = (2, 3, 6);
    let x = Tensor::randn([n, c, 2, 3], 1.0, DType::F64, &mut rng);
    let y = head.forward(&x, &mut Ctx::train(Rng::new(0))).unwrap();
    assert_eq!(y.dims(), [2, 2, 2, 3]);

    let sd = state_dict(&mut head);
    let v = |k: &str| match &sd[k] {
        StateValue::Float(t) => t.to_vec_f64().unwrap(),
        StateValue::Count(_) => panic!("{k} is a count"),
    };
    let h = conv1x1(&x.to_vec_f64().unwrap(), n, c, p, &v("0.weight"), None);
    let h = bn_relu(&h, n, 4, p, &v("1.weight"), &v("1.bias"));
    let h = conv1x1(&h, n, 4, p, &v("3.weight"), None);
    let h = bn_relu(&h, n, 4, p, &v("4.weight"), &v("4.bias"));
    let z = conv1x1(&h, n, 4, p, &v("6.weight"), Some(&v("6.bias")));
    let got = y.to_vec_f64().unwrap();
    for i in 0..n {
        for q in 0..p {
            let norm = (0..2).map(|o| z[(i * 2 + o) * p + q].powi(2)).sum::<f64>().sqrt();
            for o in 0..2 {
                let j = (i * 2 + o) * p + q;
                assert!(
                    (got[j] - z[j] / norm).abs() < 1e-10,
                    "image {i} pixel {q} channel {o}: {} vs {}",
                    got[j],
                    z[j] / norm
                );
            }
        }
    }
    // Training mode counted the batch in both norms.
    assert!(matches!(state_dict(&mut head)["4.num_batches_tracked"], StateValue::Count(1)));
}
