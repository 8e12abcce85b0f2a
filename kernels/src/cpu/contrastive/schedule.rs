//! Which score tiles are computed, and in what order, so that the symmetric passes are parallel and
//! still repeat bit for bit.
//!
//! A bag's `n` rows are cut into `k` blocks of near-equal size (about [`TILE`] rows). The score
//! matrix is symmetric, so only the tiles `(P, Q)` with `P <= Q` are computed; tile `(P, Q)` adds to
//! the per-row accumulators of block `P` *and* of block `Q`. Two tiles sharing a block must not run
//! at the same time, and each accumulator must receive its tiles in an order that does not depend
//! on the thread count. A round-robin tournament (the circle method) gives both: round 0 holds the
//! `k` diagonal tiles, then each of `k - 1` rounds (`k` when `k` is odd, with one block resting)
//! pairs every block with at most one other. Tiles of one round touch disjoint blocks and run in
//! parallel; rounds run one after the other.

use super::tile_gemm::PANEL;

/// The target block size. A `TILE x TILE` f32 tile (256 KiB) stays in L2 while it is turned into
/// exponentials or gradients; each tile product uses every element of its operands ~`TILE` times.
pub const TILE: usize = 256;

/// The blocks `[start, end)` of `n` rows: `ceil(n / TILE)` blocks of near-equal size, each starting
/// at a multiple of [`PANEL`] (the score kernel's column panels): sizes within `2 PANEL` of each
/// other, at most `TILE + PANEL`.
pub fn blocks(n: usize) -> Vec<(usize, usize)> {
    let k = n.div_ceil(TILE);
    let cut = |b: usize| if b == k { n } else { b * n / k / PANEL * PANEL };
    (0..k).map(|b| (cut(b), cut(b + 1))).filter(|(s, e)| e > s).collect()
}

/// The tiles `(P, Q)`, `P <= Q`, of `k` blocks grouped in rounds: every tile exactly once, and no
/// block twice within a round.
pub fn rounds(k: usize) -> Vec<Vec<(usize, usize)>> {
    let mut out = vec![(0..k).map(|b| (b, b)).collect::<Vec<_>>()];
    if k < 2 {
        return out;
    }
    // The circle method on an even number of seats; seat `k` (when `k` is odd) is the rest.
    let seats = k + k % 2;
    let ring = seats - 1;
    for r in 0..ring {
        let pairs =
            std::iter::once((seats - 1, r)).chain((1..seats / 2).map(|i| ((r + i) % ring, (r + ring - i) % ring)));
        out.push(pairs.filter(|&(a, b)| a < k && b < k).map(|(a, b)| (a.min(b), a.max(b))).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_rows_evenly() {
        for n in [0, 1, 5, TILE, TILE + 1, 4225, 16641] {
            let b = blocks(n);
            assert!(b.len() <= n.div_ceil(TILE) && b.len() + 1 >= n.div_ceil(TILE));
            let mut next = 0;
            for &(s, e) in &b {
                assert_eq!(s, next);
                assert!(e > s && e - s <= TILE + PANEL && s % PANEL == 0);
                next = e;
            }
            assert_eq!(next, n);
            let sizes: Vec<usize> = b.iter().map(|(s, e)| e - s).collect();
            assert!(sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 2 * PANEL);
        }
    }

    #[test]
    fn every_tile_once_and_rounds_disjoint() {
        for k in 0..40 {
            let mut seen = vec![vec![0u32; k]; k];
            for round in rounds(k) {
                let mut used = vec![false; k];
                for (p, q) in round {
                    assert!(p <= q && q < k);
                    seen[p][q] += 1;
                    assert!(!used[p] && !used[q], "k={k}: block used twice in a round");
                    used[p] = true;
                    used[q] = true;
                }
            }
            for (p, row) in seen.iter().enumerate() {
                for (q, &c) in row.iter().enumerate() {
                    assert_eq!(c, u32::from(p <= q), "k={k}: tile ({p},{q})");
                }
            }
        }
    }
}
