//! Deterministic work splitting.
//!
//! rayon's work stealing decides *which thread* runs a chunk, never *what* a chunk contains: chunk
//! boundaries here depend only on the problem size, and every reduction combines per-chunk partial
//! results in chunk order. That is what makes a seeded run repeat bit for bit.
//!
//! Also here, for the kernels that split work themselves: `SendPtr`, the raw output pointer their
//! parallel tasks write disjoint ranges through, and `sum_in_order`, the fixed-order serial sum
//! they use inside a chunk.

use crate::Float;
use rayon::prelude::*;

/// Fixed chunk length for splitting `len` items so that each chunk has at least `min_chunk` items
/// and there are at most 64 chunks (plenty of slack for 2..16 threads).
pub fn chunk_len(len: usize, min_chunk: usize) -> usize {
    let by_count = len.div_ceil(64);
    by_count.max(min_chunk).max(1)
}

/// Sum of `f(i)` for `i in 0..len`, computed in fixed chunks and combined in chunk order.
pub fn sum_by<F>(len: usize, f: F) -> f64
where
    F: Fn(usize) -> f64 + Sync,
{
    let c = chunk_len(len, 4096);
    let parts: Vec<f64> = (0..len.div_ceil(c))
        .into_par_iter()
        .map(|ci| {
            let (s, e) = (ci * c, ((ci + 1) * c).min(len));
            let mut acc = 0.0;
            for i in s..e {
                acc += f(i);
            }
            acc
        })
        .collect();
    parts.iter().sum()
}

/// Apply `f(index_of_first, chunk)` to fixed-size mutable chunks of `out` in parallel.
pub fn for_chunks_mut<T, F>(out: &mut [T], min_chunk: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync,
{
    let c = chunk_len(out.len(), min_chunk);
    out.par_chunks_mut(c).enumerate().for_each(|(ci, ch)| f(ci * c, ch));
}

/// `n` zeros, written by the pool's threads in fixed chunks. A serial `vec![0.0; n]` of a large
/// buffer is a memset (once the allocator reuses freed memory) plus the first-touch page faults, all
/// on one core while the other waits; the training step allocates its activations and gradients
/// fresh every step, so that was a tenth of a step on one core. Small buffers stay serial.
pub fn zeros<T: Float>(n: usize) -> Vec<T> {
    if n < 1 << 16 || rayon::current_num_threads() == 1 {
        return vec![T::ZERO; n];
    }
    let mut v = Vec::with_capacity(n);
    (0..n).into_par_iter().with_min_len(1 << 14).map(|_| T::ZERO).collect_into_vec(&mut v);
    v
}

/// A raw pointer to an output buffer, shared by parallel tasks that write through it.
///
/// `*mut T` is neither `Send` nor `Sync`; this wrapper is both, which is sound only because of how
/// every user works: the buffer is borrowed mutably (so nothing else touches it) for the whole
/// parallel loop, and each parallel task writes a range of elements disjoint from every other
/// task's and reads none that another writes, so no element is ever accessed by two threads. Each
/// use site states why its ranges are disjoint in a `SAFETY` comment.
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer. A method (not a field access) so closures capture the whole `Sync` wrapper, not
    /// the bare pointer field.
    pub(crate) fn ptr(&self) -> *mut T {
        self.0
    }
}

/// Sum of a slice in index order (a fixed order, so the result is reproducible).
pub(crate) fn sum_in_order<T: Float>(v: &[T]) -> T {
    // Four interleaved accumulators: still a fixed order, but the adds pipeline.
    let mut acc = [T::ZERO; 4];
    let mut it = v.chunks_exact(4);
    for c in &mut it {
        acc[0] += c[0];
        acc[1] += c[1];
        acc[2] += c[2];
        acc[3] += c[3];
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for &r in it.remainder() {
        s += r;
    }
    s
}
