//! CPU kernels over slices. Each file holds one op family; the engine's ops call these.

pub mod batchnorm;
pub mod contrastive;
pub mod conv;
pub mod gemm;
pub mod packed_gemm;
pub mod parallel;
pub mod pool;
pub mod resize;
pub mod softmax;

pub use gemm::{gemm, Mat, MatMut};

/// Seconds per call of `f`: the best of 7 batches of 10 calls (for the ignored speed tests).
#[cfg(test)]
pub(crate) fn best_time(f: &mut dyn FnMut()) -> f64 {
    (0..7)
        .map(|_| {
            let t0 = std::time::Instant::now();
            for _ in 0..10 {
                f();
            }
            t0.elapsed().as_secs_f64() / 10.0
        })
        .fold(f64::INFINITY, f64::min)
}
