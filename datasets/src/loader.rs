//! The batch loader: seeded per-epoch shuffling, augmentation in rayon workers, batches as
//! engine-ready f32 NCHW plus u8 label maps, produced ahead of the training step on a background
//! thread into a bounded channel.
//!
//! Determinism: the order of an epoch depends only on `(seed, epoch)` and every sample's augmentation
//! RNG only on `(seed, epoch, record index)`, and batches are assembled in order. So thread timing,
//! worker count and prefetch depth never change a batch, and `batch(epoch, step)` recomputes any batch
//! directly (resume mid-epoch).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::augment::{self, AugmentConfig, Augmented};
use crate::error::{DatasetError, Result};
use crate::rng::Rng;
use crate::sample::SampleSource;

/// Stream tag separating the shuffle RNG from the per-sample RNGs.
const SHUFFLE_STREAM: u64 = 0x5348_5546; // "SHUF"

/// Loader settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    /// Shuffle each epoch (training) or keep index order (evaluation).
    pub shuffle: bool,
    /// Drop a final partial batch (training: keeps batch-norm statistics well-behaved).
    pub drop_last: bool,
    pub augment: AugmentConfig,
    /// Batches prepared ahead of the consumer (channel bound), at least 1.
    pub prefetch: usize,
    /// Worker threads for decoding/augmenting; 0 = one per core.
    pub workers: usize,
}

impl LoaderConfig {
    /// Training defaults: shuffled, drop last, 2 batches ahead, all cores.
    pub fn train(batch_size: usize, seed: u64, augment: AugmentConfig) -> Self {
        LoaderConfig { batch_size, seed, shuffle: true, drop_last: true, augment, prefetch: 2, workers: 0 }
    }

    /// Evaluation defaults: in order, keep the last partial batch, no augmentation.
    pub fn eval(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            seed: 0,
            shuffle: false,
            drop_last: false,
            augment: AugmentConfig::eval(),
            prefetch: 2,
            workers: 0,
        }
    }
}

/// One batch, ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub epoch: u64,
    pub step: usize,
    /// Record indices in batch order (so a run can log exactly what it saw).
    pub indices: Vec<usize>,
    /// Normalised images, NCHW, `image_shape = [B, 3, H, W]`.
    pub images: Vec<f32>,
    pub image_shape: [usize; 4],
    /// Labels, `label_shape = [B, H, W]`, ignore value where padded or unlabeled.
    pub labels: Vec<u8>,
    pub label_shape: [usize; 3],
    /// With [`AugmentConfig::two_views`]: the colour-distorted views of the same crops, laid out
    /// as `images` (`image_shape`), with the same labels; `images` are then the undistorted views.
    pub distorted: Option<Vec<f32>>,
}

/// A loader over a sample source (a `Pack`, a `MemoryDataset`) and an optional index subset.
pub struct Loader<S: SampleSource + 'static> {
    source: Arc<S>,
    indices: Arc<Vec<usize>>,
    cfg: Arc<LoaderConfig>,
    pool: Arc<rayon::ThreadPool>,
}

