//! `segnet bench convs`: the model's convolutions, one by one.
//!
//! One fine-tuning forward of the model at `--backbone --batch --crop --output-stride` on random
//! data records the geometry of every conv it runs ([`engine::ops::record_geometries`]); each
//! distinct geometry is then timed alone on random f32 data through the same CPU kernels the
//! step calls (`kernels::cpu::conv`): forward, input gradient (`dx`) and weight gradient (`dw`),
//! the median of `--iters` calls after one untimed call. `count` says how often the forward uses
//! the geometry; the totals weight by it and leave out the `dx` of the first conv (the image needs
//! no gradient, so a training step does not compute it). With `--json` the object carries the
//! shapes `benches/torch/convs.py --shapes` times the same way with PyTorch, so the two can be
//! compared conv by conv: where a whole step is slower, this says which layers are.

use super::{median, model_config};
use crate::cli::BenchConvsArgs;
use crate::net;
use anyhow::{bail, Result};
use engine::{DType, Rng, Tensor};
use kernels::cpu::conv::{conv2d_backward_input, conv2d_backward_weight, conv2d_forward, Conv2dGeom};
use nn::Ctx;
use serde_json::json;
use std::time::Instant;

/// One distinct conv of the forward and how often the forward runs it.
struct Distinct {
    geom: Conv2dGeom,
    count: usize,
    /// Whether a training step computes `dx` (all but the conv that reads the image).
    dx_in_step: bool,
}

