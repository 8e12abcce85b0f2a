//! A meter for the packed GEMM's work inside a real run (a training step, not a loop over one
//! shape): how many useful floating-point operations its calls did, and how long the calling
//! threads spent in them, per GEMM shape. `segnet bench step --gemm-meter` reads it to say how
//! close the step's GEMMs run to the machine's peak ([`fma_peak_gflops`]).
//!
//! Metered spans: every [`super::gemm`] / [`super::gemm_to`] call (the tiled conv paths, Winograd,
//! the weight gradients), keyed `(m, k, n)` with `k` the sum of its segments' lengths, and every
//! work unit of the direct conv (`conv::direct`), keyed `(m, k, n)` = (destination rows, live taps
//! x channels, output pixels of one image). Useful flops are `2 m n k` for a GEMM call, and for a
//! direct unit `2 rows k` per output pixel inside it (its dropped wide columns, and the zero rows
//! and columns padding a panel or slab, are work the kernel does but not useful flops).
//!
//! Time is per calling thread: a span runs on one thread, so two threads in GEMMs at once add two
//! spans. Rate per thread = flops / thread-seconds, against the one-thread peak.
//!
//! Off by default: one relaxed atomic load per GEMM call. While on, each span takes two clock
//! reads and one uncontended-or-briefly-contended lock (~0.1 us against calls of 10-1000 us).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Option<HashMap<Shape, Totals>>> = Mutex::new(None);

/// A metered GEMM shape (see the module docs for what `m`, `k`, `n` are per kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape {
    /// `gemm` (a packed GEMM call) or `direct` (a direct-conv unit).
    pub kind: &'static str,
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// What the spans of one shape added up to.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub calls: u64,
    /// Useful floating-point operations.
    pub flops: f64,
    /// Seconds on the calling threads, summed.
    pub thread_secs: f64,
}

/// Start metering from zero.
pub fn start() {
    *TOTALS.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
    ENABLED.store(true, Ordering::Relaxed);
}

/// Stop metering; the totals per shape, by decreasing thread time.
pub fn take() -> Vec<(Shape, Totals)> {
    ENABLED.store(false, Ordering::Relaxed);
    let map = TOTALS.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    let mut rows: Vec<(Shape, Totals)> = map.into_iter().collect();
    rows.sort_by(|a, b| b.1.thread_secs.total_cmp(&a.1.thread_secs).then(a.0.cmp(&b.0)));
    rows
}

/// Run `f`, charging it and `flops` to `shape` while the meter is on.
#[inline]
pub(crate) fn span<R>(shape: impl FnOnce() -> (Shape, f64), f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let t0 = Instant::now();
    let r = f();
    let secs = t0.elapsed().as_secs_f64();
    let (shape, flops) = shape();
    if let Some(map) = TOTALS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let t = map.entry(shape).or_default();
        t.calls += 1;
        t.flops += flops;
        t.thread_secs += secs;
    }
    r
}

