//! Deterministic synthetic segmentation scenes: the embedded default dataset.
//!
//! The task: *texture segmentation under wide nuisance variation*. Each scene is a lit, noisy
//! surface (background) with 2-4 overlapping blobs; a blob's class is the kind of pattern it is
//! covered with, never its colour, size or outline:
//!
//! 0 background: a smooth, low-frequency shaded surface with clutter (flat smudges);
//! 1 stripes: parallel bands; 2 checker: a rotated checkerboard; 3 dots: a sparse lattice of round
//! dots; 4 blotches: an irregular camouflage of rounded patches; 5 rings: concentric rings about a
//! point off the blob. The embedded default uses the first four (`segnet train` sets 4 classes).
//!
//! What varies per instance (the nuisances a model has to become invariant to): the pattern's
//! hue and brightness and its contrast (faint to stark), its period (6-14 px at 64 px, a 2.3x
//! scale range) and orientation, a smooth warp of the pattern (bent stripes, sheared lattices),
//! the blob's outline (a star-convex shape with random low-order harmonics), its size and place,
//! occlusion by later blobs, a global lighting gradient and brightness, and pixel noise. The class
//! cues are local (a few 3x3 convolutions see a period of the pattern), so the task is learnable
//! from scratch in minutes; the nuisance space is wide, so a handful of labeled images covers
//! little of it and a model fitted to them generalises poorly: the task is label-limited
//! (measured in the README).
//!
//! Each sample is a pure function of `(seed, index)`, so images can be generated in parallel, in
//! any order, and always come out identical.

use std::path::Path;

use rayon::prelude::*;

use crate::error::{DatasetError, Result};
use crate::pack::{PackSpec, PackSummary, PackWriter};
use crate::rng::Rng;
use crate::sample::{MemoryDataset, Sample};

/// Names of all synthetic classes, in label order.
pub const CLASS_NAMES: [&str; 6] = ["background", "stripes", "checker", "dots", "blotches", "rings"];

/// Parameters of the generator.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    pub seed: u64,
    pub num_images: usize,
    pub height: usize,
    pub width: usize,
    /// Classes including background, 2..=6.
    pub num_classes: usize,
    /// Blobs per image, inclusive range.
    pub min_shapes: usize,
    pub max_shapes: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { seed: 0, num_images: 200, height: 64, width: 64, num_classes: 4, min_shapes: 2, max_shapes: 4 }
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

/// A random colour.
fn colour(rng: &mut Rng) -> [f32; 3] {
    [rng.uniform(0.0, 255.0), rng.uniform(0.0, 255.0), rng.uniform(0.0, 255.0)]
}

/// Two pattern colours: a random mid colour brightened and darkened by a random contrast
/// (mostly a luminance pattern, as real surface textures are, with a small chroma tilt), so the
/// pattern is always visible but ranges from faint to stark and takes any hue.
fn colour_pair(rng: &mut Rng) -> ([f32; 3], [f32; 3]) {
    let m = [rng.uniform(60.0, 195.0), rng.uniform(60.0, 195.0), rng.uniform(60.0, 195.0)];
    let c = rng.uniform(25.0, 70.0);
    let tilt = [rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)];
    let a = [m[0] + c * (1.0 + tilt[0]), m[1] + c * (1.0 + tilt[1]), m[2] + c * (1.0 + tilt[2])];
    let b = [m[0] - c * (1.0 + tilt[0]), m[1] - c * (1.0 + tilt[1]), m[2] - c * (1.0 + tilt[2])];
    if rng.chance(0.5) {
        (a, b)
    } else {
        (b, a)
    }
}

/// One textured blob.
struct Blob {
    class: u8,
    cx: f32,
    cy: f32,
    /// Mean radius and the outline's harmonics `(amplitude, phase)` of orders 2, 3 and 5.
    r: f32,
    harmonics: [(f32, f32); 3],
    /// Pattern frame: rotation, period, phase, warp `(amplitude, wavelength, phase)`.
    cos: f32,
    sin: f32,
    period: f32,
    phase: [f32; 2],
    warp: (f32, f32, f32),
    /// Centre of the rings (pattern coordinates), off the blob's centre.
    ring_centre: [f32; 2],
    /// Seed of the blotches' noise field.
    noise_seed: u64,
    a: [f32; 3],
    b: [f32; 3],
}

