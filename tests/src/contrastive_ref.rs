//! A naive f64 reference of the pixel contrastive loss, for tests only.
//!
//! It follows the definition literally: for each bag it materialises the full score matrix
//! `S = F_own^T [F_own F_partner] / tau` and `E = exp(S)` (no stabilisation), evaluates
//! `-log(e_ij / (e_ij + sum of negatives))` (or SupCon's `-log(e_ij / sum_{k != i} e_ik)`) pair by pair,
//! and differentiates by hand into an explicit `dS` matrix, then `dF = dS F / tau` for the anchor side
//! and `dS^T F / tau` for the candidate side. Memory `O(N^2)`: small cases only.
//!
//! Reduction, as the official code (`compute_contrastive_loss` of google-research
//! `supervised_pixel_contrastive_loss`): the anchors that have a positive are averaged per *unit*
//! (an image in the within- and cross-image modes, an image pair of the pair loss, the batch bag),
//! then the units are averaged with a plain mean, a unit without such an anchor counting as 0.

use engine::ops::contrastive::{batch_sample, cross_image_partners};
use engine::ops::{ContrastiveConfig, ContrastiveForm, ContrastiveMode};

/// Pixels of one anchor image (or the batch bag): anchors/own candidates, partner positives, and the
/// unit its anchors are averaged in.
struct RefBag {
    own: Vec<usize>,
    partner: Vec<usize>,
    unit: usize,
}

/// Loss and gradient (same layout as the features `[images, d, hw]`).
#[derive(Clone, Debug)]
pub struct RefOut {
    /// The loss.
    pub loss: f64,
    /// `dloss/dfeatures`.
    pub grad: Vec<f64>,
}

fn valid(labels: &[u8], ignore: u8, img: usize, hw: usize) -> Vec<usize> {
    (img * hw..(img + 1) * hw).filter(|&g| labels[g] != ignore).collect()
}

/// The reference for [`engine::ops::pixel_contrastive_loss`]: `feats` is `[b, d, hw]`, `labels` `b*hw`.
pub fn reference(feats: &[f64], b: usize, d: usize, hw: usize, labels: &[u8], cfg: &ContrastiveConfig) -> RefOut {
    let bags: Vec<RefBag> = match cfg.mode {
        ContrastiveMode::WithinImage => {
            (0..b).map(|i| RefBag { own: valid(labels, cfg.ignore, i, hw), partner: vec![], unit: i }).collect()
        }
        ContrastiveMode::CrossImage => {
            let perm = cross_image_partners(b, cfg.seed);
            (0..b)
                .map(|i| RefBag {
                    own: valid(labels, cfg.ignore, i, hw),
                    partner: if perm[i] == i { vec![] } else { valid(labels, cfg.ignore, perm[i], hw) },
                    unit: i,
                })
                .collect()
        }
        ContrastiveMode::Batch => {
            let lm = engine::LabelMap::new(b, 1, hw, labels.to_vec()).unwrap();
            let ids = batch_sample(&lm, cfg.ignore, cfg.max_pixels, cfg.seed);
            vec![RefBag { own: ids.into_iter().map(|g| g as usize).collect(), partner: vec![], unit: 0 }]
        }
    };
    evaluate(feats, d, hw, labels, &bags, cfg)
}

/// The reference for [`engine::ops::pixel_contrastive_loss_pair`]; the gradient is that of `[a; b]`.
/// Image `i` of either view is in unit (pair) `i`: the anchors of both images are averaged together.
#[allow(clippy::too_many_arguments)]
pub fn reference_pair(
    fa: &[f64],
    fb: &[f64],
    b: usize,
    d: usize,
    hw: usize,
    la: &[u8],
    lb: &[u8],
    cfg: &ContrastiveConfig,
) -> RefOut {
    let feats: Vec<f64> = fa.iter().chain(fb).copied().collect();
    let labels: Vec<u8> = la.iter().chain(lb).copied().collect();
    let bags: Vec<RefBag> = (0..2 * b)
        .map(|i| RefBag {
            own: valid(&labels, cfg.ignore, i, hw),
            partner: valid(&labels, cfg.ignore, (i + b) % (2 * b), hw),
            unit: i % b,
        })
        .collect();
    evaluate(&feats, d, hw, &labels, &bags, cfg)
}

