//! Importers: PASCAL VOC 2012, Cityscapes and plain image/mask folders, each turned into a pack.
//!
//! Each importer only *lists* its dataset as [`ImportItem`]s (name, image path, optional label path,
//! optional label-value map); [`write_pack`] does the shared work: decode in parallel chunks, check
//! sizes and label values (errors name the files), stream into a [`PackWriter`] in list order.

pub mod cityscapes;
pub mod decode;
pub mod folder;
pub mod voc;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{DatasetError, Result};
use crate::pack::{PackSpec, PackSummary, PackWriter};
use crate::sample::{find_bad_label, Sample};

pub use cityscapes::{cityscapes_items, CityscapesLabels, CityscapesOptions};
pub use folder::{folder_items, FolderOptions};
pub use voc::{voc_items, VocLabels, VocOptions};

/// One entry of a dataset listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportItem {
    pub name: String,
    pub image: PathBuf,
    /// `None`: an unlabeled image.
    pub label: Option<PathBuf>,
}

/// A listed dataset, ready to be written: items plus what the labels mean.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    /// The file the listing came from (split list or folder), named in errors.
    pub source: PathBuf,
    pub items: Vec<ImportItem>,
    pub spec: PackSpec,
    /// Raw label value -> stored value (e.g. Cityscapes label ids -> train ids); `None` = identity.
    pub label_map: Option<Box<[u8; 256]>>,
}

/// Progress callback: `(done, total)`, called after each record is written.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Decodes one item into a validated sample.
pub fn load_item(plan: &ImportPlan, index: usize) -> Result<Sample> {
    let item = &plan.items[index];
    let (h, w, image) = decode::decode_rgb(&item.image)?;
    let label = match &item.label {
        None => None,
        Some(lp) => {
            let (lh, lw, mut raw) = decode::decode_label_png(lp)?;
            if (lh, lw) != (h, w) {
                return Err(DatasetError::SizeMismatch {
                    path: lp.clone(),
                    index,
                    name: item.name.clone(),
                    what: format!("label is {lw}x{lh} but image {} is {w}x{h}", item.image.display()),
                });
            }
            if let Some(map) = &plan.label_map {
                raw.iter_mut().for_each(|v| *v = map[*v as usize]);
            }
            let (n, ig) = (plan.spec.num_classes(), plan.spec.ignore_index);
            if let Some((x, y, value)) = find_bad_label(&raw, w, n, ig) {
                return Err(DatasetError::LabelOutOfRange {
                    path: lp.clone(),
                    index,
                    name: item.name.clone(),
                    value,
                    x,
                    y,
                    num_classes: n,
                    ignore: ig,
                });
            }
            Some(raw)
        }
    };
    Ok(Sample { name: item.name.clone(), height: h, width: w, image, label })
}

/// Writes a listed dataset to `out`, decoding in parallel chunks (bounded memory, list order kept).
pub fn write_pack(plan: &ImportPlan, out: &Path, mut progress: Option<Progress<'_>>) -> Result<PackSummary> {
    if plan.items.is_empty() {
        return Err(DatasetError::EmptySplit { path: plan.source.clone(), what: "no images listed".into() });
    }
    let mut writer = PackWriter::create(out, plan.spec.clone())?;
    let chunk = 4 * rayon::current_num_threads().max(1);
    let total = plan.items.len();
    for start in (0..total).step_by(chunk) {
        let end = (start + chunk).min(total);
        let samples = (start..end).into_par_iter().map(|i| load_item(plan, i)).collect::<Result<Vec<_>>>()?;
        for s in &samples {
            writer.push(&s.view())?;
            if let Some(p) = progress.as_mut() {
                p(writer.len(), total);
            }
        }
    }
    writer.finish()
}

/// Reads a split list (one id per line; blank lines and `#` comments skipped; only the first
/// whitespace-separated field is used, so `id 1` style lists also work).
pub(crate) fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DatasetError::io(path, "read split list", e))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| !id.starts_with('#'))
        .map(str::to_owned)
        .collect())
}