impl Blob {
    /// Whether the offset `(dx, dy)` from the centre is inside the star-convex outline.
    fn inside(&self, dx: f32, dy: f32) -> bool {
        let d = (dx * dx + dy * dy).sqrt();
        if d <= 0.0 {
            return true;
        }
        let t = dy.atan2(dx);
        let mut rho = 1.0;
        for (k, &(amp, ph)) in [2.0f32, 3.0, 5.0].iter().zip(&self.harmonics) {
            rho += amp * (k * t + ph).cos();
        }
        d <= self.r * rho
    }

    /// True where the pattern shows colour `a` (else `b`), at offset `(dx, dy)` from the centre.
    fn pattern(&self, dx: f32, dy: f32) -> bool {
        let u0 = self.cos * dx + self.sin * dy;
        let v0 = -self.sin * dx + self.cos * dy;
        // A smooth warp bends the pattern: stripes curve, lattices shear.
        let (wa, wl, wp) = self.warp;
        let u = u0 + wa * (v0 / wl + wp).sin();
        let v = v0 + wa * (u0 / wl + wp).cos();
        let p = self.period;
        let fu = ((u + self.phase[0]) / p).rem_euclid(1.0);
        let fv = ((v + self.phase[1]) / p).rem_euclid(1.0);
        match self.class {
            1 => fu < 0.5,
            2 => ((fu < 0.5) as u8 + (fv < 0.5) as u8) % 2 == 0,
            3 => (fu - 0.5).powi(2) + (fv - 0.5).powi(2) < 0.05,
            4 => lattice_noise(self.noise_seed, (u + self.phase[0]) / p * 2.2, (v + self.phase[1]) / p * 2.2) > 0.0,
            _ => {
                let (ru, rv) = (u - self.ring_centre[0], v - self.ring_centre[1]);
                ((ru * ru + rv * rv).sqrt() / p).rem_euclid(1.0) < 0.5
            }
        }
    }
}

