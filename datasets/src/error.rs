//! One error type for the whole crate.
//!
//! Every variant that concerns data names the file it came from and, where there is one, the record
//! (index and name), so a user staring at a failed `segnet data pack` run knows which image to look at.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing, importing or loading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// An operating-system level failure (open, read, write, fsync, rename).
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The first bytes are not the pack magic: not a pack at all.
    #[error("{path}: not a segnet pack (magic {found:?}, expected {expected:?})")]
    BadMagic { path: PathBuf, found: [u8; 8], expected: [u8; 8] },
    /// A pack written by a newer (or older, incompatible) version of this crate.
    #[error("{path}: unsupported pack version {found} (this build reads version {expected})")]
    BadVersion { path: PathBuf, found: u32, expected: u32 },
    /// The file is shorter than its header says (an interrupted copy, a partial download).
    #[error("{path}: truncated pack: {what}")]
    Truncated { path: PathBuf, what: String },
    /// The header or index is internally inconsistent (offsets outside the file, overlapping records...).
    #[error("{path}: corrupt pack: {what}")]
    Corrupt { path: PathBuf, what: String },
    /// The CRC32 over header + index does not match: some metadata byte changed.
    #[error("{path}: header/index checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum { path: PathBuf, stored: u32, computed: u32 },
    /// The CRC32 of one record's payload does not match: image or label bytes changed on disk.
    #[error("{path}: record {index} ({name:?}): payload checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    RecordChecksum { path: PathBuf, index: usize, name: String, stored: u32, computed: u32 },
    /// A label pixel that is neither a class index nor the ignore value.
    #[error("{path}: record {index} ({name:?}): label value {value} at (x={x}, y={y}) is not a class (0..{num_classes}) nor the ignore value {ignore}")]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        name: String,
        value: u8,
        x: usize,
        y: usize,
        num_classes: usize,
        ignore: u8,
    },
    /// Image and label disagree in size, or a buffer does not match its declared size.
    #[error("{path}: record {index} ({name:?}): size mismatch: {what}")]
    SizeMismatch { path: PathBuf, index: usize, name: String, what: String },
    /// A record index past the end of the pack.
    #[error("{path}: record {index} does not exist (the pack holds {len} records)")]
    IndexOutOfRange { path: PathBuf, index: usize, len: usize },
    /// A split list (or folder scan) names an entry whose image file does not exist.
    #[error("{list}: entry {index} ({name:?}) has no image (expected {expected})")]
    MissingImage { list: PathBuf, index: usize, name: String, expected: PathBuf },
    /// An entry whose label file does not exist where one is required.
    #[error("{list}: entry {index} ({name:?}) has no label (expected {expected})")]
    MissingLabel { list: PathBuf, index: usize, name: String, expected: PathBuf },
    /// A PNG/JPEG that cannot be decoded (corrupt, unsupported colour type...).
    #[error("{path}: cannot decode image: {what}")]
    Decode { path: PathBuf, what: String },
    /// A split with no entries: almost always a wrong path or split name.
    #[error("{path}: empty split: {what}")]
    EmptySplit { path: PathBuf, what: String },
    /// A configuration that cannot work (zero batch size, crop larger than allowed, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl DatasetError {
    /// Wraps an `io::Error` with the file it concerns and what we were doing.
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        DatasetError::Io { path: path.into(), action, source }
    }
}
