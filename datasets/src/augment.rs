//! Augmentation: random scale, random crop with padding, left-right flip, colour distortion and
//! mean/std normalisation, producing f32 CHW images and u8 label maps.
//!
//! Why one fused pass: scale, crop and flip are all coordinate maps, so instead of resizing the whole
//! image and then cropping we compute, for each *output* pixel, where it comes from in the source.
//! Work is proportional to the crop, not to the scaled image, and the image and the label use exactly
//! the same map (bilinear taps for the image, nearest for the label), so labels always move with the
//! image. Colour distortion is composed into a single 3x3 affine map and applied together with
//! normalisation in a second pass over the crop.
//!
//! Two views ([`AugmentConfig::two_views`], the contrastive recipe of Zhao et al.): the geometry
//! pass runs once and the second pass twice over its output, once without colour distortion
//! ([`Augmented::image`], the "original" view) and once with the sampled colour map
//! ([`Augmented::distorted`]), so both views share the crop, the flip and the labels exactly and
//! differ only by the colour map. The random draws are the same as for one distorted view, so a
//! sample's augmentation still depends only on its RNG.

use crate::error::{DatasetError, Result};
use crate::rng::Rng;
use crate::sample::SampleRef;

/// ImageNet channel means (RGB, on the [0, 1] scale), the convention of pretrained backbones.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// What padded image pixels (crop larger than the scaled image) are filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadFill {
    /// The normalisation mean: padded pixels become exactly 0 after normalisation (DeepLab's choice).
    Mean,
    /// Raw black.
    Zero,
}

/// SimCLR-style colour distortion, used in the contrastive stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorJitter {
    /// Probability of applying brightness/contrast/saturation/hue jitter at all.
    pub prob: f32,
    /// Factors are drawn from `[1 - x, 1 + x]`.
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// Hue rotation drawn from `[-hue, hue]` turns (0.5 = 180 degrees).
    pub hue: f32,
    /// Probability of converting to greyscale afterwards.
    pub grayscale_prob: f32,
}

impl Default for ColorJitter {
    /// SimCLR's strength-0.5 setting (0.8*s, 0.2*s for hue), applied with p=0.8, greyscale p=0.2.
    fn default() -> Self {
        ColorJitter { prob: 0.8, brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1, grayscale_prob: 0.2 }
    }
}

/// Full augmentation configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentConfig {
    /// Output `[height, width]`; `None` keeps the (scaled) image size.
    pub crop: Option<[usize; 2]>,
    /// Random scale range, e.g. `(0.5, 2.0)`; `None` = no scaling.
    pub scale: Option<(f32, f32)>,
    /// Random left-right flip with probability 0.5.
    pub hflip: bool,
    /// Colour distortion (contrastive stage); `None` = off.
    pub color: Option<ColorJitter>,
    /// Produce two views of the same crop: [`Augmented::image`] without colour distortion and
    /// [`Augmented::distorted`] with it (with `color` off the two are equal). When false the
    /// colour distortion, if any, is applied to `image`.
    pub two_views: bool,
    /// Normalisation: `(x / 255 - mean) / std` per channel.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pad: PadFill,
    /// Label value for padded pixels and for unlabeled images.
    pub ignore_index: u8,
}

impl AugmentConfig {
    /// No augmentation: normalisation only (evaluation).
    pub fn eval() -> Self {
        AugmentConfig {
            crop: None,
            scale: None,
            hflip: false,
            color: None,
            two_views: false,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            pad: PadFill::Mean,
            ignore_index: 255,
        }
    }

    /// Fine-tuning recipe: scale 0.5-2.0, `crop x crop` random crop, flip.
    pub fn train(crop: usize) -> Self {
        AugmentConfig { crop: Some([crop, crop]), scale: Some((0.5, 2.0)), hflip: true, ..Self::eval() }
    }

    /// Contrastive pretraining recipe: the training recipe, and two views of every crop, the
    /// original and a colour-distorted one.
    pub fn contrastive(crop: usize) -> Self {
        AugmentConfig { color: Some(ColorJitter::default()), two_views: true, ..Self::train(crop) }
    }

