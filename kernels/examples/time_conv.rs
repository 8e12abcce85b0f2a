//! Time one convolution's forward, input gradient or weight gradient on the CPU kernels alone.
//!
//! ```sh
//! cargo run -p kernels --release --example time_conv -- N C_IN HW C_OUT K STRIDE DILATION WHICH ITERS
//! cargo run -p kernels --release --example time_conv -- 2 2048 17 256 3 1 6 0 10   # ASPP d6 forward
//! ```
//! `WHICH`: 0 forward, 1 input gradient, 2 weight gradient. Square maps, padding `dilation` for a
//! 3x3 (the output keeps the input's size at stride 1) and 0 otherwise, one group; `RAYON_NUM_THREADS`
//! sets the threads, `SEGNET_CPU_AVX512=0` the AVX2 micro-kernels. Prints the median and best of
//! `ITERS` calls and the best one's GFLOP/s (counting every tap, dead or not), then the packed
//! GEMM's calls by shape with their useful rate ([`meter`]). The probe behind the
//! per-conv A/B figures of `benches/RESULTS.md` (round 7); `segnet bench convs` times a whole model's.

use kernels::cpu::conv::{conv2d_backward_input, conv2d_backward_weight, conv2d_forward, Conv2dGeom};
use kernels::cpu::packed_gemm::meter;
use std::time::Instant;

fn main() {
    let names = ["N", "C_IN", "HW", "C_OUT", "K", "STRIDE", "DILATION", "WHICH", "ITERS"];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != names.len() {
        eprintln!("usage: time_conv {}", names.join(" "));
        std::process::exit(2);
    }
    let mut v = [0usize; 9];
    for (i, (a, name)) in args.iter().zip(names).enumerate() {
        v[i] = match a.parse() {
            Ok(x) if x > 0 || name == "WHICH" => x,
            _ => {
                eprintln!("time_conv: {name} must be a positive integer (WHICH: 0, 1 or 2), got {a:?}");
                std::process::exit(2);
            }
        };
    }
    let [n, c_in, hw, c_out, k, s, d, which, iters] = v;
    let p = if k == 3 { d } else { 0 };
    let g = Conv2dGeom {
        n,
        c_in,
        h: hw,
        w: hw,
        c_out,
        kh: k,
        kw: k,
        stride: [s, s],
        padding: [p, p],
        dilation: [d, d],
        groups: 1,
    };
    let (oh, ow) = match g.out_hw() {
        Some(o) if which <= 2 => o,
        _ => {
            eprintln!("time_conv: no output for {g:?} (or WHICH is not 0, 1 or 2)");
            std::process::exit(2);
        }
    };
    let x: Vec<f32> = (0..n * c_in * hw * hw).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
    let w: Vec<f32> = (0..c_out * c_in * k * k).map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5).collect();
    let mut y = vec![0f32; n * c_out * oh * ow];
    let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; w.len()]);
    meter::start();
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            match which {
                0 => conv2d_forward(&g, &x, &w, None, &mut y),
                1 => conv2d_backward_input(&g, &w, &y, &mut dx),
                _ => conv2d_backward_weight(&g, &x, &y, &mut dw),
            }
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let flop = 2.0 * (n * c_out * oh * ow * c_in * k * k) as f64;
    println!(
        "median {:.3} ms min {:.3} ms  {:.1} GFLOP/s (min)",
        times[times.len() / 2],
        times[0],
        flop / times[0] / 1e6
    );
    // The packed GEMM's own share: its calls per shape, their useful rate on the calling threads.
    for (s, t) in meter::take().iter().take(6) {
        println!(
            "  {} m {} k {} n {}: {:.1} calls/iter, {:.3} thread-ms/iter, {:.1} GFLOP/s per thread",
            s.kind,
            s.m,
            s.k,
            s.n,
            t.calls as f64 / iters as f64,
            1e3 * t.thread_secs / iters as f64,
            t.flops / t.thread_secs * 1e-9
        );
    }
}
