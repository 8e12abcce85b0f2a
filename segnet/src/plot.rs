//! A PNG plot of the training curves (loss per step, validation mIoU per evaluation), drawn with
//! a few lines of rasterisation and a 3x5 pixel font so the binary needs no plotting library.

use std::io::BufWriter;
use std::path::Path;

const W: usize = 720;
const H: usize = 300;
const PANEL_W: usize = 340;
const MARGIN: usize = 30;

/// One curve: (x, y) points, a colour and a title.
pub struct Series<'a> {
    /// Panel title (upper-case letters, digits and a few symbols render).
    pub title: &'a str,
    /// Points in drawing order.
    pub points: &'a [(f64, f64)],
    /// RGB colour.
    pub color: [u8; 3],
}

/// One line of a line plot: `(x, mean, std)` points, drawn with error bars of one std.
pub struct LineSeries {
    /// Legend entry.
    pub name: String,
    /// RGB colour.
    pub color: [u8; 3],
    /// Points in drawing order.
    pub points: Vec<(f64, f64, f64)>,
}

struct Canvas {
    px: Vec<u8>,
    w: usize,
    h: usize,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas { px: vec![255; w * h * 3], w, h }
    }
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn save(&self, path: &Path) -> std::io::Result<()> {
        let file = std::fs::File::create(path)?;
        let mut enc = png::Encoder::new(BufWriter::new(file), self.w as u32, self.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(std::io::Error::other)?;
        wr.write_image_data(&self.px).map_err(std::io::Error::other)?;
        Ok(())
    }
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for t in 0..=n {
            self.set(x0 + (x1 - x0) * t / n, y0 + (y1 - y0) * t / n, c);
        }
    }
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch.to_ascii_uppercase());
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (1 << (2 - col)) != 0 {
                        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.set(x + (k as i64 * 4 + col) * 2 + dx, y + row as i64 * 2 + dy, c);
                        }
                    }
                }
            }
        }
    }
}

