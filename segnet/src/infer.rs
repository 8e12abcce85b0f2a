//! Whole-image inference as papers report it, shared by `segnet eval` and `segnet predict`.
//!
//! One function, [`infer`], turns normalised images of any size into logits at their own size:
//! - **sliding window** (`--window N --stride S`): an image larger than `N` in a dimension is cut
//!   into `N x N` windows every `S` pixels, the last one flush with the border (mmsegmentation's
//!   `slide_inference` grid, [`window_grid`]); each window goes through the network alone and the
//!   logits of overlapping windows are averaged per pixel. A dimension no larger than `N` is one
//!   window of the whole dimension, so an image no larger than the window is exactly one pass.
//! - **flip** (`--flip`): the image mirrored left-right goes through the same path, its logits are
//!   mirrored back and averaged with the unflipped ones.
//! - **multi-scale** (`--scales 0.75,1,1.25`): the image is bilinearly resized by each factor
//!   (`align_corners=false`, size rounded, at least 1 pixel), run as above, its logits bilinearly
//!   resized back to the image size and averaged over scales (and flips).
//!
//! Logits (not probabilities) are averaged throughout. With no option set, [`infer`] is exactly
//! the plain forward pass of the whole image (what evaluation always did).

use crate::net::{logits, Net};
use anyhow::{bail, Result};
use engine::{ops, Tensor};
use nn::Ctx;

/// How to run inference on whole images (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct InferOptions {
    /// Sliding-window side; `None`: every image in one pass whatever its size.
    pub window: Option<usize>,
    /// Window step (`1..=window`); unused without a window.
    pub stride: usize,
    /// Average with the left-right mirrored image.
    pub flip: bool,
    /// Scale factors (each > 0), averaged.
    pub scales: Vec<f64>,
}

impl Default for InferOptions {
    fn default() -> Self {
        InferOptions { window: None, stride: 0, flip: false, scales: vec![1.0] }
    }
}

impl InferOptions {
    /// Options from the command line, checked; errors name the flag. Without `--stride` the stride
    /// is two thirds of the window (513 for a 769 window, as the Cityscapes configs of
    /// mmsegmentation), at least 1.
    pub fn new(window: Option<usize>, stride: Option<usize>, flip: bool, scales: Option<Vec<f64>>) -> Result<Self> {
        if window == Some(0) {
            bail!("--window: must be at least 1 pixel");
        }
        let stride = match (window, stride) {
            (None, Some(_)) => bail!("--stride needs --window (the sliding-window side)"),
            (_, Some(0)) => bail!("--stride: must be at least 1 pixel"),
            (Some(w), Some(s)) if s > w => {
                bail!("--stride {s} is larger than --window {w}: pixels between windows would get no prediction")
            }
            (Some(_), Some(s)) => s,
            (Some(w), None) => (w * 2 / 3).max(1),
            (None, None) => 0,
        };
        let scales = scales.unwrap_or_else(|| vec![1.0]);
        if scales.is_empty() {
            bail!("--scales: give at least one scale factor");
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            bail!("--scales: {s} is not a scale factor (each must be a finite number > 0)");
        }
        Ok(InferOptions { window, stride, flip, scales })
    }

    /// No window, no flip, scale 1: the plain forward pass.
    pub fn is_plain(&self) -> bool {
        self.window.is_none() && !self.flip && self.scales == [1.0]
    }

    /// One line for reports: `whole image`, or e.g. `window 513 stride 342, flip, scales 0.75,1,1.25`.
    pub fn describe(&self) -> String {
        let mut parts = vec![match self.window {
            None => "whole image".to_string(),
            Some(w) => format!("window {w} stride {}", self.stride),
        }];
        if self.flip {
            parts.push("flip".into());
        }
        if self.scales != [1.0] {
            parts.push(format!("scales {}", self.scales.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")));
        }
        parts.join(", ")
    }

    /// For `eval --json` (an additive key).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "window": self.window,
            "stride": self.window.map(|_| self.stride),
            "flip": self.flip,
            "scales": self.scales,
        })
    }
}

/// Window starts along one dimension of length `len`: every `stride` pixels, the last window
/// flush with the end; one window at 0 when `len <= window`. Each window is
/// `start..min(start + window, len)`.
pub fn window_starts(len: usize, window: usize, stride: usize) -> Vec<usize> {
    assert!(window >= 1 && stride >= 1, "window and stride are checked by InferOptions::new");
    if len <= window {
        return vec![0];
    }
    let n = (len - window).div_ceil(stride) + 1;
    (0..n).map(|i| (i * stride).min(len - window)).collect()
}