fn evaluate(feats: &[f64], d: usize, hw: usize, labels: &[u8], bags: &[RefBag], cfg: &ContrastiveConfig) -> RefOut {
    // Pixel-major copy: row g holds the d channels of global pixel g.
    let npx = feats.len() / d;
    let mut rows = vec![0.0; feats.len()];
    for (g, row) in rows.chunks_mut(d).enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = feats[(g / hw) * d * hw + c * hw + g % hw];
        }
    }
    let f = |g: usize| &rows[g * d..(g + 1) * d];
    let dot = |a: usize, b: usize| f(a).iter().zip(f(b)).map(|(x, y)| x * y).sum::<f64>() / cfg.tau;
    // Per bag: (sum of anchor losses, counted anchors, dS over (anchor, candidate) with candidates own ++ partner).
    let mut per_bag = Vec::new();
    for bag in bags {
        let n = bag.own.len();
        let cand: Vec<usize> = bag.own.iter().chain(&bag.partner).copied().collect();
        let m = cand.len();
        let e: Vec<f64> = (0..n * m).map(|x| dot(bag.own[x / m], cand[x % m]).exp()).collect();
        let mut ds = vec![0.0; n * m];
        let (mut sum, mut counted) = (0.0, 0usize);
        for i in 0..n {
            let yi = labels[bag.own[i]];
            let is_own = |k: usize| k < n;
            let same = |k: usize| labels[cand[k]] == yi;
            match cfg.form {
                ContrastiveForm::PerPositive => {
                    let neg: f64 = (0..n).filter(|&k| !same(k)).map(|k| e[i * m + k]).sum();
                    let pos: Vec<usize> = (0..m).filter(|&k| same(k)).collect();
                    let np = pos.len() as f64;
                    let mut li = 0.0;
                    // d l_ij / d s_ik = e_ik / (e_ij + neg) for every negative k: summed over j first.
                    let mut neg_coef = 0.0;
                    for &j in &pos {
                        let eij = e[i * m + j];
                        li += -(eij / (eij + neg)).ln() / np;
                        ds[i * m + j] += (-1.0 + eij / (eij + neg)) / np;
                        neg_coef += 1.0 / (eij + neg) / np;
                    }
                    for k in (0..n).filter(|&k| !same(k)) {
                        ds[i * m + k] += e[i * m + k] * neg_coef;
                    }
                    sum += li;
                    counted += 1;
                }
                ContrastiveForm::SupCon => {
                    let cands: Vec<usize> = (0..m).filter(|&k| k != i && (is_own(k) || same(k))).collect();
                    let pos: Vec<usize> = cands.iter().copied().filter(|&k| same(k)).collect();
                    if pos.is_empty() {
                        continue;
                    }
                    let np = pos.len() as f64;
                    let z: f64 = cands.iter().map(|&k| e[i * m + k]).sum();
                    // Each of the |P| terms gives e_ik / z for every candidate k; averaged over |P|, once.
                    for &j in &pos {
                        sum += -(e[i * m + j] / z).ln() / np;
                        ds[i * m + j] -= 1.0 / np;
                    }
                    for &k in &cands {
                        ds[i * m + k] += e[i * m + k] / z;
                    }
                    counted += 1;
                }
            }
        }
        per_bag.push((sum, counted, ds, cand));
    }
    // Anchors with a positive per unit; the loss is the mean over all units of their mean.
    let units = bags.iter().map(|b| b.unit + 1).max().unwrap_or(0);
    let mut per_unit = vec![0usize; units];
    for (bag, (_, counted, _, _)) in bags.iter().zip(&per_bag) {
        per_unit[bag.unit] += counted;
    }
    let mut loss = 0.0;
    let mut grad_rows = vec![0.0; feats.len()];
    for (bag, (sum, counted, ds, cand)) in bags.iter().zip(&per_bag) {
        if *counted == 0 {
            continue;
        }
        let w = 1.0 / (per_unit[bag.unit] as f64 * units as f64);
        loss += w * sum;
        let m = cand.len();
        for (i, &gi) in bag.own.iter().enumerate() {
            for (k, &gk) in cand.iter().enumerate() {
                let v = w * ds[i * m + k] / cfg.tau;
                if v == 0.0 {
                    continue;
                }
                for c in 0..d {
                    grad_rows[gi * d + c] += v * rows[gk * d + c];
                    grad_rows[gk * d + c] += v * rows[gi * d + c];
                }
            }
        }
    }
    let mut grad = vec![0.0; feats.len()];
    for g in 0..npx {
        for c in 0..d {
            grad[(g / hw) * d * hw + c * hw + g % hw] = grad_rows[g * d + c];
        }
    }
    RefOut { loss, grad }
}

