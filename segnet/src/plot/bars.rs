//! `class_iou.png`: the validation IoU of every class as a horizontal bar (class names down the
//! side, so twenty long names stay readable), its value in percent at the bar's end, `n/a` for a
//! class absent from both ground truth and predictions (left out of the mean), and the mIoU as a
//! dashed line across. Written at the end of training and by `segnet eval --plot`.

use super::{colour, font, render, KeyTicks};
use anyhow::{ensure, Context, Result};
use plotters::prelude::*;

/// Picture width in pixels; the height grows with the class count ([`height`]).
pub const WIDTH: u32 = 900;

/// The picture's height for `classes` bars.
pub fn height(classes: usize) -> u32 {
    110 + 30 * classes.max(1) as u32
}

/// The bar chart as PNG bytes: `iou[k]` (a fraction, `None` where undefined) of class `names[k]`,
/// the `miou` (a fraction) as a dashed line, `title` on top.
pub fn class_iou_png(title: &str, names: &[String], iou: &[Option<f64>], miou: f64) -> Result<Vec<u8>> {
    ensure!(names.len() == iou.len(), "class IoU plot: {} class names for {} IoU values", names.len(), iou.len());
    ensure!(!names.is_empty(), "class IoU plot: no classes");
    let n = names.len();
    // Class 0 at the top.
    let row = |k: usize| (n - 1 - k) as f64;
    let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(1);
    render(WIDTH, height(n), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(18))
            .margin(12)
            .margin_right(30)
            .x_label_area_size(44)
            .y_label_area_size((longest as u32 * 8 + 40).clamp(60, 260))
            .build_cartesian_2d(0.0..100.0, KeyTicks::new(-0.5, n as f64 - 0.5, (0..n).map(|k| k as f64).collect()))?;
        let label = |v: &f64| {
            let r = v.round();
            if (v - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < n {
                names[n - 1 - r as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("IoU (%)")
            .y_desc("class")
            .x_labels(11)
            .label_style(font(13))
            .axis_desc_style(font(14))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&label)
            .max_light_lines(0)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        let bar = colour(0);
        chart
            .draw_series(iou.iter().enumerate().filter_map(|(k, v)| {
                v.map(|v| Rectangle::new([(0.0, row(k) - 0.34), (v * 100.0, row(k) + 0.34)], bar.filled()))
            }))?
            .label("class IoU")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], bar.filled()));
        chart.draw_series(iou.iter().enumerate().map(|(k, v)| {
            let (x, text) = match v {
                Some(v) => (v * 100.0, format!("{:.1} %", v * 100.0)),
                None => (0.0, "n/a (absent)".to_string()),
            };
            EmptyElement::at((x, row(k))) + Text::new(text, (6, -7), font(13))
        }))?;
        let m = miou * 100.0;
        let red = colour(3);
        chart
            .draw_series(DashedLineSeries::new([(m, -0.5), (m, n as f64 - 0.5)], 8, 5, red.stroke_width(2)))?
            .label(format!("mIoU {m:.1} %"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], red.stroke_width(2)));
        super::legend(&mut chart, SeriesLabelPosition::LowerRight, 13, 0.9)?;
        Ok(())
    })
    .context("drawing the class IoU chart")
}

#[cfg(test)]
mod tests {
    use super::super::testing::{inked_pixels, pixels_near};
    use super::*;

    #[test]
    fn bars_dashed_mean_and_absent_classes() {
        let names: Vec<String> = ["background", "stripes", "checker", "dots"].map(String::from).to_vec();
        let iou = [Some(0.87), Some(0.3), None, Some(0.0)];
        let png = class_iou_png("per-class IoU", &names, &iou, 0.39).unwrap();
        assert!(inked_pixels(&png, WIDTH, height(4)) > 5000);
        let RGBColor(r, g, b) = colour(0);
        assert!(pixels_near(&png, [r, g, b]) > 3000, "the bars are drawn");
        let RGBColor(r, g, b) = colour(3);
        assert!(pixels_near(&png, [r, g, b]) > 100, "the mIoU line is drawn");
        assert!(class_iou_png("x", &names, &iou[..2], 0.5).is_err(), "names and values must match");
        // Many classes, long names.
        let many: Vec<String> = (0..21).map(|k| format!("a rather long class name {k}")).collect();
        let png = class_iou_png("VOC", &many, &vec![Some(0.5); 21], 0.5).unwrap();
        assert!(inked_pixels(&png, WIDTH, height(21)) > 5000);
    }
}
