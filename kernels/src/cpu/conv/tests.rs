//! Unit tests of the tiled kernels against the direct definition.

use super::*;

/// Every live term of the direct definition: `f(y index, w index, x index)` for each output
/// element, input channel and tap that lands inside the input (padding taps contribute nothing).
fn for_each_term(g: &Conv2dGeom, mut f: impl FnMut(usize, usize, usize)) {
    let (oh, ow) = g.out_hw().unwrap();
    let (cig, cog) = (g.cig(), g.cog());
    for n in 0..g.n {
        for o in 0..g.c_out {
            let gi = o / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((n * g.c_out + o) * oh + oy) * ow + ox;
                    for c in 0..cig {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.padding[0] as isize;
                                let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.c_in + gi * cig + c) * g.h + iy as usize) * g.w + ix as usize;
                                f(yi, ((o * cig + c) * g.kh + ky) * g.kw + kx, xi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Direct definition of `y`, for checking the tiled kernels.
fn naive(g: &Conv2dGeom, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let (oh, ow) = g.out_hw().unwrap();
    let plane = oh * ow;
    let mut y: Vec<f64> = (0..g.n * g.c_out * plane).map(|i| b.map_or(0.0, |b| b[i / plane % g.c_out])).collect();
    for_each_term(g, |yi, wi, xi| y[yi] += w[wi] * x[xi]);
    y
}

fn vals(n: usize, seed: usize) -> Vec<f64> {
    (0..n).map(|i| (((i * 7919 + seed * 104729) % 23) as f64 - 11.0) / 8.0).collect()
}

#[test]
fn forward_matches_naive_on_padded_dilated_strided_grouped_cases() {
    let cases = [
        (2, 4, 9, 8, 6, 3, 3, [1, 1], [1, 1], [1, 1], 2),
        (1, 3, 33, 33, 4, 3, 3, [1, 1], [18, 18], [18, 18], 1),
        (1, 2, 13, 11, 2, 3, 2, [2, 3], [2, 1], [3, 2], 1),
        (2, 4, 7, 7, 4, 3, 3, [2, 2], [1, 1], [1, 1], 4),
        (1, 4, 10, 10, 8, 1, 1, [1, 1], [0, 0], [1, 1], 2),
        (1, 3, 70, 70, 5, 1, 1, [1, 1], [0, 0], [1, 1], 1),
    ];
    for &(n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups) in &cases {
        let g = Conv2dGeom { n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups };
        let x = vals(n * c_in * h * w, 1);
        let wt = vals(c_out * (c_in / groups) * kh * kw, 2);
        let b = vals(c_out, 3);
        let (oh, ow) = g.out_hw().unwrap();
        let mut y = vec![0.0; n * c_out * oh * ow];
        conv2d_forward(&g, &x, &wt, Some(&b), &mut y);
        let want = naive(&g, &x, &wt, Some(&b));
        for (a, e) in y.iter().zip(&want) {
            assert!((a - e).abs() < 1e-9, "{g:?}: {a} vs {e}");
        }
    }
}

/// Direct definition of `dx` (the adjoint of [`naive`]), for checking the input-gradient kernel.
fn naive_dx(g: &Conv2dGeom, w: &[f64], gy: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; g.n * g.c_in * g.h * g.w];
    for_each_term(g, |yi, wi, xi| dx[xi] += w[wi] * gy[yi]);
    dx
}

/// Direct definition of `dw`.
fn naive_dw(g: &Conv2dGeom, x: &[f64], gy: &[f64]) -> Vec<f64> {
    let mut dw = vec![0.0; g.c_out * g.cig() * g.kh * g.kw];
    for_each_term(g, |yi, wi, xi| dw[wi] += x[xi] * gy[yi]);
    dw
}

type Case = (usize, usize, usize, usize, usize, usize, usize, [usize; 2], [usize; 2], [usize; 2], usize);

/// The geometry of a `(n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups)` case.
fn geom((n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups): Case) -> Conv2dGeom {
    Conv2dGeom { n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups }
}

/// A 3x3, stride-1, padding-1 conv (the shape Winograd F(m x m, 3x3) computes).
fn same_3x3(n: usize, c_in: usize, h: usize, w: usize, c_out: usize) -> Conv2dGeom {
    geom((n, c_in, h, w, c_out, 3, 3, [1, 1], [1, 1], [1, 1], 1))
}

/// Convs whose f32 `dw` takes the per-tap GEMMs: pixels over several K blocks (dilation 2), a `gy`
/// packed once and shared by five column blocks (1030 input channels), more than one column block
/// with dead taps (300 channels, dilation 6), groups and a stride, rows split into blocks (1100
/// output channels), taps that never land inside the input (dilation 12 on 6 x 6).
const PER_TAP_CASES: [Case; 6] = [
    (2, 40, 17, 17, 13, 3, 3, [1, 1], [2, 2], [2, 2], 1),
    (2, 1030, 5, 5, 20, 3, 3, [1, 1], [2, 2], [2, 2], 1),
    (1, 300, 9, 9, 7, 3, 3, [1, 1], [6, 6], [6, 6], 1),
    (2, 64, 11, 11, 8, 3, 3, [2, 2], [1, 1], [1, 1], 2),
    (1, 40, 5, 5, 1100, 1, 1, [1, 1], [0, 0], [1, 1], 1),
    (1, 32, 6, 6, 4, 3, 3, [1, 1], [12, 12], [12, 12], 1),
];

/// Convs whose `y` or `dx` take the per-tap path (`per_tap.rs`): dilated stride-1 convs on small
/// maps, cut into several regions, with at least twice as many source channels as destination
/// rows: rows not a multiple of 12, taps dead along a whole axis (dilation 7 on 6 rows),
/// different dilations per axis, groups. (`y` of the first three, `dx` of the last.)
const PER_TAP_YDX_CASES: [Case; 4] = [
    (2, 520, 9, 9, 258, 3, 3, [1, 1], [3, 3], [3, 3], 1),
    (2, 600, 6, 13, 270, 3, 3, [1, 1], [7, 7], [7, 7], 1),
    (1, 600, 10, 7, 256, 3, 3, [1, 1], [2, 4], [2, 4], 1),
    (1, 512, 8, 8, 1040, 3, 3, [1, 1], [3, 3], [3, 3], 2),
];

/// Convs whose `y` and `dx` take the direct path (`direct.rs`) on AVX2 and AVX-512: destination rows not a
/// multiple of 6 or 12 and wide rows not a multiple of 16 (14 rows, 13-wide rows), several units of
/// columns and of rows (100 rows on a 30 x 30 map), a 3 x 5 kernel with more padding than it
/// reaches. (The per-tap cases with few channels take it too: dilation 2, one live tap.)
const DIRECT_CASES: [Case; 3] = [
    (2, 20, 13, 11, 14, 3, 3, [1, 1], [1, 1], [1, 1], 1),
    (1, 70, 30, 30, 100, 3, 3, [1, 1], [1, 1], [1, 1], 1),
    (2, 8, 9, 16, 7, 3, 5, [1, 1], [2, 2], [1, 1], 1),
];

/// Whether the `y` (or `dx`) of `g` takes the direct path.
#[cfg(target_arch = "x86_64")]
fn takes_direct(g: &Conv2dGeom, dx: bool) -> bool {
    use tiling::Axis;
    let (oh, ow) = g.out_hw().unwrap();
    let (s, p, d) = (g.stride, g.padding, g.dilation);
    if dx {
        let ym = Axis::input_grad(g.h, oh, g.kh, s[0], p[0], d[0]);
        let xm = Axis::input_grad(g.w, ow, g.kw, s[1], p[1], d[1]);
        direct::plan(&ym, &xm, (oh, ow), (g.h, g.w), g.c_out / g.groups, g.groups).is_some()
    } else {
        let ym = Axis::forward(g.h, oh, g.kh, s[0], p[0], d[0]);
        let xm = Axis::forward(g.w, ow, g.kw, s[1], p[1], d[1]);
        direct::plan(&ym, &xm, (g.h, g.w), (oh, ow), g.c_in / g.groups, g.groups).is_some()
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn direct_y_and_dx_are_taken_where_the_tests_expect_it() {
    let on = crate::cpu::packed_gemm::available();
    for g in DIRECT_CASES.map(geom).iter().chain([geom(PER_TAP_CASES[0]), geom(PER_TAP_CASES[5])].iter()) {
        assert_eq!(takes_direct(g, false), on, "{g:?}");
        assert_eq!(takes_direct(g, true), on, "{g:?}");
    }
    // ResNet-18's layers 1 and 2 at crop 129 take it; more channels, strides, groups, 1x1 convs and
    // rows padded by more than a quarter keep the other paths.
    assert_eq!(takes_direct(&same_3x3(2, 64, 33, 33, 64), false), on);
    assert_eq!(takes_direct(&same_3x3(2, 128, 17, 17, 128), true), on);
    assert!(!takes_direct(&same_3x3(2, 256, 17, 17, 256), false));
    assert!(!takes_direct(&geom((2, 64, 33, 33, 128, 3, 3, [2, 2], [1, 1], [1, 1], 1)), false));
    assert!(!takes_direct(&geom((2, 64, 33, 33, 64, 3, 3, [1, 1], [1, 1], [1, 1], 2)), false));
    assert!(!takes_direct(&geom((2, 64, 33, 33, 64, 1, 1, [1, 1], [0, 0], [1, 1], 1)), false));
    assert!(!takes_direct(&geom((2, 64, 9, 9, 64, 3, 3, [1, 1], [2, 2], [2, 2], 1)), false));
}

#[test]
fn per_tap_y_and_dx_are_taken_where_the_tests_expect_it() {
    use tiling::{segments, Axis};
    let takes = |g: &Conv2dGeom, dx: bool| {
        let (oh, ow) = g.out_hw().unwrap();
        let (s, p, d) = (g.stride, g.padding, g.dilation);
        let (cig, cog) = (g.c_in / g.groups, g.c_out / g.groups);
        let (ym, xm, pixels, c_src, m) = if dx {
            (
                Axis::input_grad(g.h, oh, g.kh, s[0], p[0], d[0]),
                Axis::input_grad(g.w, ow, g.kw, s[1], p[1], d[1]),
                g.n * g.h * g.w,
                cog,
                cig,
            )
        } else {
            (
                Axis::forward(g.h, oh, g.kh, s[0], p[0], d[0]),
                Axis::forward(g.w, ow, g.kw, s[1], p[1], d[1]),
                g.n * oh * ow,
                cig,
                cog,
            )
        };
        let (ys, xs) = (segments(&ym, MIN_SPAN_Y), segments(&xm, MIN_SPAN_X));
        per_tap::applies(&ym, &xm, &ys, &xs, pixels, c_src, m)
    };
    for (i, g) in PER_TAP_YDX_CASES.map(geom).iter().enumerate() {
        assert!(takes(g, i == 3) && !takes(g, i != 3), "{g:?}");
    }
    // ASPP's dilation-6 and -12 convs at crop 257 (2048 -> 256 on 2 x 17 x 17) take it for `y`;
    // their `dx`, layer 4's d2 3x3, undilated, strided and thin convs keep the tiles.
    let aspp = geom((2, 2048, 17, 17, 256, 3, 3, [1, 1], [6, 6], [6, 6], 1));
    assert!(takes(&aspp, false) && !takes(&aspp, true));
    assert!(takes(&Conv2dGeom { padding: [12, 12], dilation: [12, 12], ..aspp }, false));
    let layer4 = geom((2, 512, 17, 17, 512, 3, 3, [1, 1], [2, 2], [2, 2], 1));
    assert!(!takes(&layer4, false) && !takes(&layer4, true));
    assert!(!takes(&Conv2dGeom { padding: [1, 1], dilation: [1, 1], ..aspp }, false));
    assert!(!takes(&Conv2dGeom { stride: [2, 2], ..aspp }, false));
    assert!(!takes(&Conv2dGeom { c_in: 256, ..aspp }, false));
}

/// Winograd F(2x2, 3x3) and F(4x4, 3x3) themselves, called directly on shapes they fit (the
/// dispatch keeps them for large ones, [`winograd_is_taken_where_the_tests_expect_it`]): odd sizes
/// (tiles cut by the border), several blocks of tiles per image (289 F2 tiles, 81 F4 tiles), more
/// input channels than one K block (300), a 1 x 1 image, blocks of tiles that span two images
/// (`dw`; three images in one block), `y`, `dx` and `dw` by both, in f32 against the direct definitions in f64.
#[cfg(target_arch = "x86_64")]
#[test]
fn winograd_y_dx_and_dw_match_naive() {
    if !crate::cpu::packed_gemm::available() {
        return;
    }
    let close = |a: f32, e: f64, k: usize| ((a as f64) - e).abs() <= 1e-5 * (k as f64).sqrt() * (1.0 + e.abs());
    for (n, c_in, h, w, c_out) in [(2, 5, 34, 33, 7), (1, 300, 4, 5, 9), (3, 4, 18, 18, 5), (1, 3, 1, 1, 2)] {
        let g = same_3x3(n, c_in, h, w, c_out);
        let (x, wt, b, gy) =
            (vals(n * c_in * h * w, 1), vals(c_out * c_in * 9, 2), vals(c_out, 3), vals(n * c_out * h * w, 4));
        let f = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<f32>>();
        let (want_y, want_dx) = (naive(&g, &x, &wt, Some(&b)), naive_dx(&g, &wt, &gy));
        for m in [2, 4] {
            let mut y = vec![7.0f32; gy.len()];
            let mut dx = vec![7.0f32; x.len()];
            if m == 2 {
                winograd::forward_with::<2, 4, 16, winograd::F2>(&g, &f(&x), &f(&wt), Some(&f(&b)), &mut y);
                winograd::input_grad_with::<2, 4, 16, winograd::F2>(&g, &f(&wt), &f(&gy), &mut dx);
            } else {
                winograd::forward_with::<4, 6, 36, winograd::F4>(&g, &f(&x), &f(&wt), Some(&f(&b)), &mut y);
                winograd::input_grad_with::<4, 6, 36, winograd::F4>(&g, &f(&wt), &f(&gy), &mut dx);
            }
            for (a, e) in y.iter().zip(&want_y) {
                assert!(close(*a, *e, c_in * 9), "F({m}x{m}) {g:?}: y {a} vs {e}");
            }
            for (a, e) in dx.iter().zip(&want_dx) {
                assert!(close(*a, *e, c_out * 9), "F({m}x{m}) {g:?}: dx {a} vs {e}");
            }
        }
        let want_dw = naive_dw(&g, &x, &gy);
        for m in [2, 4] {
            let mut dw = vec![7.0f32; wt.len()];
            if m == 2 {
                winograd::weight_grad_with::<2, 4, 16, winograd::F2>(&g, &f(&x), &f(&gy), &mut dw);
            } else {
                winograd::weight_grad_with::<4, 6, 36, winograd::F4>(&g, &f(&x), &f(&gy), &mut dw);
            }
            for (a, e) in dw.iter().zip(&want_dw) {
                assert!(close(*a, *e, n * h * w), "F({m}x{m}) {g:?}: dw {a} vs {e}");
            }
        }
    }
}

#[test]
fn winograd_is_taken_where_the_tests_expect_it() {
    // The 3x3 256 -> 256 conv of the criterion bench (2 x 33 x 33), and the decoder's 3x3 convs at crop 257.
    let base = same_3x3(1, 256, 33, 33, 256);
    assert!(winograd::applies(&base));
    let decoder = Conv2dGeom { c_in: 304, h: 65, w: 65, ..base };
    assert!(winograd::applies(&decoder) && winograd::applies(&Conv2dGeom { c_in: 256, ..decoder }));
    // F(4x4, 3x3) for y and dx where its tile grid wastes little (65 x 65, 129 x 129), F(2x2, 3x3) on 33 x 33.
    assert!(winograd::f4_pays(&decoder) && winograd::f4_pays(&Conv2dGeom { h: 129, w: 129, ..decoder }));
    assert!(!winograd::f4_pays(&base));
    // Dilated, strided, grouped, thin or small 3x3 convs keep the gather-GEMM.
    for g in [
        Conv2dGeom { padding: [2, 2], dilation: [2, 2], ..base },
        Conv2dGeom { stride: [2, 2], ..base },
        Conv2dGeom { groups: 2, ..base },
        Conv2dGeom { c_in: 128, ..base },
        Conv2dGeom { h: 17, w: 17, ..base },
    ] {
        assert!(!winograd::applies(&g), "{g:?}");
    }
}

#[test]
fn per_tap_dw_is_taken_where_the_tests_expect_it() {
    for g in PER_TAP_CASES.map(geom) {
        assert!(weight_grad_taps::tap_tasks(&g).is_some(), "{g:?}");
    }
    // The stem (3 input channels) and an early 1x1 conv (one tap, one column block) keep the tiles.
    let stem = geom((2, 3, 33, 33, 64, 7, 7, [2, 2], [3, 3], [1, 1], 1));
    let early = Conv2dGeom { c_in: 64, c_out: 256, kh: 1, kw: 1, stride: [1, 1], padding: [0, 0], ..stem };
    assert!(weight_grad_taps::tap_tasks(&stem).is_none() && weight_grad_taps::tap_tasks(&early).is_none());
}

/// f32 runs the packed GEMM path (on AVX2 + FMA CPUs; matrixmultiply elsewhere): `y`, `dx`, `dw`
/// against the direct definitions in f64, on shapes with ragged panels (rows not a multiple of 6,
/// pixels not of 16), K blocks, dead taps, strides, groups, the unpadded 1x1 case and the per-tap
/// `y` and `dx`.
#[test]
fn f32_forward_input_and_weight_grads_match_naive() {
    let cases = [
        (2, 4, 9, 8, 6, 3, 3, [1, 1], [1, 1], [1, 1], 2),
        (1, 3, 33, 33, 4, 3, 3, [1, 1], [18, 18], [18, 18], 1),
        (1, 2, 13, 11, 2, 3, 2, [2, 3], [2, 1], [3, 2], 1),
        (2, 40, 17, 17, 13, 3, 3, [1, 1], [2, 2], [2, 2], 1),
        (1, 70, 12, 12, 7, 1, 1, [1, 1], [0, 0], [1, 1], 1),
        (1, 300, 6, 6, 5, 1, 1, [1, 1], [0, 0], [1, 1], 1),
        (1, 9, 15, 15, 20, 3, 3, [2, 2], [1, 1], [1, 1], 1),
        (1, 3, 70, 70, 5, 1, 1, [1, 1], [0, 0], [1, 1], 1),
        // The stem's shape, small: tiles that run both images with one tap table.
        (2, 3, 45, 45, 8, 7, 7, [2, 2], [3, 3], [1, 1], 1),
        // The per-tap dw ([`PER_TAP_CASES`]).
        PER_TAP_CASES[0],
        PER_TAP_CASES[1],
        PER_TAP_CASES[2],
        PER_TAP_CASES[3],
        PER_TAP_CASES[4],
        PER_TAP_CASES[5],
        // The per-tap `y` and `dx` ([`PER_TAP_YDX_CASES`]).
        PER_TAP_YDX_CASES[0],
        PER_TAP_YDX_CASES[1],
        PER_TAP_YDX_CASES[2],
        PER_TAP_YDX_CASES[3],
        // The direct `y` and `dx` ([`DIRECT_CASES`]).
        DIRECT_CASES[0],
        DIRECT_CASES[1],
        DIRECT_CASES[2],
    ];
    let close = |a: f32, e: f64, k: usize| ((a as f64) - e).abs() <= 1e-5 * (k as f64).sqrt() * (1.0 + e.abs());
    for &(n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups) in &cases {
        let g = Conv2dGeom { n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups };
        let (oh, ow) = g.out_hw().unwrap();
        let x = vals(n * c_in * h * w, 1);
        let wt = vals(c_out * (c_in / groups) * kh * kw, 2);
        let b = vals(c_out, 3);
        let gy = vals(n * c_out * oh * ow, 4);
        let f = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<f32>>();
        let mut y = vec![7.0f32; n * c_out * oh * ow];
        conv2d_forward(&g, &f(&x), &f(&wt), Some(&f(&b)), &mut y);
        let k = (c_in / groups) * kh * kw;
        for (a, e) in y.iter().zip(&naive(&g, &x, &wt, Some(&b))) {
            assert!(close(*a, *e, k), "{g:?}: y {a} vs {e}");
        }
        let mut dx = vec![7.0f32; n * c_in * h * w];
        conv2d_backward_input(&g, &f(&wt), &f(&gy), &mut dx);
        for (a, e) in dx.iter().zip(&naive_dx(&g, &wt, &gy)) {
            assert!(close(*a, *e, c_out * kh * kw), "{g:?}: dx {a} vs {e}");
        }
        let mut dw = vec![7.0f32; wt.len()];
        conv2d_backward_weight(&g, &f(&x), &f(&gy), &mut dw);
        for (a, e) in dw.iter().zip(&naive_dw(&g, &x, &gy)) {
            assert!(close(*a, *e, n * oh * ow), "{g:?}: dw {a} vs {e}");
        }
    }
}