/// The f32 fused multiply-add peak of `threads` threads, in GFLOP/s, at `kernel`'s width (256 or
/// 512 bits; pass [`super::kernel()`] for the packed GEMM's own): twelve independent FMA chains per
/// thread, enough to cover the FMA latency on two pipes, `iters` x 12 FMAs each. `None` where the
/// CPU lacks that kernel's instructions. Runs on the current rayon pool, so `threads` should be at
/// most its size.
pub fn fma_peak_gflops(kernel: super::Kernel, threads: usize, iters: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use rayon::prelude::*;
        use std::arch::x86_64::*;
        if !super::available() || (kernel == super::Kernel::Avx512 && !super::avx512_available()) {
            return None;
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn chains256(iters: usize) -> f32 {
            let mut acc = [_mm256_set1_ps(0.0); 12];
            let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            for _ in 0..iters {
                for v in acc.iter_mut() {
                    *v = _mm256_fmadd_ps(*v, a, b);
                }
            }
            let mut out = [0.0f32; 8];
            let s = acc.iter().fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v));
            _mm256_storeu_ps(out.as_mut_ptr(), s);
            out.iter().sum()
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn chains512(iters: usize) -> f32 {
            let mut acc = [_mm512_set1_ps(0.0); 12];
            let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
            for _ in 0..iters {
                for v in acc.iter_mut() {
                    *v = _mm512_fmadd_ps(*v, a, b);
                }
            }
            _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v)))
        }
        let (lanes, f) = if kernel == super::Kernel::Avx512 {
            (16, chains512 as unsafe fn(usize) -> f32)
        } else {
            (8, chains256 as unsafe fn(usize) -> f32)
        };
        let threads = threads.max(1);
        let t0 = Instant::now();
        // On the pool's workers (one chain set each), not on threads of our own: a pool whose idle
        // workers spin (segnet's `keep_awake`) would take the cores from them.
        // SAFETY: the ISA was checked above.
        let sum: f32 = (0..threads).into_par_iter().with_max_len(1).map(|_| unsafe { f(iters) }).sum();
        let secs = t0.elapsed().as_secs_f64();
        // Keep the chains' result alive so that the loop is not optimised away.
        std::hint::black_box(sum);
        Some((threads * iters * 12 * lanes * 2) as f64 / secs * 1e-9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kernel, threads, iters);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only this test starts the meter; other tests' GEMMs may run meanwhile (on test threads), so
    /// it looks only at shapes no other test uses.
    #[test]
    fn meter_counts_useful_flops_per_shape_only_while_on() {
        let big = Shape { kind: "gemm", m: 999_983, k: 10, n: 16 };
        let small = Shape { kind: "direct", m: 999_979, k: 1, n: 1 };
        let ours = |rows: Vec<(Shape, Totals)>| -> Vec<(Shape, Totals)> {
            rows.into_iter().filter(|(s, _)| *s == big || *s == small).collect()
        };
        assert_eq!(span(|| (big, 1.0), || 7), 7, "off: the result passes through");
        start();
        span(|| (big, 3840.0), || ());
        span(|| (big, 3840.0), || std::thread::sleep(std::time::Duration::from_millis(2)));
        span(|| (small, 2.0), || ());
        let rows = ours(take());
        assert_eq!(rows.len(), 2);
        let (s, t) = rows[0];
        assert_eq!(s, big, "the slower shape comes first");
        assert_eq!(t.calls, 2);
        assert_eq!(t.flops, 7680.0);
        assert!(t.thread_secs >= 0.002);
        assert_eq!(rows[1].1, Totals { calls: 1, flops: 2.0, ..rows[1].1 });
        span(|| (big, 1.0), || ());
        assert!(ours(take()).is_empty(), "nothing is metered after take");

        // The hooks: a packed GEMM call and a direct conv's units (shapes no other test runs).
        if !super::super::available() {
            return;
        }
        let (m, k, n) = (11, 29, 997);
        let a = super::super::PackedA::pack(m, k, |i, l| (i + l) as f32);
        let b = vec![1.0f32; super::super::slab_len(k, n)];
        let mut c = vec![0.0f32; m * n];
        let whole = [super::super::KSeg { a_k0: 0, b_k0: 0, len: k }];
        let g = crate::cpu::conv::Conv2dGeom {
            n: 1,
            c_in: 19,
            h: 13,
            w: 11,
            c_out: 14,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        let x = vec![0.5f32; 19 * 13 * 11];
        let w = vec![0.25f32; 14 * 19 * 9];
        let mut y = vec![0.0f32; 14 * 13 * 11];
        start();
        super::super::gemm(&a, &whole, &b, k, n, &mut c, n, false);
        crate::cpu::conv::conv2d_forward(&g, &x, &w, None, &mut y);
        let rows = take();
        let find = |s: Shape| rows.iter().find(|(r, _)| *r == s).map(|(_, t)| *t);
        let t = find(Shape { kind: "gemm", m, k, n }).expect("the GEMM call is metered");
        assert_eq!((t.calls, t.flops), (1, (2 * m * k * n) as f64));
        // Every one of the 13 x 11 outputs of the 14 rows, all nine taps of the 19 channels live.
        let t = find(Shape { kind: "direct", m: 14, k: 9 * 19, n: 13 * 11 }).expect("the direct conv is metered");
        assert_eq!(t.flops, (2 * 14 * 13 * 11 * 9 * 19) as f64);
        assert!(t.calls >= 1 && t.thread_secs > 0.0);
    }

    #[test]
    fn peak_is_positive_where_the_packed_path_runs() {
        match fma_peak_gflops(super::super::kernel(), 1, 100_000) {
            Some(g) => assert!(g.is_finite() && g > 0.1, "peak {g}"),
            None => assert!(!super::super::available()),
        }
    }
}
