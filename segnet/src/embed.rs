//! `segnet embed`: the paper's picture of what pretraining does to the pixel embeddings.
//!
//! The labeled images of a set (default: the checkpoint's synthetic validation split) go through
//! the network of a checkpoint of any stage but DenseCL; every pixel of the stride-4 feature map
//! gets the ground-truth label at its position (the contrastive loss's `align_corners = true`
//! nearest rule) and an embedding: the projection head's output when the network has one (a
//! contrastive or U2PL checkpoint; `--features head`), else the decoder's features before the
//! classifier (`--features decoder`), L2-normalised per pixel either way. `--pixels` of them are
//! sampled, stratified over the classes (an equal share per class present, the share of a class
//! with fewer pixels going to the others; ignore-label pixels never), deterministically from
//! `--seed`: one reservoir per class while streaming the images, so memory stays at classes x
//! pixels x channels whatever the set's size.
//!
//! Out come a scatter of the sample on its first two principal components ([`crate::pca`]),
//! coloured by class ([`crate::plot::scatter`]), and two numbers to compare checkpoints by: the
//! mean cosine similarity of embeddings of the same class (averaged per class over all pairs of
//! distinct pixels, then over classes) and of different classes (per class pair, then over
//! pairs), and their difference, the separation. Pretraining with the label contrastive loss
//! should raise the separation against a cross-entropy-only network at the same budget.

use crate::cli::{EmbedArgs, FeatureKind};
use crate::config::TrainConfig;
use crate::data::Source;
use crate::net;
use crate::pca::Pca;
use crate::run_dir::write_atomic;
use crate::train::{self, derive_seed};
use anyhow::{bail, Context, Result};
use datasets::{Loader, LoaderConfig, SampleSource};
use engine::{ops, LabelMap, Rng};
use nn::Ctx;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

/// A uniform random sample of at most `cap` embeddings of one class (Algorithm R).
struct Reservoir {
    cap: usize,
    seen: u64,
    rows: Vec<Vec<f32>>,
}

impl Reservoir {
    /// Offer one more embedding; `row` is only built when it is kept.
    fn offer(&mut self, rng: &mut Rng, row: impl FnOnce() -> Vec<f32>) {
        self.seen += 1;
        if self.rows.len() < self.cap {
            self.rows.push(row());
        } else {
            let j = (rng.uniform() * self.seen as f64) as usize;
            if j < self.cap {
                self.rows[j] = row();
            }
        }
    }
}

/// How many of each class to take: an equal share of `total` for every class with pixels, a
/// class with fewer than its share giving the rest to the others.
pub fn stratified_quotas(available: &[usize], total: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..available.len()).filter(|&k| available[k] > 0).collect();
    order.sort_by_key(|&k| (available[k], k));
    let mut quota = vec![0; available.len()];
    let mut left = total;
    for (i, &k) in order.iter().enumerate() {
        let share = left / (order.len() - i);
        // The last class takes the remainder of the division too.
        let want = if i + 1 == order.len() { left } else { share };
        quota[k] = available[k].min(want);
        left -= quota[k];
    }
    quota
}

/// Mean cosine similarities of a sample by class ([`cosine_stats`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CosineStats {
    /// Per class, the mean over its pairs of distinct pixels (`None` below two pixels).
    pub intra: Vec<Option<f64>>,
    /// The mean of [`Self::intra`] over the classes that have one.
    pub mean_intra: Option<f64>,
    /// Per pair of classes present `(a, b, mean over their cross pairs)`, `a < b`.
    pub pairs: Vec<(usize, usize, f64)>,
    /// The mean over [`Self::pairs`] (`None` with fewer than two classes).
    pub mean_inter: Option<f64>,
}

