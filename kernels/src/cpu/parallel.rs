//! Deterministic work splitting.
//!
//! rayon's work stealing decides *which thread* runs a chunk, never *what* a chunk contains: chunk
//! boundaries here depend only on the problem size, and every reduction combines per-chunk partial
//! results in chunk order. That is what makes a seeded run repeat bit for bit.

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