/// The windows `[y0, x0, y1, x1]` (half-open) covering an `h x w` image.
pub fn window_grid(h: usize, w: usize, window: usize, stride: usize) -> Vec<[usize; 4]> {
    let (ys, xs) = (window_starts(h, window, stride), window_starts(w, window, stride));
    ys.iter().flat_map(|&y| xs.iter().map(move |&x| [y, x, (y + window).min(h), (x + window).min(w)])).collect()
}

/// Mirrors `[B, C, H, W]` data left-right in place.
fn flip_w(v: &mut [f32], w: usize) {
    for row in v.chunks_exact_mut(w.max(1)) {
        row.reverse();
    }
}

/// Logits of `x` (`[B, 3, H, W]`, on the network's device) by sliding windows, on the host.
fn slide(net: &mut Net, x: &Tensor, opts: &InferOptions) -> Result<(usize, Vec<f32>)> {
    let (b, ci, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let win = match opts.window {
        Some(win) if h > win || w > win => win,
        _ => {
            let l = logits(net, x, &mut Ctx::eval())?;
            return Ok((l.dim(1), l.to_vec_f32()?));
        }
    };
    let dev = x.device();
    let xv = x.to_vec_f32()?;
    let mut acc: Vec<f32> = Vec::new();
    let mut count = vec![0u32; h * w];
    let mut classes = 0;
    for [y0, x0, y1, x1] in window_grid(h, w, win, opts.stride) {
        let (wh, ww) = (y1 - y0, x1 - x0);
        let mut crop = Vec::with_capacity(b * ci * wh * ww);
        for plane in xv.chunks_exact(h * w) {
            for y in y0..y1 {
                crop.extend_from_slice(&plane[y * w + x0..y * w + x1]);
            }
        }
        let xt = Tensor::from_vec(crop, vec![b, ci, wh, ww])?.to_device(dev)?;
        let l = logits(net, &xt, &mut Ctx::eval())?;
        let c = l.dim(1);
        if acc.is_empty() {
            classes = c;
            acc = vec![0.0; b * c * h * w];
        }
        let lv = l.to_vec_f32()?;
        for (plane, src) in acc.chunks_exact_mut(h * w).zip(lv.chunks_exact(wh * ww)) {
            for y in 0..wh {
                let dst = &mut plane[(y0 + y) * w + x0..(y0 + y) * w + x1];
                for (d, s) in dst.iter_mut().zip(&src[y * ww..(y + 1) * ww]) {
                    *d += s;
                }
            }
        }
        for y in y0..y1 {
            count[y * w + x0..y * w + x1].iter_mut().for_each(|n| *n += 1);
        }
    }
    for plane in acc.chunks_exact_mut(h * w) {
        for (v, &n) in plane.iter_mut().zip(&count) {
            *v /= n as f32;
        }
    }
    Ok((classes, acc))
}

/// Per-pixel logits `[B, C, H, W]` of normalised images `x` (`[B, 3, H, W]`, any size, on the
/// network's device; the network in eval mode) under `opts` (see the module docs). The result is
/// on the network's device for the plain pass, on the host otherwise.
pub fn infer(net: &mut Net, x: &Tensor, opts: &InferOptions) -> Result<Tensor> {
    if opts.is_plain() {
        return logits(net, x, &mut Ctx::eval());
    }
    let (b, h, w) = (x.dim(0), x.dim(2), x.dim(3));
    let dev = x.device();
    let mut total: Vec<f32> = Vec::new();
    let mut classes = 0;
    let mut passes = 0usize;
    for &s in &opts.scales {
        let (sh, sw) = (((h as f64 * s).round() as usize).max(1), ((w as f64 * s).round() as usize).max(1));
        let xs = if (sh, sw) == (h, w) { x.clone() } else { ops::resize_bilinear(x, [sh, sw], false)? };
        for flipped in [false, true].into_iter().take(1 + opts.flip as usize) {
            let xi = if flipped {
                let mut v = xs.to_vec_f32()?;
                flip_w(&mut v, sw);
                Tensor::from_vec(v, vec![b, xs.dim(1), sh, sw])?.to_device(dev)?
            } else {
                xs.clone()
            };
            let (c, mut l) = slide(net, &xi, opts)?;
            if flipped {
                flip_w(&mut l, sw);
            }
            let l = if (sh, sw) == (h, w) {
                l
            } else {
                let t = Tensor::from_vec(l, vec![b, c, sh, sw])?;
                ops::resize_bilinear(&t, [h, w], false)?.to_vec_f32()?
            };
            if total.is_empty() {
                classes = c;
                total = l;
            } else {
                total.iter_mut().zip(&l).for_each(|(t, v)| *t += v);
            }
            passes += 1;
        }
    }
    let inv = 1.0 / passes as f32;
    total.iter_mut().for_each(|v| *v *= inv);
    Ok(Tensor::from_vec(total, vec![b, classes, h, w])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use engine::Rng;

    const TINY: &str = r#"
[model]
backbone = "resnet18"
width = 0.125
output_stride = 8
head_channels = 16
aspp_rates = [1, 2, 3]
"#;

    fn tiny_net() -> Net {
        let cfg = TrainConfig::from_toml(TINY).unwrap();
        let spec = crate::net::spec(&cfg, 3).unwrap();
        crate::net::new_net(&spec, false, &mut Rng::new(11)).unwrap()
    }

    fn image(b: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..b * 3 * h * w).map(|_| r.uniform() as f32 * 2.0 - 1.0).collect()
    }

    #[test]
    fn window_grid_covers_every_pixel_and_stays_inside() {
        for (h, w, win, stride) in [(1, 1, 1, 1), (10, 7, 4, 3), (17, 33, 8, 8), (5, 40, 6, 1), (1024, 2048, 769, 513)]
        {
            let mut cover = vec![0u32; h * w];
            let grid = window_grid(h, w, win, stride);
            for &[y0, x0, y1, x1] in &grid {
                assert!(y0 < y1 && y1 <= h && x0 < x1 && x1 <= w);
                assert_eq!((y1 - y0, x1 - x0), (win.min(h), win.min(w)), "every window is full size");
                for y in y0..y1 {
                    for x in x0..x1 {
                        cover[y * w + x] += 1;
                    }
                }
            }
            assert!(cover.iter().all(|&c| c > 0), "{h}x{w} window {win} stride {stride}: a pixel is not covered");
            // Consecutive starts are at most `stride` apart: no gap, overlap as asked.
            let ys = window_starts(h, win, stride);
            assert!(ys.windows(2).all(|p| p[1] > p[0] && p[1] - p[0] <= stride), "{ys:?}");
        }
        // Cityscapes at 769/513: 2 x 4 windows, as mmsegmentation's slide inference.
        assert_eq!(window_grid(1024, 2048, 769, 513).len(), 2 * 4);
        assert_eq!(window_starts(10, 10, 3), vec![0]);
        assert_eq!(window_starts(11, 4, 4), vec![0, 4, 7]);
    }

    #[test]
    fn sliding_window_on_an_image_no_larger_than_the_window_is_one_pass() {
        let mut net = tiny_net();
        let (h, w) = (19, 24);
        let x = Tensor::from_vec(image(2, h, w, 1), vec![2, 3, h, w]).unwrap();
        let plain = infer(&mut net, &x, &InferOptions::default()).unwrap().to_vec_f32().unwrap();
        for win in [24, 25, 64] {
            let opts = InferOptions::new(Some(win), Some(7), false, None).unwrap();
            let slid = infer(&mut net, &x, &opts).unwrap();
            assert_eq!(slid.shape().0, vec![2, 3, h, w]);
            assert_eq!(slid.to_vec_f32().unwrap(), plain, "window {win}: must equal one pass exactly");
        }
        // Scale 1 listed explicitly is the plain pass too.
        let opts = InferOptions::new(None, None, false, Some(vec![1.0])).unwrap();
        assert_eq!(infer(&mut net, &x, &opts).unwrap().to_vec_f32().unwrap(), plain);
    }

    #[test]
    fn sliding_window_averages_overlapping_windows() {
        let mut net = tiny_net();
        let (h, w) = (16, 24);
        let xv = image(1, h, w, 2);
        let x = Tensor::from_vec(xv.clone(), vec![1, 3, h, w]).unwrap();
        let opts = InferOptions::new(Some(16), Some(4), false, None).unwrap();
        let got = infer(&mut net, &x, &opts).unwrap().to_vec_f32().unwrap();
        // By hand: windows at x = 0, 4, 8, each 16 wide.
        let mut want = vec![0f32; 3 * h * w];
        let mut n = vec![0f32; w];
        for x0 in [0, 4, 8] {
            let crop: Vec<f32> = xv.chunks_exact(w).flat_map(|row| row[x0..x0 + 16].to_vec()).collect();
            let t = Tensor::from_vec(crop, vec![1, 3, h, 16]).unwrap();
            let l = logits(&mut net, &t, &mut Ctx::eval()).unwrap().to_vec_f32().unwrap();
            for (dst, src) in want.chunks_exact_mut(w).zip(l.chunks_exact(16)) {
                dst[x0..x0 + 16].iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
            n[x0..x0 + 16].iter_mut().for_each(|c| *c += 1.0);
        }
        for row in want.chunks_exact_mut(w) {
            row.iter_mut().zip(&n).for_each(|(v, c)| *v /= c);
        }
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "max error {err}");
    }

    #[test]
    fn flip_averaging_of_a_mirror_symmetric_image_is_mirror_symmetric() {
        let mut net = tiny_net();
        let (h, w) = (16, 20);
        let mut xv = image(1, h, w, 3);
        for row in xv.chunks_exact_mut(w) {
            for x in 0..w / 2 {
                row[w - 1 - x] = row[x];
            }
        }
        let x = Tensor::from_vec(xv, vec![1, 3, h, w]).unwrap();
        let mirrored = |v: &[f32]| -> Vec<f32> {
            let mut m = v.to_vec();
            flip_w(&mut m, w);
            m
        };
        for window in [None, Some(12)] {
            let opts = InferOptions::new(window, None, true, Some(vec![1.0, 0.75])).unwrap();
            let l = infer(&mut net, &x, &opts).unwrap().to_vec_f32().unwrap();
            let err = l.iter().zip(&mirrored(&l)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "window {window:?}: flip-averaged logits are not symmetric (max error {err})");
        }
        // Flip averaging at one scale, no window: the mean of the pass and its mirror.
        let plain = infer(&mut net, &x, &InferOptions::default()).unwrap().to_vec_f32().unwrap();
        let opts = InferOptions::new(None, None, true, None).unwrap();
        let l = infer(&mut net, &x, &opts).unwrap().to_vec_f32().unwrap();
        let want: Vec<f32> = plain.iter().zip(mirrored(&plain)).map(|(a, b)| (a + b) / 2.0).collect();
        let err = l.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "max error {err}");
    }

    #[test]
    fn multi_scale_returns_logits_at_the_image_size() {
        let mut net = tiny_net();
        let x = Tensor::from_vec(image(1, 21, 30, 4), vec![1, 3, 21, 30]).unwrap();
        let opts = InferOptions::new(Some(16), Some(8), true, Some(vec![0.5, 1.0, 1.25])).unwrap();
        let l = infer(&mut net, &x, &opts).unwrap();
        assert_eq!(l.shape().0, vec![1, 3, 21, 30]);
        assert!(l.to_vec_f32().unwrap().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_options_name_the_flag() {
        let err = |r: Result<InferOptions>| r.unwrap_err().to_string();
        assert!(err(InferOptions::new(Some(8), Some(0), false, None)).contains("--stride"));
        let e = err(InferOptions::new(Some(8), Some(9), false, None));
        assert!(e.contains("--stride 9") && e.contains("--window 8"), "{e}");
        assert!(err(InferOptions::new(None, Some(4), false, None)).contains("--window"));
        assert!(err(InferOptions::new(Some(0), None, false, None)).contains("--window"));
        assert!(err(InferOptions::new(None, None, false, Some(vec![1.0, 0.0]))).contains("--scales"));
        assert!(err(InferOptions::new(None, None, false, Some(vec![-0.5]))).contains("--scales"));
        assert!(err(InferOptions::new(None, None, false, Some(vec![f64::NAN]))).contains("--scales"));
        assert!(err(InferOptions::new(None, None, false, Some(vec![]))).contains("--scales"));
        assert_eq!(InferOptions::new(Some(769), None, false, None).unwrap().stride, 512);
        assert!(InferOptions::new(None, None, false, None).unwrap().is_plain());
    }
}
