//! Lines with error bars: `label_efficiency.png` of `segnet experiment label-efficiency`, the
//! validation mIoU (%) against the number of labeled images, one line per recipe, each point the
//! mean over seeds with a bar of one standard deviation. The x axis is logarithmic when the
//! counts span a factor of 3 or more (10, 20, 500 would otherwise crowd the left edge), with a
//! tick at every measured count; series are nudged a few pixels apart so their bars do not hide
//! each other.

use super::{font, render, tick, KeyTicks};
use anyhow::{Context, Result};
use plotters::prelude::*;

/// Picture size in pixels.
pub const SIZE: (u32, u32) = (900, 540);

/// One line: `(x, mean, std)` points, drawn with error bars of one std.
pub struct LineSeries {
    /// Legend entry.
    pub name: String,
    /// RGB colour.
    pub color: [u8; 3],
    /// Points in drawing order.
    pub points: Vec<(f64, f64, f64)>,
}

/// The plot as PNG bytes, with axis names `x_desc` and `y_desc`. Points with a non-finite value
/// (or x <= 0 on a log axis) are left out; a series without points still gets its legend entry.
pub fn lines_png(title: &str, x_desc: &str, y_desc: &str, series: &[LineSeries]) -> Result<Vec<u8>> {
    let finite = |p: &&(f64, f64, f64)| p.0.is_finite() && p.1.is_finite() && p.2.is_finite();
    let mut xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().filter(finite).map(|p| p.0)).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let log = xs.first().is_some_and(|&lo| lo > 0.0 && xs[xs.len() - 1] / lo >= 3.0);
    // Drawn in u = ln x (log) or u = x: one linear axis either way, ticks at the measured xs.
    let u = move |x: f64| if log { x.ln() } else { x };
    let drawable = |p: &&(f64, f64, f64)| finite(p) && (!log || p.0 > 0.0);
    let (ulo, uhi) = super::range(xs.iter().copied().filter(|&x| !log || x > 0.0).map(u));
    let (ulo, uhi) = super::pad((ulo, uhi), 0.08);
    let ys = series.iter().flat_map(|s| s.points.iter().filter(drawable).flat_map(|p| [p.1 - p.2, p.1 + p.2]));
    let (lo, hi) = super::range(ys);
    let (lo, hi) = ((lo / 10.0).floor() * 10.0, ((hi / 10.0).ceil() * 10.0).max((lo / 10.0).floor() * 10.0 + 10.0));
    let keys: Vec<f64> = xs.iter().copied().filter(|&x| !log || x > 0.0).map(u).collect();
    render(SIZE.0, SIZE.1, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(18))
            .margin(14)
            .margin_right(24)
            .x_label_area_size(46)
            .y_label_area_size(56)
            .build_cartesian_2d(KeyTicks::new(ulo, uhi, keys), lo..hi)?;
        let xfmt = |v: &f64| if log { tick(v.exp().round()) } else { tick(*v) };
        let x_desc = if log { format!("{x_desc} (log scale)") } else { x_desc.to_string() };
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(font(13))
            .axis_desc_style(font(14))
            .x_label_formatter(&xfmt)
            .y_label_formatter(&|v| tick(*v))
            .max_light_lines(0)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        let n = series.len();
        for (k, s) in series.iter().enumerate() {
            let c = RGBColor(s.color[0], s.color[1], s.color[2]);
            let dx = ((2 * k) as i32 - (n as i32 - 1)) * 3;
            let px = |x: f64, y: f64| {
                let (a, b) = chart.backend_coord(&(u(x), y));
                (a + dx, b)
            };
            let pts: Vec<&(f64, f64, f64)> = s.points.iter().filter(drawable).collect();
            root.draw(&PathElement::new(pts.iter().map(|p| px(p.0, p.1)).collect::<Vec<_>>(), c.stroke_width(2)))?;
            for p in &pts {
                let ((x, top), (_, bot)) = (px(p.0, p.1 + p.2), px(p.0, p.1 - p.2));
                let bar = c.stroke_width(1);
                root.draw(&PathElement::new(vec![(x, top), (x, bot)], bar))?;
                root.draw(&PathElement::new(vec![(x - 4, top), (x + 4, top)], bar))?;
                root.draw(&PathElement::new(vec![(x - 4, bot), (x + 4, bot)], bar))?;
                root.draw(&Circle::new(px(p.0, p.1), 4, c.filled()))?;
            }
            // The legend entry (the line itself is drawn above, in pixels, to apply the nudge).
            chart.draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?.label(s.name.clone()).legend(
                move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (18, 0)], c.stroke_width(2))
                        + Circle::new((9, 0), 3, c.filled())
                },
            );
        }
        if n > 0 {
            super::legend(&mut chart, SeriesLabelPosition::LowerRight, 13, 0.9)?;
        }
        Ok(())
    })
    .context("drawing the line plot")
}

#[cfg(test)]
mod tests {
    use super::super::testing::{inked_pixels, pixels_near};
    use super::*;

    fn series(xs: &[f64]) -> Vec<LineSeries> {
        vec![
            LineSeries {
                name: "ce-only".into(),
                color: [90, 90, 90],
                points: xs.iter().map(|&x| (x, 30.0 + x.ln() * 5.0, 2.0)).collect(),
            },
            LineSeries {
                name: "contrastive".into(),
                color: [214, 39, 40],
                points: xs.iter().map(|&x| (x, 35.0 + x.ln() * 5.0, 3.5)).collect(),
            },
        ]
    }

    #[test]
    fn label_efficiency_lines_on_log_and_linear_axes() {
        for xs in [&[10.0, 20.0, 500.0][..], &[4.0, 6.0], &[16.0]] {
            let png = lines_png("mIoU vs labels", "labeled images", "val mIoU (%)", &series(xs)).unwrap();
            assert!(inked_pixels(&png, SIZE.0, SIZE.1) > 5000, "{xs:?}");
            assert!(pixels_near(&png, [214, 39, 40]) > 100, "{xs:?}: the second series is drawn");
        }
        // Nothing drawable: still a picture with axes and a legend.
        let bad = vec![LineSeries { name: "x".into(), color: [0, 0, 0], points: vec![(f64::NAN, 1.0, 0.0)] }];
        let png = lines_png("empty", "labeled images", "val mIoU (%)", &bad).unwrap();
        assert!(inked_pixels(&png, SIZE.0, SIZE.1) > 1000);
    }
}
