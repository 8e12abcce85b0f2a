//! GEMM throughput (f32) through `kernels::cpu::gemm` at shapes the convolutions produce.
//! Run: `cargo bench -p segnet-benches --bench gemm`. GFLOP/s = 2 m k n / time.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernels::cpu::{gemm, Mat, MatMut};

fn bench_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_f32");
    // (m, k, n): square; conv1x1 256->256 on 2x65x65 (per image); conv3x3 256->256 im2col at 33x33.
    for &(m, k, n) in &[(512, 512, 512), (256, 256, 4225), (256, 2304, 1089)] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.01).collect();
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(format!("{m}x{k}x{n}")), &(), |bench, _| {
            bench.iter(|| gemm(1.0, Mat::rm(&a, m, k), Mat::rm(&b, k, n), 0.0, MatMut::rm(&mut out, m, n)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