    /// Rejects configurations that would divide by zero or produce empty/absurd outputs.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DatasetError::Config(m));
        if let Some([h, w]) = self.crop {
            if h == 0 || w == 0 || h > 16384 || w > 16384 {
                return bad(format!("crop {h}x{w} must be 1..=16384 per side"));
            }
        }
        if let Some((lo, hi)) = self.scale {
            if !(lo > 0.0 && lo <= hi && hi <= 16.0) {
                return bad(format!("scale range ({lo}, {hi}) must satisfy 0 < lo <= hi <= 16"));
            }
        }
        if self.std.iter().any(|&s| !(s > 0.0 && s.is_finite())) || self.mean.iter().any(|m| !m.is_finite()) {
            return bad(format!("normalisation mean {:?} / std {:?} invalid", self.mean, self.std));
        }
        if let Some(c) = &self.color {
            let ok = [c.prob, c.grayscale_prob].iter().all(|p| (0.0..=1.0).contains(p))
                && [c.brightness, c.contrast, c.saturation].iter().all(|v| (0.0..=1.0).contains(v))
                && (0.0..=0.5).contains(&c.hue);
            if !ok {
                return bad(format!("colour jitter {c:?} out of range"));
            }
        }
        Ok(())
    }
}

/// An augmented sample: f32 CHW image (normalised) and u8 HW labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmented {
    pub height: usize,
    pub width: usize,
    /// The image; without colour distortion when `two_views` is set.
    pub image: Vec<f32>,
    pub label: Vec<u8>,
    /// With `two_views`: the colour-distorted view of the same crop (same layout as `image`,
    /// same labels).
    pub distorted: Option<Vec<f32>>,
}

/// A 3x3 colour matrix plus bias, acting on RGB in 0..255.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Affine {
    m: [[f32; 3]; 3],
    b: [f32; 3],
}

/// ITU-R BT.601 luma weights of R, G, B (greyscale and saturation use them).
pub const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

impl Affine {
    fn identity() -> Self {
        Affine { m: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], b: [0.0; 3] }
    }
    fn apply(&self, x: [f32; 3]) -> [f32; 3] {
        let mut y = self.b;
        for (r, yr) in y.iter_mut().enumerate() {
            *yr += self.m[r][0] * x[0] + self.m[r][1] * x[1] + self.m[r][2] * x[2];
        }
        y
    }
    /// `self` followed by the linear map `a` and the bias `t`: x -> a (M x + b) + t.
    #[allow(clippy::needless_range_loop)] // index loops read like the matrix product they are
    fn then(&self, a: [[f32; 3]; 3], t: [f32; 3]) -> Self {
        let mut out = Affine { m: [[0.0; 3]; 3], b: t };
        for r in 0..3 {
            for c in 0..3 {
                out.m[r][c] = (0..3).map(|k| a[r][k] * self.m[k][c]).sum();
            }
            out.b[r] += (0..3).map(|k| a[r][k] * self.b[k]).sum::<f32>();
        }
        out
    }
}

fn scaled_identity(f: f32) -> [[f32; 3]; 3] {
    [[f, 0.0, 0.0], [0.0, f, 0.0], [0.0, 0.0, f]]
}

/// `s * I + (1 - s) * 1 luma^T`: blend with greyscale (s=0 gives greyscale).
fn saturation_matrix(s: f32) -> [[f32; 3]; 3] {
    let mut m = [[0.0; 3]; 3];
    for (r, row) in m.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (1.0 - s) * LUMA[c] + if r == c { s } else { 0.0 };
        }
    }
    m
}

/// Hue rotation by `turns` of a full circle, as a rotation of the chroma plane in YIQ space.
pub fn hue_matrix(turns: f32) -> [[f32; 3]; 3] {
    let (sin, cos) = (turns * std::f32::consts::TAU).sin_cos();
    let to_yiq = [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]];
    let from_yiq = [[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]];
    let rot = [[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]];
    let mul = |a: [[f32; 3]; 3], b: [[f32; 3]; 3]| {
        let mut o = [[0.0f32; 3]; 3];
        for r in 0..3 {
            for c in 0..3 {
                o[r][c] = (0..3).map(|k| a[r][k] * b[k][c]).sum();
            }
        }
        o
    };
    mul(from_yiq, mul(rot, to_yiq))
}

