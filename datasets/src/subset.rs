//! Labeled subsets for label-efficient training: pick N labeled images deterministically, treat the
//! rest as unlabeled. The chosen indices are returned (sorted) so a run can record exactly which
//! images carried labels, and the same seed always reproduces the same split.

use crate::error::{DatasetError, Result};
use crate::pack::Pack;
use crate::rng::Rng;

/// A split of record indices into labeled and unlabeled, both sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subset {
    pub labeled: Vec<usize>,
    pub unlabeled: Vec<usize>,
}

/// Chooses `n_labeled` of the `candidates` (records that actually have labels) with `seed`;
/// every other index in `0..total` becomes unlabeled.
pub fn choose_labeled(total: usize, candidates: &[usize], n_labeled: usize, seed: u64) -> Result<Subset> {
    if let Some(&bad) = candidates.iter().find(|&&i| i >= total) {
        return Err(DatasetError::Config(format!("candidate index {bad} out of range 0..{total}")));
    }
    let mut pool = candidates.to_vec();
    pool.sort_unstable();
    pool.dedup();
    if n_labeled > pool.len() {
        return Err(DatasetError::Config(format!(
            "asked for {n_labeled} labeled images but only {} are labeled",
            pool.len()
        )));
    }
    // Partial Fisher-Yates over the sorted candidates: the result depends only on (seed, candidates).
    let mut rng = Rng::derive(seed, &[0x5B5E7]);
    for i in 0..n_labeled {
        let j = i + rng.below(pool.len() - i);
        pool.swap(i, j);
    }
    let mut labeled = pool[..n_labeled].to_vec();
    labeled.sort_unstable();
    let mut is_labeled = vec![false; total];
    for &i in &labeled {
        is_labeled[i] = true;
    }
    let unlabeled = (0..total).filter(|&i| !is_labeled[i]).collect();
    Ok(Subset { labeled, unlabeled })
}

/// [`choose_labeled`] over a pack: candidates are the records stored with a label map.
pub fn choose_labeled_in_pack(pack: &Pack, n_labeled: usize, seed: u64) -> Result<Subset> {
    let mut candidates = Vec::with_capacity(pack.num_labeled());
    for i in 0..pack.len() {
        if pack.info(i)?.labeled {
            candidates.push(i);
        }
    }
    choose_labeled(pack.len(), &candidates, n_labeled, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_disjoint_and_complete() {
        let cands: Vec<usize> = (0..100).filter(|i| i % 3 != 0).collect();
        let a = choose_labeled(100, &cands, 10, 42).unwrap();
        assert_eq!(a, choose_labeled(100, &cands, 10, 42).unwrap());
        assert_ne!(a.labeled, choose_labeled(100, &cands, 10, 43).unwrap().labeled);
        assert_eq!(a.labeled.len(), 10);
        assert!(a.labeled.iter().all(|i| cands.contains(i)));
        assert!(a.labeled.windows(2).all(|w| w[0] < w[1]));
        let mut all: Vec<usize> = a.labeled.iter().chain(&a.unlabeled).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn every_candidate_can_be_chosen() {
        // Over many seeds each candidate is picked sometimes: no index is systematically excluded.
        let cands: Vec<usize> = (0..20).collect();
        let mut hits = [0usize; 20];
        for seed in 0..400 {
            for i in choose_labeled(20, &cands, 5, seed).unwrap().labeled {
                hits[i] += 1;
            }
        }
        assert!(hits.iter().all(|&h| (50..150).contains(&h)), "{hits:?}");
    }

    #[test]
    fn too_many_or_out_of_range_is_an_error() {
        assert!(choose_labeled(5, &[0, 1], 3, 0).is_err());
        assert!(choose_labeled(5, &[0, 9], 1, 0).is_err());
        assert_eq!(choose_labeled(5, &[0, 1], 0, 0).unwrap().unlabeled.len(), 5);
    }
}
