//! Unit tests of the tiled kernels against the direct definition.

use super::*;

/// Direct definition, for checking the tiled kernels.
fn naive(g: &Conv2dGeom, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let (oh, ow) = g.out_hw().unwrap();
    let (cig, cog) = (g.cig(), g.cog());
    let mut y = vec![0.0; g.n * g.c_out * oh * ow];
    for n in 0..g.n {
        for o in 0..g.c_out {
            let gi = o / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = b.map_or(0.0, |b| b[o]);
                    for c in 0..cig {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.padding[0] as isize;
                                let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.c_in + gi * cig + c) * g.h + iy as usize) * g.w + ix as usize;
                                s += w[((o * cig + c) * g.kh + ky) * g.kw + kx] * x[xi];
                            }
                        }
                    }
                    y[((n * g.c_out + o) * oh + oy) * ow + ox] = s;
                }
            }
        }
    }
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
