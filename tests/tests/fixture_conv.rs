//! conv2d and max_pool2d against PyTorch (tests/fixtures/gen_conv.py): padding, dilation, stride,
//! groups and depthwise conventions, forward and gradients, in f64.

use engine::ops::{self, Conv2dParams};
use engine::{DType, Tape, Tensor};

mod fx {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/conv.rs"));
}

fn t(v: &[f64], dims: &[usize]) -> Tensor {
    Tensor::from_f64_vec(v.to_vec(), dims.to_vec(), DType::F64)
}

fn assert_close(what: &str, got: &Tensor, want: &[f64]) {
    let g = got.to_vec_f64().unwrap();
    assert_eq!(g.len(), want.len(), "{what}: {} values, PyTorch has {}", g.len(), want.len());
    for (i, (a, b)) in g.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-10, "{what}[{i}]: {a} vs PyTorch {b}");
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_case(
    name: &str,
    xs: (&[f64], [usize; 4]),
    ws: (&[f64], [usize; 4]),
    b: &[f64],
    p: Conv2dParams,
    g: &[f64],
    y_dims: [usize; 4],
    want: [&[f64]; 4],
) {
    let tape = Tape::new();
    let x = tape.watch(&t(xs.0, &xs.1));
    let w = tape.watch(&t(ws.0, &ws.1));
    let bias = tape.watch(&t(b, &[b.len()]));
    let y = ops::conv2d(&x, &w, Some(&bias), p).unwrap();
    assert_eq!(y.dims(), y_dims, "{name}: output shape");
    assert_close(&format!("{name} y"), &y, want[0]);
    let grads = tape.backward_with(&y, &t(g, &y_dims)).unwrap();
    assert_close(&format!("{name} dx"), grads.get(&x).unwrap(), want[1]);
    assert_close(&format!("{name} dw"), grads.get(&w).unwrap(), want[2]);
    assert_close(&format!("{name} db"), grads.get(&bias).unwrap(), want[3]);
}

#[test]
fn conv2d_padding_dilation_stride_groups_match_pytorch() {
    let p = Conv2dParams { stride: [2, 1], padding: [2, 1], dilation: [2, 2], groups: 2 };
    conv_case(
        "CONV_A",
        (fx::CONV_A_X, [1, 4, 6, 5]),
        (fx::CONV_A_W, [4, 2, 3, 2]),
        fx::CONV_A_B,
        p,
        fx::CONV_A_G,
        [1, 4, 3, 5],
        [fx::CONV_A_Y, fx::CONV_A_DX, fx::CONV_A_DW, fx::CONV_A_DB],
    );
}

#[test]
fn conv2d_depthwise_dilated_matches_pytorch() {
    let p = Conv2dParams { stride: [1, 1], padding: [2, 2], dilation: [2, 2], groups: 3 };
    conv_case(
        "CONV_DW",
        (fx::CONV_DW_X, [1, 3, 5, 5]),
        (fx::CONV_DW_W, [3, 1, 3, 3]),
        fx::CONV_DW_B,
        p,
        fx::CONV_DW_G,
        [1, 3, 5, 5],
        [fx::CONV_DW_Y, fx::CONV_DW_DX, fx::CONV_DW_DW, fx::CONV_DW_DB],
    );
}

#[test]
fn max_pool2d_padding_and_stride_match_pytorch() {
    let tape = Tape::new();
    let x = tape.watch(&t(fx::POOL_X, &[1, 2, 5, 5]));
    let y = ops::max_pool2d(&x, [3, 3], [2, 2], [1, 1]).unwrap();
    assert_eq!(y.dims(), [1, 2, 3, 3]);
    assert_close("pool y", &y, fx::POOL_Y);
    let grads = tape.backward_with(&y, &t(fx::POOL_G, &[1, 2, 3, 3])).unwrap();
    assert_close("pool dx", grads.get(&x).unwrap(), fx::POOL_DX);
}