/// The cosine similarities of unit rows by class. Uses `sum_{i != j} x_i . x_j = |S|^2 - n` for
/// unit rows with sum `S`, so it costs one pass, not all pairs.
pub fn cosine_stats(rows: &[Vec<f64>], classes: &[usize], n_classes: usize) -> CosineStats {
    let dim = rows.first().map_or(0, Vec::len);
    let mut sums = vec![vec![0.0; dim]; n_classes];
    let mut counts = vec![0usize; n_classes];
    for (r, &c) in rows.iter().zip(classes) {
        counts[c] += 1;
        sums[c].iter_mut().zip(r).for_each(|(s, x)| *s += x);
    }
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let intra: Vec<Option<f64>> = (0..n_classes)
        .map(|k| {
            let n = counts[k] as f64;
            (counts[k] >= 2).then(|| ((dot(&sums[k], &sums[k]) - n) / (n * (n - 1.0))).clamp(-1.0, 1.0))
        })
        .collect();
    let mut pairs = Vec::new();
    for a in 0..n_classes {
        for b in a + 1..n_classes {
            if counts[a] > 0 && counts[b] > 0 {
                let v = dot(&sums[a], &sums[b]) / (counts[a] * counts[b]) as f64;
                pairs.push((a, b, v.clamp(-1.0, 1.0)));
            }
        }
    }
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let mean_intra = mean(intra.iter().flatten().copied().collect());
    let mean_inter = mean(pairs.iter().map(|p| p.2).collect());
    CosineStats { intra, mean_intra, pairs, mean_inter }
}

/// Fail now, before the network runs, if `path` cannot be written later (its folder is missing).
fn check_writable(flag: &str, path: &Path) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!("{flag} {}: the folder {} does not exist", path.display(), parent.display());
    }
    Ok(())
}

