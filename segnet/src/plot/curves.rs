//! `curves.png`, the training curves of a run directory, from its `metrics.jsonl` records:
//!
//! * top: one panel per training stage with that stage's loss on its own y axis (a contrastive
//!   loss near 6 and a cross-entropy near 0.1 would flatten each other on a shared one): every
//!   step faintly, and a centred running mean on top;
//! * bottom left: the learning rate of every step, coloured by stage;
//! * bottom right: the validation mIoU (%) of every evaluation, coloured by stage.
//!
//! All x axes are the run's global step (the steps of the stages before plus the stage's own).
//! Drawing stays cheap for long runs: a series longer than about two points per pixel column is
//! reduced to each column's extremes (the faint raw curve keeps its spikes) or strided (the
//! smooth running mean).

use super::{colour, font, pad, range, render, tick, Area};
use anyhow::{Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde_json::Value;

/// The curves of one stage, in global steps.
#[derive(Clone, Debug, Default)]
struct StageCurves {
    name: String,
    loss: Vec<(f64, f64)>,
    lr: Vec<(f64, f64)>,
    /// mIoU in percent.
    miou: Vec<(f64, f64)>,
    /// The stage's checkpoint was copied from another run (no steps here).
    reused: bool,
}

/// The curves of a run, fed one metrics record at a time ([`Curves::add`]).
#[derive(Clone, Debug, Default)]
pub struct Curves {
    /// In order of first appearance, which is the run's stage order.
    stages: Vec<StageCurves>,
}

/// Pixels of the picture.
pub const WIDTH: u32 = 1200;
const LOSS_ROW_H: u32 = 300;
const BOTTOM_H: u32 = 320;
const TITLE_H: u32 = 36;
/// Loss panels per row.
const PER_ROW: usize = 4;

/// Colours by stage name, so a stage looks the same in every run's picture.
fn stage_colour(name: &str, k: usize) -> RGBColor {
    let known = ["contrastive", "finetune", "ce-only", "pseudo", "u2pl", "densecl"];
    colour(known.iter().position(|s| *s == name).unwrap_or(known.len() + k))
}

impl Curves {
    /// No records yet.
    pub fn new() -> Curves {
        Curves::default()
    }

    /// Take one record into account: a training step (`stage`, `global_step`, `loss`, `lr`), an
    /// evaluation (`stage`, `global_step`, `miou`) or a reused stage (`reused_from`). Anything
    /// else (pseudo-label statistics, unknown keys, lines without a stage or step) is ignored.
    pub fn add(&mut self, v: &Value) {
        let (Some(stage), Some(x)) =
            (v.get("stage").and_then(Value::as_str), v.get("global_step").and_then(Value::as_f64))
        else {
            return;
        };
        let num = |k: &str| v.get(k).and_then(Value::as_f64).filter(|y| y.is_finite());
        if let Some(loss) = num("loss") {
            // A step logged again: a resumed run repeats the steps after its checkpoint, a new run
            // in the same directory starts over. The later record wins, so what the first attempt
            // logged from this step on goes.
            self.truncate_from(x, true);
            let s = self.stage_mut(stage);
            s.loss.push((x, loss));
            if let Some(lr) = num("lr") {
                s.lr.push((x, lr));
            }
        } else if let Some(m) = num("miou") {
            self.truncate_from(x, false);
            self.stage_mut(stage).miou.push((x, m * 100.0));
        } else if v.get("reused_from").is_some() {
            self.stage_mut(stage).reused = true;
        }
    }

    /// Take every line of a `metrics.jsonl` text into account; lines that do not parse (a line cut
    /// short by a crash) are skipped.
    pub fn add_jsonl(&mut self, text: &str) {
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                self.add(&v);
            }
        }
    }

    /// Drop the points at global step `x` or later (evaluations only, or everything).
    fn truncate_from(&mut self, x: f64, everything: bool) {
        for s in &mut self.stages {
            s.miou.retain(|p| p.0 < x);
            if everything {
                s.loss.retain(|p| p.0 < x);
                s.lr.retain(|p| p.0 < x);
            }
        }
    }

    fn stage_mut(&mut self, name: &str) -> &mut StageCurves {
        let k = match self.stages.iter().position(|s| s.name == name) {
            Some(k) => k,
            None => {
                self.stages.push(StageCurves { name: name.to_string(), ..Default::default() });
                self.stages.len() - 1
            }
        };
        &mut self.stages[k]
    }

    /// Loss points of `stage` (global step, loss), for tests and summaries.
    pub fn loss(&self, stage: &str) -> &[(f64, f64)] {
        self.stages.iter().find(|s| s.name == stage).map(|s| s.loss.as_slice()).unwrap_or(&[])
    }

    /// Evaluations of `stage` (global step, mIoU %).
    pub fn miou(&self, stage: &str) -> &[(f64, f64)] {
        self.stages.iter().find(|s| s.name == stage).map(|s| s.miou.as_slice()).unwrap_or(&[])
    }

    /// The stages with a panel: those with losses, and reused ones.
    fn panels(&self) -> Vec<(usize, &StageCurves)> {
        self.stages.iter().enumerate().filter(|(_, s)| !s.loss.is_empty() || s.reused).collect()
    }

    /// The picture's height for the stages seen so far.
    pub fn height(&self) -> u32 {
        let rows = self.panels().len().div_ceil(PER_ROW).max(1) as u32;
        TITLE_H + rows * LOSS_ROW_H + BOTTOM_H
    }

    /// The picture as PNG bytes, `title` at the top.
    pub fn png(&self, title: &str) -> Result<Vec<u8>> {
        let h = self.height();
        render(WIDTH, h, |root| {
            let (top, rest) = root.split_vertically(TITLE_H);
            top.draw(&Text::new(title.to_string(), (12, 8), font(20)))?;
            let (losses, bottom) = rest.split_vertically(h - TITLE_H - BOTTOM_H);
            self.draw_losses(&losses)?;
            let (left, right) = bottom.split_horizontally(WIDTH / 2);
            self.draw_lr(&left)?;
            self.draw_miou(&right)
        })
        .context("drawing curves.png")
    }

    fn draw_losses(&self, area: &Area<'_>) -> Result<()> {
        let panels = self.panels();
        if panels.is_empty() {
            let chart = panel(area, "loss", (0.0, 1.0), (0.0, 1.0), "global step", "loss")?;
            note(&chart, "no training steps logged yet")?;
            return Ok(());
        }
        let rows = panels.len().div_ceil(PER_ROW);
        let cols = panels.len().min(PER_ROW);
        for (cell, (k, s)) in area.split_evenly((rows, cols)).iter().zip(&panels) {
            draw_stage_loss(cell, s, stage_colour(&s.name, *k))?;
        }
        Ok(())
    }

    /// The x range shared by the lr and mIoU panels: every logged step.
    fn global_x(&self) -> (f64, f64) {
        range(self.stages.iter().flat_map(|s| s.loss.iter().chain(&s.miou).map(|p| p.0)))
    }

    fn draw_lr(&self, area: &Area<'_>) -> Result<()> {
        let (_, hi) = range(self.stages.iter().flat_map(|s| s.lr.iter().map(|p| p.1)).chain([0.0]));
        let mut chart = panel(area, "learning rate", self.global_x(), (0.0, hi * 1.05), "global step", "lr")?;
        let width = plot_width(&chart);
        let mut any = false;
        for (k, s) in self.stages.iter().enumerate().filter(|(_, s)| !s.lr.is_empty()) {
            let c = stage_colour(&s.name, k);
            chart
                .draw_series(LineSeries::new(stride(&s.lr, width), c.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
            any = true;
        }
        if any {
            legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        } else {
            note(&chart, "no learning rates logged yet")?;
        }
        Ok(())
    }

    fn draw_miou(&self, area: &Area<'_>) -> Result<()> {
        let all: Vec<f64> = self.stages.iter().flat_map(|s| s.miou.iter().map(|p| p.1)).collect();
        // Round out to tens of percent, inside [0, 100].
        let (lo, hi) = range(all.iter().copied());
        let (lo, hi) = if all.is_empty() {
            (0.0, 100.0)
        } else {
            (((lo / 10.0).floor() * 10.0).max(0.0), ((hi / 10.0).ceil() * 10.0).min(100.0).max(lo + 10.0))
        };
        let mut chart = panel(area, "validation mIoU", self.global_x(), (lo, hi), "global step", "val mIoU (%)")?;
        if all.is_empty() {
            note(&chart, "no evaluation yet (a stage without a classifier is not scored)")?;
            return Ok(());
        }
        for (k, s) in self.stages.iter().enumerate().filter(|(_, s)| !s.miou.is_empty()) {
            let c = stage_colour(&s.name, k);
            chart
                .draw_series(LineSeries::new(s.miou.iter().copied(), c.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
            chart.draw_series(s.miou.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    }
}

/// A chart with float axes, a caption, axis names and a light grid.
type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    x: (f64, f64),
    y: (f64, f64),
    x_desc: &str,
    y_desc: &str,
) -> Result<Chart<'a, 'b>> {
    let (x, y) = (range([x.0, x.1]), range([y.0, y.1]));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, font(16))
        .margin(8)
        .margin_right(16)
        .x_label_area_size(36)
        .y_label_area_size(62)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(6)
        .y_labels(6)
        .label_style(font(12))
        .axis_desc_style(font(13))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .max_light_lines(1)
        .light_line_style(RGBColor(244, 244, 244))
        .bold_line_style(RGBColor(220, 220, 220))
        .draw()?;
    Ok(chart)
}

/// The width of a chart's plotting area in pixels.
fn plot_width(chart: &Chart<'_, '_>) -> usize {
    let (xr, _) = chart.plotting_area().get_pixel_range();
    (xr.end - xr.start).max(1) as usize
}

/// A grey message in the middle of an empty chart.
fn note(chart: &Chart<'_, '_>, text: &str) -> Result<()> {
    let area = chart.plotting_area();
    let (xr, yr) = area.get_pixel_range();
    let (w, h) = (xr.end - xr.start, yr.end - yr.start);
    let style = font(14).color(&RGBColor(120, 120, 120)).pos(plotters::style::text_anchor::Pos::new(
        plotters::style::text_anchor::HPos::Center,
        plotters::style::text_anchor::VPos::Center,
    ));
    area.strip_coord_spec().draw(&Text::new(text.to_string(), (w / 2, h / 2), style))?;
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, pos: SeriesLabelPosition) -> Result<()> {
    super::legend(chart, pos, 12, 0.85)
}

fn draw_stage_loss(area: &Area<'_>, s: &StageCurves, c: RGBColor) -> Result<()> {
    let caption = format!("{} loss", s.name);
    if s.loss.is_empty() {
        let chart = panel(area, &caption, (0.0, 1.0), (0.0, 1.0), "global step", "loss")?;
        return note(&chart, "reused from an earlier run: not trained here");
    }
    let window = (s.loss.len() / 25).clamp(1, 201) | 1;
    let mean = running_mean(&s.loss, window);
    // A few huge first steps would squash the rest: the axis ends at the 99th percentile (or the
    // running mean's peak), and the rare points above it are drawn on the top edge.
    let mut ys: Vec<f64> = s.loss.iter().map(|p| p.1).collect();
    ys.sort_by(f64::total_cmp);
    let q99 = ys[(ys.len() - 1) * 99 / 100];
    let top = mean.iter().map(|p| p.1).fold(q99, f64::max);
    let (lo, hi) = pad(range([ys[0], top]), 0.04);
    let mut chart = panel(area, &caption, range(s.loss.iter().map(|p| p.0)), (lo, hi), "global step", "loss")?;
    let width = plot_width(&chart);
    let clip = |(x, y): (f64, f64)| (x, y.min(hi));
    chart
        .draw_series(LineSeries::new(extremes(&s.loss, width).into_iter().map(clip), c.mix(0.3)))?
        .label("every step")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.mix(0.3)));
    let label = if window > 1 { format!("mean of {window} steps") } else { "mean".to_string() };
    chart
        .draw_series(LineSeries::new(stride(&mean, width).into_iter().map(clip), c.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// The centred mean of `window` (odd) points around each point (fewer at the ends).
pub fn running_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let half = window / 2;
    let mut prefix = Vec::with_capacity(points.len() + 1);
    prefix.push(0.0);
    for p in points {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + p.1);
    }
    (0..points.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(points.len()));
            (points[i].0, (prefix[b] - prefix[a]) / (b - a) as f64)
        })
        .collect()
}

