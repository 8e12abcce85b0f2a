//! Deterministic synthetic segmentation scenes: the embedded default dataset.
//!
//! Why this design: the class of a region is defined by its shape AND its texture, while every
//! colour (background and both texture colours of each shape) is drawn per instance. So colour alone
//! predicts nothing and a model has to learn spatial features — enough to exercise contrastive
//! pretraining and fine-tuning honestly, at a size (64x64 default) that trains on 2 CPU cores.
//!
//! Classes (up to 6, background included):
//! 0 background: per-pixel noise around a random colour;
//! 1 disc with stripes; 2 square with a checker pattern; 3 triangle with dots;
//! 4 cross with a grid of lines; 5 ellipse with concentric rings.
//! Shapes are rotated, sized and placed at random and may occlude each other (the label is the
//! topmost shape). Each sample is a pure function of `(seed, index)`, so images can be generated in
//! parallel, in any order, and always come out identical.

use std::path::Path;

use rayon::prelude::*;

use crate::error::{DatasetError, Result};
use crate::pack::{PackSpec, PackSummary, PackWriter};
use crate::rng::Rng;
use crate::sample::{MemoryDataset, Sample};

/// Names of all synthetic classes, in label order.
pub const CLASS_NAMES: [&str; 6] =
    ["background", "striped-disc", "checkered-square", "dotted-triangle", "grid-cross", "ringed-ellipse"];

/// Parameters of the generator.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    pub seed: u64,
    pub num_images: usize,
    pub height: usize,
    pub width: usize,
    /// Classes including background, 2..=6.
    pub num_classes: usize,
    /// Shapes per image, inclusive range.
    pub min_shapes: usize,
    pub max_shapes: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { seed: 0, num_images: 200, height: 64, width: 64, num_classes: 5, min_shapes: 2, max_shapes: 4 }
    }
}

impl SynthConfig {
    /// Checks the parameters; every generator entry point calls this first.
    pub fn validate(&self) -> Result<()> {
        if !(2..=CLASS_NAMES.len()).contains(&self.num_classes) {
            return Err(DatasetError::Config(format!(
                "synthetic data supports 2..={} classes, got {}",
                CLASS_NAMES.len(),
                self.num_classes
            )));
        }
        if self.height < 16 || self.width < 16 || self.height > 4096 || self.width > 4096 {
            return Err(DatasetError::Config(format!(
                "synthetic images must be 16..=4096 pixels a side, got {}x{}",
                self.width, self.height
            )));
        }
        if self.min_shapes == 0 || self.min_shapes > self.max_shapes || self.max_shapes > 64 {
            return Err(DatasetError::Config(format!(
                "need 1 <= min_shapes <= max_shapes <= 64, got {}..={}",
                self.min_shapes, self.max_shapes
            )));
        }
        Ok(())
    }

    /// The pack spec (class names, ignore 255, a palette for rendering) for this configuration.
    pub fn spec(&self) -> PackSpec {
        let names = CLASS_NAMES[..self.num_classes.min(CLASS_NAMES.len())].iter().map(|s| s.to_string()).collect();
        let palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]];
        PackSpec { class_names: names, ignore_index: 255, palette: Some(palette[..self.num_classes.min(6)].to_vec()) }
    }
}

/// A random colour; texture colour pairs are re-drawn until they differ clearly, so the pattern is
/// always visible (otherwise a shape could be indistinguishable from a flat patch).
fn colour(rng: &mut Rng) -> [f32; 3] {
    [rng.uniform(0.0, 255.0), rng.uniform(0.0, 255.0), rng.uniform(0.0, 255.0)]
}

fn contrasting_pair(rng: &mut Rng) -> ([f32; 3], [f32; 3]) {
    let a = colour(rng);
    let mut b = colour(rng);
    for _ in 0..32 {
        let d: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
        if d >= 180.0 {
            break;
        }
        b = colour(rng);
    }
    (a, b)
}

/// One shape instance.
struct Shape {
    class: u8,
    cx: f32,
    cy: f32,
    r: f32,
    cos: f32,
    sin: f32,
    period: f32,
    phase: f32,
    a: [f32; 3],
    b: [f32; 3],
}

