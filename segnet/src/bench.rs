//! `segnet bench step | loss | convs`: one JSON line (with `--json`) of timings and peak memory on random
//! data, after warm-up. Peak memory is the process's peak resident set (VmHWM).
//!
//! `bench step` times one training step of `--stage` as the step loop runs it: the stage's
//! [`objective`] (the same code as training, with the default loss settings) computes the loss of
//! a random batch, then backward and SGD. For the contrastive stage that is two views per crop
//! (the original and a colour-mapped copy, each through the network), their losses summed. For
//! U2PL it is a full semi-supervised step (after the supervised warm-up): the teacher's forward
//! on the labeled and unlabeled batches, the student's on both, the three loss terms, the queue
//! pushes and the EMA update; `--batch` is the labeled batch and the unlabeled one has the same
//! size (the paper's setting) unless `--unlabeled-batch` says otherwise.
//!
//! `bench convs` ([`convs`]) times the model's convolutions one by one.

mod convs;

use crate::cli::{BenchCommand, BenchLossArgs, BenchModelArgs, BenchStepArgs};
use crate::commands::{check_device, in_pool, set_threads};
use crate::config::{Stage, TrainConfig};
use crate::net;
use crate::objective;
use crate::train::derive_seed;
use anyhow::{bail, Result};
use datasets::Batch;
use engine::ops::{self, ContrastiveConfig};
use engine::profile::{self, Phase, Profile};
use engine::{DType, LabelMap, Rng, Tape, Tensor};
use kernels::cpu::packed_gemm::{self, meter};
use nn::{Ctx, LrSchedule, Sgd, SgdConfig};
use serde_json::json;
use std::time::Instant;