/// The random choices for one sample, drawn in a fixed order so results depend only on the RNG.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Size of the (virtually) scaled image.
    pub scaled_h: usize,
    pub scaled_w: usize,
    /// Top-left corner of the crop in scaled coordinates.
    pub off_y: usize,
    pub off_x: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub flip: bool,
    /// Colour ops in application order; contrast needs the crop's mean, so it is resolved later.
    color: Vec<ColorOp>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ColorOp {
    Brightness(f32),
    Contrast(f32),
    Saturation(f32),
    Hue(f32),
    Grayscale,
}

/// Draws the random parameters for an `h x w` source image.
pub fn plan(h: usize, w: usize, cfg: &AugmentConfig, rng: &mut Rng) -> Plan {
    let s = cfg.scale.map(|(lo, hi)| rng.uniform(lo, hi)).unwrap_or(1.0);
    let scaled_h = ((h as f32 * s).round() as usize).max(1);
    let scaled_w = ((w as f32 * s).round() as usize).max(1);
    let (out_h, out_w) = match cfg.crop {
        Some([ch, cw]) => (ch, cw),
        None => (scaled_h, scaled_w),
    };
    let off_y = rng.below(scaled_h.saturating_sub(out_h) + 1);
    let off_x = rng.below(scaled_w.saturating_sub(out_w) + 1);
    let flip = cfg.hflip && rng.chance(0.5);
    let mut color = Vec::new();
    if let Some(j) = &cfg.color {
        if rng.chance(j.prob) {
            let f = |rng: &mut Rng, x: f32| rng.uniform(1.0 - x, 1.0 + x);
            let mut ops = [
                ColorOp::Brightness(f(rng, j.brightness)),
                ColorOp::Contrast(f(rng, j.contrast)),
                ColorOp::Saturation(f(rng, j.saturation)),
                ColorOp::Hue(rng.uniform(-j.hue, j.hue)),
            ];
            rng.shuffle(&mut ops);
            color.extend(ops);
        }
        if rng.chance(j.grayscale_prob) {
            color.push(ColorOp::Grayscale);
        }
    }
    Plan { scaled_h, scaled_w, off_y, off_x, out_h, out_w, flip, color }
}

/// Source taps along one axis for each output coordinate: bilinear (i0, i1, frac) and nearest index,
/// or `None` where the output lies in the padding.
fn axis_taps(src: usize, scaled: usize, off: usize, out: usize, flip: bool) -> Vec<Option<(usize, usize, f32, usize)>> {
    let ratio = src as f32 / scaled as f32;
    (0..out)
        .map(|o| {
            let o = if flip { out - 1 - o } else { o };
            let d = off + o;
            if d >= scaled {
                return None;
            }
            // align_corners = false: pixel centres map to pixel centres.
            let s = ((d as f32 + 0.5) * ratio - 0.5).clamp(0.0, (src - 1) as f32);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(src - 1);
            let near = (((d as f32 + 0.5) * ratio) as usize).min(src - 1);
            Some((i0, i1, s - i0 as f32, near))
        })
        .collect()
}

