//! Resize kernels over `planes` contiguous `h x w` planes: separable bilinear (forward and
//! backward) with PyTorch's source-index rules, and nearest-neighbour gathering under either
//! PyTorch's floor rule or TensorFlow's `align_corners=True` rounding rule ([`NearestRule`]).
//!
//! Bilinear is done in two 1-D passes per plane: each needed input row is interpolated along the
//! width into a small row buffer (`in_h x out_w`, allocated once per chunk of planes), then the
//! output rows blend two buffered rows. The arithmetic is exactly PyTorch's
//! `l0h (l0w x00 + l1w x01) + l1h (l0w x10 + l1w x11)`. The backward runs the transposed passes:
//! output-row gradients are scattered into the row buffer, then along the width into `dx`.
//! Planes are split into fixed chunks and each plane is processed serially, so the scatter is
//! deterministic.

use crate::cpu::parallel::chunk_len;
use crate::Float;
use rayon::prelude::*;

/// The two source taps of one output coordinate along one axis: indices and weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tap<T> {
    /// Lower source index.
    pub i0: usize,
    /// Upper source index (`i0 + 1`, or `i0` at the last input index).
    pub i1: usize,
    /// Weight of `i0`.
    pub l0: T,
    /// Weight of `i1`.
    pub l1: T,
}