impl Shape {
    /// Whether local coordinates (u, v) (rotated frame, centred) are inside the shape outline.
    fn inside(&self, u: f32, v: f32) -> bool {
        let r = self.r;
        match self.class {
            1 => u * u + v * v <= r * r,
            2 => u.abs() <= 0.8 * r && v.abs() <= 0.8 * r,
            3 => {
                // Equilateral triangle, circumradius r: inside all three edges (inradius r/2).
                const S: f32 = 0.866_025_4; // sin 60
                -v <= 0.5 * r && (S * u + 0.5 * v) <= 0.5 * r && (-S * u + 0.5 * v) <= 0.5 * r
            }
            4 => {
                let arm = 0.38 * r;
                (u.abs() <= r && v.abs() <= arm) || (v.abs() <= r && u.abs() <= arm)
            }
            _ => (u / r).powi(2) + (v / (0.55 * r)).powi(2) <= 1.0,
        }
    }

    /// True where the texture shows colour `a` (else `b`).
    fn texture(&self, u: f32, v: f32) -> bool {
        let p = self.period;
        let fu = ((u + self.phase) / p).rem_euclid(1.0);
        let fv = ((v + self.phase) / p).rem_euclid(1.0);
        match self.class {
            1 => fu < 0.5,
            2 => ((fu < 0.5) as u8 + (fv < 0.5) as u8) % 2 == 0,
            3 => (fu - 0.5).powi(2) + (fv - 0.5).powi(2) < 0.09,
            4 => fu < 0.3 || fv < 0.3,
            _ => ((u * u + v * v).sqrt() / p).rem_euclid(1.0) < 0.5,
        }
    }
}

/// Generates sample `index` of the configured dataset (pure function of `cfg.seed` and `index`).
pub fn synth_sample(cfg: &SynthConfig, index: usize) -> Result<Sample> {
    cfg.validate()?;
    let (h, w) = (cfg.height, cfg.width);
    let mut rng = Rng::derive(cfg.seed, &[0x5EED_5CE7E, index as u64]);
    let mut image = vec![0u8; h * w * 3];
    let mut label = vec![0u8; h * w];

    // Background: noisy texture around a random colour.
    let base = colour(&mut rng);
    let noise_amp = rng.uniform(15.0, 40.0);
    for px in image.chunks_exact_mut(3) {
        for (c, &b) in px.iter_mut().zip(&base) {
            *c = (b + rng.uniform(-noise_amp, noise_amp)).clamp(0.0, 255.0) as u8;
        }
    }

    // Shape classes cycle through a shuffled list so an image shows several distinct classes.
    let mut classes: Vec<u8> = (1..cfg.num_classes as u8).collect();
    rng.shuffle(&mut classes);
    let count = rng.range_inclusive(cfg.min_shapes, cfg.max_shapes);
    let side = h.min(w) as f32;
    for k in 0..count {
        let r = rng.uniform(0.14, 0.3) * side;
        let theta = rng.uniform(0.0, std::f32::consts::TAU);
        let (a, b) = contrasting_pair(&mut rng);
        let shape = Shape {
            class: classes[k % classes.len()],
            cx: rng.uniform(0.4 * r, w as f32 - 0.4 * r),
            cy: rng.uniform(0.4 * r, h as f32 - 0.4 * r),
            r,
            cos: theta.cos(),
            sin: theta.sin(),
            period: rng.uniform(4.0, 7.0) * (side / 64.0).max(1.0),
            phase: rng.uniform(0.0, 8.0),
            a,
            b,
        };
        let fill_noise = rng.uniform(5.0, 15.0);
        let x0 = (shape.cx - r).floor().max(0.0) as usize;
        let x1 = ((shape.cx + r).ceil() as usize).min(w);
        let y0 = (shape.cy - r).floor().max(0.0) as usize;
        let y1 = ((shape.cy + r).ceil() as usize).min(h);
        for y in y0..y1 {
            for x in x0..x1 {
                let dx = x as f32 + 0.5 - shape.cx;
                let dy = y as f32 + 0.5 - shape.cy;
                let u = shape.cos * dx + shape.sin * dy;
                let v = -shape.sin * dx + shape.cos * dy;
                if !shape.inside(u, v) {
                    continue;
                }
                let col = if shape.texture(u, v) { &shape.a } else { &shape.b };
                let p = (y * w + x) * 3;
                for c in 0..3 {
                    image[p + c] = (col[c] + rng.uniform(-fill_noise, fill_noise)).clamp(0.0, 255.0) as u8;
                }
                label[y * w + x] = shape.class;
            }
        }
    }
    Ok(Sample { name: format!("synth-{index:06}"), height: h, width: w, image, label: Some(label) })
}

