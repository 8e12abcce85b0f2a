//! Evaluation over a whole set: predictions at full image resolution (no crop; sliding windows,
//! flip and scales as [`crate::infer`] runs them), one confusion matrix, per-class IoU and mIoU.

use crate::data::Source;
use crate::infer::{infer, InferOptions};
use crate::metrics::ConfusionMatrix;
use crate::net::{argmax, Net};
use anyhow::Result;
use datasets::{Loader, LoaderConfig, SampleSource};
use std::sync::Arc;

/// Confusion matrix of `net` (eval mode) over every labeled record of `source`.
pub fn evaluate(net: &mut Net, source: &Arc<Source>) -> Result<ConfusionMatrix> {
    evaluate_with(net, source, &InferOptions::default())
}

/// [`evaluate`] with the inference options of `segnet eval` (window, flip, scales).
pub fn evaluate_with(net: &mut Net, source: &Arc<Source>, opts: &InferOptions) -> Result<ConfusionMatrix> {
    let indices = source.labeled_indices()?;
    evaluate_records_with(net, source, indices, opts)
}

/// Confusion matrix of `net` (eval mode) over the records `indices` of `source` (all labeled),
/// e.g. a run's labeled training subset, to compare training and validation scores.
pub fn evaluate_records(net: &mut Net, source: &Arc<Source>, indices: Vec<usize>) -> Result<ConfusionMatrix> {
    evaluate_records_with(net, source, indices, &InferOptions::default())
}

/// [`evaluate_records`] with inference options.
pub fn evaluate_records_with(
    net: &mut Net,
    source: &Arc<Source>,
    indices: Vec<usize>,
    opts: &InferOptions,
) -> Result<ConfusionMatrix> {
    let classes = source.num_classes();
    let ignore = source.ignore_index();
    // Same-size images are batched; mixed sizes go one at a time (no resizing of the ground truth).
    let batch = if source.uniform_size()?.is_some() { 8 } else { 1 };
    let loader = Loader::new(source.clone(), Some(indices), LoaderConfig::eval(batch))?;
    let mut cm = ConfusionMatrix::new(classes);
    for b in loader.epoch(0) {
        let b = b?;
        let x = crate::net::input(net, b.images, b.image_shape)?;
        let logits = infer(net, &x, opts)?;
        let pred = argmax(&logits)?;
        cm.update(&pred, &b.labels, ignore).map_err(|e| anyhow::anyhow!("evaluation: {e}"))?;
    }
    Ok(cm)
}
