//! Image and label decoding for the importers.
//!
//! Labels need the raw stored values: VOC's palette PNGs hold class indices as palette indices, and
//! a generic decoder would expand them to RGB. So label PNGs are read with the `png` crate and no
//! transformations (8-bit greyscale, or palette at 1/2/4/8 bits); photos go through `image`.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::error::{DatasetError, Result};

/// Decodes a PNG/JPEG photo to RGB8: `(height, width, pixels)`.
pub fn decode_rgb(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DatasetError::io(path, "open image", e))?
        .with_guessed_format()
        .map_err(|e| DatasetError::io(path, "read image", e))?;
    let img = reader.decode().map_err(|e| DatasetError::Decode { path: path.to_path_buf(), what: e.to_string() })?;
    let rgb = img.into_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    Ok((h, w, rgb.into_raw()))
}

/// Decodes a label PNG to raw u8 values: `(height, width, values)`.
pub fn decode_label_png(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let bad = |what: String| DatasetError::Decode { path: path.to_path_buf(), what };
    let file = File::open(path).map_err(|e| DatasetError::io(path, "open label", e))?;
    let mut dec = png::Decoder::new(BufReader::new(file));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec.read_info().map_err(|e| bad(e.to_string()))?;
    let size = reader.output_buffer_size().ok_or_else(|| bad("image too large".into()))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(e.to_string()))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let bits = match (info.color_type, info.bit_depth) {
        (png::ColorType::Grayscale, png::BitDepth::Eight) => 8,
        (png::ColorType::Indexed, d) => d as usize,
        (ct, d) => {
            return Err(bad(format!("label PNG must be 8-bit greyscale or palette, found {ct:?} at {d:?} bits")))
        }
    };
    let mut out = Vec::with_capacity(w * h);
    for row in buf.chunks(info.line_size).take(h) {
        if bits == 8 {
            out.extend_from_slice(&row[..w]);
        } else {
            // Sub-byte palettes: pixels packed most-significant first.
            let per = 8 / bits;
            let mask = (1u8 << bits) - 1;
            for x in 0..w {
                let byte = row[x / per];
                let shift = 8 - bits * (x % per + 1);
                out.push((byte >> shift) & mask);
            }
        }
    }
    if out.len() != w * h {
        return Err(bad("decoded fewer rows than the header declares".into()));
    }
    Ok((h, w, out))
}
