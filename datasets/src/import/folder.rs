//! A plain folder of images and a folder of masks, matched by file stem
//! (`images/abc.jpg` + `masks/abc.png`). Masks hold class indices directly (greyscale or palette PNG).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{ImportItem, ImportPlan};
use crate::error::{DatasetError, Result};
use crate::pack::PackSpec;

/// Options for [`folder_items`].
#[derive(Debug, Clone)]
pub struct FolderOptions {
    /// Class names; their count is the class count (masks must hold `0..n` or `ignore_index`).
    pub class_names: Vec<String>,
    pub ignore_index: u8,
    /// Images without a mask become unlabeled records instead of an error.
    pub allow_unlabeled: bool,
}

const IMAGE_EXTS: [&str; 3] = ["png", "jpg", "jpeg"];

fn by_stem(dir: &Path, exts: &[&str]) -> Result<BTreeMap<String, PathBuf>> {
    let mut map = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(|e| DatasetError::io(dir, "list directory", e))? {
        let p = e.map_err(|e| DatasetError::io(dir, "list directory", e))?.path();
        let ext = p.extension().and_then(|x| x.to_str()).map(str::to_ascii_lowercase);
        if !p.is_file() || !ext.is_some_and(|x| exts.contains(&x.as_str())) {
            continue;
        }
        if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
            if let Some(prev) = map.insert(stem.to_owned(), p.clone()) {
                return Err(DatasetError::Config(format!(
                    "{} and {} share the stem {stem:?}; stems must be unique",
                    prev.display(),
                    p.display()
                )));
            }
        }
    }
    Ok(map)
}

/// Lists `images` matched with `masks` by stem, sorted by stem.
pub fn folder_items(images: &Path, masks: &Path, opts: &FolderOptions) -> Result<ImportPlan> {
    let imgs = by_stem(images, &IMAGE_EXTS)?;
    let msks = by_stem(masks, &["png"])?;
    if imgs.is_empty() && msks.is_empty() {
        return Err(DatasetError::EmptySplit { path: images.to_path_buf(), what: "no .png/.jpg images".into() });
    }
    // A mask without its image is the folder equivalent of a list entry with no image.
    if let Some((index, (stem, _))) = msks.iter().enumerate().find(|(_, (s, _))| !imgs.contains_key(*s)) {
        return Err(DatasetError::MissingImage {
            list: masks.to_path_buf(),
            index,
            name: stem.clone(),
            expected: images.join(format!("{stem}.{{png,jpg,jpeg}}")),
        });
    }
    let mut items = Vec::with_capacity(imgs.len());
    for (index, (stem, image)) in imgs.into_iter().enumerate() {
        let label = msks.get(&stem).cloned();
        if label.is_none() && !opts.allow_unlabeled {
            return Err(DatasetError::MissingLabel {
                list: images.to_path_buf(),
                index,
                expected: masks.join(format!("{stem}.png")),
                name: stem,
            });
        }
        items.push(ImportItem { name: stem, image, label });
    }
    Ok(ImportPlan {
        source: images.to_path_buf(),
        items,
        // Own classes are drawn with the VOC colour map (label k: VOC colour k).
        spec: PackSpec {
            class_names: opts.class_names.clone(),
            ignore_index: opts.ignore_index,
            palette: Some(super::voc::voc_palette()),
        },
        label_map: None,
        unknown_labels: Default::default(),
    })
}
