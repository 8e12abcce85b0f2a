//! The data a run trains and evaluates on: a pack file, or the embedded synthetic dataset
//! generated in memory from its seed (so `segnet train` needs no download).

use crate::config::TrainConfig;
use anyhow::{bail, Result};
use datasets::{synth_dataset, MemoryDataset, Pack, SampleRef, SampleSource, SynthConfig};
use std::path::Path;
use std::sync::Arc;

/// A pack or an in-memory dataset, behind one `SampleSource`.
pub enum Source {
    /// A memory-mapped pack.
    Pack(Pack),
    /// Generated samples.
    Memory(MemoryDataset),
}

impl SampleSource for Source {
    fn len(&self) -> usize {
        match self {
            Source::Pack(p) => p.len(),
            Source::Memory(m) => m.len(),
        }
    }
    fn sample(&self, index: usize) -> datasets::Result<SampleRef<'_>> {
        match self {
            Source::Pack(p) => p.sample(index),
            Source::Memory(m) => m.sample(index),
        }
    }
    fn num_classes(&self) -> usize {
        match self {
            Source::Pack(p) => p.num_classes(),
            Source::Memory(m) => m.num_classes(),
        }
    }
    fn ignore_index(&self) -> u8 {
        match self {
            Source::Pack(p) => p.ignore_index(),
            Source::Memory(m) => m.ignore_index,
        }
    }
}

impl Source {
    /// Class names.
    pub fn class_names(&self) -> Vec<String> {
        match self {
            Source::Pack(p) => p.class_names().to_vec(),
            Source::Memory(m) => m.class_names.clone(),
        }
    }
    /// The colour of each label value, if the data has one (packs may; the synthetic data does).
    pub fn palette(&self) -> Option<&[[u8; 3]]> {
        match self {
            Source::Pack(p) => p.palette(),
            Source::Memory(m) => m.palette.as_deref(),
        }
    }
    /// Indices of the records that carry labels.
    pub fn labeled_indices(&self) -> Result<Vec<usize>> {
        match self {
            Source::Pack(p) => {
                let mut v = Vec::new();
                for i in 0..p.len() {
                    if p.info(i)?.labeled {
                        v.push(i);
                    }
                }
                Ok(v)
            }
            Source::Memory(m) => Ok((0..m.samples.len()).filter(|&i| m.samples[i].label.is_some()).collect()),
        }
    }
    /// The common size of every record, if they all have one (then evaluation can batch). Reads
    /// only the pack's index, never the image payloads.
    pub fn uniform_size(&self) -> Result<Option<(usize, usize)>> {
        let mut size = None;
        for i in 0..self.len() {
            let hw = match self {
                Source::Pack(p) => {
                    let r = p.info(i)?;
                    (r.height, r.width)
                }
                Source::Memory(m) => (m.samples[i].height, m.samples[i].width),
            };
            match size {
                None => size = Some(hw),
                Some(first) if first != hw => return Ok(None),
                _ => {}
            }
        }
        Ok(size)
    }
}

/// The synthetic generator settings of a run's split.
pub fn synth_config(cfg: &TrainConfig, val: bool) -> SynthConfig {
    let s = &cfg.synth;
    SynthConfig {
        // The validation split comes from a different seed: no image is shared with training.
        seed: if val { s.seed.wrapping_mul(0x9E37_79B9).wrapping_add(1) } else { s.seed },
        num_images: if val { s.val_images } else { s.train_images },
        height: s.size,
        width: s.size,
        num_classes: s.classes,
        ..SynthConfig::default()
    }
}

fn open_pack(path: &Path, what: &str) -> Result<Source> {
    match Pack::open(path) {
        Ok(p) => {
            if p.is_empty() {
                bail!("{what} pack {} has no records", path.display());
            }
            Ok(Source::Pack(p))
        }
        Err(e) => bail!("{what} pack: {e}"),
    }
}

/// Open the training and validation data of a run.
pub fn open(cfg: &TrainConfig) -> Result<(Arc<Source>, Arc<Source>)> {
    let train = match &cfg.data {
        Some(p) => open_pack(p, "training")?,
        None => Source::Memory(synth_dataset(&synth_config(cfg, false))?),
    };
    let val = match (&cfg.val_data, &cfg.data) {
        (Some(p), _) => open_pack(p, "validation")?,
        (None, None) => Source::Memory(synth_dataset(&synth_config(cfg, true))?),
        (None, Some(_)) => bail!("--val-data is required when training on a pack (evaluation needs held-out images)"),
    };
    if train.num_classes() != val.num_classes() {
        bail!(
            "the training data has {} classes but the validation data has {}",
            train.num_classes(),
            val.num_classes()
        );
    }
    // Same count, other names: tables and checkpoints would name the classes wrongly.
    let (tn, vn) = (train.class_names(), val.class_names());
    if tn != vn {
        bail!(
            "the training data's classes are [{}] but the validation data's are [{}] (same order needed)",
            tn.join(", "),
            vn.join(", ")
        );
    }
    Ok((Arc::new(train), Arc::new(val)))
}

/// The unlabeled images of a source as a semi-supervised objective's loader sees them: the image, and a label map
/// of zeros (so the crop's padding, and only the padding, comes out as the ignore label). The
/// real labels are never read.
pub struct HiddenLabels {
    inner: Arc<Source>,
    zeros: Vec<u8>,
}

impl HiddenLabels {
    /// Hide the labels of `inner`'s records `indices` (the zero map is as large as the largest).
    pub fn new(inner: Arc<Source>, indices: &[usize]) -> Result<HiddenLabels> {
        let mut most = 0;
        for &i in indices {
            let s = inner.sample(i)?;
            most = most.max(s.height * s.width);
        }
        Ok(HiddenLabels { inner, zeros: vec![0; most] })
    }
}

impl SampleSource for HiddenLabels {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn sample(&self, index: usize) -> datasets::Result<SampleRef<'_>> {
        let s = self.inner.sample(index)?;
        let hw = s.height * s.width;
        Ok(SampleRef { label: Some(&self.zeros[..hw]), ..s })
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn ignore_index(&self) -> u8 {
        255
    }
}