/// Run a bench subcommand.
pub fn run(cmd: BenchCommand) -> Result<()> {
    // Each on a worker of the pool its `--threads` sets up, as training runs (`in_pool`).
    set_threads(match &cmd {
        BenchCommand::Step(a) => a.threads,
        BenchCommand::Loss(a) => a.threads,
        BenchCommand::Convs(a) => a.threads,
    });
    in_pool(|| match cmd {
        BenchCommand::Step(a) => step(a),
        BenchCommand::Loss(a) => loss(a),
        BenchCommand::Convs(a) => convs::run(&a),
    })
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

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
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

/// A batch of random crops with blocky labels, as the loader hands it to an objective; with
/// `two_views`, the second view of each crop is a per-channel colour map of the first (same labels).
fn random_batch(b: usize, crop: usize, classes: usize, two_views: bool, rng: &mut Rng) -> Result<Batch> {
    let images = Tensor::randn(vec![b, 3, crop, crop], 1.0, DType::F32, rng).to_vec_f32()?;
    let plane = crop * crop;
    let distorted = two_views.then(|| {
        images
            .iter()
            .enumerate()
            .map(|(i, &v)| [0.8, 1.1, 0.9][i / plane % 3] * v + [0.1, -0.05, 0.2][i / plane % 3])
            .collect()
    });
    let labels = random_labels(b, crop, crop, classes, rng).data;
    Ok(Batch {
        epoch: 0,
        step: 0,
        indices: (0..b).collect(),
        images,
        image_shape: [b, 3, crop, crop],
        labels,
        label_shape: [b, crop, crop],
        distorted,
    })
}

fn step(a: BenchStepArgs) -> Result<()> {
    let v = step_report(&a)?;
    if a.json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// The default training config with the bench's model and input shapes (ASPP rates from the
/// output stride).
pub(crate) fn model_config(m: &BenchModelArgs) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.model.backbone = m.backbone.clone();
    cfg.model.width = m.width;
    cfg.model.output_stride = m.output_stride;
    cfg.model.aspp_rates = None;
    cfg.crop = m.crop;
    cfg.batch = m.batch;
    cfg
}

/// The timings of `bench step` as its JSON object.
fn step_report(a: &BenchStepArgs) -> Result<serde_json::Value> {
    let dev = check_device(&a.device)?;
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if a.gemm_meter && dev != engine::Device::Cpu {
        bail!("--gemm-meter meters the CPU's packed GEMM; with --device {} there is none to meter", a.device);
    }
    let m = &a.model;
    let mut cfg = model_config(m);
    cfg.u2pl_settings.sup_only_steps = 0;
    if let Some(m) = a.loss_mode {
        cfg.loss.mode = m;
    }
    if let Some(g) = a.loss_grid {
        cfg.loss.grid = g;
    }
    if let Some(u) = a.unlabeled_batch {
        if a.stage != Stage::U2pl {
            bail!("--unlabeled-batch is for --stage u2pl (the only stage with an unlabeled batch)");
        }
        if u == 0 {
            bail!("--unlabeled-batch must be at least 1");
        }
        cfg.u2pl_settings.unlabeled_batch = Some(u);
    }
    if let Some(v) = a.labeled_from {
        if a.stage != Stage::U2pl {
            bail!("--labeled-from is for --stage u2pl (the only stage with a teacher on labeled images)");
        }
        cfg.u2pl_settings.labeled_from = v;
    }
    // Two or more images per batch-norm chunk of the DenseCL key batch.
    cfg.densecl_settings.bn_chunks = cfg.densecl_settings.bn_chunks.min((m.batch / 2).max(1));
    cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let spec = net::spec(&cfg, m.classes)?;
    let mut rng = Rng::new(1);
    let mut net = if a.stage == Stage::Densecl {
        crate::densecl::new_net(&spec, &cfg.densecl_settings, &mut rng)?
    } else {
        net::new_net(&spec, a.stage == Stage::Contrastive, &mut rng)?
    };
    if a.stage == Stage::U2pl {
        net.add_projection(&mut rng)?;
    }
    nn::to_device(&mut net, dev)?;
    let mut opt = Sgd::new(SgdConfig { weight_decay: 1e-4, ..SgdConfig::default() })?;
    let sched = LrSchedule::cosine(0.01, 1000)?;
    let mut objective = objective::for_stage(a.stage, &cfg, m.classes);
    let two_views = objective.augment(&cfg).two_views;
    let batch = random_batch(m.batch, m.crop, m.classes, two_views, &mut rng)?;
    objective.start(&mut net)?;
    // An unlabeled batch for objectives that want one: random crops, no padding (all valid).
    let unlabeled = match objective.unlabeled(&cfg) {
        Some((n, _)) => {
            let mut u = random_batch(n, m.crop, m.classes, false, &mut rng)?;
            u.labels.iter_mut().for_each(|l| *l = 0);
            Some(u)
        }
        None => None,
    };
    // The yardstick first, on the pool's threads, while nothing else of ours runs (and again after).
    let threads = rayon::current_num_threads();
    let peak = a.gemm_meter.then(|| fma_peaks(threads)).flatten();
    let mut times = Vec::new();
    for it in 0..a.warmup + a.iters {
        if a.op_profile && it == a.warmup {
            profile::start();
        }
        if a.gemm_meter && it == a.warmup {
            meter::start();
        }
        let t0 = Instant::now();
        profile::mark();
        let mut ctx = Ctx::train(Rng::new(derive_seed(0, &[it as u64])));
        let loss = match &unlabeled {
            Some(u) => objective.loss_semi(&mut net, &batch, u, it, &mut ctx)?,
            None => objective.loss(&mut net, &batch, it, &mut ctx)?,
        };
        let _ = loss.item()?;
        let grads = ctx.backward(&loss)?;
        profile::timed("optimizer step", Phase::Other, || opt.step(&mut net, &grads, sched.lr(it as u64)))?;
        profile::timed("objective after step", Phase::Other, || objective.after_step(&mut net))?;
        if it >= a.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let median_step_s = median(times.clone());
    let ops = a.op_profile.then(|| op_rows(&profile::take(), a.iters, median_step_s));
    let metered = a.gemm_meter.then(meter::take);
    // The yardstick again after the steps (a shared machine's speed drifts): the faster of the
    // two probes counts, so the shares are never flattered by a slow probe.
    let peak = peak.zip(a.gemm_meter.then(|| fma_peaks(threads)).flatten()).map(|(p, q)| (p.0.max(q.0), p.1.max(q.1)));
    let gemm = metered.map(|rows| gemm_rows(&rows, a.iters, median_step_s, threads, peak));
    Ok(json!({
        "bench": "step", "backbone": m.backbone, "stage": a.stage.name(), "batch": m.batch, "crop": m.crop,
        "output_stride": m.output_stride, "width": m.width, "threads": a.threads, "iters": a.iters,
        "median_step_s": median_step_s, "min_step_s": times.iter().cloned().fold(f64::MAX, f64::min),
        "peak_rss_mb": peak_rss_mb(), "unlabeled_batch": unlabeled.as_ref().map(|u| u.image_shape[0]),
        "objective": objective.describe(),
        "ops": ops,
        "gemm": gemm,
        "loss_form": (a.stage == Stage::Contrastive).then(|| json!({
            "mode": cfg.loss.mode, "grid": cfg.loss.grid,
        })),
    }))
}

/// The op profile as JSON rows per step (`ms` and `calls` divided by the timed steps), with an
/// `untimed` row for the rest of the median step (host code outside ops and the optimiser).
fn op_rows(p: &Profile, steps: usize, median_step_s: f64) -> serde_json::Value {
    let per = steps as f64;
    let mut rows: Vec<serde_json::Value> = p
        .rows
        .iter()
        .map(
            |r| json!({"op": r.name, "phase": r.phase.name(), "calls": r.calls as f64 / per, "ms": 1e3 * r.secs / per}),
        )
        .collect();
    let timed: f64 = p.rows.iter().map(|r| r.secs).sum::<f64>() / per;
    rows.push(json!({"op": "untimed", "phase": "other", "calls": 1.0, "ms": 1e3 * (median_step_s - timed)}));
    json!({
        "forward_ms": 1e3 * p.total(Phase::Forward) / per,
        "backward_ms": 1e3 * p.total(Phase::Backward) / per,
        "other_ms": 1e3 * p.total(Phase::Other) / per,
        "rows": rows,
    })
}

/// The FMA peak of one thread and of `threads` (at most the pool's) at the packed GEMM's width,
/// GFLOP/s.
fn fma_peaks(threads: usize) -> Option<(f64, f64)> {
    let kernel = packed_gemm::kernel();
    let iters = 50_000_000;
    let one = meter::fma_peak_gflops(kernel, 1, iters)?;
    Some((one, meter::fma_peak_gflops(kernel, threads, iters)?))
}

/// The GEMM meter's totals per step, overall and for the 12 shapes that took longest: useful
/// GFLOP, thread-milliseconds, GFLOP/s per thread and its share of the one-thread peak.
fn gemm_rows(
    rows: &[(meter::Shape, meter::Totals)],
    steps: usize,
    median_step_s: f64,
    threads: usize,
    peak: Option<(f64, f64)>,
) -> serde_json::Value {
    let per = steps as f64;
    let rate = |flops: f64, secs: f64| if secs > 0.0 { flops / secs * 1e-9 } else { 0.0 };
    let share = |g: f64| peak.map(|(one, _)| 100.0 * g / one);
    let (flops, secs) = rows.iter().fold((0.0, 0.0), |(f, s), (_, t)| (f + t.flops, s + t.thread_secs));
    let shapes: Vec<serde_json::Value> = rows
        .iter()
        .take(12)
        .map(|(s, t)| {
            let g = rate(t.flops, t.thread_secs);
            json!({
                "kind": s.kind, "m": s.m, "k": s.k, "n": s.n, "calls": t.calls as f64 / per,
                "gflop": t.flops * 1e-9 / per, "thread_ms": 1e3 * t.thread_secs / per,
                "gflops_per_thread": g, "pct_of_peak": share(g),
            })
        })
        .collect();
    let g = rate(flops, secs);
    json!({
        "fma_peak_gflops": peak.map(|(one, _)| one),
        "fma_peak_all_threads_gflops": peak.map(|(_, all)| all),
        "gflop_per_step": flops * 1e-9 / per,
        "thread_ms_per_step": 1e3 * secs / per,
        "share_of_step_thread_time_pct": 100.0 * secs / per / (median_step_s * threads as f64),
        "gflops_per_thread": g,
        "pct_of_peak": share(g),
        "shapes": shapes,
    })
}

fn loss(a: BenchLossArgs) -> Result<()> {
    let dev = check_device(&a.device)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LossGrid, LossMode};

    fn tiny(stage: Stage) -> BenchStepArgs {
        BenchStepArgs {
            model: BenchModelArgs {
                backbone: "resnet18".into(),
                batch: 2,
                crop: 33,
                output_stride: 16,
                width: 0.125,
                classes: 3,
            },
            stage,
            threads: 0,
            iters: 1,
            warmup: 0,
            loss_mode: None,
            loss_grid: None,
            unlabeled_batch: None,
            labeled_from: None,
            op_profile: false,
            gemm_meter: false,
            json: true,
            device: "cpu".into(),
        }
    }

    #[test]
    fn step_runs_the_stage_objective_with_two_views_for_contrastive() {
        // The contrastive objective refuses one-view batches, so this runs only with two views.
        for stage in [Stage::Contrastive, Stage::Finetune, Stage::U2pl, Stage::Densecl] {
            let v = step_report(&tiny(stage)).unwrap();
            assert_eq!(v["stage"], stage.name());
            assert!(v["median_step_s"].as_f64().unwrap() > 0.0, "{v}");
            for key in ["backbone", "batch", "crop", "output_stride", "width", "threads", "iters", "min_step_s"] {
                assert!(v.get(key).is_some(), "{key} missing from {v}");
            }
        }
        // The loss form flags reach the contrastive objective and the report.
        let a = BenchStepArgs {
            loss_mode: Some(LossMode::Within),
            loss_grid: Some(LossGrid::Eighth),
            ..tiny(Stage::Contrastive)
        };
        let v = step_report(&a).unwrap();
        assert_eq!(v["loss_form"]["mode"], "within");
        assert_eq!(v["loss_form"]["grid"], "eighth");
        assert!(step_report(&tiny(Stage::Finetune)).unwrap()["loss_form"].is_null());
        // The op profile reports the convs' forward and backward and the optimiser.
        let v = step_report(&BenchStepArgs { op_profile: true, ..tiny(Stage::Finetune) }).unwrap();
        let rows = v["ops"]["rows"].as_array().unwrap();
        for (op, phase) in [("conv2d", "forward"), ("conv2d", "backward"), ("optimizer step", "other")] {
            assert!(
                rows.iter().any(|r| r["op"] == op && r["phase"] == phase && r["calls"].as_f64().unwrap() > 0.0),
                "{op} {phase}: {v}"
            );
        }
        // The GEMM meter: useful work in every step, per shape, and a rate against the peak where
        // the packed path runs (other tests' GEMMs may add to it meanwhile, never take from it).
        let v = step_report(&BenchStepArgs { gemm_meter: true, ..tiny(Stage::Finetune) }).unwrap();
        let g = &v["gemm"];
        if packed_gemm::available() {
            assert!(g["gflop_per_step"].as_f64().unwrap() > 0.0, "{g}");
            assert!(g["thread_ms_per_step"].as_f64().unwrap() > 0.0, "{g}");
            assert!(g["pct_of_peak"].as_f64().unwrap() > 0.0, "{g}");
            let shapes = g["shapes"].as_array().unwrap();
            assert!(!shapes.is_empty() && shapes.len() <= 12, "{g}");
            assert!(shapes.iter().all(|r| r["m"].as_u64().unwrap() > 0 && r["gflop"].as_f64().unwrap() > 0.0));
        } else {
            assert!(g["fma_peak_gflops"].is_null(), "{g}");
        }
        assert!(step_report(&tiny(Stage::Finetune)).unwrap()["gemm"].is_null());
        let b = random_batch(2, 9, 3, true, &mut Rng::new(0)).unwrap();
        let d = b.distorted.as_ref().unwrap();
        assert_eq!(d.len(), b.images.len());
        assert_ne!(d, &b.images, "the second view differs");
        assert!(random_batch(2, 9, 3, false, &mut Rng::new(0)).unwrap().distorted.is_none());
    }
}