/// Linear-interpolation taps from `input` to `output` positions along one axis, as PyTorch's
/// `area_pixel_compute_source_index` computes them (in the element type `T`):
/// * `align_corners`: `src = dst * (in - 1) / (out - 1)` (`src = 0` when `out == 1`);
/// * otherwise: `src = max((dst + 0.5) * in / out - 0.5, 0)`;
///
/// then `i0 = floor(src)` (at most `in - 1`), `i1 = min(i0 + 1, in - 1)`,
/// `l1 = clamp(src - i0, 0, 1)`, `l0 = 1 - l1`. Requires `input, output >= 1`.
pub fn linear_taps<T: Float>(input: usize, output: usize, align_corners: bool) -> Vec<Tap<T>> {
    let half = T::from_f64(0.5);
    let scale = if align_corners {
        if output > 1 {
            T::from_usize(input - 1) / T::from_usize(output - 1)
        } else {
            T::ZERO
        }
    } else {
        T::from_usize(input) / T::from_usize(output)
    };
    (0..output)
        .map(|dst| {
            let src = if align_corners {
                scale * T::from_usize(dst)
            } else {
                (scale * (T::from_usize(dst) + half) - half).max(T::ZERO)
            };
            let i0 = (src.to_f64().floor() as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = (src - T::from_usize(i0)).max(T::ZERO).min(T::ONE);
            Tap { i0, i1, l0: T::ONE - l1, l1 }
        })
        .collect()
}

/// Sizes of a resize: `planes` planes from `ih x iw` to `oh x ow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeDims {
    /// Number of planes (`N * C`).
    pub planes: usize,
    /// Input height.
    pub ih: usize,
    /// Input width.
    pub iw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

/// Which input rows some output row reads (rows no output reads are skipped when downsampling).
fn rows_used<T>(ih: usize, th: &[Tap<T>]) -> Vec<bool> {
    let mut used = vec![false; ih];
    for t in th {
        used[t.i0] = true;
        used[t.i1] = true;
    }
    used
}

/// Planes per parallel chunk: a fixed function of the sizes only.
fn planes_per_chunk(d: ResizeDims) -> usize {
    chunk_len(d.planes, (16384 / (d.oh * d.ow + d.ih * d.iw).max(1)).max(1))
}

/// Bilinear forward: `y[p, i, j] = l0h (l0w x[p,h0,w0] + l1w x[p,h0,w1]) + l1h (l0w x[p,h1,w0] + l1w x[p,h1,w1])`
/// with the taps of `th` (rows) and `tw` (columns) from [`linear_taps`].
pub fn bilinear_forward<T: Float>(x: &[T], d: ResizeDims, th: &[Tap<T>], tw: &[Tap<T>], y: &mut [T]) {
    let (isz, osz) = (d.ih * d.iw, d.oh * d.ow);
    assert_eq!(x.len(), d.planes * isz);
    assert_eq!(y.len(), d.planes * osz);
    assert_eq!((th.len(), tw.len()), (d.oh, d.ow));
    if osz == 0 || d.planes == 0 {
        return;
    }
    let used = rows_used(d.ih, th);
    let pc = planes_per_chunk(d);
    y.par_chunks_mut(pc * osz).enumerate().for_each(|(ci, ych)| {
        let mut rows = vec![T::ZERO; d.ih * d.ow];
        for (k, yp) in ych.chunks_mut(osz).enumerate() {
            let xp = &x[(ci * pc + k) * isz..][..isz];
            for r in (0..d.ih).filter(|&r| used[r]) {
                let xr = &xp[r * d.iw..][..d.iw];
                for (o, t) in rows[r * d.ow..][..d.ow].iter_mut().zip(tw) {
                    *o = t.l0 * xr[t.i0] + t.l1 * xr[t.i1];
                }
            }
            for (yr, t) in yp.chunks_mut(d.ow).zip(th) {
                let (r0, r1) = (&rows[t.i0 * d.ow..][..d.ow], &rows[t.i1 * d.ow..][..d.ow]);
                for ((o, &a), &b) in yr.iter_mut().zip(r0).zip(r1) {
                    *o = t.l0 * a + t.l1 * b;
                }
            }
        }
    });
}

/// Bilinear backward: the transpose of [`bilinear_forward`]. Every output gradient `g[p, i, j]`
/// adds `l?h l?w g` to the four input pixels it was interpolated from; `dx` is overwritten.
pub fn bilinear_backward<T: Float>(g: &[T], d: ResizeDims, th: &[Tap<T>], tw: &[Tap<T>], dx: &mut [T]) {
    let (isz, osz) = (d.ih * d.iw, d.oh * d.ow);
    assert_eq!(g.len(), d.planes * osz);
    assert_eq!(dx.len(), d.planes * isz);
    assert_eq!((th.len(), tw.len()), (d.oh, d.ow));
    if isz == 0 || d.planes == 0 {
        return;
    }
    let used = rows_used(d.ih, th);
    let pc = planes_per_chunk(d);
    dx.par_chunks_mut(pc * isz).enumerate().for_each(|(ci, dch)| {
        let mut rows = vec![T::ZERO; d.ih * d.ow];
        for (k, dp) in dch.chunks_mut(isz).enumerate() {
            let gp = &g[(ci * pc + k) * osz..][..osz];
            rows.iter_mut().for_each(|v| *v = T::ZERO);
            // Transposed row blend: scatter each output row into its two source rows.
            for (gr, t) in gp.chunks(d.ow).zip(th) {
                for (o, &v) in rows[t.i0 * d.ow..][..d.ow].iter_mut().zip(gr) {
                    *o += t.l0 * v;
                }
                for (o, &v) in rows[t.i1 * d.ow..][..d.ow].iter_mut().zip(gr) {
                    *o += t.l1 * v;
                }
            }
            // Transposed width interpolation.
            dp.iter_mut().for_each(|v| *v = T::ZERO);
            for r in (0..d.ih).filter(|&r| used[r]) {
                let dr = &mut dp[r * d.iw..][..d.iw];
                for (&v, t) in rows[r * d.ow..][..d.ow].iter().zip(tw) {
                    dr[t.i0] += t.l0 * v;
                    dr[t.i1] += t.l1 * v;
                }
            }
        }
    });
}

/// How a nearest-neighbour resize picks its source index along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NearestRule {
    /// PyTorch's `F.interpolate(mode="nearest")`: `src = min(floor(dst * in / out), in - 1)`
    /// ([`nearest_indices_floor`]). Pixel `dst` reads the source pixel whose *left edge* is at or
    /// before `dst * in / out`, which drifts up to one source pixel from the bilinear
    /// `align_corners = true` sample position at the far edge.
    Floor,
    /// TensorFlow's `resize_nearest_neighbor(align_corners=True)`:
    /// `src = min(roundf(dst * ((in - 1) / (out - 1))), in - 1)`, `src = 0` when `out == 1`
    /// ([`nearest_indices_align_corners`]): the source pixel nearest to where the bilinear
    /// `align_corners = true` resize samples, so labels stay on the features' grid.
    AlignCorners,
}

