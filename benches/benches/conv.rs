//! conv2d forward and forward + backward (dx, dw and db), f32, at the DeepLabV3+ shapes:
//! ASPP-like 3x3 256 -> 256 on 2x256x33x33 with dilation (= padding) 1, 6, 12, 18, the 1x1
//! 256 -> 256 projection on 2x256x65x65, and two convs of the ResNet-50 step at crop 257 (output
//! stride 16, 17 x 17 maps): layer 4's 3x3 512 -> 512 with dilation 2, and ASPP's 3x3 2048 -> 256
//! with dilation 6. Twin: benches/torch/conv.py.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo bench -p segnet-benches --bench conv`. Throughput counts the
//! multiply-adds x 2 of the dense computation (taps in the padding included, as PyTorch does them),
//! so the per-second figure is GFLOP/s-like and comparable across dilations.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::ops::{self, Conv2dParams};
use engine::{DType, Rng, Tape, Tensor};
use std::time::Duration;

struct Case {
    name: String,
    x: Tensor,
    w: Tensor,
    b: Tensor,
    p: Conv2dParams,
    flops: u64,
}

/// `n x c_in x hw x hw` into `c_out` channels, a `k x k` kernel with dilation (= padding) `d`.
#[allow(clippy::too_many_arguments)]
fn case(name: &str, n: usize, c_in: usize, c_out: usize, hw: usize, k: usize, d: usize, rng: &mut Rng) -> Case {
    let p = Conv2dParams { padding: [d * (k / 2); 2], dilation: [d, d], ..Default::default() };
    let x = Tensor::randn([n, c_in, hw, hw], 1.0, DType::F32, rng);
    let w = Tensor::randn([c_out, c_in, k, k], 0.05, DType::F32, rng);
    let b = Tensor::zeros([c_out], DType::F32);
    let flops = 2 * (n * c_in * c_out * k * k * hw * hw) as u64;
    Case { name: name.into(), x, w, b, p, flops }
}

fn cases() -> Vec<Case> {
    let mut rng = Rng::new(1);
    let mut v: Vec<Case> = [1, 6, 12, 18]
        .iter()
        .map(|&d| case(&format!("3x3_256_2x33x33_d{d}"), 2, 256, 256, 33, 3, d, &mut rng))
        .collect();
    v.push(case("1x1_256_2x65x65", 2, 256, 256, 65, 1, 1, &mut rng));
    v.push(case("3x3_512_2x17x17_d2", 2, 512, 512, 17, 3, 2, &mut rng));
    v.push(case("3x3_2048to256_2x17x17_d6", 2, 2048, 256, 17, 3, 6, &mut rng));
    v
}

fn bench_conv(c: &mut Criterion) {
    let cases = cases();
    let mut g = c.benchmark_group("conv2d_f32_fwd");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for cs in &cases {
        g.throughput(Throughput::Elements(cs.flops));
        g.bench_with_input(BenchmarkId::from_parameter(&cs.name), cs, |bench, cs| {
            bench.iter(|| ops::conv2d(&cs.x, &cs.w, Some(&cs.b), cs.p).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("conv2d_f32_fwd_bwd");
    g.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    for cs in &cases {
        let seed = Tensor::ones(ops::conv2d(&cs.x, &cs.w, Some(&cs.b), cs.p).unwrap().shape().clone(), DType::F32);
        g.throughput(Throughput::Elements(3 * cs.flops));
        g.bench_with_input(BenchmarkId::from_parameter(&cs.name), cs, |bench, cs| {
            bench.iter(|| {
                let tape = Tape::new();
                let (x, w, b) = (tape.watch(&cs.x), tape.watch(&cs.w), tape.watch(&cs.b));
                let y = ops::conv2d(&x, &w, Some(&b), cs.p).unwrap();
                tape.backward_with(&y, &seed).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_conv);
criterion_main!(benches);
