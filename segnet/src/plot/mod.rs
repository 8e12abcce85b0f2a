//! Pictures a person reads, drawn with `plotters` into an RGB buffer and encoded as PNG:
//!
//! * [`curves`]: `curves.png` of a run directory: every stage's loss on its own axis, the learning
//!   rate per step and the validation mIoU per evaluation, coloured by stage;
//! * [`bars`]: `class_iou.png`: the IoU of every class as a bar, the mIoU as a dashed line;
//! * [`lines`]: `label_efficiency.png` of the experiment: mIoU against labeled images, one line
//!   per recipe with error bars of one standard deviation;
//! * [`scatter`]: the embedding map of `segnet embed`: sampled pixels projected to 2-D, coloured
//!   by class.
//!
//! Text is drawn with DejaVu Sans, embedded in the binary (`segnet/assets/`, licence beside it)
//! and registered once with plotters' `ab_glyph` renderer, so the binary reads no system fonts
//! and links no font library.

pub mod bars;
pub mod curves;
pub mod lines;
pub mod scatter;

use anyhow::{ensure, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::sync::OnceLock;

/// DejaVu Sans (Bitstream Vera licence, `segnet/assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The family every plot asks for; the only one registered.
pub const FAMILY: &str = "sans-serif";

/// The drawing area every plot function draws on.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// The legend of `chart` in the plots' one style: labels at `size` px on a white box of
/// `opacity`, with a light grey border, at `pos`.
pub fn legend<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, CT>,
    pos: SeriesLabelPosition,
    size: u32,
    opacity: f64,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(pos)
        .label_font(font(size))
        .background_style(WHITE.mix(opacity))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    Ok(())
}

/// Register the embedded font with plotters (once per process; later calls are free).
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ensure!(ok, "the embedded font (DejaVuSans.ttf) does not parse");
    Ok(())
}

/// A `w x h` picture: `draw` gets the whole area, already filled white; returns the PNG bytes.
pub fn render(w: u32, h: u32, draw: impl FnOnce(&Area<'_>) -> Result<()>) -> Result<Vec<u8>> {
    register_font()?;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).context("plot: cannot fill the background")?;
        draw(&root)?;
        root.present().context("plot: cannot finish the picture")?;
    }
    encode_png(&rgb, w, h)
}

/// An 8-bit RGB PNG of `rgb` (`w * h * 3` bytes, row-major).
pub fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
    ensure!(rgb.len() == w as usize * h as usize * 3, "plot: {} bytes for a {w}x{h} RGB picture", rgb.len());
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().context("png: cannot write the header")?;
    wr.write_image_data(rgb).context("png: cannot encode the picture")?;
    wr.finish().context("png: cannot finish the file")?;
    Ok(out)
}

/// The font at `size` pixels.
pub fn font(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().into()
}

/// Tableau's ten colours (matplotlib's default cycle): distinct on white and for most kinds of
/// colour blindness; `k` wraps around.
pub fn colour(k: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = TAB10[k % TAB10.len()];
    RGBColor(r, g, b)
}

/// A short number for tick labels: no trailing noise, scientific only where it must be.
pub fn tick(v: f64) -> String {
    let a = v.abs();
    // Tick positions are computed in floating point: "0" rather than -1.1e-16.
    if a < 1e-12 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        trim(format!("{v:.1}"))
    } else if a >= 1.0 {
        trim(format!("{v:.2}"))
    } else {
        trim(format!("{v:.4}"))
    }
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A linear float axis with ticks (and grid lines) exactly at `keys`: the measured label counts
/// of a line plot, the classes of a bar chart. Plotters' own `with_key_points` has no default
/// label formatting, so the mesh could not label it.
#[derive(Clone)]
pub struct KeyTicks {
    inner: plotters::coord::types::RangedCoordf64,
    keys: Vec<f64>,
}

impl KeyTicks {
    /// The axis `lo..hi` with ticks at `keys`.
    pub fn new(lo: f64, hi: f64, keys: Vec<f64>) -> KeyTicks {
        KeyTicks { inner: (lo..hi).into(), keys }
    }
}

impl Ranged for KeyTicks {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(v, limit)
    }
    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Bold lines and labels at the keys; no light lines between them.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.keys.clone()
        }
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// `(lo, hi)` of the finite values, widened when empty or flat so an axis can be built on it.
pub fn range(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else if hi - lo < 1e-12 * hi.abs().max(1.0) {
        let pad = if hi == 0.0 { 1.0 } else { hi.abs() * 0.05 };
        (lo - pad, hi + pad)
    } else {
        (lo, hi)
    }
}

/// `(lo, hi)` widened by `frac` of its width on both sides.
pub fn pad((lo, hi): (f64, f64), frac: f64) -> (f64, f64) {
    let d = (hi - lo) * frac;
    (lo - d, hi + d)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Checks shared by the plot tests: a PNG of the expected size with drawn pixels.

    /// Decode `png` (asserting it is one), check its size, and return how many pixels are not
    /// white. With `SEGNET_PLOT_DUMP=DIR` in the environment the picture is also saved there, to
    /// look at (`DIR/<w>x<h>-<hash>.png`).
    pub fn inked_pixels(png: &[u8], w: u32, h: u32) -> usize {
        if let Some(dir) = std::env::var_os("SEGNET_PLOT_DUMP") {
            let hash = png.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
            std::fs::write(std::path::Path::new(&dir).join(format!("{w}x{h}-{hash:016x}.png")), png).unwrap();
        }
        let img = image::load_from_memory_with_format(png, image::ImageFormat::Png).expect("a valid PNG").to_rgb8();
        assert_eq!((img.width(), img.height()), (w, h), "picture size");
        img.pixels().filter(|p| p.0 != [255, 255, 255]).count()
    }

    /// How many pixels are close to `c` (within 40 per channel).
    pub fn pixels_near(png: &[u8], c: [u8; 3]) -> usize {
        let img = image::load_from_memory_with_format(png, image::ImageFormat::Png).unwrap().to_rgb8();
        img.pixels().filter(|p| p.0.iter().zip(c).all(|(&a, b)| (a as i32 - b as i32).abs() <= 40)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_png_round_trips_and_checks_the_size() {
        let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
        let png = encode_png(&rgb, 4, 3).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.into_raw(), rgb);
        assert!(encode_png(&rgb, 5, 3).is_err());
    }

    #[test]
    fn text_renders_with_the_embedded_font() {
        let png = render(200, 60, |root| {
            root.draw(&Text::new("mIoU 43.4 %", (10, 20), font(20)))?;
            Ok(())
        })
        .unwrap();
        assert!(testing::inked_pixels(&png, 200, 60) > 50, "the text left no ink");
    }

    #[test]
    fn ticks_and_ranges() {
        assert_eq!(tick(0.1), "0.1");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(1000.0), "1000");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(-1.1e-16), "0");
        assert_eq!(tick(2e-5), "2.0e-5");
        assert_eq!(range([3.0, 3.0]), (2.85, 3.15));
        assert_eq!(range([f64::NAN]), (0.0, 1.0));
        assert_eq!(range([1.0, f64::INFINITY, 4.0]), (1.0, 4.0));
    }
}
