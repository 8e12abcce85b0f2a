//! Importers: PASCAL VOC 2012, Cityscapes and plain image/mask folders, each turned into a pack.
//!
//! Each importer only *lists* its dataset as [`ImportItem`]s (name, image path, optional label path,
//! optional label-value map); [`write_pack`] does the shared work: decode in parallel chunks, check
//! sizes and label values (errors name the files), stream into a [`PackWriter`] in list order.
//!
//! Every importer takes an optional list of the user's own class names ([`class_names_from_list`],
//! [`read_class_file`]): label value `k` is class `k`. A value that is neither a class nor the
//! ignore value is an error naming the file and the value, or, with [`UnknownLabels::Ignore`],
//! becomes the ignore value (counted in [`PackSummary::unknown_to_ignore`]). Own classes get the
//! VOC colour map ([`voc::voc_palette`]: index `k` gets VOC colour `k`).

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
pub use voc::{voc_items, voc_palette, VocLabels, VocOptions};

/// What to do with a label value that is neither a class index nor the ignore value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownLabels {
    /// Stop with an error naming the file, the value and its position (the default).
    #[default]
    Error,
    /// Store the ignore value instead (the pixel is left out of training and evaluation).
    Ignore,
}

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
    /// Label values outside the class list (after `label_map`): error or ignore.
    pub unknown_labels: UnknownLabels,
}

/// Checks a class list given by the user (from `--classes` or a file; `source` names it in
/// errors): at least one name, none empty or with control characters (tabs, newlines: they would
/// break tables and checkpoint metadata), no name twice, at most 255 (255 is the ignore value).
/// Names are trimmed.
pub fn class_names_from_list(names: Vec<String>, source: &str) -> Result<Vec<String>> {
    let names: Vec<String> = names.into_iter().map(|n| n.trim().to_owned()).collect();
    if names.is_empty() || names.iter().all(String::is_empty) {
        return Err(DatasetError::Config(format!("{source}: the class list is empty")));
    }
    if names.len() > 255 {
        return Err(DatasetError::Config(format!(
            "{source}: {} classes; at most 255 fit (label values are u8 and 255 is the ignore value)",
            names.len()
        )));
    }
    for (k, n) in names.iter().enumerate() {
        if n.is_empty() {
            return Err(DatasetError::Config(format!("{source}: class {k} has an empty name")));
        }
        if n.chars().any(char::is_control) {
            return Err(DatasetError::Config(format!("{source}: class {k} ({n:?}) contains a control character")));
        }
        if let Some(j) = names[..k].iter().position(|m| m == n) {
            return Err(DatasetError::Config(format!("{source}: class {n:?} is listed twice (as {j} and {k})")));
        }
    }
    Ok(names)
}

/// Reads a class-names file: one name per line, in label order (line `k` names label value `k`).
/// Surrounding whitespace is trimmed; blank lines and lines starting with `#` are skipped; a
/// UTF-8 byte-order mark and Windows line ends are accepted. The list is checked as by
/// [`class_names_from_list`], errors naming the file.
pub fn read_class_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DatasetError::io(path, "read class names", e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let names: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
    class_names_from_list(names, &path.display().to_string())
}

/// Progress callback: `(done, total)`, called after each record is written.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Decodes one item into a validated sample.
pub fn load_item(plan: &ImportPlan, index: usize) -> Result<Sample> {
    load_item_counted(plan, index).map(|(s, _)| s)
}

/// [`load_item`], also counting the label pixels [`UnknownLabels::Ignore`] set to the ignore value.
fn load_item_counted(plan: &ImportPlan, index: usize) -> Result<(Sample, u64)> {
    let item = &plan.items[index];
    let mut unknown = 0u64;
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
            if plan.unknown_labels == UnknownLabels::Ignore {
                for v in raw.iter_mut().filter(|v| (**v as usize) >= n && **v != ig) {
                    *v = ig;
                    unknown += 1;
                }
            }
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
    Ok((Sample { name: item.name.clone(), height: h, width: w, image, label }, unknown))
}

/// Writes a listed dataset to `out`, decoding in parallel chunks (bounded memory, list order kept).
pub fn write_pack(plan: &ImportPlan, out: &Path, mut progress: Option<Progress<'_>>) -> Result<PackSummary> {
    if plan.items.is_empty() {
        return Err(DatasetError::EmptySplit { path: plan.source.clone(), what: "no images listed".into() });
    }
    let mut writer = PackWriter::create(out, plan.spec.clone())?;
    let chunk = 4 * rayon::current_num_threads().max(1);
    let total = plan.items.len();
    let mut unknown = 0u64;
    for start in (0..total).step_by(chunk) {
        let end = (start + chunk).min(total);
        // Loaded in parallel, checked in record order: collecting straight into a `Result` would
        // report whichever failing record a thread reached first, not the first one.
        let loaded: Vec<Result<_>> = (start..end).into_par_iter().map(|i| load_item_counted(plan, i)).collect();
        let samples = loaded.into_iter().collect::<Result<Vec<_>>>()?;
        for (s, u) in &samples {
            unknown += u;
            writer.push(&s.view())?;
            if let Some(p) = progress.as_mut() {
                p(writer.len(), total);
            }
        }
    }
    let mut summary = writer.finish()?;
    summary.unknown_to_ignore = unknown;
    Ok(summary)
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
