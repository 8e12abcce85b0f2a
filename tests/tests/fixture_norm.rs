//! PyTorch parity for the norm / resize / softmax family: conventions that finite differences
//! cannot see (source-index rules, biased vs unbiased variance, momentum, ignore handling, the
//! normalize clamp). Reference values come from tests/fixtures/gen_norm.py (float64).

use engine::{ops, DType, LabelMap, Rng, Tape, Tensor};

// Generated numbers may happen to look like named constants (e.g. 1/pi); they are data.
#[allow(clippy::approx_constant, clippy::excessive_precision, clippy::unreadable_literal)]
mod fx {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/norm.rs"));
}

fn t(v: &[f64], dims: &[usize]) -> Tensor {
    Tensor::from_f64_vec(v.to_vec(), dims.to_vec(), DType::F64)
}

/// Element-wise closeness with a tight relative + absolute tolerance (f64 throughout).
fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-12 + 1e-10 * w.abs(), "{what}[{i}]: got {g:.15e}, PyTorch {w:.15e}");
    }
}

/// Forward value and input gradient of `f` at `x` for upstream gradient `g`.
fn value_and_grad(f: impl Fn(&Tensor) -> engine::Result<Tensor>, x: &Tensor, g: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let tape = Tape::new();
    let xw = tape.watch(x);
    let y = f(&xw).unwrap();
    let seed = t(g, y.dims());
    let grads = tape.backward_with(&y, &seed).unwrap();
    (y.to_vec_f64().unwrap(), grads.get(&xw).unwrap().to_vec_f64().unwrap())
}

#[test]
fn bilinear_matches_pytorch_both_conventions_up_and_down() {
    #[rustfmt::skip]
    let cases = [
        ("up", fx::BIL_UP_IN_DIMS, fx::BIL_UP_OUT_HW, fx::BIL_UP_X, fx::BIL_UP_G,
         [(false, fx::BIL_UP_HP_Y, fx::BIL_UP_HP_DX), (true, fx::BIL_UP_AC_Y, fx::BIL_UP_AC_DX)]),
        ("down", fx::BIL_DOWN_IN_DIMS, fx::BIL_DOWN_OUT_HW, fx::BIL_DOWN_X, fx::BIL_DOWN_G,
         [(false, fx::BIL_DOWN_HP_Y, fx::BIL_DOWN_HP_DX), (true, fx::BIL_DOWN_AC_Y, fx::BIL_DOWN_AC_DX)]),
        ("mixed", fx::BIL_MIXED_IN_DIMS, fx::BIL_MIXED_OUT_HW, fx::BIL_MIXED_X, fx::BIL_MIXED_G,
         [(false, fx::BIL_MIXED_HP_Y, fx::BIL_MIXED_HP_DX), (true, fx::BIL_MIXED_AC_Y, fx::BIL_MIXED_AC_DX)]),
    ];
    for (name, dims, hw, x, g, conv) in cases {
        for (ac, want_y, want_dx) in conv {
            let (y, dx) = value_and_grad(|x| ops::resize_bilinear(x, [hw[0], hw[1]], ac), &t(x, dims), g);
            assert_close(&format!("bilinear {name} align_corners={ac} y"), &y, want_y);
            assert_close(&format!("bilinear {name} align_corners={ac} dx"), &dx, want_dx);
        }
    }
}

