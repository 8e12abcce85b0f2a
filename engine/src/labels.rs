//! Integer label maps for segmentation losses.

use crate::{Error, Result};

/// A batch of per-pixel class labels, `n x h x w`, row-major, `u8` (so at most 255 classes;
/// the value [`LabelMap::IGNORE`] marks pixels that take no part in a loss).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelMap {
    /// Batch size.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// `n * h * w` labels.
    pub data: Vec<u8>,
}

impl LabelMap {
    /// The conventional "void" label.
    pub const IGNORE: u8 = 255;

    /// Wrap labels, checking the length.
    pub fn new(n: usize, h: usize, w: usize, data: Vec<u8>) -> Result<LabelMap> {
        if data.len() != n * h * w {
            return Err(Error::shape("LabelMap", format!("{} labels for {n}x{h}x{w}", data.len())));
        }
        Ok(LabelMap { n, h, w, data })
    }

    /// Check every label is `< classes` or equal to `ignore`; the error names the op and the first
    /// offending pixel.
    pub fn validate(&self, op: &'static str, classes: usize, ignore: u8) -> Result<()> {
        if let Some(i) = self.data.iter().position(|&l| l != ignore && l as usize >= classes) {
            let (b, r) = (i / (self.h * self.w), i % (self.h * self.w));
            return Err(Error::invalid(
                op,
                format!(
                    "label {} at image {b} pixel ({}, {}) is outside [0, {classes}) and is not the ignore value {ignore}",
                    self.data[i],
                    r / self.w,
                    r % self.w
                ),
            ));
        }
        Ok(())
    }
}
