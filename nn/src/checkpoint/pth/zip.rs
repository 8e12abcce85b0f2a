//! The part of the ZIP format that PyTorch's `torch.save` writes: a central directory of
//! *stored* (uncompressed) entries. Reading needs only the end-of-central-directory record, the
//! central directory and each entry's local header (whose name and extra field lengths can differ
//! from the central copy: PyTorch pads the local extra field to align the data to 64 bytes).
//!
//! Layout (all integers little-endian; APPNOTE.TXT sections 4.3.7, 4.3.12, 4.3.16):
//! ```text
//! local header   "PK\x03\x04" ... method u16 @8 ... name_len u16 @26, extra_len u16 @28, name, extra, data
//! central entry  "PK\x01\x02" ... method u16 @10 ... compressed u32 @20, size u32 @24,
//!                name_len u16 @28, extra_len u16 @30, comment_len u16 @32, local_offset u32 @42, name
//! end record     "PK\x05\x06" ... entries u16 @10, dir_size u32 @12, dir_offset u32 @16, comment_len u16 @20
//! ```
//! ZIP64 (archives over 4 GiB) and compressed entries are refused with a clear message.

use std::collections::BTreeMap;

/// One stored entry: its bytes lie at `data[offset..offset + size]` of the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Start of the entry's data in the archive.
    pub offset: usize,
    /// Length of the data.
    pub size: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// The entries of a ZIP archive by name. Errors say what is wrong with the archive.
pub fn entries(data: &[u8]) -> Result<BTreeMap<String, Entry>, String> {
    const END: &[u8] = b"PK\x05\x06";
    // The end record is the last 22 bytes plus a comment of at most 65535 bytes.
    let lo = data.len().saturating_sub(22 + 65535);
    let end = (lo..=data.len().saturating_sub(22))
        .rev()
        .find(|&i| &data[i..i + 4] == END)
        .ok_or("not a ZIP archive (no end-of-central-directory record)")?;
    let count = u16_at(data, end + 10).ok_or("truncated end record")?;
    let dir_size = u32_at(data, end + 12).ok_or("truncated end record")?;
    let dir_offset = u32_at(data, end + 16).ok_or("truncated end record")?;
    if count == 0xFFFF || dir_size == 0xFFFF_FFFF || dir_offset == 0xFFFF_FFFF {
        return Err("a ZIP64 archive (over 4 GiB or 65535 entries) is not supported".into());
    }
    if dir_offset + dir_size > end {
        return Err(format!("central directory at {dir_offset} (+{dir_size}) overlaps the end record at {end}"));
    }
    let mut out = BTreeMap::new();
    let mut at = dir_offset;
    for k in 0..count {
        if data.get(at..at + 4) != Some(b"PK\x01\x02") {
            return Err(format!("central directory entry {k} at byte {at}: bad signature"));
        }
        let bad = || format!("central directory entry {k} at byte {at}: truncated");
        let method = u16_at(data, at + 10).ok_or_else(bad)?;
        let compressed = u32_at(data, at + 20).ok_or_else(bad)?;
        let size = u32_at(data, at + 24).ok_or_else(bad)?;
        let name_len = u16_at(data, at + 28).ok_or_else(bad)?;
        let extra_len = u16_at(data, at + 30).ok_or_else(bad)?;
        let comment_len = u16_at(data, at + 32).ok_or_else(bad)?;
        let local = u32_at(data, at + 42).ok_or_else(bad)?;
        let name_bytes = data.get(at + 46..at + 46 + name_len).ok_or_else(bad)?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        if method != 0 || compressed != size {
            return Err(format!("entry {name}: compressed (method {method}); PyTorch writes stored entries only"));
        }
        if size == 0xFFFF_FFFF || local == 0xFFFF_FFFF {
            return Err(format!("entry {name}: ZIP64 sizes are not supported"));
        }
        if data.get(local..local + 4) != Some(b"PK\x03\x04") {
            return Err(format!("entry {name}: no local header at byte {local}"));
        }
        let lname = u16_at(data, local + 26).ok_or_else(bad)?;
        let lextra = u16_at(data, local + 28).ok_or_else(bad)?;
        let offset = local + 30 + lname + lextra;
        if offset + size > data.len() {
            return Err(format!(
                "entry {name}: data at {offset} (+{size}) runs past the end of the file ({} bytes): truncated?",
                data.len()
            ));
        }
        out.insert(name, Entry { offset, size });
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stored ZIP archive of `files`, each local extra field padded so the data starts at a
    /// multiple of 64 (as PyTorch's writer does).
    pub fn write_stored(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, bytes) in files {
            let local = out.len();
            let header = 30 + name.len();
            let pad = (64 - (local + header + 4) % 64) % 64 + 4;
            out.extend_from_slice(b"PK\x03\x04");
            out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&0u32.to_le_bytes()); // crc (not checked)
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&(pad as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&vec![0u8; pad]);
            assert_eq!(out.len() % 64, 0);
            out.extend_from_slice(bytes);
            central.extend_from_slice(b"PK\x01\x02");
            central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            central.extend_from_slice(&0u32.to_le_bytes());
            central.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            central.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
            central.extend_from_slice(&(local as u32).to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let dir_offset = out.len();
        out.extend_from_slice(&central);
        out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
        out.extend_from_slice(&(files.len() as u16).to_le_bytes());
        out.extend_from_slice(&(files.len() as u16).to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&(dir_offset as u32).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    #[test]
    fn reads_stored_entries_at_their_aligned_offsets() {
        let zip = write_stored(&[("a/data.pkl", b"hello"), ("a/data/0", &[1, 2, 3, 4])]);
        let e = entries(&zip).unwrap();
        assert_eq!(e.len(), 2);
        let d = e["a/data/0"];
        assert_eq!(&zip[d.offset..d.offset + d.size], &[1, 2, 3, 4]);
        assert_eq!(d.offset % 64, 0);
        let p = e["a/data.pkl"];
        assert_eq!(&zip[p.offset..p.offset + p.size], b"hello");
    }

    #[test]
    fn bad_archives_get_clear_errors() {
        assert!(entries(b"not a zip at all, just some bytes here").unwrap_err().contains("not a ZIP"));
        let zip = write_stored(&[("x", &[0u8; 100])]);
        // Cut inside the entry's data but keep the end record: the entry runs past the end.
        let mut cut = zip[..80].to_vec();
        cut.extend_from_slice(&zip[zip.len() - 22 - 47..]);
        assert!(entries(&cut).is_err());
        let mut compressed = zip.clone();
        let dir = u32_at(&zip, zip.len() - 6).unwrap();
        compressed[dir + 10] = 8; // deflate
        assert!(entries(&compressed).unwrap_err().contains("compressed"));
    }
}