pub(super) fn run(a: &BenchConvsArgs) -> Result<()> {
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let convs = model_convs(a)?;
    let mut rows = Vec::new();
    let (mut total_fwd, mut total_bwd) = (0.0, 0.0);
    let mut rng = Rng::new(7);
    for d in &convs {
        let (fwd, dx, dw) = time_conv(&d.geom, a.iters, &mut rng)?;
        total_fwd += fwd * d.count as f64;
        total_bwd += (dw + if d.dx_in_step { dx } else { 0.0 }) * d.count as f64;
        let g = &d.geom;
        rows.push(json!({
            "n": g.n, "c_in": g.c_in, "h": g.h, "w": g.w, "c_out": g.c_out, "kh": g.kh, "kw": g.kw,
            "stride": g.stride, "padding": g.padding, "dilation": g.dilation, "groups": g.groups,
            "count": d.count, "dx_in_step": d.dx_in_step,
            "fwd_ms": fwd * 1e3, "dx_ms": dx * 1e3, "dw_ms": dw * 1e3,
        }));
    }
    let report = json!({
        "bench": "convs", "backbone": a.model.backbone, "batch": a.model.batch, "crop": a.model.crop,
        "output_stride": a.model.output_stride, "width": a.model.width, "threads": a.threads, "iters": a.iters,
        "convs": rows, "total_fwd_ms": total_fwd * 1e3, "total_bwd_ms": total_bwd * 1e3,
    });
    if a.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The distinct conv geometries of one fine-tuning forward, in first-use order, with counts.
fn model_convs(a: &BenchConvsArgs) -> Result<Vec<Distinct>> {
    let m = &a.model;
    let cfg = model_config(m);
    cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let spec = net::spec(&cfg, m.classes)?;
    let mut rng = Rng::new(1);
    let mut model = net::new_net(&spec, false, &mut rng)?;
    let x = Tensor::randn(vec![m.batch, 3, m.crop, m.crop], 1.0, DType::F32, &mut rng);
    let mut ctx = Ctx::train(Rng::new(2));
    let (out, geoms) = engine::ops::record_geometries(|| net::logits(&mut model, &x, &mut ctx));
    out?;
    let mut convs: Vec<Distinct> = Vec::new();
    for (i, g) in geoms.into_iter().enumerate() {
        match convs.iter_mut().find(|d| d.geom == g) {
            Some(d) => d.count += 1,
            None => convs.push(Distinct { geom: g, count: 1, dx_in_step: i > 0 }),
        }
    }
    if convs.is_empty() {
        bail!("the model's forward ran no convolution");
    }
    Ok(convs)
}

/// Median seconds of the forward, input gradient and weight gradient of `g` on random f32 data.
fn time_conv(g: &Conv2dGeom, iters: usize, rng: &mut Rng) -> Result<(f64, f64, f64)> {
    let (oh, ow) = g.out_hw().expect("a geometry the forward ran");
    let random = |n: usize, rng: &mut Rng| Tensor::randn(vec![n], 1.0, DType::F32, rng).to_vec_f32();
    let x = random(g.n * g.c_in * g.h * g.w, rng)?;
    let w = random(g.c_out * (g.c_in / g.groups) * g.kh * g.kw, rng)?;
    let gy = random(g.n * g.c_out * oh * ow, rng)?;
    let (mut y, mut dx, mut dw) = (vec![0f32; gy.len()], vec![0f32; x.len()], vec![0f32; w.len()]);
    let time = |f: &mut dyn FnMut()| {
        f();
        median(
            (0..iters)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let fwd = time(&mut || conv2d_forward(g, &x, &w, None, &mut y));
    let bdx = time(&mut || conv2d_backward_input(g, &w, &gy, &mut dx));
    let bdw = time(&mut || conv2d_backward_weight(g, &x, &gy, &mut dw));
    Ok((fwd, bdx, bdw))
}

/// The report as a table, one conv per line.
fn print_table(r: &serde_json::Value) {
    println!(
        "{} batch {} crop {} OS{}, {} threads, median of {} calls (ms)",
        r["backbone"].as_str().unwrap_or(""),
        r["batch"],
        r["crop"],
        r["output_stride"],
        r["threads"],
        r["iters"]
    );
    println!(
        "{:>5} {:>5} {:>4} {:>5} {:>3} {:>3} {:>3} {:>3} | {:>8} {:>8} {:>8}",
        "count", "c_in", "hw", "c_out", "k", "s", "d", "g", "fwd", "dx", "dw"
    );
    for c in r["convs"].as_array().into_iter().flatten() {
        let int = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let ms = |k: &str| c[k].as_f64().unwrap_or(0.0);
        let dx = if c["dx_in_step"].as_bool() == Some(true) {
            format!("{:8.2}", ms("dx_ms"))
        } else {
            format!("{:>8}", "-")
        };
        println!(
            "{:>5} {:>5} {:>4} {:>5} {:>3} {:>3} {:>3} {:>3} | {:8.2} {} {:8.2}",
            int(&c["count"]),
            int(&c["c_in"]),
            int(&c["h"]),
            int(&c["c_out"]),
            int(&c["kh"]),
            int(&c["stride"][0]),
            int(&c["dilation"][0]),
            int(&c["groups"]),
            ms("fwd_ms"),
            dx,
            ms("dw_ms")
        );
    }
    println!(
        "total (each conv x count): forward {:.1} ms, backward {:.1} ms",
        r["total_fwd_ms"].as_f64().unwrap_or(0.0),
        r["total_bwd_ms"].as_f64().unwrap_or(0.0)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::BenchModelArgs;

    fn tiny() -> BenchConvsArgs {
        BenchConvsArgs {
            model: BenchModelArgs {
                backbone: "resnet18".into(),
                batch: 2,
                crop: 33,
                output_stride: 16,
                width: 0.25,
                classes: 3,
            },
            threads: 1,
            iters: 1,
            json: true,
        }
    }

    /// The recorded convs are the model's: the stem first (3 input channels, 7x7 stride 2, no
    /// `dx` in a step), ResNet-18's repeated 3x3 convs folded into counts, the classifier last.
    #[test]
    fn records_the_models_convs_with_counts() {
        let convs = model_convs(&tiny()).unwrap();
        let stem = &convs[0].geom;
        assert_eq!((stem.c_in, stem.kh, stem.stride, stem.h), (3, 7, [2, 2], 33));
        assert!(!convs[0].dx_in_step && convs[1..].iter().all(|d| d.dx_in_step));
        // layer1: four 3x3 convs of 16 channels (width 0.25) on one 9 x 9 map.
        let l1 = convs.iter().find(|d| d.geom.kh == 3 && d.geom.c_in == 16 && d.geom.c_out == 16).unwrap();
        assert_eq!(l1.count, 4);
        let last = &convs.last().unwrap().geom;
        assert_eq!((last.c_out, last.kh), (3, 1));
        let total: usize = convs.iter().map(|d| d.count).sum();
        assert!(total > convs.len(), "repeated shapes are folded into counts");
    }

    #[test]
    fn bad_flags_are_errors() {
        let err = run(&BenchConvsArgs { iters: 0, ..tiny() }).unwrap_err().to_string();
        assert!(err.contains("--iters"), "{err}");
        let one = BenchConvsArgs { model: BenchModelArgs { batch: 1, ..tiny().model }, ..tiny() };
        let err = run(&one).unwrap_err().to_string();
        assert!(err.contains("batch"), "{err}");
    }
}
