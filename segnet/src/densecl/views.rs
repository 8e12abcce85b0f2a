//! DenseCL's two views of a crop: each an independent draw of MoCo-v2's pipeline (random resized
//! crop, horizontal flip, colour jitter with p 0.8, grayscale with p 0.2, Gaussian blur with
//! p 0.5), made from the loader's un-augmented crop. Unlike the released code, the geometry of
//! every view is kept ([`ViewGeom`]), so the true correspondence between the two views' feature
//! cells is known ([`true_correspondence`]) and the argmax matching can be checked against it.
//!
//! Coordinates are continuous pixel coordinates of the base crop (`[0, H] x [0, W]`, pixel `i`
//! covers `[i, i + 1)`, its centre is `i + 0.5`); resampling is bilinear with `align_corners =
//! false` semantics and edge clamping.

use datasets::augment::{hue_matrix, LUMA};
use engine::Rng;

/// Where a view comes from in the base crop: the box `[y0, y0 + h) x [x0, x0 + w)` resized to the
/// crop size, then mirrored left-right when `flip`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewGeom {
    pub y0: f32,
    pub x0: f32,
    pub h: f32,
    pub w: f32,
    pub flip: bool,
}

impl ViewGeom {
    /// The whole `h x w` crop, unflipped.
    pub fn identity(h: usize, w: usize) -> ViewGeom {
        ViewGeom { y0: 0.0, x0: 0.0, h: h as f32, w: w as f32, flip: false }
    }

    /// The base point of view point `(vy, vx)` of an `hh x ww` view.
    pub fn to_base(&self, vy: f32, vx: f32, hh: usize, ww: usize) -> (f32, f32) {
        let u = if self.flip { ww as f32 - vx } else { vx };
        (self.y0 + vy * self.h / hh as f32, self.x0 + u * self.w / ww as f32)
    }

    /// The view point of base point `(by, bx)`, if the view covers it.
    pub fn from_base(&self, by: f32, bx: f32, hh: usize, ww: usize) -> Option<(f32, f32)> {
        let vy = (by - self.y0) * hh as f32 / self.h;
        let u = (bx - self.x0) * ww as f32 / self.w;
        let vx = if self.flip { ww as f32 - u } else { u };
        ((0.0..hh as f32).contains(&vy) && (0.0..ww as f32).contains(&vx)).then_some((vy, vx))
    }
}

/// torchvision's `RandomResizedCrop.get_params` on an `h x w` crop (area fraction uniform in
/// `[min_scale, 1]`, log aspect ratio uniform in `[ln 3/4, ln 4/3]`, 10 tries, then the centred
/// largest box of a clamped ratio), followed by a flip with probability 0.5.
pub fn draw_geom(h: usize, w: usize, min_scale: f64, rng: &mut Rng) -> ViewGeom {
    let area = (h * w) as f64;
    let (lr0, lr1) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let mut chosen = None;
    for _ in 0..10 {
        let a = area * (min_scale + (1.0 - min_scale) * rng.uniform());
        let r = (lr0 + (lr1 - lr0) * rng.uniform()).exp();
        let bw = (a * r).sqrt().round() as usize;
        let bh = (a / r).sqrt().round() as usize;
        if bw > 0 && bh > 0 && bw <= w && bh <= h {
            let y0 = rng.below(h - bh + 1);
            let x0 = rng.below(w - bw + 1);
            chosen = Some((y0, x0, bh, bw));
            break;
        }
    }
    let (y0, x0, bh, bw) = chosen.unwrap_or_else(|| {
        let ratio = w as f64 / h as f64;
        let (bh, bw) = if ratio < 0.75 {
            (((w as f64) / 0.75).round() as usize, w)
        } else if ratio > 4.0 / 3.0 {
            (h, ((h as f64) * 4.0 / 3.0).round() as usize)
        } else {
            (h, w)
        };
        let (bh, bw) = (bh.clamp(1, h), bw.clamp(1, w));
        ((h - bh) / 2, (w - bw) / 2, bh, bw)
    });
    let flip = rng.uniform() < 0.5;
    ViewGeom { y0: y0 as f32, x0: x0 as f32, h: bh as f32, w: bw as f32, flip }
}