/// Run `segnet embed`.
pub fn run(a: &EmbedArgs) -> Result<()> {
    if a.pixels < 2 {
        bail!("--pixels must be at least 2 (a map of fewer points has no principal axes), got {}", a.pixels);
    }
    check_writable("--out", &a.out)?;
    if let Some(j) = &a.json {
        check_writable("--json", j)?;
    }
    let dev = net::parse_device(&a.device)?;
    let mut fm = train::load_for_features(&a.checkpoint).context("--checkpoint")?;
    let head = match a.features {
        FeatureKind::Auto => fm.has_projection(),
        FeatureKind::Head if !fm.has_projection() => bail!(
            "--features head: {} (a {} checkpoint) has no projection head; use --features decoder",
            a.checkpoint.display(),
            fm.stage
        ),
        FeatureKind::Head => true,
        FeatureKind::Decoder => false,
    };
    let source: Arc<Source> = match &a.data {
        Some(p) => {
            let pack = datasets::Pack::open(p).map_err(|e| anyhow::anyhow!("--data: {e}"))?;
            Arc::new(Source::Pack(pack))
        }
        None if fm.cfg.data.is_some() => bail!("--data is required: the checkpoint was trained on a pack"),
        None => {
            let cfg = TrainConfig { data: None, val_data: None, ..fm.cfg.clone() };
            Arc::new(Source::Memory(datasets::synth_dataset(&crate::data::synth_config(&cfg, true))?))
        }
    };
    let data_name = a.data.as_ref().map_or("the synthetic validation split".to_string(), |p| p.display().to_string());
    let names = source.class_names();
    let n_classes = source.num_classes();
    let ignore = source.ignore_index();
    let indices = source.labeled_indices()?;
    if indices.is_empty() {
        bail!("{data_name}: no labeled images to embed");
    }
    nn::to_device(&mut fm.net, dev)?;

    let mut rng = Rng::new(derive_seed(a.seed, &[0xE3BE_D000]));
    let mut reservoirs: Vec<Reservoir> =
        (0..n_classes).map(|_| Reservoir { cap: a.pixels, seen: 0, rows: Vec::new() }).collect();
    let batch = if source.uniform_size()?.is_some() { 8 } else { 1 };
    let loader = Loader::new(source.clone(), Some(indices.clone()), LoaderConfig::eval(batch))?;
    let mut dim = 0;
    for b in loader.epoch(0) {
        let b = b?;
        let x = net::input(&mut fm.net, b.images, b.image_shape)?;
        let mut ctx = Ctx::eval();
        let z = if head { net::embed(&mut fm.net, &x, None, &mut ctx)? } else { fm.net.features(&x, &mut ctx)? };
        let (bn, c, h, w) = (z.dim(0), z.dim(1), z.dim(2), z.dim(3));
        dim = c;
        let [ln, lh, lw] = b.label_shape;
        let labels = LabelMap::new(ln, lh, lw, b.labels)?;
        let lab = ops::resize_nearest_labels_align_corners(&labels, [h, w])?;
        let zv = z.to_vec_f32()?;
        for n in 0..bn {
            for p in 0..h * w {
                let k = lab.data[n * h * w + p];
                if k == ignore || k as usize >= n_classes {
                    continue;
                }
                reservoirs[k as usize].offer(&mut rng, || (0..c).map(|ch| zv[(n * c + ch) * h * w + p]).collect());
            }
        }
    }

    // The stratified sample, each class's share drawn from its reservoir at random.
    let quotas = stratified_quotas(&reservoirs.iter().map(|r| r.rows.len()).collect::<Vec<_>>(), a.pixels);
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut classes: Vec<usize> = Vec::new();
    for (k, (r, &q)) in reservoirs.iter_mut().zip(&quotas).enumerate() {
        for i in 0..q {
            let len = r.rows.len();
            let j = i + (rng.uniform() * (len - i) as f64) as usize;
            r.rows.swap(i, j.min(len - 1));
            let v: Vec<f64> = r.rows[i].iter().map(|&x| x as f64).collect();
            // Unit length, so cosine similarity is a dot product (the head's output already is).
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            rows.push(v.iter().map(|x| x / norm).collect());
            classes.push(k);
        }
    }
    if rows.len() < 2 {
        bail!("{data_name}: only {} labeled pixel(s) to embed", rows.len());
    }
    let pca = Pca::fit(&rows.concat(), dim, 2.min(dim))?;
    let points: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| {
            let xy = pca.project(r);
            (xy[0], xy.get(1).copied().unwrap_or(0.0))
        })
        .collect();
    let CosineStats { intra, mean_intra, pairs, mean_inter } = cosine_stats(&rows, &classes, n_classes);
    let separation = mean_intra.zip(mean_inter).map(|(i, e)| i - e);

    let what = if head { "projection-head" } else { "decoder" };
    let file = a.checkpoint.file_name().map_or(a.checkpoint.display().to_string(), |f| f.to_string_lossy().into());
    let title = format!("{what} embeddings of {} pixels: {file} ({} stage)", rows.len(), fm.stage);
    let explained = |k: usize| if k < pca.axes.len() { pca.explained(k) * 100.0 } else { 0.0 };
    let png = crate::plot::scatter::scatter_png(
        &title,
        &format!("PC 1 ({:.1} % of variance)", explained(0)),
        &format!("PC 2 ({:.1} % of variance)", explained(1)),
        &points,
        &classes,
        &names,
    )?;
    write_atomic(&a.out, &png)?;

    // (A difference of two equal means is printed as 0, not -0.0000.)
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{:.4}", if v.abs() < 5e-5 { 0.0 } else { v }));
    let per_class: Vec<String> =
        (0..n_classes).filter(|&k| quotas[k] > 0).map(|k| format!("{} {}", names[k], quotas[k])).collect();
    println!(
        "embedded {} pixels of {} images of {data_name} ({}); {what} features ({dim}-d) of a {} checkpoint",
        rows.len(),
        indices.len(),
        per_class.join(", "),
        fm.stage
    );
    println!(
        "mean cosine similarity: intra-class {}, inter-class {}, separation {}",
        fmt(mean_intra),
        fmt(mean_inter),
        fmt(separation)
    );
    if mean_inter.is_none() {
        eprintln!("warning: the sample has pixels of one class only: no inter-class similarity");
    }
    if mean_intra.zip(mean_inter).is_some_and(|(i, e)| i > 0.999 && e > 0.999) {
        eprintln!(
            "warning: the embeddings are all but identical (cosine similarity ~1 within and across classes): the {what} output has collapsed to one direction{}",
            if head { "; --features decoder shows the features before the head" } else { "" }
        );
    }
    println!("map: {}", a.out.display());
    if let Some(j) = &a.json {
        let v = json!({
            "checkpoint": a.checkpoint, "stage": fm.stage, "features": if head { "head" } else { "decoder" },
            "dim": dim, "data": data_name, "images": indices.len(), "pixels": rows.len(), "seed": a.seed,
            "intra_class_cosine": mean_intra, "inter_class_cosine": mean_inter, "separation": separation,
            "classes": (0..n_classes).map(|k| json!({ "name": names[k], "pixels": quotas[k], "intra_class_cosine": intra[k] })).collect::<Vec<_>>(),
            "inter_class_pairs": pairs.iter().map(|&(x, y, c)| json!({ "a": names[x], "b": names[y], "cosine": c })).collect::<Vec<_>>(),
            "pca_explained_variance": (0..pca.axes.len()).map(|k| pca.explained(k)).collect::<Vec<_>>(),
            "map": a.out,
        });
        write_atomic(j, serde_json::to_string_pretty(&v)?.as_bytes())?;
        println!("numbers: {}", j.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_share_equally_and_pass_on_what_a_class_lacks() {
        assert_eq!(stratified_quotas(&[100, 100, 100, 100], 200), [50, 50, 50, 50]);
        assert_eq!(stratified_quotas(&[10, 100, 0, 100], 200), [10, 95, 0, 95]);
        assert_eq!(stratified_quotas(&[3, 4], 200), [3, 4], "fewer pixels than asked: all of them");
        let q = stratified_quotas(&[1000, 1000, 1000], 100);
        assert_eq!(q.iter().sum::<usize>(), 100);
        assert!(q.iter().all(|&x| x == 33 || x == 34), "{q:?}");
    }

    #[test]
    fn cosine_stats_by_hand() {
        let s = std::f64::consts::FRAC_1_SQRT_2;
        // Class 0: two copies of e1 (intra 1); class 1: e2 and (e1+e2)/sqrt2 (intra 1/sqrt2).
        let rows = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 1.0], vec![s, s]];
        let c = cosine_stats(&rows, &[0, 0, 1, 1], 3);
        assert!((c.intra[0].unwrap() - 1.0).abs() < 1e-12);
        assert!((c.intra[1].unwrap() - s).abs() < 1e-12);
        assert_eq!(c.intra[2], None);
        assert!((c.mean_intra.unwrap() - (1.0 + s) / 2.0).abs() < 1e-12);
        // Cross pairs: e1.e2 = 0 twice, e1.(e1+e2)/sqrt2 = s twice: mean s/2.
        assert_eq!(c.pairs.len(), 1);
        assert!((c.mean_inter.unwrap() - s / 2.0).abs() < 1e-12);
        assert_eq!(cosine_stats(&rows[..2], &[0, 0], 2).mean_inter, None, "one class: no inter-class pairs");
    }

    #[test]
    fn reservoir_keeps_a_uniform_sample() {
        let mut rng = Rng::new(1);
        let mut hits = [0usize; 10];
        for _ in 0..2000 {
            let mut r = Reservoir { cap: 3, seen: 0, rows: Vec::new() };
            for i in 0..10 {
                r.offer(&mut rng, || vec![i as f32]);
            }
            assert_eq!(r.rows.len(), 3);
            r.rows.iter().for_each(|v| hits[v[0] as usize] += 1);
        }
        // Each of the 10 kept with probability 3/10: 600 of 2000 expected.
        assert!(hits.iter().all(|&h| (480..720).contains(&h)), "{hits:?}");
    }
}
