//! The pack: one file per split, written by a streaming writer, read zero-copy through `memmap2`.
//! See `datasets/FORMAT.md` for the byte layout.

pub mod format;
pub mod reader;
pub mod writer;

pub use format::{PackSpec, FORMAT_VERSION, MAGIC};
pub use reader::{Pack, RecordInfo};
pub use writer::{PackSummary, PackWriter};
