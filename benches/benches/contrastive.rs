//! The fused pixel contrastive loss: 2 images x 256 channels at 65x65 (fwd, fwd+bwd) and 129x129
//! (fwd+bwd), f32. Throughput is naive-equivalent: `2 N^2 D` flops per image for the forward and
//! three times that for forward+backward (what a row-by-row evaluation computes; the fused kernel
//! computes each score tile once per pass and does about two thirds of it). A counting global
//! allocator reports the peak extra bytes of one evaluation. Twin: `benches/torch/contrastive.py`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::ops::{pixel_contrastive_loss, ContrastiveConfig};
use engine::{DType, LabelMap, Rng, Tape, Tensor};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Tracks live and peak heap bytes.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const B: usize = 2;
const D: usize = 256;
const CLASSES: usize = 5;

/// Unit-normalised random features and band labels (5 classes, 1 pixel in 20 ignored): the same
/// formula as the PyTorch twin.
fn inputs(h: usize, w: usize) -> (Tensor, LabelMap) {
    let mut rng = Rng::new(1);
    let hw = h * w;
    let mut v: Vec<f64> = (0..B * D * hw).map(|_| rng.normal()).collect();
    for b in 0..B {
        for p in 0..hw {
            let n = (0..D).map(|c| v[b * D * hw + c * hw + p].powi(2)).sum::<f64>().sqrt();
            (0..D).for_each(|c| v[b * D * hw + c * hw + p] /= n);
        }
    }
    let labels = (0..B * hw)
        .map(|i| if i * 7919 % 20 == 0 { 255 } else { ((i % w * CLASSES / w + i / hw) % CLASSES) as u8 })
        .collect();
    (Tensor::from_f64_vec(v, vec![B, D, h, w], DType::F32), LabelMap::new(B, h, w, labels).unwrap())
}

fn fwd(f: &Tensor, l: &LabelMap, cfg: &ContrastiveConfig) -> f64 {
    pixel_contrastive_loss(f, l, cfg).unwrap().item().unwrap()
}

fn fwd_bwd(f: &Tensor, l: &LabelMap, cfg: &ContrastiveConfig) -> Tensor {
    let tape = Tape::new();
    let x = tape.watch(f);
    let loss = pixel_contrastive_loss(&x, l, cfg).unwrap();
    tape.backward(&loss).unwrap().get(&x).unwrap().clone()
}

/// Peak heap bytes above the starting point while running `f` once.
fn peak_extra(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed) - base
}

fn bench(c: &mut Criterion) {
    let cfg = ContrastiveConfig { classes: CLASSES, ..Default::default() };
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    for (h, w) in [(65, 65), (129, 129)] {
        let (f, l) = inputs(h, w);
        let n = h * w;
        let pass_flops = (B * 2 * n * n * D) as u64;
        let grad_bytes = f.nbytes();
        let m_fwd = peak_extra(|| {
            fwd(&f, &l, &cfg);
        });
        let m_all = peak_extra(|| {
            fwd_bwd(&f, &l, &cfg);
        });
        println!(
            "contrastive {h}x{w}: peak extra heap fwd {:.1} MiB, fwd+bwd {:.1} MiB ({:.1} MiB of it the gradient tensor)",
            mib(m_fwd),
            mib(m_all),
            mib(grad_bytes)
        );
        let mut g = c.benchmark_group(format!("contrastive_{h}x{w}"));
        g.sample_size(10).measurement_time(Duration::from_secs(if h > 65 { 20 } else { 6 }));
        if h == 65 {
            g.throughput(Throughput::Elements(pass_flops));
            g.bench_function(BenchmarkId::new("fwd", format!("2x{D}")), |bch| bch.iter(|| fwd(&f, &l, &cfg)));
        }
        g.throughput(Throughput::Elements(3 * pass_flops));
        g.bench_function(BenchmarkId::new("fwd_bwd", format!("2x{D}")), |bch| bch.iter(|| fwd_bwd(&f, &l, &cfg)));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