/// Augments one sample with the choices in `plan`.
pub fn apply(s: &SampleRef<'_>, plan: &Plan, cfg: &AugmentConfig) -> Result<Augmented> {
    let (h, w) = (s.height, s.width);
    if h == 0 || w == 0 || s.image.len() != h * w * 3 || s.label.is_some_and(|l| l.len() != h * w) {
        return Err(DatasetError::SizeMismatch {
            path: "<augment>".into(),
            index: 0,
            name: s.name.to_string(),
            what: format!("{w}x{h} sample with {} image bytes", s.image.len()),
        });
    }
    let (oh, ow) = (plan.out_h, plan.out_w);
    let rows = axis_taps(h, plan.scaled_h, plan.off_y, oh, false);
    let cols = axis_taps(w, plan.scaled_w, plan.off_x, ow, plan.flip);
    let plane = oh * ow;
    let mut image = vec![0f32; plane * 3];
    let mut label = vec![cfg.ignore_index; plane];
    let mut sum = [0f64; 3];
    let mut valid = 0usize;

    // Pass 1: geometry. Image in 0..255, CHW; label by nearest neighbour.
    for (oy, row) in rows.iter().enumerate() {
        let Some((y0, y1, fy, ny)) = *row else { continue };
        for (ox, col) in cols.iter().enumerate() {
            let Some((x0, x1, fx, nx)) = *col else { continue };
            let p = |y: usize, x: usize| (y * w + x) * 3;
            let (a, b, c, d) = (p(y0, x0), p(y0, x1), p(y1, x0), p(y1, x1));
            for ch in 0..3 {
                let top = s.image[a + ch] as f32 * (1.0 - fx) + s.image[b + ch] as f32 * fx;
                let bot = s.image[c + ch] as f32 * (1.0 - fx) + s.image[d + ch] as f32 * fx;
                let v = top * (1.0 - fy) + bot * fy;
                image[ch * plane + oy * ow + ox] = v;
                sum[ch] += v as f64;
            }
            valid += 1;
            if let Some(l) = s.label {
                label[oy * ow + ox] = l[ny * w + nx];
            }
        }
    }

    // Resolve the colour ops into one affine map (contrast uses the crop's mean grey level).
    let mean_rgb = sum.map(|v| (v / valid.max(1) as f64) as f32);
    let mut aff = Affine::identity();
    for op in &plan.color {
        aff = match *op {
            ColorOp::Brightness(f) => aff.then(scaled_identity(f), [0.0; 3]),
            ColorOp::Contrast(f) => {
                let cur = aff.apply(mean_rgb);
                let g: f32 = (0..3).map(|c| LUMA[c] * cur[c]).sum();
                aff.then(scaled_identity(f), [(1.0 - f) * g; 3])
            }
            ColorOp::Saturation(f) => aff.then(saturation_matrix(f), [0.0; 3]),
            ColorOp::Hue(t) => aff.then(hue_matrix(t), [0.0; 3]),
            ColorOp::Grayscale => aff.then(saturation_matrix(0.0), [0.0; 3]),
        };
    }
    let jitter = (!plan.color.is_empty()).then_some(aff);

    // Pass 2: colour + normalisation; padding gets the fill value. With two views the
    // distorted copy is made from the same geometry output before it is overwritten.
    let distorted = cfg.two_views.then(|| finish(image.clone(), &rows, &cols, plane, jitter, cfg));
    let image = finish(image, &rows, &cols, plane, if cfg.two_views { None } else { jitter }, cfg);
    Ok(Augmented { height: oh, width: ow, image, label, distorted })
}

type Taps = [Option<(usize, usize, f32, usize)>];

/// The second pass over a geometry-pass output `image` (CHW, 0..255): the colour map `color` (if
/// any, clamped to 0..255), then `(x / 255 - mean) / std`; padded pixels get the fill value.
fn finish(
    mut image: Vec<f32>,
    rows: &Taps,
    cols: &Taps,
    plane: usize,
    color: Option<Affine>,
    cfg: &AugmentConfig,
) -> Vec<f32> {
    let ow = cols.len();
    let inv_std = cfg.std.map(|s| 1.0 / s);
    let pad_norm: [f32; 3] = std::array::from_fn(|c| match cfg.pad {
        PadFill::Mean => 0.0,
        PadFill::Zero => -cfg.mean[c] * inv_std[c],
    });
    for (oy, row) in rows.iter().enumerate() {
        for (ox, col) in cols.iter().enumerate() {
            let i = oy * ow + ox;
            if row.is_none() || col.is_none() {
                for c in 0..3 {
                    image[c * plane + i] = pad_norm[c];
                }
                continue;
            }
            let mut x = [image[i], image[plane + i], image[2 * plane + i]];
            if let Some(aff) = &color {
                x = aff.apply(x).map(|v| v.clamp(0.0, 255.0));
            }
            for c in 0..3 {
                image[c * plane + i] = (x[c] * (1.0 / 255.0) - cfg.mean[c]) * inv_std[c];
            }
        }
    }
    image
}

/// Plans and applies in one call.
pub fn augment(s: &SampleRef<'_>, cfg: &AugmentConfig, rng: &mut Rng) -> Result<Augmented> {
    cfg.validate()?;
    let p = plan(s.height, s.width, cfg, rng);
    apply(s, &p, cfg)
}