/// Resample a CHW image (`3 x h x w`) through `g` to a view of the same size (bilinear, edges
/// clamped).
pub fn render(base: &[f32], h: usize, w: usize, g: &ViewGeom) -> Vec<f32> {
    let plane = h * w;
    let mut out = vec![0f32; 3 * plane];
    for oy in 0..h {
        for ox in 0..w {
            let (by, bx) = g.to_base(oy as f32 + 0.5, ox as f32 + 0.5, h, w);
            let sy = (by - 0.5).clamp(0.0, (h - 1) as f32);
            let sx = (bx - 0.5).clamp(0.0, (w - 1) as f32);
            let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
            let (fy, fx) = (sy - y0 as f32, sx - x0 as f32);
            for c in 0..3 {
                let p = &base[c * plane..(c + 1) * plane];
                let top = p[y0 * w + x0] * (1.0 - fx) + p[y0 * w + x1] * fx;
                let bot = p[y1 * w + x0] * (1.0 - fx) + p[y1 * w + x1] * fx;
                out[c * plane + oy * w + ox] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
    out
}

/// One colour operation of MoCo-v2's jitter (torchvision's `ColorJitter`, applied in a random order).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColorOp {
    Brightness(f32),
    Contrast(f32),
    Saturation(f32),
    /// Hue rotation in turns.
    Hue(f32),
}

/// The photometric part of one view.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Photometric {
    /// Jitter ops in application order (empty: no jitter).
    pub jitter: Vec<ColorOp>,
    /// Convert to greyscale.
    pub gray: bool,
    /// Gaussian blur with this sigma (pixels).
    pub blur: Option<f32>,
}

/// MoCo-v2's draws: jitter (brightness, contrast, saturation 0.4, hue 0.1) with p 0.8, grayscale
/// p 0.2, blur p 0.5 with sigma uniform in `[0.1, 2.0] * side / 224` (the 224-pixel range scaled
/// to the crop).
pub fn draw_photometric(side: usize, rng: &mut Rng) -> Photometric {
    let mut p = Photometric::default();
    if rng.uniform() < 0.8 {
        let f = |rng: &mut Rng, x: f64| (1.0 - x + 2.0 * x * rng.uniform()) as f32;
        let mut ops = vec![
            ColorOp::Brightness(f(rng, 0.4)),
            ColorOp::Contrast(f(rng, 0.4)),
            ColorOp::Saturation(f(rng, 0.4)),
            ColorOp::Hue((0.1 * (2.0 * rng.uniform() - 1.0)) as f32),
        ];
        for i in (1..ops.len()).rev() {
            ops.swap(i, rng.below(i + 1));
        }
        p.jitter = ops;
    }
    p.gray = rng.uniform() < 0.2;
    if rng.uniform() < 0.5 {
        let scale = side as f64 / 224.0;
        p.blur = Some(((0.1 + 1.9 * rng.uniform()) * scale) as f32);
    }
    p
}

/// Apply `p` to a normalised CHW image (`(x - mean) / std` of values in `[0, 1]`): un-normalise,
/// jitter (clamped to `[0, 1]` after each op), greyscale, blur, re-normalise.
pub fn apply_photometric(img: &mut [f32], h: usize, w: usize, p: &Photometric, mean: [f32; 3], std: [f32; 3]) {
    let plane = h * w;
    for c in 0..3 {
        for v in &mut img[c * plane..(c + 1) * plane] {
            *v = *v * std[c] + mean[c];
        }
    }
    let grey = |img: &[f32], i: usize| (0..3).map(|c| LUMA[c] * img[c * plane + i]).sum::<f32>();
    for op in &p.jitter {
        match *op {
            ColorOp::Brightness(f) => img.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0)),
            ColorOp::Contrast(f) => {
                let m = (0..plane).map(|i| grey(img, i)).sum::<f32>() / plane.max(1) as f32;
                img.iter_mut().for_each(|v| *v = (f * *v + (1.0 - f) * m).clamp(0.0, 1.0));
            }
            ColorOp::Saturation(f) => {
                for i in 0..plane {
                    let g = grey(img, i);
                    for c in 0..3 {
                        img[c * plane + i] = (f * img[c * plane + i] + (1.0 - f) * g).clamp(0.0, 1.0);
                    }
                }
            }
            ColorOp::Hue(t) => {
                let m = hue_matrix(t);
                for i in 0..plane {
                    let x = [img[i], img[plane + i], img[2 * plane + i]];
                    for (c, row) in m.iter().enumerate() {
                        img[c * plane + i] = (row[0] * x[0] + row[1] * x[1] + row[2] * x[2]).clamp(0.0, 1.0);
                    }
                }
            }
        }
    }
    if p.gray {
        for i in 0..plane {
            let g = grey(img, i);
            for c in 0..3 {
                img[c * plane + i] = g;
            }
        }
    }
    if let Some(sigma) = p.blur {
        let r = (3.0 * sigma).ceil().max(1.0) as isize;
        let k: Vec<f32> = (-r..=r).map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp()).collect();
        let ks: f32 = k.iter().sum();
        let k: Vec<f32> = k.iter().map(|v| v / ks).collect();
        let mut tmp = vec![0f32; plane];
        for c in 0..3 {
            let ch = &mut img[c * plane..(c + 1) * plane];
            for y in 0..h {
                for x in 0..w {
                    let xs = |d: isize| (x as isize + d).clamp(0, w as isize - 1) as usize;
                    tmp[y * w + x] = (-r..=r).zip(&k).map(|(d, kv)| kv * ch[y * w + xs(d)]).sum();
                }
            }
            for y in 0..h {
                for x in 0..w {
                    let ys = |d: isize| (y as isize + d).clamp(0, h as isize - 1) as usize;
                    ch[y * w + x] = (-r..=r).zip(&k).map(|(d, kv)| kv * tmp[ys(d) * w + x]).sum();
                }
            }
        }
    }
    for c in 0..3 {
        for v in &mut img[c * plane..(c + 1) * plane] {
            *v = (*v - mean[c]) / std[c];
        }
    }
}

/// The true correspondence of an `sh x sw` feature grid between two `h x w` views of one crop:
/// for each cell of view 1 (row-major), the view-2 cell containing the base point under view 1's
/// cell centre, or `None` where view 2 does not cover it.
pub fn true_correspondence(
    g1: &ViewGeom,
    g2: &ViewGeom,
    [h, w]: [usize; 2],
    [sh, sw]: [usize; 2],
) -> Vec<Option<usize>> {
    let mut out = Vec::with_capacity(sh * sw);
    for gy in 0..sh {
        for gx in 0..sw {
            let vy = (gy as f32 + 0.5) * h as f32 / sh as f32;
            let vx = (gx as f32 + 0.5) * w as f32 / sw as f32;
            let (by, bx) = g1.to_base(vy, vx, h, w);
            out.push(g2.from_base(by, bx, h, w).map(|(y, x)| {
                let cy = ((y * sh as f32 / h as f32) as usize).min(sh - 1);
                let cx = ((x * sw as f32 / w as f32) as usize).min(sw - 1);
                cy * sw + cx
            }));
        }
    }
    out
}
