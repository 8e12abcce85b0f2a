//! Pseudo-labels for the unlabeled images: the current model predicts each whole image; a pixel
//! keeps its predicted class when the softmax probability is at least the threshold for that
//! class (background = class 0 uses the stricter one), otherwise it is ignored.

use crate::config::TrainConfig;
use crate::data::Source;
use crate::net::Net;
use anyhow::Result;
use datasets::{augment, AugmentConfig, MemoryDataset, Rng as DRng, Sample, SampleSource};
use nn::Ctx;
use serde_json::{json, Value};

/// The retraining set and what the thresholds kept.
pub struct Pseudo {
    /// Labeled images with their labels plus unlabeled images with pseudo-labels.
    pub source: Source,
    /// Counts for the log.
    pub stats: Value,
}

/// Build the labeled + pseudo-labeled training set.
pub fn pseudo_label(
    net: &mut Net,
    train: &Source,
    labeled: &[usize],
    unlabeled: &[usize],
    cfg: &TrainConfig,
    quiet: bool,
) -> Result<Pseudo> {
    let ignore = train.ignore_index();
    let (fg, bg) = (cfg.pseudo_labels.foreground, cfg.pseudo_labels.background);
    let mut samples = Vec::with_capacity(labeled.len() + unlabeled.len());
    for &i in labeled {
        let s = train.sample(i)?;
        samples.push(Sample {
            name: s.name.to_string(),
            height: s.height,
            width: s.width,
            image: s.image.to_vec(),
            label: s.label.map(<[u8]>::to_vec),
        });
    }
    let (mut kept, mut total) = (0usize, 0usize);
    let eval_aug = AugmentConfig::eval();
    for &i in unlabeled {
        let s = train.sample(i)?;
        let a = augment(&s, &eval_aug, &mut DRng::new(0))?;
        let x = crate::net::input(net, a.image, [1, 3, a.height, a.width])?;
        let logits = crate::net::logits(net, &x, &mut Ctx::eval())?;
        let c = logits.dim(1);
        let hw = a.height * a.width;
        let v = logits.to_vec_f32()?;
        let mut label = vec![ignore; hw];
        for p in 0..hw {
            let (mut best, mut mx) = (0usize, f32::NEG_INFINITY);
            for k in 0..c {
                if v[k * hw + p] > mx {
                    mx = v[k * hw + p];
                    best = k;
                }
            }
            let z: f32 = (0..c).map(|k| (v[k * hw + p] - mx).exp()).sum();
            let prob = 1.0 / z as f64; // softmax of the max class
            let thr = if best == 0 { bg } else { fg };
            if prob >= thr {
                label[p] = best as u8;
                kept += 1;
            }
        }
        total += hw;
        samples.push(Sample {
            name: s.name.to_string(),
            height: s.height,
            width: s.width,
            image: s.image.to_vec(),
            label: Some(label),
        });
    }
    let frac = if total == 0 { 0.0 } else { kept as f64 / total as f64 };
    if !quiet {
        eprintln!(
            "segnet: pseudo-labelled {} images, kept {:.1}% of their pixels (thresholds fg {fg}, bg {bg})",
            unlabeled.len(),
            frac * 100.0
        );
    }
    let stats = json!({ "images": unlabeled.len(), "kept_pixels": kept, "total_pixels": total, "kept_fraction": frac });
    let ds = MemoryDataset {
        samples,
        class_names: train.class_names(),
        ignore_index: ignore,
        palette: train.palette().map(<[_]>::to_vec),
    };
    Ok(Pseudo { source: Source::Memory(ds), stats })
}
