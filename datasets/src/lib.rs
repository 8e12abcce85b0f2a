//! Memory-mapped packs, importers, synthetic data, augmentation, loader.
//!
//! The flow: an importer (or the synthetic generator) writes a [`pack`] file; [`Pack::open`] maps it;
//! [`subset::choose_labeled`] picks the labeled images; a [`loader::Loader`] turns records into
//! augmented f32 NCHW batches in background workers.

pub mod augment;
pub mod error;
pub mod import;
pub mod loader;
pub mod pack;
pub mod rng;
pub mod sample;
pub mod subset;
pub mod synth;

pub use augment::{augment, AugmentConfig, Augmented, ColorJitter, PadFill};
pub use error::{DatasetError, Result};
pub use import::{write_pack, ImportItem, ImportPlan};
pub use loader::{Batch, EpochIter, Loader, LoaderConfig};
pub use pack::{Pack, PackSpec, PackSummary, PackWriter, RecordInfo};
pub use rng::Rng;
pub use sample::{MemoryDataset, Sample, SampleRef, SampleSource};
pub use subset::{choose_labeled, choose_labeled_in_pack, Subset};
pub use synth::{synth_dataset, synth_pack, synth_sample, SynthConfig};