#[test]
fn bilinear_in_f32_matches_pytorch_closely() {
    let x = t(fx::BIL_UP_X, fx::BIL_UP_IN_DIMS).to_dtype(DType::F32).unwrap();
    let y = ops::resize_bilinear(&x, [fx::BIL_UP_OUT_HW[0], fx::BIL_UP_OUT_HW[1]], false).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    for (g, w) in y.to_vec_f64().unwrap().iter().zip(fx::BIL_UP_HP_Y) {
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
}

#[test]
fn nearest_labels_match_pytorch() {
    let labels: Vec<u8> = fx::NEAR_LABELS.iter().map(|&v| v as u8).collect();
    let lm = LabelMap::new(1, 5, 7, labels).unwrap();
    let cases = [
        (fx::NEAR_0_HW, fx::NEAR_0_Y),
        (fx::NEAR_1_HW, fx::NEAR_1_Y),
        (fx::NEAR_2_HW, fx::NEAR_2_Y),
        (fx::NEAR_3_HW, fx::NEAR_3_Y),
        (fx::NEAR_4_HW, fx::NEAR_4_Y),
    ];
    for (hw, want) in cases {
        let out = ops::resize_nearest_labels(&lm, [hw[0], hw[1]]).unwrap();
        assert_eq!((out.n, out.h, out.w), (1, hw[0], hw[1]));
        let want: Vec<u8> = want.iter().map(|&v| v as u8).collect();
        assert_eq!(out.data, want, "nearest to {hw:?}");
    }
}

#[test]
fn batch_norm_running_stats_train_and_eval_match_pytorch() {
    let dims = [2, 3, 2, 3];
    let (w, b) = (t(fx::BN_W, &[3]), t(fx::BN_B, &[3]));
    let mut rm = t(fx::BN_RM0, &[3]);
    let mut rv = t(fx::BN_RV0, &[3]);

    // Step 1 (train): output and gradients of x, weight and bias.
    let tape = Tape::new();
    let (xw, ww, bw) = (tape.watch(&t(fx::BN_X0, &dims)), tape.watch(&w), tape.watch(&b));
    let y = ops::batch_norm2d(&xw, Some(&ww), Some(&bw), &mut rm, &mut rv, true, 0.1, 1e-5).unwrap();
    let grads = tape.backward_with(&y, &t(fx::BN_G0, &dims)).unwrap();
    assert_close("train y", &y.to_vec_f64().unwrap(), fx::BN_TRAIN_Y0);
    assert_close("train dx", &grads.get(&xw).unwrap().to_vec_f64().unwrap(), fx::BN_TRAIN_DX0);
    assert_close("train dw", &grads.get(&ww).unwrap().to_vec_f64().unwrap(), fx::BN_TRAIN_DW0);
    assert_close("train db", &grads.get(&bw).unwrap().to_vec_f64().unwrap(), fx::BN_TRAIN_DB0);

    // Step 2 (train, untracked): only the running statistics matter.
    ops::batch_norm2d(&t(fx::BN_X1, &dims), Some(&w), Some(&b), &mut rm, &mut rv, true, 0.1, 1e-5).unwrap();
    assert_close("running_mean after 2 steps", &rm.to_vec_f64().unwrap(), fx::BN_RM2);
    assert_close("running_var after 2 steps", &rv.to_vec_f64().unwrap(), fx::BN_RV2);

    // Eval with the updated running statistics; they must not change.
    let tape = Tape::new();
    let (xw, ww, bw) = (tape.watch(&t(fx::BN_X2, &dims)), tape.watch(&w), tape.watch(&b));
    let y = ops::batch_norm2d(&xw, Some(&ww), Some(&bw), &mut rm, &mut rv, false, 0.1, 1e-5).unwrap();
    let grads = tape.backward_with(&y, &t(fx::BN_G0, &dims)).unwrap();
    assert_close("eval y", &y.to_vec_f64().unwrap(), fx::BN_EVAL_Y2);
    assert_close("eval dx", &grads.get(&xw).unwrap().to_vec_f64().unwrap(), fx::BN_EVAL_DX2);
    assert_close("eval dw", &grads.get(&ww).unwrap().to_vec_f64().unwrap(), fx::BN_EVAL_DW2);
    assert_close("eval db", &grads.get(&bw).unwrap().to_vec_f64().unwrap(), fx::BN_EVAL_DB2);
    assert_close("running_mean unchanged by eval", &rm.to_vec_f64().unwrap(), fx::BN_RM2);
    assert_close("running_var unchanged by eval", &rv.to_vec_f64().unwrap(), fx::BN_RV2);
}

#[test]
fn cross_entropy_with_ignore_matches_pytorch() {
    let d = fx::CE_DIMS;
    let labels: Vec<u8> = fx::CE_LABELS.iter().map(|&v| v as u8).collect();
    let lm = LabelMap::new(d[0], d[2], d[3], labels).unwrap();
    let (loss, dx) = value_and_grad(|x| ops::cross_entropy(x, &lm, 255), &t(fx::CE_LOGITS, d), &[1.0]);
    assert_close("cross-entropy loss", &loss, fx::CE_LOSS);
    assert_close("cross-entropy dx", &dx, fx::CE_DX);
}

#[test]
fn log_softmax_and_normalize_match_pytorch() {
    let (y, dx) = value_and_grad(ops::log_softmax, &t(fx::LS_X, fx::LS_DIMS), fx::LS_G);
    assert_close("log_softmax y", &y, fx::LS_Y);
    assert_close("log_softmax dx", &dx, fx::LS_DX);
    let (y, dx) = value_and_grad(|x| ops::l2_normalize(x, fx::NZ_EPS), &t(fx::NZ_X, fx::NZ_DIMS), fx::NZ_G);
    assert_close("normalize y", &y, fx::NZ_Y);
    assert_close("normalize dx (with clamped pixels)", &dx, fx::NZ_DX);
}

#[test]
fn dropout_is_seeded_and_scaled() {
    let x = Tensor::ones([4, 8, 16, 16], DType::F64);
    let a = ops::dropout(&x, 0.25, true, &mut Rng::new(7)).unwrap().to_vec_f64().unwrap();
    let b = ops::dropout(&x, 0.25, true, &mut Rng::new(7)).unwrap().to_vec_f64().unwrap();
    assert_eq!(a, b, "same seed, same mask");
    let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
    assert!((kept - 0.75).abs() < 0.03, "kept fraction {kept}");
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-15));
}