/// At most about `2 * width` points: each of `width` buckets in order as its lowest and its
/// highest point (in x order), so spikes survive the reduction.
pub fn extremes(points: &[(f64, f64)], width: usize) -> Vec<(f64, f64)> {
    let width = width.max(1);
    if points.len() <= 2 * width {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(2 * width + 2);
    for b in 0..width {
        let chunk = &points[b * points.len() / width..(b + 1) * points.len() / width];
        if chunk.is_empty() {
            continue;
        }
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p.1 < chunk[lo].1 {
                lo = i;
            }
            if p.1 > chunk[hi].1 {
                hi = i;
            }
        }
        out.push(chunk[lo.min(hi)]);
        if lo != hi {
            out.push(chunk[lo.max(hi)]);
        }
    }
    out
}

/// Every k-th point (and the last), at most about `2 * width` of them: enough for a smooth curve.
fn stride(points: &[(f64, f64)], width: usize) -> Vec<(f64, f64)> {
    let k = points.len().div_ceil(2 * width.max(1)).max(1);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(k).copied().collect();
    if let Some(&last) = points.last() {
        if out.last() != Some(&last) {
            out.push(last);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{inked_pixels, pixels_near};
    use super::*;
    use serde_json::json;

    /// A run of three stages with the loss scales of the real ones, and the side records.
    fn run_records(steps: usize) -> Vec<Value> {
        let mut v = Vec::new();
        let mut g = 0;
        for (stage, scale, evals) in [("contrastive", 6.0, false), ("finetune", 1.2, true), ("pseudo", 0.3, true)] {
            if stage == "pseudo" {
                v.push(json!({ "stage": "pseudo", "global_step": g, "pseudo": { "kept": 0.7, "classes": [1, 2] } }));
            }
            for s in 1..=steps {
                g += 1;
                let t = s as f64 / steps as f64;
                let noise = ((s * 7919) % 13) as f64 / 13.0 - 0.5;
                let loss = scale * (1.0 - 0.6 * t) + 0.05 * scale * noise;
                let lr = 0.1 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                v.push(json!({ "stage": stage, "step": s, "global_step": g, "loss": loss, "lr": lr, "secs": 0.2 }));
                if evals && s % (steps / 4).max(1) == 0 {
                    v.push(json!({ "stage": stage, "step": s, "global_step": g, "miou": 0.3 + 0.3 * t,
                                   "pixel_accuracy": 0.8, "iou": [0.5, null, 0.2] }));
                }
            }
        }
        v
    }

    #[test]
    fn records_are_sorted_by_stage_and_odd_lines_ignored() {
        let mut c = Curves::new();
        for r in run_records(8) {
            c.add(&r);
        }
        c.add(&json!({ "unrelated": true }));
        c.add(&json!({ "stage": "finetune", "global_step": "nine", "loss": 1.0 }));
        c.add(&json!({ "stage": "u2pl", "global_step": 30, "loss": null }));
        c.add_jsonl("not json\n{\"stage\":\"pseudo\",\"glob");
        assert_eq!(c.loss("contrastive").len(), 8);
        assert_eq!(c.loss("finetune").len(), 8);
        assert_eq!(c.loss("finetune")[0].0, 9.0, "global steps continue across stages");
        assert_eq!(c.miou("finetune").len(), 4);
        assert!((c.miou("finetune")[3].1 - 60.0).abs() < 1e-9, "mIoU in percent");
        assert!(c.loss("u2pl").is_empty());
        assert_eq!(c.panels().len(), 3, "the pseudo statistics line makes no panel of its own");
    }

    #[test]
    fn a_resumed_stage_replaces_the_steps_it_repeats() {
        let mut c = Curves::new();
        let step =
            |g: usize, loss: f64| json!({ "stage": "finetune", "step": g, "global_step": g, "loss": loss, "lr": 0.1 });
        for g in 1..=6 {
            c.add(&step(g, 1.0));
        }
        c.add(&json!({ "stage": "finetune", "global_step": 6, "miou": 0.4 }));
        // Checkpoint at step 4, crash, resume: steps 5.. again.
        for g in 5..=8 {
            c.add(&step(g, 2.0));
        }
        let xs: Vec<f64> = c.loss("finetune").iter().map(|p| p.0).collect();
        assert_eq!(xs, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(c.loss("finetune")[5].1, 2.0, "the resumed run's record wins");
        assert!(c.miou("finetune").is_empty(), "the first attempt's evaluation at step 6 is gone");
    }

    #[test]
    fn curves_png_has_a_panel_per_stage_and_stays_fast() {
        let mut c = Curves::new();
        for r in run_records(5000) {
            c.add(&r);
        }
        let t0 = std::time::Instant::now();
        let png = c.png("training curves: test").unwrap();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        assert_eq!(c.height(), TITLE_H + LOSS_ROW_H + BOTTOM_H);
        assert!(inked_pixels(&png, WIDTH, c.height()) > 20_000);
        for (k, s) in ["contrastive", "finetune", "pseudo"].iter().enumerate() {
            let RGBColor(r, g, b) = stage_colour(s, k);
            assert!(pixels_near(&png, [r, g, b]) > 200, "{s} is drawn in its colour");
        }
        // 15000 loss points; generous for a loaded test machine (about 20 ms when idle).
        assert!(ms < 1000.0, "drawing took {ms:.0} ms");
    }

    #[test]
    fn empty_and_single_point_curves_draw() {
        let c = Curves::new();
        let png = c.png("nothing yet").unwrap();
        assert!(inked_pixels(&png, WIDTH, c.height()) > 1000);
        let mut c = Curves::new();
        c.add(&json!({ "stage": "ce-only", "global_step": 1, "loss": 0.7, "lr": 0.0 }));
        c.add(&json!({ "stage": "contrastive", "global_step": 0, "reused_from": "elsewhere" }));
        let png = c.png("one step").unwrap();
        assert!(inked_pixels(&png, WIDTH, c.height()) > 1000);
        let five: Vec<Value> =
            (0..5).map(|k| json!({ "stage": format!("s{k}"), "global_step": k, "loss": 1.0 })).collect();
        let mut c = Curves::new();
        five.iter().for_each(|r| c.add(r));
        assert_eq!(c.height(), TITLE_H + 2 * LOSS_ROW_H + BOTTOM_H, "a fifth stage starts a second row");
        c.png("five stages").unwrap();
    }

    #[test]
    fn reductions_keep_the_shape() {
        let pts: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, if i == 500 { 100.0 } else { 1.0 })).collect();
        let r = extremes(&pts, 100);
        assert!(r.len() <= 200);
        assert!(r.iter().any(|p| p.1 == 100.0), "the spike survives");
        assert!(r.windows(2).all(|w| w[0].0 < w[1].0), "in x order");
        assert_eq!(stride(&pts, 10).last(), pts.last());
        let m = running_mean(&[(0.0, 0.0), (1.0, 3.0), (2.0, 6.0)], 3);
        assert_eq!(m, [(0.0, 1.5), (1.0, 3.0), (2.0, 4.5)]);
    }
}
