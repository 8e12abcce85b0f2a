//! On-disk structures of the pack format (see `FORMAT.md`).
//!
//! The fixed-size structs are `#[repr(C)]` + `Pod`, so the reader casts the memory map straight to
//! `&Header` / `&[RecordEntry]` with no parsing and no copy. All integers are little-endian; we refuse
//! to build on big-endian targets rather than silently misread packs.

use bytemuck::{Pod, Zeroable};

#[cfg(target_endian = "big")]
compile_error!("the segnet pack format is little-endian; big-endian targets are not supported");

/// First 8 bytes of every pack.
pub const MAGIC: [u8; 8] = *b"SEGPACK\0";
/// Bumped whenever the layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// Size of [`Header`] in bytes (also the offset of the first payload byte).
pub const HEADER_LEN: usize = std::mem::size_of::<Header>();
/// Size of one [`RecordEntry`].
pub const ENTRY_LEN: usize = std::mem::size_of::<RecordEntry>();
/// Record flag: the record carries a label map after its image.
pub const FLAG_LABELED: u32 = 1;
/// All flag bits this version understands; any other bit is corruption.
pub const KNOWN_FLAGS: u32 = FLAG_LABELED;

/// The fixed 128-byte header at offset 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Eq)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    /// `HEADER_LEN`; lets a reader notice a header of a different shape.
    pub header_len: u32,
    pub num_records: u64,
    pub num_labeled: u64,
    pub num_classes: u32,
    /// The void label value (stored widened; must be < 256).
    pub ignore_index: u32,
    /// Start of the metadata region (index, then record names, class names, palette); 8-aligned.
    pub index_offset: u64,
    pub record_names_len: u64,
    pub class_names_len: u64,
    /// 0 (no palette) or `3 * n` bytes of RGB triples, `n <= 256`.
    pub palette_len: u64,
    /// Total file length; detects truncation before anything else is trusted.
    pub file_len: u64,
    /// CRC32 of this header (with this field zeroed) followed by the whole metadata region.
    pub meta_crc: u32,
    pub reserved0: u32,
    pub reserved: [u64; 5],
}

/// One index entry (32 bytes) per record.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Eq)]
pub struct RecordEntry {
    /// Absolute file offset of the payload: RGB (`h*w*3` bytes) then, if labeled, the label (`h*w`).
    pub offset: u64,
    pub height: u32,
    pub width: u32,
    pub flags: u32,
    /// CRC32 of the whole payload (image then label).
    pub crc: u32,
    /// Byte range of this record's UTF-8 name inside the record-names blob.
    pub name_offset: u32,
    pub name_len: u32,
}

impl RecordEntry {
    /// Payload length in bytes, or `None` on overflow (only possible in a corrupt index).
    pub fn payload_len(&self) -> Option<u64> {
        let px = (self.height as u64).checked_mul(self.width as u64)?;
        let per_px = if self.flags & FLAG_LABELED != 0 { 4 } else { 3 };
        px.checked_mul(per_px)
    }
}

/// What a pack describes besides its records: classes, void value, optional palette.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSpec {
    /// One name per class; `class_names.len()` is the class count (1..=255).
    pub class_names: Vec<String>,
    /// Label value meaning "void / not annotated" (255 in VOC and Cityscapes). Must be `>= num_classes`.
    pub ignore_index: u8,
    /// Optional colour per label value, for rendering predictions (`[r, g, b]`).
    pub palette: Option<Vec<[u8; 3]>>,
}

impl PackSpec {
    /// A spec with the given class names, ignore 255 and no palette.
    pub fn new(class_names: Vec<String>) -> Self {
        PackSpec { class_names, ignore_index: 255, palette: None }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
}

/// Serialises class names as `u32 LE length + UTF-8 bytes`, repeated: names may contain any character.
pub fn encode_class_names(names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in names {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(n.as_bytes());
    }
    out
}

/// Inverse of [`encode_class_names`]; `Err` describes what is malformed.
pub fn decode_class_names(mut blob: &[u8], expected: usize) -> Result<Vec<String>, String> {
    let mut names = Vec::with_capacity(expected.min(256));
    while !blob.is_empty() {
        if blob.len() < 4 {
            return Err("class-name table ends inside a length field".into());
        }
        let len = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        blob = &blob[4..];
        if len > blob.len() {
            return Err(format!("class name {} claims {len} bytes, only {} left", names.len(), blob.len()));
        }
        let s = std::str::from_utf8(&blob[..len]).map_err(|_| format!("class name {} is not UTF-8", names.len()))?;
        names.push(s.to_owned());
        blob = &blob[len..];
    }
    if names.len() != expected {
        return Err(format!("header says {expected} classes but the name table holds {}", names.len()));
    }
    Ok(names)
}

/// CRC32 over the header (checksum field zeroed) then the metadata region.
pub fn meta_crc(header: &Header, meta: &[u8]) -> u32 {
    let mut h = *header;
    h.meta_crc = 0;
    let mut c = crc32fast::Hasher::new();
    c.update(bytemuck::bytes_of(&h));
    c.update(meta);
    c.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_documented_layout() {
        assert_eq!(HEADER_LEN, 128);
        assert_eq!(ENTRY_LEN, 32);
    }

    #[test]
    fn class_names_round_trip_including_odd_characters() {
        let names: Vec<String> = ["bg", "a\nb", "", "éé"].iter().map(|s| s.to_string()).collect();
        let blob = encode_class_names(&names);
        assert_eq!(decode_class_names(&blob, 4).unwrap(), names);
        assert!(decode_class_names(&blob, 3).is_err());
        assert!(decode_class_names(&blob[..blob.len() - 1], 4).is_err());
    }
}