/// The whole configured dataset in memory, generated in parallel (order and content are fixed).
pub fn synth_dataset(cfg: &SynthConfig) -> Result<MemoryDataset> {
    cfg.validate()?;
    let samples = (0..cfg.num_images).into_par_iter().map(|i| synth_sample(cfg, i)).collect::<Result<Vec<_>>>()?;
    let spec = cfg.spec();
    Ok(MemoryDataset { samples, class_names: spec.class_names, ignore_index: spec.ignore_index })
}

/// Writes the configured dataset as a pack at `path` (streaming, in chunks generated in parallel).
pub fn synth_pack(path: impl AsRef<Path>, cfg: &SynthConfig) -> Result<PackSummary> {
    cfg.validate()?;
    let mut writer = PackWriter::create(path, cfg.spec())?;
    let chunk = 64;
    for start in (0..cfg.num_images).step_by(chunk) {
        let end = (start + chunk).min(cfg.num_images);
        let samples = (start..end).into_par_iter().map(|i| synth_sample(cfg, i)).collect::<Result<Vec<_>>>()?;
        for s in &samples {
            writer.push(&s.view())?;
        }
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SynthConfig {
        SynthConfig { num_images: 40, ..SynthConfig::default() }
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let cfg = small();
        assert_eq!(synth_sample(&cfg, 3).unwrap(), synth_sample(&cfg, 3).unwrap());
        assert_ne!(synth_sample(&cfg, 3).unwrap().image, synth_sample(&cfg, 4).unwrap().image);
        let other = SynthConfig { seed: 1, ..cfg.clone() };
        assert_ne!(synth_sample(&cfg, 3).unwrap().image, synth_sample(&other, 3).unwrap().image);
    }

    #[test]
    fn labels_valid_and_several_classes_per_image() {
        let cfg = small();
        let ds = synth_dataset(&cfg).unwrap();
        let mut seen = vec![0usize; cfg.num_classes];
        let mut multi = 0;
        for s in &ds.samples {
            let l = s.label.as_ref().unwrap();
            assert_eq!(l.len(), cfg.height * cfg.width);
            assert_eq!(s.image.len(), cfg.height * cfg.width * 3);
            let mut present = vec![false; cfg.num_classes];
            for &v in l {
                assert!((v as usize) < cfg.num_classes);
                present[v as usize] = true;
                seen[v as usize] += 1;
            }
            multi += (present.iter().filter(|&&p| p).count() >= 3) as usize;
        }
        assert!(seen.iter().all(|&c| c > 0), "every class appears: {seen:?}");
        assert!(multi * 2 >= ds.samples.len(), "most images show >= 3 classes ({multi})");
    }

    /// Colour alone must not predict the class: the mean colour of each foreground class over the
    /// dataset should be close to mid-grey (colours are uniform per instance), and classes should not
    /// be separable by mean colour.
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn colour_is_not_predictive() {
        let cfg = SynthConfig { num_images: 120, ..small() };
        let ds = synth_dataset(&cfg).unwrap();
        let mut sum = vec![[0f64; 3]; cfg.num_classes];
        let mut cnt = vec![0f64; cfg.num_classes];
        for s in &ds.samples {
            for (i, &l) in s.label.as_ref().unwrap().iter().enumerate() {
                for c in 0..3 {
                    sum[l as usize][c] += s.image[i * 3 + c] as f64;
                }
                cnt[l as usize] += 1.0;
            }
        }
        for k in 0..cfg.num_classes {
            for c in 0..3 {
                let m = sum[k][c] / cnt[k];
                assert!((100.0..155.0).contains(&m), "class {k} channel {c} mean {m}");
            }
        }
    }

    #[test]
    fn rejects_bad_config() {
        for cfg in [
            SynthConfig { num_classes: 1, ..small() },
            SynthConfig { num_classes: 7, ..small() },
            SynthConfig { height: 4, ..small() },
            SynthConfig { min_shapes: 3, max_shapes: 2, ..small() },
        ] {
            assert!(matches!(synth_sample(&cfg, 0), Err(DatasetError::Config(_))));
        }
    }
}
