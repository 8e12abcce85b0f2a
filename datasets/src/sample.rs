//! Samples (one image + its label map) and the `SampleSource` trait the loader reads from.
//!
//! Images are u8 RGB, row-major HWC (what decoders and the pack store); labels are u8 class indices,
//! row-major HW, with `ignore` (255 by default) marking void pixels. Conversion to f32 NCHW happens
//! once, in the augmentation pass, so nothing upstream pays for floats.

use std::borrow::Cow;

use crate::error::Result;

/// An owned sample, as produced by the synthetic generator and the importers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// A human-readable identifier (file stem, `synth-000017`, ...), used in error messages.
    pub name: String,
    pub height: usize,
    pub width: usize,
    /// RGB, HWC, `height * width * 3` bytes.
    pub image: Vec<u8>,
    /// Class indices, HW, `height * width` bytes; `None` for an unlabeled image.
    pub label: Option<Vec<u8>>,
}

impl Sample {
    /// A borrowed view of this sample.
    pub fn view(&self) -> SampleRef<'_> {
        SampleRef {
            name: Cow::Borrowed(&self.name),
            height: self.height,
            width: self.width,
            image: &self.image,
            label: self.label.as_deref(),
        }
    }
}

/// A borrowed sample: zero-copy slices into a memory-mapped pack or an in-memory `Sample`.
#[derive(Debug, Clone)]
pub struct SampleRef<'a> {
    pub name: Cow<'a, str>,
    pub height: usize,
    pub width: usize,
    pub image: &'a [u8],
    pub label: Option<&'a [u8]>,
}

/// Where the loader gets samples from: a `Pack` (memory-mapped) or a `MemoryDataset`.
/// `Sync` because rayon workers read different records concurrently.
pub trait SampleSource: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index`, validated (checksums, label range) by the implementation.
    fn sample(&self, index: usize) -> Result<SampleRef<'_>>;
    /// Number of classes (labels are `0..num_classes` or `ignore_index`).
    fn num_classes(&self) -> usize;
    /// The void label value.
    fn ignore_index(&self) -> u8;
}

/// Samples held in memory, e.g. straight from the synthetic generator without touching disk.
#[derive(Debug, Clone)]
pub struct MemoryDataset {
    pub samples: Vec<Sample>,
    pub class_names: Vec<String>,
    pub ignore_index: u8,
    /// Colour of each label value, for rendering predictions (as a pack's palette).
    pub palette: Option<Vec<[u8; 3]>>,
}

impl SampleSource for MemoryDataset {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn sample(&self, index: usize) -> Result<SampleRef<'_>> {
        self.samples.get(index).map(Sample::view).ok_or_else(|| crate::DatasetError::IndexOutOfRange {
            path: "<memory>".into(),
            index,
            len: self.samples.len(),
        })
    }
    fn num_classes(&self) -> usize {
        self.class_names.len()
    }
    fn ignore_index(&self) -> u8 {
        self.ignore_index
    }
}

/// First label pixel that is neither `< num_classes` nor `ignore`, as `(x, y, value)`.
/// Shared by the pack writer, the reader and the importers so they agree on what "valid" means.
pub fn find_bad_label(label: &[u8], width: usize, num_classes: usize, ignore: u8) -> Option<(usize, usize, u8)> {
    let pos = label.iter().position(|&v| (v as usize) >= num_classes && v != ignore)?;
    let w = width.max(1);
    Some((pos % w, pos / w, label[pos]))
}