impl<S: SampleSource + 'static> Loader<S> {
    /// A loader over `indices` of `source` (all records when `None`).
    pub fn new(source: Arc<S>, indices: Option<Vec<usize>>, cfg: LoaderConfig) -> Result<Self> {
        cfg.augment.validate()?;
        if cfg.batch_size == 0 {
            return Err(DatasetError::Config("batch size must be at least 1".into()));
        }
        let indices = indices.unwrap_or_else(|| (0..source.len()).collect());
        if indices.is_empty() {
            return Err(DatasetError::Config("the loader has no samples".into()));
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= source.len()) {
            return Err(DatasetError::Config(format!(
                "loader index {bad} out of range: the source has {} records",
                source.len()
            )));
        }
        if cfg.drop_last && indices.len() < cfg.batch_size {
            return Err(DatasetError::Config(format!(
                "{} samples cannot fill one batch of {} with drop_last",
                indices.len(),
                cfg.batch_size
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers)
            .thread_name(|i| format!("datasets-loader-{i}"))
            .build()
            .map_err(|e| DatasetError::Config(format!("cannot start loader workers: {e}")))?;
        Ok(Loader {
            source,
            indices: Arc::new(indices),
            cfg: Arc::new(LoaderConfig { prefetch: cfg.prefetch.max(1), ..cfg }),
            pool: Arc::new(pool),
        })
    }

    /// Samples this loader draws from.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Never true (construction rejects an empty loader); present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        batches_per_epoch(self.indices.len(), &self.cfg)
    }

    /// Record indices of an epoch, in the order they are served.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        epoch_order(&self.indices, &self.cfg, epoch)
    }

    /// Computes batch `step` of `epoch` synchronously (identical to what `epoch()` yields).
    pub fn batch(&self, epoch: u64, step: usize) -> Result<Batch> {
        let order = self.epoch_order(epoch);
        make_batch(&*self.source, &order, &self.cfg, &self.pool, epoch, step)
    }

    /// Iterates over an epoch's batches, produced ahead on a background thread. Dropping the
    /// iterator early stops the producer.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        let (tx, rx) = sync_channel(self.cfg.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let (source, cfg, pool, stop2) = (self.source.clone(), self.cfg.clone(), self.pool.clone(), stop.clone());
        let order = self.epoch_order(epoch);
        let steps = self.batches_per_epoch();
        let handle = std::thread::Builder::new().name("datasets-loader".into()).spawn(move || {
            for step in 0..steps {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let b = make_batch(&*source, &order, &cfg, &pool, epoch, step);
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    break;
                }
            }
        });
        match handle {
            Ok(h) => EpochIter { rx: Some(rx), stop, handle: Some(h), failed: None },
            Err(e) => EpochIter {
                rx: None,
                stop,
                handle: None,
                failed: Some(DatasetError::Config(format!("cannot start the loader thread: {e}"))),
            },
        }
    }
}

fn batches_per_epoch(n: usize, cfg: &LoaderConfig) -> usize {
    if cfg.drop_last {
        n / cfg.batch_size
    } else {
        n.div_ceil(cfg.batch_size)
    }
}

fn epoch_order(indices: &[usize], cfg: &LoaderConfig, epoch: u64) -> Vec<usize> {
    let mut order = indices.to_vec();
    if cfg.shuffle {
        Rng::derive(cfg.seed, &[SHUFFLE_STREAM, epoch]).shuffle(&mut order);
    }
    order
}

/// Loads and augments one batch in the worker pool and packs it NCHW.
fn make_batch<S: SampleSource>(
    source: &S,
    order: &[usize],
    cfg: &LoaderConfig,
    pool: &rayon::ThreadPool,
    epoch: u64,
    step: usize,
) -> Result<Batch> {
    let steps = batches_per_epoch(order.len(), cfg);
    if step >= steps {
        return Err(DatasetError::Config(format!("step {step} past the end of the epoch ({steps} batches)")));
    }
    let ids = &order[step * cfg.batch_size..((step + 1) * cfg.batch_size).min(order.len())];
    let items: Vec<Augmented> = pool.install(|| {
        ids.par_iter()
            .map(|&i| {
                let mut rng = Rng::derive(cfg.seed, &[epoch, i as u64]);
                let s = source.sample(i)?;
                let mut aug = cfg.augment.clone();
                aug.ignore_index = source.ignore_index();
                augment::augment(&s, &aug, &mut rng)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let (h, w) = (items[0].height, items[0].width);
    if let Some((k, a)) = items.iter().enumerate().find(|(_, a)| (a.height, a.width) != (h, w)) {
        return Err(DatasetError::Config(format!(
            "batch {step} of epoch {epoch}: record {} gives {}x{} but record {} gives {w}x{h}; set a crop size or use batch size 1",
            ids[k], a.width, a.height, ids[0]
        )));
    }
    let b = items.len();
    let mut images = Vec::with_capacity(b * 3 * h * w);
    let mut labels = Vec::with_capacity(b * h * w);
    let mut distorted = cfg.augment.two_views.then(|| Vec::with_capacity(b * 3 * h * w));
    for a in items {
        images.extend_from_slice(&a.image);
        labels.extend_from_slice(&a.label);
        if let (Some(all), Some(d)) = (distorted.as_mut(), &a.distorted) {
            all.extend_from_slice(d);
        }
    }
    Ok(Batch {
        epoch,
        step,
        indices: ids.to_vec(),
        images,
        image_shape: [b, 3, h, w],
        labels,
        label_shape: [b, h, w],
        distorted,
    })
}

/// Iterator over one epoch's batches. Yields an error (then ends) if a record fails to load.
pub struct EpochIter {
    rx: Option<Receiver<Result<Batch>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    failed: Option<DatasetError>,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting on a full channel.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