/// Nearest source index of every output position along one axis, as PyTorch's `nearest_idx`
/// ([`NearestRule::Floor`]): identity when sizes match, `dst / 2` when exactly doubling, otherwise
/// `min(floor(dst * (in / out)), in - 1)` computed in f32 (PyTorch's arithmetic).
pub fn nearest_indices_floor(input: usize, output: usize) -> Vec<usize> {
    if output == input {
        return (0..output).collect();
    }
    if output == 2 * input {
        return (0..output).map(|i| i >> 1).collect();
    }
    let scale = input as f32 / output as f32;
    (0..output).map(|i| ((i as f32 * scale).floor() as usize).min(input.saturating_sub(1))).collect()
}

/// Nearest source index of every output position along one axis with TensorFlow's
/// `resize_nearest_neighbor(align_corners=True)` arithmetic ([`NearestRule::AlignCorners`]):
/// `scale = (in - 1) / (out - 1)` in f32 (0 when `out == 1`), then
/// `src = min(roundf(f32(dst) * scale), in - 1)`. `roundf` rounds halves away from zero, which
/// for these non-negative positions is `floor(x + 0.5)`: the source pixel nearest to the bilinear
/// `align_corners = true` sample position `dst (in - 1) / (out - 1)`, ties going to the upper one.
/// Exact for grids that divide evenly (129 -> 65 reads `2 dst`, 513 -> 65 reads `8 dst`).
pub fn nearest_indices_align_corners(input: usize, output: usize) -> Vec<usize> {
    let scale = if output > 1 { input.saturating_sub(1) as f32 / (output - 1) as f32 } else { 0.0 };
    (0..output).map(|i| ((i as f32 * scale).round() as usize).min(input.saturating_sub(1))).collect()
}

/// The source indices of `rule` along one axis.
pub fn nearest_indices(input: usize, output: usize, rule: NearestRule) -> Vec<usize> {
    match rule {
        NearestRule::Floor => nearest_indices_floor(input, output),
        NearestRule::AlignCorners => nearest_indices_align_corners(input, output),
    }
}