/// A random small problem for the contrastive loss: shapes, labels (with ignore pixels), features
/// (unit-normalised or raw), mode, form and temperature.
#[derive(Clone, Debug)]
pub struct ContrastCase {
    /// Batch size.
    pub b: usize,
    /// Channels.
    pub d: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Number of classes.
    pub classes: usize,
    /// Probability that a pixel is labelled ignore.
    pub ignore_p: f64,
    /// Unit-normalise the features over channels.
    pub normalised: bool,
    /// Loss settings (mode, form, tau, max_pixels, seed).
    pub cfg: ContrastiveConfig,
    /// Seed of the data.
    pub seed: u64,
}

impl ContrastCase {
    /// Draw a case with each size in `1..=max_*`.
    pub fn draw(rng: &mut engine::Rng, max_b: usize, max_d: usize, max_hw: usize, max_classes: usize) -> Self {
        let b = 1 + rng.below(max_b);
        let (h, w) = (1 + rng.below(max_hw), 1 + rng.below(max_hw));
        let mode = [ContrastiveMode::WithinImage, ContrastiveMode::CrossImage, ContrastiveMode::Batch][rng.below(3)];
        let form = [ContrastiveForm::PerPositive, ContrastiveForm::SupCon][rng.below(2)];
        let tau = if rng.uniform() < 0.3 { 0.07 } else { 0.1 + 0.9 * rng.uniform() };
        let classes = 1 + rng.below(max_classes);
        let cfg = ContrastiveConfig {
            tau,
            mode,
            form,
            classes,
            ignore: 255,
            max_pixels: 1 + rng.below(b * h * w + 2),
            seed: rng.next_u64(),
        };
        ContrastCase {
            b,
            d: 1 + rng.below(max_d),
            h,
            w,
            classes,
            ignore_p: [0.0, 0.2, 0.5][rng.below(3)],
            normalised: rng.uniform() < 0.5,
            cfg,
            seed: rng.next_u64(),
        }
    }

    /// Smaller variants (one dimension reduced), for shrinking.
    pub fn smaller(&self) -> Vec<Self> {
        let mut v = Vec::new();
        for k in 0..4 {
            let mut c = self.clone();
            let dim = match k {
                0 => &mut c.b,
                1 => &mut c.d,
                2 => &mut c.h,
                _ => &mut c.w,
            };
            if *dim > 1 {
                *dim -= 1;
                v.push(c);
            }
        }
        v
    }

    /// Labels of the case.
    pub fn labels(&self) -> engine::LabelMap {
        let mut rng = engine::Rng::new(self.seed ^ 0x1abe1);
        let data = (0..self.b * self.h * self.w)
            .map(|_| if rng.uniform() < self.ignore_p { 255 } else { rng.below(self.classes) as u8 })
            .collect();
        engine::LabelMap::new(self.b, self.h, self.w, data).unwrap()
    }

    /// Features of the case, `[b, d, h, w]`, as f64 values.
    pub fn features(&self) -> Vec<f64> {
        random_features(self.b, self.d, self.h * self.w, self.normalised, self.seed)
    }
}

/// `[b, d, hw]` features: uniform in `[-1, 1)`, or Gaussian normalised to unit length over `d`.
pub fn random_features(b: usize, d: usize, hw: usize, normalised: bool, seed: u64) -> Vec<f64> {
    let mut rng = engine::Rng::new(seed);
    let mut v: Vec<f64> =
        (0..b * d * hw).map(|_| if normalised { rng.normal() } else { 2.0 * rng.uniform() - 1.0 }).collect();
    if normalised {
        for i in 0..b {
            for p in 0..hw {
                let n: f64 = (0..d).map(|c| v[i * d * hw + c * hw + p].powi(2)).sum::<f64>().sqrt().max(1e-12);
                for c in 0..d {
                    v[i * d * hw + c * hw + p] /= n;
                }
            }
        }
    }
    v
}
