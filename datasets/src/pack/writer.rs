//! Streaming pack writer.
//!
//! Payloads go straight to disk as they are pushed (memory stays O(records) for the index, never
//! O(bytes)); the index and header are written at the end. Everything goes to a temporary file in the
//! destination directory which is fsynced and atomically renamed over the target, so a crash or a
//! Ctrl-C never leaves a half-written pack under the final name.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::format::*;
use crate::error::{DatasetError, Result};
use crate::sample::{find_bad_label, SampleRef};

/// What `finish` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSummary {
    pub path: PathBuf,
    pub records: usize,
    pub labeled: usize,
    pub bytes: u64,
    /// Label pixels an importer set to the ignore value because their value was not a class
    /// (`UnknownLabels::Ignore`); 0 otherwise.
    pub unknown_to_ignore: u64,
}

/// Writes a pack record by record. Call [`PackWriter::finish`]; dropping without it deletes the
/// temporary file and leaves any existing pack at the destination untouched.
pub struct PackWriter {
    final_path: PathBuf,
    tmp_path: PathBuf,
    out: Option<BufWriter<File>>,
    spec: PackSpec,
    entries: Vec<RecordEntry>,
    record_names: Vec<u8>,
    pos: u64,
    labeled: u64,
}

impl PackWriter {
    /// Starts a pack at `path` (created on `finish`). Validates the spec up front.
    pub fn create(path: impl AsRef<Path>, spec: PackSpec) -> Result<Self> {
        let final_path = path.as_ref().to_path_buf();
        let n = spec.num_classes();
        if n == 0 || n > 255 {
            return Err(DatasetError::Config(format!(
                "{}: a pack needs 1..=255 classes, got {n}",
                final_path.display()
            )));
        }
        if (spec.ignore_index as usize) < n {
            return Err(DatasetError::Config(format!(
                "{}: ignore value {} collides with class indices 0..{n}",
                final_path.display(),
                spec.ignore_index
            )));
        }
        if let Some(p) = &spec.palette {
            if p.len() > 256 {
                return Err(DatasetError::Config(format!(
                    "{}: palette has {} colours, at most 256 allowed",
                    final_path.display(),
                    p.len()
                )));
            }
        }
        let dir = match final_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = final_path
            .file_name()
            .ok_or_else(|| DatasetError::Config(format!("{}: not a file path", final_path.display())))?
            .to_string_lossy()
            .into_owned();
        remove_stale_temporaries(&dir, &file_name);
        let tmp_path = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp_path).map_err(|e| DatasetError::io(&tmp_path, "create", e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Placeholder header; the real one is written by `finish` once counts are known.
        out.write_all(&[0u8; HEADER_LEN]).map_err(|e| DatasetError::io(&tmp_path, "write", e))?;
        Ok(PackWriter {
            final_path,
            tmp_path,
            out: Some(out),
            spec,
            entries: Vec::new(),
            record_names: Vec::new(),
            pos: HEADER_LEN as u64,
            labeled: 0,
        })
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True before the first push.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a sample. Checks sizes and label values first, so a bad record is reported with its
    /// index and name and never reaches the file.
    pub fn push(&mut self, s: &SampleRef<'_>) -> Result<usize> {
        let index = self.entries.len();
        let bad_size = |what: String| DatasetError::SizeMismatch {
            path: self.final_path.clone(),
            index,
            name: s.name.to_string(),
            what,
        };
        if s.height == 0 || s.width == 0 || s.height > u32::MAX as usize || s.width > u32::MAX as usize {
            return Err(bad_size(format!("invalid dimensions {}x{}", s.width, s.height)));
        }
        let px = s.height * s.width;
        if s.image.len() != px * 3 {
            return Err(bad_size(format!(
                "image has {} bytes, {}x{} RGB needs {}",
                s.image.len(),
                s.width,
                s.height,
                px * 3
            )));
        }
        if let Some(label) = s.label {
            if label.len() != px {
                return Err(bad_size(format!(
                    "label has {} bytes, {}x{} needs {}",
                    label.len(),
                    s.width,
                    s.height,
                    px
                )));
            }
            let (n, ig) = (self.spec.num_classes(), self.spec.ignore_index);
            if let Some((x, y, value)) = find_bad_label(label, s.width, n, ig) {
                return Err(DatasetError::LabelOutOfRange {
                    path: self.final_path.clone(),
                    index,
                    name: s.name.to_string(),
                    value,
                    x,
                    y,
                    num_classes: n,
                    ignore: ig,
                });
            }
        }
        if self.record_names.len() + s.name.len() > u32::MAX as usize {
            return Err(DatasetError::Config("record-name table exceeds 4 GiB".into()));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(s.image);
        let out = self.out.as_mut().expect("writer used after finish");
        let werr = |e| DatasetError::io(&self.tmp_path, "write", e);
        out.write_all(s.image).map_err(werr)?;
        if let Some(label) = s.label {
            crc.update(label);
            out.write_all(label).map_err(werr)?;
        }
        let entry = RecordEntry {
            offset: self.pos,
            height: s.height as u32,
            width: s.width as u32,
            flags: if s.label.is_some() { FLAG_LABELED } else { 0 },
            crc: crc.finalize(),
            name_offset: self.record_names.len() as u32,
            name_len: s.name.len() as u32,
        };
        self.pos += entry.payload_len().unwrap_or(0);
        self.record_names.extend_from_slice(s.name.as_bytes());
        self.labeled += s.label.is_some() as u64;
        self.entries.push(entry);
        Ok(index)
    }

    /// Writes index, names and header, fsyncs, renames into place and fsyncs the directory.
    pub fn finish(mut self) -> Result<PackSummary> {
        let out = self.out.take().expect("finish called twice");
        let result = self.write_tail(out);
        if result.is_err() {
            // Disk full or the like: the temporary file goes, an existing pack stays as it was.
            let _ = std::fs::remove_file(&self.tmp_path);
        }
        result
    }

    fn write_tail(&mut self, mut out: BufWriter<File>) -> Result<PackSummary> {
        let tmp = self.tmp_path.clone();
        let werr = |e| DatasetError::io(&tmp, "write", e);
        // Pad so the index (u64 fields) is 8-aligned in the (page-aligned) memory map.
        let pad = (8 - (self.pos % 8)) % 8;
        out.write_all(&[0u8; 8][..pad as usize]).map_err(werr)?;
        let index_offset = self.pos + pad;

        let mut meta = Vec::with_capacity(self.entries.len() * ENTRY_LEN + self.record_names.len());
        meta.extend_from_slice(bytemuck::cast_slice(&self.entries));
        meta.extend_from_slice(&self.record_names);
        let class_blob = encode_class_names(&self.spec.class_names);
        meta.extend_from_slice(&class_blob);
        let palette: Vec<u8> = self.spec.palette.iter().flatten().flat_map(|c| c.iter().copied()).collect();
        meta.extend_from_slice(&palette);

        let mut header = Header {
            magic: MAGIC,
            version: FORMAT_VERSION,
            header_len: HEADER_LEN as u32,
            num_records: self.entries.len() as u64,
            num_labeled: self.labeled,
            num_classes: self.spec.num_classes() as u32,
            ignore_index: self.spec.ignore_index as u32,
            index_offset,
            record_names_len: self.record_names.len() as u64,
            class_names_len: class_blob.len() as u64,
            palette_len: palette.len() as u64,
            file_len: index_offset + meta.len() as u64,
            meta_crc: 0,
            reserved0: 0,
            reserved: [0; 5],
        };
        header.meta_crc = meta_crc(&header, &meta);
        out.write_all(&meta).map_err(werr)?;
        out.seek(SeekFrom::Start(0)).map_err(werr)?;
        out.write_all(bytemuck::bytes_of(&header)).map_err(werr)?;
        let file = out.into_inner().map_err(|e| DatasetError::io(&tmp, "flush", e.into_error()))?;
        file.sync_all().map_err(|e| DatasetError::io(&tmp, "fsync", e))?;
        drop(file);
        std::fs::rename(&tmp, &self.final_path)
            .map_err(|e| DatasetError::io(&self.final_path, "rename temporary pack into place", e))?;
        // Make the rename itself durable (best effort: not every platform can open a directory).
        if let Some(dir) = self.final_path.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(PackSummary {
            path: self.final_path.clone(),
            records: self.entries.len(),
            labeled: self.labeled as usize,
            bytes: header.file_len,
            unknown_to_ignore: 0,
        })
    }
}

/// Remove `.<name>.tmp-<pid>` files that a killed writer of the same pack left behind (its
/// process is gone). Only where `/proc` tells which processes live (Linux); best effort.
fn remove_stale_temporaries(dir: &Path, file_name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{file_name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        // Unfinished: remove the temporary file so aborted runs leave no litter.
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}
