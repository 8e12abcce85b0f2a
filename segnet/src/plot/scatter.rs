//! The embedding map of `segnet embed`: every sampled pixel's embedding projected onto its first
//! two principal components, one dot per pixel coloured by its ground-truth class, a legend of
//! class names (with how many pixels each has). Well-separated clusters mean the features already
//! tell the classes apart; after contrastive pretraining they should be tighter than after
//! cross-entropy alone (the paper's figure).

use super::{colour, font, pad, range, render, tick};
use anyhow::{ensure, Context, Result};
use plotters::prelude::*;

/// Picture size in pixels.
pub const SIZE: (u32, u32) = (900, 760);

/// A scatter of `points[i]` coloured by `classes[i]` (an index into `names`), axis names
/// `x_desc` and `y_desc`, `title` on top, as PNG bytes.
pub fn scatter_png(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    points: &[(f64, f64)],
    classes: &[usize],
    names: &[String],
) -> Result<Vec<u8>> {
    ensure!(points.len() == classes.len(), "scatter: {} points but {} classes", points.len(), classes.len());
    ensure!(classes.iter().all(|&c| c < names.len()), "scatter: a class index has no name");
    let (xlo, xhi) = pad(range(points.iter().map(|p| p.0)), 0.05);
    let (ylo, yhi) = pad(range(points.iter().map(|p| p.1)), 0.05);
    let mut counts = vec![0usize; names.len()];
    for &c in classes {
        counts[c] += 1;
    }
    // Round-robin over the classes, so no class is painted entirely over another.
    let mut order: Vec<usize> = (0..points.len()).collect();
    let mut seen = vec![0usize; names.len()];
    let rank: Vec<usize> = classes
        .iter()
        .map(|&c| {
            seen[c] += 1;
            seen[c]
        })
        .collect();
    order.sort_by_key(|&i| (rank[i], classes[i]));
    render(SIZE.0, SIZE.1, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(18))
            .margin(14)
            .margin_right(24)
            .x_label_area_size(46)
            .y_label_area_size(60)
            .build_cartesian_2d(xlo..xhi, ylo..yhi)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(font(13))
            .axis_desc_style(font(14))
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .max_light_lines(0)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        chart.draw_series(order.iter().map(|&i| Circle::new(points[i], 3, colour(classes[i]).mix(0.75).filled())))?;
        for (k, name) in names.iter().enumerate().filter(|&(k, _)| counts[k] > 0) {
            let c = colour(k);
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
                .label(format!("{name} ({})", counts[k]))
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, c.filled()));
        }
        super::legend(&mut chart, SeriesLabelPosition::UpperRight, 13, 0.85)?;
        Ok(())
    })
    .context("drawing the embedding map")
}

#[cfg(test)]
mod tests {
    use super::super::testing::{inked_pixels, pixels_near};
    use super::*;

    #[test]
    fn scatter_colours_each_class() {
        let names: Vec<String> = ["background", "stripes", "checker"].map(String::from).to_vec();
        let mut pts = Vec::new();
        let mut cls = Vec::new();
        for i in 0..300 {
            let c = i % 3;
            let a = i as f64 * 0.37;
            pts.push((c as f64 * 4.0 + a.cos(), (c as f64 - 1.0) * 2.0 + a.sin()));
            cls.push(c);
        }
        let png = scatter_png("embedding", "PC 1", "PC 2", &pts, &cls, &names).unwrap();
        assert!(inked_pixels(&png, SIZE.0, SIZE.1) > 5000);
        for k in 0..3 {
            let RGBColor(r, g, b) = colour(k);
            assert!(pixels_near(&png, [r, g, b]) > 300, "class {k} is drawn");
        }
        assert!(scatter_png("x", "a", "b", &pts, &cls[..10], &names).is_err());
        assert!(scatter_png("x", "a", "b", &[(0.0, 0.0)], &[7], &names).is_err());
    }
}
