//! `segnet bench step | loss`: one JSON line (with `--json`) of timings and peak memory on random
//! data, after warm-up. Peak memory is the process's peak resident set (VmHWM).

use crate::cli::{BenchCommand, BenchLossArgs, BenchStepArgs};
use crate::commands::{check_device, set_threads};
use crate::config::{Stage, TrainConfig};
use crate::net::{self, contrastive_grid};
use crate::train::derive_seed;
use anyhow::{bail, Result};
use engine::ops::{self, ContrastiveConfig};
use engine::{DType, LabelMap, Rng, Tape, Tensor};
use nn::{Ctx, LrSchedule, Sgd, SgdConfig};
use serde_json::json;
use std::time::Instant;

/// Run a bench subcommand.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Step(a) => step(a),
        BenchCommand::Loss(a) => loss(a),
    }
}

/// Peak resident set size of this process in MB (Linux), or 0 where unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn random_labels(b: usize, h: usize, w: usize, classes: usize, rng: &mut Rng) -> LabelMap {
    // Blocky labels (8x8 cells) so classes form regions, as in real maps.
    let data = (0..b * h * w)
        .map(|i| {
            let (n, r) = (i / (h * w), i % (h * w));
            let cell = (n * 7919 + (r / w / 8) * 31 + (r % w) / 8) as u64;
            ((cell.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (rng.next_u64() % 2)) % classes as u64) as u8
        })
        .collect();
    LabelMap { n: b, h, w, data }
}

fn step(a: BenchStepArgs) -> Result<()> {
    let dev = check_device(&a.device)?;
    set_threads(a.threads);
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let mut cfg = TrainConfig::default();
    cfg.model.backbone = a.backbone.clone();
    cfg.model.width = a.width;
    cfg.model.output_stride = a.output_stride;
    cfg.model.aspp_rates = None;
    cfg.crop = a.crop;
    cfg.batch = a.batch;
    cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let spec = net::spec(&cfg, a.classes)?;
    let mut rng = Rng::new(1);
    let contrastive = a.stage == Stage::Contrastive;
    let mut net = net::new_net(&spec, contrastive, &mut rng)?;
    nn::to_device(&mut net, dev)?;
    let mut opt = Sgd::new(SgdConfig { weight_decay: 1e-4, ..SgdConfig::default() })?;
    let sched = LrSchedule::cosine(0.01, 1000)?;
    let x = Tensor::randn(vec![a.batch, 3, a.crop, a.crop], 1.0, DType::F32, &mut rng).to_device(dev)?;
    let labels = random_labels(a.batch, a.crop, a.crop, a.classes, &mut rng);
    let mut times = Vec::new();
    for it in 0..a.warmup + a.iters {
        let t0 = Instant::now();
        let mut ctx = Ctx::train(Rng::new(derive_seed(0, &[it as u64])));
        let loss = if contrastive {
            let g = contrastive_grid(a.crop);
            let z = net::embed(&mut net, &x, Some([g, g]), &mut ctx)?;
            let lab = ops::resize_nearest_labels(&labels, [g, g])?;
            let c = ContrastiveConfig { classes: a.classes, ..ContrastiveConfig::default() };
            ops::pixel_contrastive_loss(&z, &lab, &c)?
        } else {
            ops::cross_entropy(&net::logits(&mut net, &x, &mut ctx)?, &labels, 255)?
        };
        let grads = ctx.backward(&loss)?;
        opt.step(&mut net, &grads, sched.lr(it as u64))?;
        if it >= a.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let v = json!({
        "bench": "step", "backbone": a.backbone, "stage": a.stage.name(), "batch": a.batch, "crop": a.crop,
        "output_stride": a.output_stride, "width": a.width, "threads": a.threads, "iters": a.iters,
        "median_step_s": median(times.clone()), "min_step_s": times.iter().cloned().fold(f64::MAX, f64::min),
        "peak_rss_mb": peak_rss_mb(),
    });
    if a.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

fn loss(a: BenchLossArgs) -> Result<()> {
    let dev = check_device(&a.device)?;
    set_threads(a.threads);
    if a.iters == 0 || a.size == 0 || a.dim == 0 || a.batch == 0 {
        bail!("--iters, --size, --dim and --batch must be at least 1");
    }
    let mut rng = Rng::new(3);
    let f = Tensor::randn(vec![a.batch, a.dim, a.size, a.size], 1.0, DType::F32, &mut rng);
    let f = ops::l2_normalize(&f.to_device(dev)?, 1e-12)?;
    let labels = random_labels(a.batch, a.size, a.size, a.classes, &mut rng);
    let cfg = ContrastiveConfig { classes: a.classes, ..ContrastiveConfig::default() };
    let rss_before = peak_rss_mb();
    let (mut fwd, mut both) = (Vec::new(), Vec::new());
    for it in 0..a.iters + 1 {
        let t0 = Instant::now();
        let l = ops::pixel_contrastive_loss(&f, &labels, &cfg)?;
        let t_fwd = t0.elapsed().as_secs_f64();
        let _ = l.item()?;
        let t1 = Instant::now();
        let tape = Tape::new();
        let fw = tape.watch(&f);
        let l = ops::pixel_contrastive_loss(&fw, &labels, &cfg)?;
        let g = tape.backward(&l)?;
        let _ = g.get(&fw);
        let t_both = t1.elapsed().as_secs_f64();
        if it > 0 {
            fwd.push(t_fwd);
            both.push(t_both);
        }
    }
    let v = json!({
        "bench": "loss", "size": a.size, "dim": a.dim, "batch": a.batch, "pixels_per_image": a.size * a.size,
        "threads": a.threads, "fwd_s": median(fwd), "fwd_bwd_s": median(both),
        "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss_before,
    });
    if a.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