/// Nearest-neighbour resize of `planes` planes of any copyable element (labels):
/// `y[p, i, j] = x[p, rows[i], cols[j]]` with indices from [`nearest_indices`] under `rule`.
pub fn nearest_gather<U: Copy + Send + Sync>(x: &[U], d: ResizeDims, rule: NearestRule, y: &mut [U]) {
    let (isz, osz) = (d.ih * d.iw, d.oh * d.ow);
    assert_eq!(x.len(), d.planes * isz);
    assert_eq!(y.len(), d.planes * osz);
    if osz == 0 {
        return;
    }
    let (ri, cj) = (nearest_indices(d.ih, d.oh, rule), nearest_indices(d.iw, d.ow, rule));
    y.par_chunks_mut(osz).enumerate().for_each(|(p, yp)| {
        let xp = &x[p * isz..][..isz];
        for (yr, &r) in yp.chunks_mut(d.ow).zip(&ri) {
            let xr = &xp[r * d.iw..][..d.iw];
            for (o, &c) in yr.iter_mut().zip(&cj) {
                *o = xr[c];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_follow_pytorch_rules() {
        // align_corners=False, 2 -> 4: src = (dst + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25.
        let t = linear_taps::<f64>(2, 4, false);
        assert_eq!((t[0].i0, t[0].i1, t[0].l1), (0, 1, 0.0));
        assert_eq!((t[1].i0, t[1].l1), (0, 0.25));
        assert_eq!((t[3].i0, t[3].i1), (1, 1));
        // align_corners=True, 3 -> 5: src = dst / 2.
        let t = linear_taps::<f64>(3, 5, true);
        assert_eq!((t[1].i0, t[1].l1, t[4].i0, t[4].i1), (0, 0.5, 2, 2));
        assert_eq!(linear_taps::<f64>(4, 1, true)[0].i0, 0);
    }

    #[test]
    fn backward_is_the_transpose_of_forward() {
        let d = ResizeDims { planes: 2, ih: 3, iw: 5, oh: 4, ow: 2 };
        let (th, tw) = (linear_taps::<f64>(3, 4, false), linear_taps::<f64>(5, 2, true));
        let x: Vec<f64> = (0..30).map(|i| (i as f64 * 0.37).sin()).collect();
        let g: Vec<f64> = (0..16).map(|i| (i as f64 * 0.71).cos()).collect();
        let (mut y, mut dx) = (vec![0.0; 16], vec![0.0; 30]);
        bilinear_forward(&x, d, &th, &tw, &mut y);
        bilinear_backward(&g, d, &th, &tw, &mut dx);
        let lhs: f64 = y.iter().zip(&g).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-12, "{lhs} vs {rhs}");
    }

    #[test]
    fn align_corners_nearest_matches_hand_computed_indices() {
        // 129 -> 65: scale exactly 2, dst k reads 2k (the floor rule agrees here).
        let ac = nearest_indices_align_corners(129, 65);
        assert!(ac.iter().enumerate().all(|(k, &s)| s == 2 * k), "{ac:?}");
        // 513 -> 65: scale 8.
        assert!(nearest_indices_align_corners(513, 65).iter().enumerate().all(|(k, &s)| s == 8 * k));
        // 64 -> 8: scale 63/7 = 9, so 9k; the floor rule reads 8k and ends at 56, not 63.
        assert_eq!(nearest_indices_align_corners(64, 8), [0, 9, 18, 27, 36, 45, 54, 63]);
        assert_eq!(nearest_indices_floor(64, 8), [0, 8, 16, 24, 32, 40, 48, 56]);
        // 64 -> 16: scale 63/15 = 4.2: 0, 4.2, 8.4, 12.6 (-> 13), 16.8 (-> 17), ..., 63.
        let v = nearest_indices_align_corners(64, 16);
        assert_eq!(&v[..6], [0, 4, 8, 13, 17, 21]);
        assert_eq!(v[15], 63);
        // 5 -> 3: scale 2 (0, 2, 4); 4 -> 3: scale 1.5, 1.5 is a tie and rounds up to 2.
        assert_eq!(nearest_indices_align_corners(5, 3), [0, 2, 4]);
        assert_eq!(nearest_indices_align_corners(4, 3), [0, 2, 3]);
        // Upsampling 3 -> 5: scale 0.5: 0, 0.5 (-> 1), 1, 1.5 (-> 2), 2.
        assert_eq!(nearest_indices_align_corners(3, 5), [0, 1, 1, 2, 2]);
        // One output reads the first pixel; equal sizes are the identity.
        assert_eq!(nearest_indices_align_corners(7, 1), [0]);
        assert_eq!(nearest_indices_align_corners(9, 9), (0..9).collect::<Vec<_>>());
        assert_eq!(nearest_indices(64, 8, NearestRule::Floor), nearest_indices_floor(64, 8));
    }

    #[test]
    fn align_corners_nearest_picks_the_pixel_nearest_the_bilinear_sample() {
        // For every size pair, the label index is the source pixel nearest to where the bilinear
        // align_corners=true resize samples (src = i0 + l1): i1 when l1 > 0.5, i0 when l1 < 0.5.
        for input in 1..70 {
            for output in 1..70 {
                let taps = linear_taps::<f64>(input, output, true);
                let near = nearest_indices_align_corners(input, output);
                for (k, (t, &s)) in taps.iter().zip(&near).enumerate() {
                    let src = t.i0 as f64 + t.l1;
                    if (t.l1 - 0.5).abs() < 1e-4 {
                        assert!(s == t.i0 || s == t.i1, "{input}->{output} at {k}: tie {src} read {s}");
                    } else {
                        assert_eq!(s, src.round() as usize, "{input}->{output} at {k}: bilinear samples {src}");
                    }
                }
            }
        }
    }
}
