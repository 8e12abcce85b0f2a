//! PASCAL VOC 2012: `VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/<split>.txt}`.
//! Labels are palette PNGs whose palette index is the class (255 = void boundary), or, in the
//! `SegmentationClassAug` variant (the 10,582-image "trainaug" set), greyscale PNGs with the same values.

use std::path::{Path, PathBuf};

use super::{read_list, ImportItem, ImportPlan};
use crate::error::{DatasetError, Result};
use crate::pack::PackSpec;

/// The 21 VOC classes, in label order.
pub const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// Which label folder to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VocLabels {
    /// `SegmentationClass/*.png` (palette).
    #[default]
    Class,
    /// `SegmentationClassAug/*.png` (greyscale).
    Aug,
}

/// Options for [`voc_items`].
#[derive(Debug, Clone, Default)]
pub struct VocOptions {
    pub labels: VocLabels,
    /// A split list to use instead of `ImageSets/Segmentation/<split>.txt` (e.g. `train_aug.txt`).
    pub list: Option<PathBuf>,
    /// Own class names for a dataset in VOC layout (label value `k` is class `k`); `None`: the 21
    /// PASCAL classes. Check a user's list with [`super::class_names_from_list`] first.
    pub class_names: Option<Vec<String>>,
}

/// The standard VOC colour map (bit-interleaved), for rendering.
pub fn voc_palette() -> Vec<[u8; 3]> {
    (0..256u32)
        .map(|i| {
            let (mut r, mut g, mut b, mut c) = (0u8, 0u8, 0u8, i);
            for j in 0..8 {
                r |= ((c & 1) as u8) << (7 - j);
                g |= (((c >> 1) & 1) as u8) << (7 - j);
                b |= (((c >> 2) & 1) as u8) << (7 - j);
                c >>= 3;
            }
            [r, g, b]
        })
        .collect()
}

/// Accepts `VOCdevkit`, `VOCdevkit/VOC2012` or any folder holding `JPEGImages`.
fn voc_root(root: &Path) -> PathBuf {
    for cand in [root.to_path_buf(), root.join("VOC2012"), root.join("VOCdevkit/VOC2012")] {
        if cand.join("JPEGImages").is_dir() {
            return cand;
        }
    }
    root.to_path_buf()
}

/// Lists a VOC split. Every listed id must have an image and a label. The classes are the 21 PASCAL
/// classes or `opts.class_names`; the palette is the VOC colour map either way.
pub fn voc_items(root: &Path, split: &str, opts: &VocOptions) -> Result<ImportPlan> {
    let root = voc_root(root);
    let list = opts.list.clone().unwrap_or_else(|| root.join("ImageSets/Segmentation").join(format!("{split}.txt")));
    let ids = read_list(&list)?;
    if ids.is_empty() {
        return Err(DatasetError::EmptySplit { path: list, what: format!("split {split:?} lists no images") });
    }
    let label_dir = root.join(match opts.labels {
        VocLabels::Class => "SegmentationClass",
        VocLabels::Aug => "SegmentationClassAug",
    });
    let mut items = Vec::with_capacity(ids.len());
    for (index, id) in ids.into_iter().enumerate() {
        let image = root.join("JPEGImages").join(format!("{id}.jpg"));
        let label = label_dir.join(format!("{id}.png"));
        if !image.is_file() {
            return Err(DatasetError::MissingImage { list, index, name: id, expected: image });
        }
        if !label.is_file() {
            return Err(DatasetError::MissingLabel { list, index, name: id, expected: label });
        }
        items.push(ImportItem { name: id, image, label: Some(label) });
    }
    Ok(ImportPlan {
        source: list,
        items,
        spec: PackSpec {
            class_names: opts
                .class_names
                .clone()
                .unwrap_or_else(|| VOC_CLASSES.iter().map(|s| s.to_string()).collect()),
            ignore_index: 255,
            palette: Some(voc_palette()),
        },
        label_map: None,
        unknown_labels: Default::default(),
    })
}