/// 3x5 glyphs, one row per u8 (low 3 bits).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        ' ' => [0; 5],
        'A' => [2, 5, 7, 5, 5],
        'C' => [7, 4, 4, 4, 7],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'I' => [7, 2, 2, 2, 7],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [7, 5, 5, 5, 7],
        'P' => [7, 5, 7, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'S' => [7, 4, 7, 1, 7],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'G' => [7, 4, 5, 5, 7],
        'H' => [5, 5, 7, 5, 5],
        'D' => [6, 5, 5, 5, 6],
        'B' => [6, 5, 6, 5, 6],
        'K' => [5, 5, 6, 5, 5],
        'W' => [5, 5, 7, 7, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        'X' => [5, 5, 2, 5, 5],
        'J' => [1, 1, 1, 5, 7],
        'Q' => [7, 5, 5, 7, 1],
        '/' => [1, 1, 2, 4, 4],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        '%' => [5, 1, 2, 4, 5],
        _ => [7, 7, 7, 7, 7],
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Draw up to two panels side by side and write them to `path` as an RGB PNG.
pub fn write_png(path: &Path, panels: &[Series<'_>]) -> std::io::Result<()> {
    let mut cv = Canvas::new(W, H);
    for (p, s) in panels.iter().take(2).enumerate() {
        let x0 = (p * (PANEL_W + MARGIN) + MARGIN) as i64;
        let (y0, y1) = (MARGIN as i64, (H - MARGIN) as i64);
        let x1 = x0 + PANEL_W as i64 - MARGIN as i64;
        let grey = [90, 90, 90];
        cv.line((x0, y1), (x1, y1), grey);
        cv.line((x0, y0), (x0, y1), grey);
        cv.text(x0, 6, s.title, [0, 0, 0]);
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        if pts.is_empty() {
            continue;
        }
        let (xmin, xmax) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
        let (ymin, ymax) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
        let (xr, yr) = ((xmax - xmin).max(1e-12), (ymax - ymin).max(1e-12));
        let map = |(x, y): (f64, f64)| -> (i64, i64) {
            (x0 + ((x - xmin) / xr * (x1 - x0) as f64) as i64, y1 - ((y - ymin) / yr * (y1 - y0) as f64) as i64)
        };
        for w in pts.windows(2) {
            cv.line(map(w[0]), map(w[1]), s.color);
        }
        if pts.len() == 1 {
            let (x, y) = map(pts[0]);
            for d in -2..=2 {
                cv.set(x + d, y, s.color);
                cv.set(x, y + d, s.color);
            }
        }
        cv.text(x0 + 4, y0 - 2, &fmt_num(ymax), grey);
        cv.text(x0 + 4, y1 - 12, &fmt_num(ymin), grey);
        cv.text(x0, y1 + 6, &fmt_num(xmin), grey);
        let xm = fmt_num(xmax);
        cv.text(x1 - 8 * xm.len() as i64, y1 + 6, &xm, grey);
    }
    cv.save(path)
}

/// A line plot with error bars and a legend, x on a log scale (labeled counts span decades),
/// written to `path` as an RGB PNG.
pub fn write_lines_png(path: &Path, title: &str, series: &[LineSeries]) -> std::io::Result<()> {
    let (w, h) = (720usize, 420usize);
    let mut cv = Canvas::new(w, h);
    let (x0, x1, y0, y1) = (60i64, 460i64, 30i64, (h - 40) as i64);
    let grey = [90, 90, 90];
    cv.text(x0, 8, title, [0, 0, 0]);
    cv.line((x0, y1), (x1, y1), grey);
    cv.line((x0, y0), (x0, y1), grey);
    // Only drawable points (log x needs x > 0), per series and all together for the ranges.
    let drawable = |s: &LineSeries| -> Vec<(f64, f64, f64)> {
        s.points.iter().copied().filter(|(x, m, d)| *x > 0.0 && m.is_finite() && d.is_finite()).collect()
    };
    let per_series: Vec<Vec<(f64, f64, f64)>> = series.iter().map(drawable).collect();
    let pts: Vec<(f64, f64, f64)> = per_series.iter().flatten().copied().collect();
    if !pts.is_empty() {
        let lx = |x: f64| x.ln();
        let (xmin, xmax) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(lx(p.0)), a.1.max(lx(p.0))));
        let (mut ymin, mut ymax) =
            pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1 - p.2), a.1.max(p.1 + p.2)));
        // Round the y range out to multiples of 10 (percent).
        ymin = (ymin / 10.0).floor() * 10.0;
        ymax = ((ymax / 10.0).ceil() * 10.0).max(ymin + 10.0);
        let xr = (xmax - xmin).max(1e-12);
        let pad = 20i64;
        let map = |x: f64, y: f64| -> (i64, i64) {
            let px = if xmax > xmin {
                x0 + pad + ((lx(x) - xmin) / xr * (x1 - x0 - 2 * pad) as f64) as i64
            } else {
                (x0 + x1) / 2
            };
            (px, y1 - ((y - ymin) / (ymax - ymin) * (y1 - y0) as f64) as i64)
        };
        // Horizontal grid lines and y labels every 10 points.
        let mut y = ymin;
        while y <= ymax + 1e-9 {
            let (_, py) = map(1.0, y);
            for x in (x0..x1).step_by(4) {
                cv.set(x, py, [215, 215, 215]);
            }
            cv.text(x0 - 36, py - 4, &format!("{y:.0}"), grey);
            y += 10.0;
        }
        // x ticks at the measured counts.
        let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        xs.dedup();
        for &x in &xs {
            let (px, _) = map(x, ymin);
            cv.line((px, y1), (px, y1 + 4), grey);
            let label = format!("{x:.0}");
            cv.text(px - 4 * label.len() as i64, y1 + 8, &label, grey);
        }
        cv.text((x0 + x1) / 2 - 60, y1 + 24, "LABELED IMAGES", grey);
        for (s, p) in series.iter().zip(&per_series) {
            for w2 in p.windows(2) {
                cv.line(map(w2[0].0, w2[0].1), map(w2[1].0, w2[1].1), s.color);
            }
            for &(x, m, d) in p {
                let (px, top) = map(x, m + d);
                let (_, bot) = map(x, m - d);
                cv.line((px, top), (px, bot), s.color);
                cv.line((px - 3, top), (px + 3, top), s.color);
                cv.line((px - 3, bot), (px + 3, bot), s.color);
                let (_, py) = map(x, m);
                for dy in -2..=2 {
                    cv.line((px - 2, py + dy), (px + 2, py + dy), s.color);
                }
            }
        }
    }
    for (k, s) in series.iter().enumerate() {
        let y = y0 + 10 + k as i64 * 18;
        for dy in 0..3 {
            cv.line((x1 + 16, y + 3 + dy), (x1 + 36, y + 3 + dy), s.color);
        }
        cv.text(x1 + 42, y, &s.name, [0, 0, 0]);
    }
    cv.save(path)
}
