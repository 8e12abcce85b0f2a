//! Evaluation over a whole set: predictions at full image resolution (no crop), one confusion
//! matrix, per-class IoU and mIoU.

use crate::data::Source;
use crate::metrics::ConfusionMatrix;
use crate::net::{argmax, Net};
use anyhow::Result;
use datasets::{Loader, LoaderConfig, SampleSource};
use nn::Ctx;
use std::sync::Arc;

/// Confusion matrix of `net` (eval mode) over every labeled record of `source`.
pub fn evaluate(net: &mut Net, source: &Arc<Source>) -> Result<ConfusionMatrix> {
    let indices = source.labeled_indices()?;
    evaluate_records(net, source, indices)
}

/// Confusion matrix of `net` (eval mode) over the records `indices` of `source` (all labeled),
/// e.g. a run's labeled training subset, to compare training and validation scores.
pub fn evaluate_records(net: &mut Net, source: &Arc<Source>, indices: Vec<usize>) -> Result<ConfusionMatrix> {
    let classes = source.num_classes();
    let ignore = source.ignore_index();
    // Same-size images are batched; mixed sizes go one at a time (no resizing of the ground truth).
    let batch = if source.uniform_size()?.is_some() { 8 } else { 1 };
    let loader = Loader::new(source.clone(), Some(indices), LoaderConfig::eval(batch))?;
    let mut cm = ConfusionMatrix::new(classes);
    for b in loader.epoch(0) {
        let b = b?;
        let x = crate::net::input(net, b.images, b.image_shape)?;
        let logits = crate::net::logits(net, &x, &mut Ctx::eval())?;
        let pred = argmax(&logits)?;
        cm.update(&pred, &b.labels, ignore).map_err(|e| anyhow::anyhow!("evaluation: {e}"))?;
    }
    Ok(cm)
}
