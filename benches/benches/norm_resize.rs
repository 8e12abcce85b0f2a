//! Batch norm and bilinear resize (f32, 2 threads) at DeepLabV3+ shapes, through the engine ops
//! with a tape so fwd+bwd includes the autodiff bookkeeping.
//! Run: `cargo bench -p segnet-benches --bench norm_resize`; PyTorch twin: benches/torch/norm_resize.py.
//! Throughput is elements of the (larger) activation per iteration.
//! Note: on the Firecracker VMs used here, first-touch page faults of fresh allocations are very
//! slow (~8 us per 4 KiB page) and glibc returns blocks over 32 MiB to the OS on every free, so the
//! 34 MiB bilinear output dominates the timing. Running both this and the PyTorch twin with
//! `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184` isolates the
//! kernels from the allocator.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::{ops, DType, Rng, Tape, Tensor};
use std::time::Duration;

fn two_threads() {
    // rayon reads this when its global pool starts (first parallel call), like torch.set_num_threads(2).
    std::env::set_var("RAYON_NUM_THREADS", "2");
}

fn bench_batch_norm(c: &mut Criterion) {
    two_threads();
    let mut g = c.benchmark_group("batch_norm2d_train_f32");
    g.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    let dims = [2, 256, 65, 65];
    let mut rng = Rng::new(0);
    let x = Tensor::randn(dims, 1.0, DType::F32, &mut rng);
    let w = Tensor::ones([256], DType::F32);
    let b = Tensor::zeros([256], DType::F32);
    let seed = Tensor::randn(dims, 1.0, DType::F32, &mut rng);
    let (mut rm, mut rv) = (Tensor::zeros([256], DType::F32), Tensor::ones([256], DType::F32));
    g.throughput(Throughput::Elements(x.numel() as u64));
    g.bench_function(BenchmarkId::new("fwd", "2x256x65x65"), |bench| {
        bench.iter(|| ops::batch_norm2d(&x, Some(&w), Some(&b), &mut rm, &mut rv, true, 0.1, 1e-5).unwrap())
    });
    g.bench_function(BenchmarkId::new("fwd_bwd", "2x256x65x65"), |bench| {
        bench.iter(|| {
            let tape = Tape::new();
            let (xw, ww, bw) = (tape.watch(&x), tape.watch(&w), tape.watch(&b));
            let y = ops::batch_norm2d(&xw, Some(&ww), Some(&bw), &mut rm, &mut rv, true, 0.1, 1e-5).unwrap();
            tape.backward_with(&y, &seed).unwrap()
        })
    });
    g.finish();
}

fn bench_bilinear(c: &mut Criterion) {
    two_threads();
    let mut g = c.benchmark_group("resize_bilinear_f32");
    g.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    let mut rng = Rng::new(1);
    let x = Tensor::randn([2, 256, 33, 33], 1.0, DType::F32, &mut rng);
    let seed = Tensor::randn([2, 256, 129, 129], 1.0, DType::F32, &mut rng);
    g.throughput(Throughput::Elements(seed.numel() as u64));
    for align in [false, true] {
        let tag = format!("2x256_33to129_ac{align}");
        g.bench_function(BenchmarkId::new("fwd", &tag), |bench| {
            bench.iter(|| ops::resize_bilinear(&x, [129, 129], align).unwrap())
        });
        g.bench_function(BenchmarkId::new("fwd_bwd", &tag), |bench| {
            bench.iter(|| {
                let tape = Tape::new();
                let xw = tape.watch(&x);
                let y = ops::resize_bilinear(&xw, [129, 129], align).unwrap();
                tape.backward_with(&y, &seed).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_batch_norm, bench_bilinear);
criterion_main!(benches);