/// Value noise on an unbounded lattice: a hashed value in `[-1, 1]` per integer point, blended
/// with smoothstep weights; thresholded at 0 it gives rounded, irregular patches ~1 cell across.
fn lattice_noise(seed: u64, x: f32, y: f32) -> f32 {
    let corner = |i: i64, j: i64| -> f32 {
        let mut h =
            seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (j as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        h ^= h >> 31;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 29;
        (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let (fx, fy) = (x.floor(), y.floor());
    let (i, j) = (fx as i64, fy as i64);
    let (tx, ty) = (x - fx, y - fy);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let top = corner(i, j) * (1.0 - sx) + corner(i + 1, j) * sx;
    let bot = corner(i, j + 1) * (1.0 - sx) + corner(i + 1, j + 1) * sx;
    top * (1.0 - sy) + bot * sy
}

/// Smooth value noise: bilinear interpolation of a coarse random grid (`cells` per side).
struct ValueNoise {
    cells: usize,
    grid: Vec<f32>,
}

impl ValueNoise {
    fn new(rng: &mut Rng, cells: usize) -> Self {
        let n = cells + 1;
        ValueNoise { cells, grid: (0..n * n).map(|_| rng.uniform(-1.0, 1.0)).collect() }
    }
    /// Noise at `(x, y)` in `[0, 1]^2`, in `[-1, 1]`.
    fn at(&self, x: f32, y: f32) -> f32 {
        let n = self.cells + 1;
        let gx = (x.clamp(0.0, 1.0) * self.cells as f32).min(self.cells as f32 - 1e-4);
        let gy = (y.clamp(0.0, 1.0) * self.cells as f32).min(self.cells as f32 - 1e-4);
        let (ix, iy) = (gx as usize, gy as usize);
        let (fx, fy) = (gx - ix as f32, gy - iy as f32);
        let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let g = |i: usize, j: usize| self.grid[j * n + i];
        let top = g(ix, iy) * (1.0 - sx) + g(ix + 1, iy) * sx;
        let bot = g(ix, iy + 1) * (1.0 - sx) + g(ix + 1, iy + 1) * sx;
        top * (1.0 - sy) + bot * sy
    }
}

/// Generates sample `index` of the configured dataset (pure function of `cfg.seed` and `index`).
pub fn synth_sample(cfg: &SynthConfig, index: usize) -> Result<Sample> {
    cfg.validate()?;
    let (h, w) = (cfg.height, cfg.width);
    let mut rng = Rng::derive(cfg.seed, &[0x7E47_5CE7E, index as u64]);
    let side = h.min(w) as f32;
    let scale = side / 64.0;
    let mut rgb = vec![[0f32; 3]; h * w];
    let mut label = vec![0u8; h * w];

    // Background: a shaded surface (low-frequency noise around a random colour) with clutter.
    let base = colour(&mut rng);
    let shade = ValueNoise::new(&mut rng, 3);
    let shade_amp = rng.uniform(15.0, 50.0);
    for y in 0..h {
        for x in 0..w {
            let s = shade_amp * shade.at(x as f32 / w as f32, y as f32 / h as f32);
            rgb[y * w + x] = [base[0] + s, base[1] + s, base[2] + s];
        }
    }
    let smudges = rng.range_inclusive(0, 3);
    for _ in 0..smudges {
        let (cx, cy) = (rng.uniform(0.0, w as f32), rng.uniform(0.0, h as f32));
        let (rx, ry) = (rng.uniform(2.0, 7.0) * scale, rng.uniform(2.0, 7.0) * scale);
        let col = colour(&mut rng);
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = ((x as f32 + 0.5 - cx) / rx, (y as f32 + 0.5 - cy) / ry);
                if dx * dx + dy * dy <= 1.0 {
                    rgb[y * w + x] = col;
                }
            }
        }
    }

    // Blobs: classes cycle through a shuffled list so an image shows several distinct classes.
    let mut classes: Vec<u8> = (1..cfg.num_classes as u8).collect();
    rng.shuffle(&mut classes);
    let count = rng.range_inclusive(cfg.min_shapes, cfg.max_shapes);
    for k in 0..count {
        let r = rng.uniform(0.18, 0.32) * side;
        let theta = rng.uniform(0.0, std::f32::consts::TAU);
        let period = rng.uniform(6.0, 14.0) * scale;
        let (a, b) = colour_pair(&mut rng);
        let blob = Blob {
            class: classes[k % classes.len()],
            cx: rng.uniform(0.3 * r, w as f32 - 0.3 * r),
            cy: rng.uniform(0.3 * r, h as f32 - 0.3 * r),
            r,
            harmonics: [
                (rng.uniform(0.0, 0.25), rng.uniform(0.0, 6.3)),
                (rng.uniform(0.0, 0.15), rng.uniform(0.0, 6.3)),
                (rng.uniform(0.0, 0.08), rng.uniform(0.0, 6.3)),
            ],
            cos: theta.cos(),
            sin: theta.sin(),
            period,
            phase: [rng.uniform(0.0, period), rng.uniform(0.0, period)],
            warp: (rng.uniform(0.0, 0.6) * period, rng.uniform(6.0, 16.0) * scale, rng.uniform(0.0, 6.3)),
            ring_centre: [rng.uniform(-1.5, 1.5) * r, rng.uniform(-1.5, 1.5) * r],
            noise_seed: rng.next_u64(),
            a,
            b,
        };
        let reach = 1.5 * r;
        let x0 = (blob.cx - reach).floor().max(0.0) as usize;
        let x1 = ((blob.cx + reach).ceil().max(0.0) as usize).min(w);
        let y0 = (blob.cy - reach).floor().max(0.0) as usize;
        let y1 = ((blob.cy + reach).ceil().max(0.0) as usize).min(h);
        for y in y0..y1 {
            for x in x0..x1 {
                let dx = x as f32 + 0.5 - blob.cx;
                let dy = y as f32 + 0.5 - blob.cy;
                if !blob.inside(dx, dy) {
                    continue;
                }
                rgb[y * w + x] = if blob.pattern(dx, dy) { blob.a } else { blob.b };
                label[y * w + x] = blob.class;
            }
        }
    }

    // Lighting (a linear gradient of gain and a global offset) and pixel noise over everything.
    let (gx, gy) = (rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4));
    let gain = rng.uniform(0.7, 1.2);
    let offset = rng.uniform(-30.0, 30.0);
    let noise = rng.uniform(3.0, 12.0);
    let mut image = vec![0u8; h * w * 3];
    for y in 0..h {
        for x in 0..w {
            let g = gain * (1.0 + gx * (x as f32 / w as f32 - 0.5) + gy * (y as f32 / h as f32 - 0.5));
            let p = y * w + x;
            for c in 0..3 {
                let v = rgb[p][c] * g + offset + rng.uniform(-noise, noise);
                image[p * 3 + c] = v.clamp(0.0, 255.0) as u8;
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
    Ok(MemoryDataset { samples, class_names: spec.class_names, ignore_index: spec.ignore_index, palette: spec.palette })
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
