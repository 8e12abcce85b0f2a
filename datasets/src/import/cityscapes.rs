//! Cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with
//! `gtFine/<split>/<city>/*_gtFine_labelIds.png` (34 label ids, mapped to the 19 train ids, the rest
//! to 255) or the preprocessed `*_gtFine_labelTrainIds.png` when present.

use std::path::{Path, PathBuf};

use super::{ImportItem, ImportPlan};
use crate::error::{DatasetError, Result};
use crate::pack::PackSpec;

/// The 19 evaluation classes, in train-id order.
pub const TRAIN_CLASSES: [&str; 19] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// All 34 label ids (0..=33), for the identity option.
pub const LABEL_ID_CLASSES: [&str; 34] = [
    "unlabeled",
    "ego vehicle",
    "rectification border",
    "out of roi",
    "static",
    "dynamic",
    "ground",
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
];

/// Label id of each train id (the official `labels.py` table).
const TRAIN_ID_SOURCES: [u8; 19] = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33];

/// Official colours of the 19 train classes.
const TRAIN_PALETTE: [[u8; 3]; 19] = [
    [128, 64, 128],
    [244, 35, 232],
    [70, 70, 70],
    [102, 102, 156],
    [190, 153, 153],
    [153, 153, 153],
    [250, 170, 30],
    [220, 220, 0],
    [107, 142, 35],
    [152, 251, 152],
    [70, 130, 180],
    [220, 20, 60],
    [255, 0, 0],
    [0, 0, 142],
    [0, 0, 70],
    [0, 60, 100],
    [0, 80, 100],
    [0, 0, 230],
    [119, 11, 32],
];

/// How labels are stored in the pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CityscapesLabels {
    /// 19 train ids (the standard benchmark); other ids become 255.
    #[default]
    TrainIds,
    /// The raw 34 label ids, unchanged.
    LabelIds,
}

/// Options for [`cityscapes_items`].
#[derive(Debug, Clone, Default)]
pub struct CityscapesOptions {
    pub labels: CityscapesLabels,
    /// Own class names. With [`CityscapesLabels::TrainIds`] they name train ids `0..n` (the values
    /// of `*_labelTrainIds.png`, e.g. made by a custom `labels.py`, or of the official label-id ->
    /// train-id table, which yields 19, so then at most 19 names); with
    /// [`CityscapesLabels::LabelIds`] they name raw label ids `0..n`. Other values are unknown
    /// labels ([`super::UnknownLabels`]). `None`: the official 19 train classes or 34 label ids.
    /// Own classes get the VOC colour map.
    pub class_names: Option<Vec<String>>,
}

/// Maps label ids to train ids (everything else, and 255, to 255).
pub fn label_id_to_train_id() -> Box<[u8; 256]> {
    let mut m = Box::new([255u8; 256]);
    for (train, &id) in TRAIN_ID_SOURCES.iter().enumerate() {
        m[id as usize] = train as u8;
    }
    m
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DatasetError::io(dir, "list directory", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// Lists a Cityscapes split (sorted by city, then file name).
pub fn cityscapes_items(root: &Path, split: &str, opts: &CityscapesOptions) -> Result<ImportPlan> {
    let img_root = root.join("leftImg8bit").join(split);
    let gt_root = root.join("gtFine").join(split);
    let mut items = Vec::new();
    let mut use_map = false;
    for city in sorted_entries(&img_root)?.into_iter().filter(|p| p.is_dir()) {
        let city_name = city.file_name().unwrap_or_default().to_owned();
        for img in sorted_entries(&city)? {
            let fname = img.file_name().and_then(|f| f.to_str()).unwrap_or_default();
            let Some(stem) = fname.strip_suffix("_leftImg8bit.png") else { continue };
            let gt_dir = gt_root.join(&city_name);
            let train_ids = gt_dir.join(format!("{stem}_gtFine_labelTrainIds.png"));
            let label_ids = gt_dir.join(format!("{stem}_gtFine_labelIds.png"));
            let label = match opts.labels {
                CityscapesLabels::TrainIds if train_ids.is_file() => train_ids,
                _ => {
                    use_map |= opts.labels == CityscapesLabels::TrainIds;
                    label_ids
                }
            };
            if !label.is_file() {
                return Err(DatasetError::MissingLabel {
                    list: img_root.clone(),
                    index: items.len(),
                    name: stem.to_owned(),
                    expected: label,
                });
            }
            items.push(ImportItem { name: stem.to_owned(), image: img.clone(), label: Some(label) });
        }
    }
    if items.is_empty() {
        return Err(DatasetError::EmptySplit {
            path: img_root,
            what: format!("no *_leftImg8bit.png images in split {split:?}"),
        });
    }
    // Mixed trees (some labelTrainIds, some not) would need per-file maps; refuse rather than guess.
    if use_map
        && items.iter().any(|i| i.label.as_ref().is_some_and(|l| l.to_string_lossy().ends_with("labelTrainIds.png")))
    {
        return Err(DatasetError::Config(format!(
            "{}: some images have *_labelTrainIds.png and some only *_labelIds.png; regenerate train ids for all",
            gt_root.display()
        )));
    }
    let (names, palette): (Vec<String>, _) = match (&opts.class_names, opts.labels) {
        (Some(own), _) => {
            if use_map && own.len() > TRAIN_CLASSES.len() {
                return Err(DatasetError::Config(format!(
                    "{}: {} class names given, but these labels are *_labelIds.png mapped by the official table, \
                     which yields only {} train ids; give at most {} names, provide *_labelTrainIds.png, or use \
                     --label-map identity to name the raw label ids",
                    gt_root.display(),
                    own.len(),
                    TRAIN_CLASSES.len(),
                    TRAIN_CLASSES.len()
                )));
            }
            (own.clone(), Some(super::voc::voc_palette()))
        }
        (None, CityscapesLabels::TrainIds) => {
            (TRAIN_CLASSES.iter().map(|s| s.to_string()).collect(), Some(TRAIN_PALETTE.to_vec()))
        }
        (None, CityscapesLabels::LabelIds) => (LABEL_ID_CLASSES.iter().map(|s| s.to_string()).collect(), None),
    };
    Ok(ImportPlan {
        source: img_root,
        items,
        spec: PackSpec { class_names: names, ignore_index: 255, palette },
        label_map: use_map.then(label_id_to_train_id),
        unknown_labels: Default::default(),
    })
}
