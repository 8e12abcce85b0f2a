//! Loader: shapes, determinism regardless of threads, epoch shuffling, subsets, errors.

use std::sync::Arc;

use datasets::{synth_dataset, synth_pack, AugmentConfig, DatasetError, Loader, LoaderConfig, Pack, SynthConfig};

fn cfg(n: usize) -> SynthConfig {
    SynthConfig { num_images: n, height: 40, width: 48, ..SynthConfig::default() }
}

#[test]
fn batches_have_engine_shapes_and_cover_the_epoch() {
    let ds = Arc::new(synth_dataset(&cfg(10)).unwrap());
    let lc = LoaderConfig::train(4, 7, AugmentConfig::contrastive(32));
    let loader = Loader::new(ds, None, lc).unwrap();
    assert_eq!(loader.batches_per_epoch(), 2);
    let batches: Vec<_> = loader.epoch(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.len(), 2);
    let mut seen: Vec<usize> = Vec::new();
    for (k, b) in batches.iter().enumerate() {
        assert_eq!(b.step, k);
        assert_eq!(b.image_shape, [4, 3, 32, 32]);
        assert_eq!(b.label_shape, [4, 32, 32]);
        assert_eq!(b.images.len(), 4 * 3 * 32 * 32);
        assert_eq!(b.labels.len(), 4 * 32 * 32);
        assert!(b.images.iter().all(|v| v.is_finite()));
        assert!(b.labels.iter().all(|&v| v < 5 || v == 255));
        seen.extend(&b.indices);
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 8, "drop_last: 8 distinct of 10");
}

#[test]
fn contrastive_batches_carry_an_undistorted_and_a_distorted_view_of_the_same_crops() {
    let ds = Arc::new(synth_dataset(&cfg(10)).unwrap());
    let two = Loader::new(ds.clone(), None, LoaderConfig::train(4, 7, AugmentConfig::contrastive(32))).unwrap();
    let plain = Loader::new(ds, None, LoaderConfig::train(4, 7, AugmentConfig::train(32))).unwrap();
    for step in 0..2 {
        let (b, p) = (two.batch(1, step).unwrap(), plain.batch(1, step).unwrap());
        let d = b.distorted.as_ref().expect("two views");
        assert_eq!(d.len(), b.images.len());
        assert_ne!(d, &b.images);
        // Same seed, same geometry draws: the original view and labels are the fine-tuning recipe's.
        assert_eq!((&b.indices, &b.images, &b.labels), (&p.indices, &p.images, &p.labels));
        assert!(p.distorted.is_none());
    }
}

#[test]
fn same_seed_same_batches_regardless_of_workers_and_prefetch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.pack");
    synth_pack(&path, &cfg(9)).unwrap();
    let pack = Arc::new(Pack::open(&path).unwrap());
    let run = |workers: usize, prefetch: usize| {
        let lc = LoaderConfig { workers, prefetch, ..LoaderConfig::train(3, 11, AugmentConfig::contrastive(24)) };
        let l = Loader::new(pack.clone(), None, lc).unwrap();
        (0..2).flat_map(|e| l.epoch(e).map(Result::unwrap).collect::<Vec<_>>()).collect::<Vec<_>>()
    };
    let a = run(1, 1);
    let b = run(2, 4);
    assert_eq!(a, b);
    // Epochs differ in order; the synchronous `batch` recomputes the same thing.
    assert_ne!(a[0].indices, a[3].indices);
    let lc = LoaderConfig::train(3, 11, AugmentConfig::contrastive(24));
    let l = Loader::new(pack.clone(), None, lc).unwrap();
    assert_eq!(l.batch(1, 2).unwrap(), a[5]);
    // A different seed gives different batches.
    let lc = LoaderConfig::train(3, 12, AugmentConfig::contrastive(24));
    let other = Loader::new(pack, None, lc).unwrap();
    assert_ne!(other.batch(0, 0).unwrap(), a[0]);
}

#[test]
fn subset_indices_and_eval_order() {
    let ds = Arc::new(synth_dataset(&cfg(12)).unwrap());
    let sub = datasets::choose_labeled(12, &(0..12).collect::<Vec<_>>(), 5, 3).unwrap();
    let l = Loader::new(ds.clone(), Some(sub.labeled.clone()), LoaderConfig::eval(2)).unwrap();
    let got: Vec<usize> = l.epoch(0).flat_map(|b| b.unwrap().indices).collect();
    assert_eq!(got, sub.labeled, "eval keeps order and includes the partial last batch");
    // Eval without a crop returns the image unchanged in size.
    let b = l.batch(0, 0).unwrap();
    assert_eq!(b.image_shape, [2, 3, 40, 48]);
    assert_eq!(&b.labels[..40 * 48], ds.samples[sub.labeled[0]].label.as_deref().unwrap());
}

#[test]
fn early_drop_stops_the_producer_and_errors_are_reported() {
    let ds = Arc::new(synth_dataset(&cfg(8)).unwrap());
    let l = Loader::new(ds.clone(), None, LoaderConfig::train(1, 0, AugmentConfig::train(16))).unwrap();
    let mut it = l.epoch(0);
    assert!(it.next().unwrap().is_ok());
    drop(it); // must not hang
    assert!(matches!(Loader::new(ds.clone(), Some(vec![99]), LoaderConfig::eval(1)), Err(DatasetError::Config(_))));
    assert!(Loader::new(ds.clone(), Some(vec![]), LoaderConfig::eval(1)).is_err());
    assert!(Loader::new(ds, None, LoaderConfig::eval(0)).is_err());

    // A corrupted record surfaces as an error from the iterator, naming the record.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.pack");
    synth_pack(&path, &cfg(4)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[128 + 40 * 48 * 4 + 5] ^= 0xFF; // record 1's payload
    std::fs::write(&path, &bytes).unwrap();
    let pack = Arc::new(Pack::open(&path).unwrap());
    let l = Loader::new(pack, None, LoaderConfig::eval(1)).unwrap();
    let results: Vec<_> = l.epoch(0).collect();
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err();
    assert!(matches!(err, DatasetError::RecordChecksum { index: 1, .. }), "{err}");
    assert_eq!(results.len(), 2, "the epoch ends after an error");
}

#[test]
fn mixed_sizes_without_crop_is_a_clear_error() {
    let mut ds = synth_dataset(&cfg(2)).unwrap();
    let other = datasets::synth_sample(&SynthConfig { height: 32, ..cfg(1) }, 0).unwrap();
    ds.samples[1] = other;
    let l = Loader::new(Arc::new(ds), None, LoaderConfig::eval(2)).unwrap();
    let err = l.batch(0, 0).unwrap_err();
    assert!(err.to_string().contains("crop"), "{err}");
}
