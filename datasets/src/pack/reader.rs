//! Zero-copy pack reader.
//!
//! `open` maps the file and validates only the header and the metadata region (index, names,
//! palette): magic, version, file length, header/index CRC, every record's offset and size. It never
//! touches payload pages, so opening a 10 GB pack costs a few kilobytes of I/O. Each record's payload
//! CRC is checked when the record is read (or for all records by [`Pack::verify`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::format::*;
use crate::error::{DatasetError, Result};
use crate::sample::{find_bad_label, SampleRef, SampleSource};

/// Metadata of one record (cheap: no payload access).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo<'a> {
    pub index: usize,
    pub name: &'a str,
    pub height: usize,
    pub width: usize,
    pub labeled: bool,
}

/// An open, validated pack.
pub struct Pack {
    path: PathBuf,
    map: Mmap,
    header: Header,
    class_names: Vec<String>,
    palette: Option<Vec<[u8; 3]>>,
    /// Byte range of the record-names blob in the map.
    names_start: usize,
}

impl std::fmt::Debug for Pack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pack")
            .field("path", &self.path)
            .field("records", &self.header.num_records)
            .field("classes", &self.class_names)
            .finish()
    }
}

impl Pack {
    /// Maps and validates a pack. Errors name the file and, for index problems, the record.
    pub fn open(path: impl AsRef<Path>) -> Result<Pack> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| DatasetError::io(&path, "open", e))?;
        // SAFETY: the map is read-only; as with any mmap, another process truncating the file while it
        // is mapped can fault. Packs are write-once (atomic rename), so we accept that documented risk.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DatasetError::io(&path, "mmap", e))?;
        Self::from_map(path, map)
    }

    fn from_map(path: PathBuf, map: Mmap) -> Result<Pack> {
        let corrupt = |what: String| DatasetError::Corrupt { path: path.clone(), what };
        let len = map.len() as u64;
        if map.len() < 8 {
            return Err(DatasetError::Truncated { path, what: format!("{len} bytes, shorter than the magic") });
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&map[..8]);
        if magic != MAGIC {
            return Err(DatasetError::BadMagic { path, found: magic, expected: MAGIC });
        }
        if map.len() < HEADER_LEN {
            return Err(DatasetError::Truncated {
                path,
                what: format!("{len} bytes, shorter than the {HEADER_LEN}-byte header"),
            });
        }
        let header: Header = bytemuck::pod_read_unaligned(&map[..HEADER_LEN]);
        if header.version != FORMAT_VERSION {
            return Err(DatasetError::BadVersion { path, found: header.version, expected: FORMAT_VERSION });
        }
        if header.header_len as usize != HEADER_LEN {
            return Err(corrupt(format!("header length field {} != {HEADER_LEN}", header.header_len)));
        }
        if header.file_len > len {
            return Err(DatasetError::Truncated {
                path,
                what: format!("header says {} bytes, file has {len}", header.file_len),
            });
        }
        if header.file_len < len {
            return Err(corrupt(format!("file has {len} bytes, header says {} (trailing data)", header.file_len)));
        }
        // Metadata region bounds, with checked arithmetic: a hostile header must not overflow.
        let n = header.num_records;
        let meta_len = n
            .checked_mul(ENTRY_LEN as u64)
            .and_then(|v| v.checked_add(header.record_names_len))
            .and_then(|v| v.checked_add(header.class_names_len))
            .and_then(|v| v.checked_add(header.palette_len));
        let meta_end = meta_len.and_then(|m| m.checked_add(header.index_offset));
        if header.index_offset < HEADER_LEN as u64 || header.index_offset % 8 != 0 || meta_end != Some(len) {
            return Err(corrupt(format!(
                "metadata region (index at {}, {n} records, names {} B, classes {} B, palette {} B) does not end at the file end ({len})",
                header.index_offset, header.record_names_len, header.class_names_len, header.palette_len
            )));
        }
        let meta = &map[header.index_offset as usize..];
        let computed = meta_crc(&header, meta);
        if computed != header.meta_crc {
            return Err(DatasetError::HeaderChecksum { path, stored: header.meta_crc, computed });
        }
        // From here on the metadata is what the writer wrote; still validate it (a buggy or hostile
        // writer can produce a consistent checksum over nonsense).
        let nc = header.num_classes as usize;
        if nc == 0 || nc > 255 || header.ignore_index > 255 || (header.ignore_index as usize) < nc {
            return Err(corrupt(format!(
                "{nc} classes with ignore value {} (need 1..=255 classes and ignore >= classes, < 256)",
                header.ignore_index
            )));
        }
        let idx_bytes = n as usize * ENTRY_LEN;
        let names_start = header.index_offset as usize + idx_bytes;
        let classes_start = names_start + header.record_names_len as usize;
        let palette_start = classes_start + header.class_names_len as usize;
        let class_names = decode_class_names(&map[classes_start..palette_start], nc).map_err(&corrupt)?;
        let palette = if header.palette_len == 0 {
            None
        } else if header.palette_len % 3 != 0 || header.palette_len > 768 {
            return Err(corrupt(format!("palette of {} bytes is not 1..=256 RGB triples", header.palette_len)));
        } else {
            Some(map[palette_start..].chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect())
        };
        let pack = Pack { path: path.clone(), map, header, class_names, palette, names_start };
        // Every record: flags known, payload inside [HEADER_LEN, index_offset), in file order, no
        // overlap; name inside the names blob and UTF-8. Labeled count matches the header.
        let entries = pack.entries()?;
        let mut prev_end = HEADER_LEN as u64;
        let mut labeled = 0u64;
        for (i, e) in entries.iter().enumerate() {
            let rec = |what: String| DatasetError::Corrupt { path: path.clone(), what: format!("record {i}: {what}") };
            if e.flags & !KNOWN_FLAGS != 0 {
                return Err(rec(format!("unknown flag bits {:#x}", e.flags)));
            }
            if e.height == 0 || e.width == 0 {
                return Err(rec(format!("invalid dimensions {}x{}", e.width, e.height)));
            }
            let end = e.payload_len().and_then(|l| e.offset.checked_add(l));
            match end {
                Some(end) if e.offset == prev_end && end <= pack.header.index_offset => prev_end = end,
                _ => {
                    return Err(rec(format!(
                        "payload at {} ({}x{}) does not follow the previous record or leaves the payload area [{prev_end}, {})",
                        e.offset, e.width, e.height, pack.header.index_offset
                    )))
                }
            }
            let name_end = e.name_offset as u64 + e.name_len as u64;
            if name_end > pack.header.record_names_len {
                return Err(rec("name lies outside the name table".into()));
            }
            let s = pack.names_start + e.name_offset as usize;
            if std::str::from_utf8(&pack.map[s..s + e.name_len as usize]).is_err() {
                return Err(rec("name is not UTF-8".into()));
            }
            labeled += (e.flags & FLAG_LABELED != 0) as u64;
        }
        // Only alignment padding (< 8 zero bytes) may sit between the last payload and the index, so
        // every byte of the file is covered by a checksum or a check.
        let gap = &pack.map[prev_end as usize..pack.header.index_offset as usize];
        if gap.len() >= 8 || gap.iter().any(|&b| b != 0) {
            return Err(corrupt(format!("{} unaccounted bytes between the last payload and the index", gap.len())));
        }
        if labeled != pack.header.num_labeled {
            return Err(corrupt(format!(
                "header says {} labeled records, index has {labeled}",
                pack.header.num_labeled
            )));
        }
        Ok(pack)
    }

    /// The index as a zero-copy slice of the map.
    fn entries(&self) -> Result<&[RecordEntry]> {
        let start = self.header.index_offset as usize;
        let bytes = &self.map[start..start + self.header.num_records as usize * ENTRY_LEN];
        bytemuck::try_cast_slice(bytes).map_err(|e| DatasetError::Corrupt {
            path: self.path.clone(),
            what: format!("index cannot be mapped in place: {e}"),
        })
    }

    fn entry(&self, index: usize) -> Result<RecordEntry> {
        self.entries()?.get(index).copied().ok_or_else(|| DatasetError::IndexOutOfRange {
            path: self.path.clone(),
            index,
            len: self.len(),
        })
    }

    fn name_of(&self, e: &RecordEntry) -> &str {
        let s = self.names_start + e.name_offset as usize;
        // Validated on open; the fallback keeps this panic-free regardless.
        std::str::from_utf8(&self.map[s..s + e.name_len as usize]).unwrap_or("<invalid name>")
    }

    /// The file this pack was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Number of records.
    pub fn len(&self) -> usize {
        self.header.num_records as usize
    }
    /// True for a pack without records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of records that carry a label map.
    pub fn num_labeled(&self) -> usize {
        self.header.num_labeled as usize
    }
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.header.num_classes as usize
    }
    /// The void label value.
    pub fn ignore_index(&self) -> u8 {
        self.header.ignore_index as u8
    }
    /// Class names, `num_classes()` of them.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }
    /// Optional colour per label value.
    pub fn palette(&self) -> Option<&[[u8; 3]]> {
        self.palette.as_deref()
    }
    /// Total file size in bytes.
    pub fn file_len(&self) -> u64 {
        self.header.file_len
    }

    /// Metadata of record `index` (no payload access, no checksum).
    pub fn info(&self, index: usize) -> Result<RecordInfo<'_>> {
        let e = self.entry(index)?;
        Ok(RecordInfo {
            index,
            name: self.name_of(&e),
            height: e.height as usize,
            width: e.width as usize,
            labeled: e.flags & FLAG_LABELED != 0,
        })
    }

    /// Record `index` as zero-copy slices, after checking its payload CRC and label values.
    pub fn record(&self, index: usize) -> Result<SampleRef<'_>> {
        let e = self.entry(index)?;
        let name = self.name_of(&e);
        // Bounds were validated on open.
        let start = e.offset as usize;
        let len = e.payload_len().unwrap_or(0) as usize;
        let payload = &self.map[start..start + len];
        let computed = crc32fast::hash(payload);
        if computed != e.crc {
            return Err(DatasetError::RecordChecksum {
                path: self.path.clone(),
                index,
                name: name.to_owned(),
                stored: e.crc,
                computed,
            });
        }
        let (h, w) = (e.height as usize, e.width as usize);
        let (image, rest) = payload.split_at(h * w * 3);
        let label = if e.flags & FLAG_LABELED != 0 {
            if let Some((x, y, value)) = find_bad_label(rest, w, self.num_classes(), self.ignore_index()) {
                return Err(DatasetError::LabelOutOfRange {
                    path: self.path.clone(),
                    index,
                    name: name.to_owned(),
                    value,
                    x,
                    y,
                    num_classes: self.num_classes(),
                    ignore: self.ignore_index(),
                });
            }
            Some(rest)
        } else {
            None
        };
        Ok(SampleRef { name: name.into(), height: h, width: w, image, label })
    }

    /// Reads every record and checks its checksum and labels; returns the first problem.
    pub fn verify(&self) -> Result<()> {
        (0..self.len()).try_for_each(|i| self.record(i).map(|_| ()))
    }
}

impl SampleSource for Pack {
    fn len(&self) -> usize {
        Pack::len(self)
    }
    fn sample(&self, index: usize) -> Result<SampleRef<'_>> {
        self.record(index)
    }
    fn num_classes(&self) -> usize {
        Pack::num_classes(self)
    }
    fn ignore_index(&self) -> u8 {
        Pack::ignore_index(self)
    }
}
