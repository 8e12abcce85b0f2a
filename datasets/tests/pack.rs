//! Pack format: round trip, validation on open, per-record checksums, and never panicking on bad bytes.

use std::path::{Path, PathBuf};

use datasets::pack::format::{Header, HEADER_LEN};
use datasets::{synth_pack, synth_sample, DatasetError, Pack, PackSpec, PackWriter, Sample, SynthConfig};
use quickcheck::{QuickCheck, TestResult};

fn small_cfg(n: usize) -> SynthConfig {
    SynthConfig { num_images: n, height: 24, width: 20, ..SynthConfig::default() }
}

fn write_synth(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("s.pack");
    synth_pack(&path, &small_cfg(n)).unwrap();
    path
}

#[test]
fn round_trip_preserves_every_byte_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_cfg(7);
    let path = dir.path().join("rt.pack");
    let summary = synth_pack(&path, &cfg).unwrap();
    assert_eq!((summary.records, summary.labeled), (7, 7));
    let pack = Pack::open(&path).unwrap();
    assert_eq!(pack.len(), 7);
    assert_eq!(pack.num_classes(), cfg.num_classes);
    assert_eq!(pack.class_names(), cfg.spec().class_names.as_slice());
    assert_eq!(pack.palette().map(|p| p.to_vec()), cfg.spec().palette);
    assert_eq!(pack.ignore_index(), 255);
    assert_eq!(pack.file_len(), std::fs::metadata(&path).unwrap().len());
    for i in 0..7 {
        let want = synth_sample(&cfg, i).unwrap();
        let got = pack.record(i).unwrap();
        assert_eq!(got.name, want.name);
        assert_eq!((got.height, got.width), (want.height, want.width));
        assert_eq!(got.image, want.image.as_slice());
        assert_eq!(got.label, want.label.as_deref());
    }
    pack.verify().unwrap();
    // No temporary files left behind after an atomic finish.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn mixed_sizes_and_unlabeled_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.pack");
    let mut w = PackWriter::create(&path, PackSpec::new(vec!["a".into(), "b".into()])).unwrap();
    let a = Sample { name: "a".into(), height: 3, width: 5, image: (0..45).collect(), label: Some(vec![1; 15]) };
    let b = Sample { name: "b".into(), height: 2, width: 1, image: vec![9; 6], label: None };
    let c = Sample { name: "c".into(), height: 1, width: 1, image: vec![1, 2, 3], label: Some(vec![255]) };
    for s in [&a, &b, &c] {
        w.push(&s.view()).unwrap();
    }
    w.finish().unwrap();
    let p = Pack::open(&path).unwrap();
    assert_eq!((p.len(), p.num_labeled()), (3, 2));
    assert!(!p.info(1).unwrap().labeled);
    assert_eq!(p.record(1).unwrap().label, None);
    assert_eq!(p.record(0).unwrap().image, a.image.as_slice());
    assert_eq!(p.record(2).unwrap().label, Some(&[255u8][..]));
    assert!(matches!(p.record(3), Err(DatasetError::IndexOutOfRange { index: 3, .. })));
}

#[test]
fn empty_pack_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.pack");
    PackWriter::create(&path, PackSpec::new(vec!["x".into()])).unwrap().finish().unwrap();
    assert!(Pack::open(&path).unwrap().is_empty());
}

#[test]
fn writer_rejects_bad_records_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.pack");
    let mut w = PackWriter::create(&path, PackSpec::new(vec!["a".into(), "b".into()])).unwrap();
    let out_of_range =
        Sample { name: "img7".into(), height: 2, width: 2, image: vec![0; 12], label: Some(vec![0, 1, 2, 255]) };
    let err = w.push(&out_of_range.view()).unwrap_err();
    assert!(matches!(err, DatasetError::LabelOutOfRange { value: 2, x: 0, y: 1, .. }), "{err}");
    assert!(err.to_string().contains("img7") && err.to_string().contains("bad.pack"), "{err}");
    let mismatch = Sample { name: "img8".into(), height: 2, width: 2, image: vec![0; 12], label: Some(vec![0; 6]) };
    let err = w.push(&mismatch.view()).unwrap_err();
    assert!(matches!(err, DatasetError::SizeMismatch { .. }) && err.to_string().contains("img8"), "{err}");
    // Dropping an unfinished writer leaves nothing behind, not even the temporary file.
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Ignore colliding with a class is refused up front.
    let spec = PackSpec { ignore_index: 1, ..PackSpec::new(vec!["a".into(), "b".into()]) };
    assert!(matches!(PackWriter::create(&path, spec), Err(DatasetError::Config(_))));
}

#[test]
fn truncated_pack_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_synth(dir.path(), 3);
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 5, 100, HEADER_LEN + 10, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = Pack::open(&path).unwrap_err();
        assert!(matches!(err, DatasetError::Truncated { .. }), "cut {cut}: {err}");
        assert!(err.to_string().contains("s.pack"));
    }
}

#[test]
fn wrong_magic_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_synth(dir.path(), 2);
    let good = std::fs::read(&path).unwrap();
    let mut b = good.clone();
    b[0] = b'X';
    std::fs::write(&path, &b).unwrap();
    assert!(matches!(Pack::open(&path), Err(DatasetError::BadMagic { .. })));
    let mut b = good.clone();
    b[8] = 99; // version field
    std::fs::write(&path, &b).unwrap();
    let err = Pack::open(&path).unwrap_err();
    assert!(matches!(err, DatasetError::BadVersion { found: 99, .. }), "{err}");
}

#[test]
fn flipped_metadata_byte_fails_the_header_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_synth(dir.path(), 3);
    let good = std::fs::read(&path).unwrap();
    let h: Header = bytemuck::pod_read_unaligned(&good[..HEADER_LEN]);
    // A byte in a record's name (inside the index region, not a bounds field) and a reserved header byte.
    for pos in [h.index_offset as usize + 32 * 3 + 2, 100] {
        let mut b = good.clone();
        b[pos] ^= 0x40;
        std::fs::write(&path, &b).unwrap();
        let err = Pack::open(&path).unwrap_err();
        assert!(matches!(err, DatasetError::HeaderChecksum { .. }), "pos {pos}: {err}");
    }
}

/// Opening never reads payload: a corrupted payload byte goes unnoticed by `open` and is reported,
/// with the record's index and name, when that record (and only that one) is read.
#[test]
fn corrupted_payload_opens_but_record_read_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_synth(dir.path(), 4);
    let mut b = std::fs::read(&path).unwrap();
    let pack = Pack::open(&path).unwrap();
    let rec2 = pack.info(2).unwrap();
    let name = rec2.name.to_string();
    drop(pack);
    let rec_len = 24 * 20 * 4;
    let pos = HEADER_LEN + 2 * rec_len + 17;
    b[pos] ^= 1;
    std::fs::write(&path, &b).unwrap();
    let pack = Pack::open(&path).expect("open must not read payloads");
    assert!(pack.record(1).is_ok() && pack.record(3).is_ok());
    let err = pack.record(2).unwrap_err();
    assert!(matches!(err, DatasetError::RecordChecksum { index: 2, .. }), "{err}");
    assert!(err.to_string().contains(&name) && err.to_string().contains("s.pack"), "{err}");
    assert!(matches!(pack.verify(), Err(DatasetError::RecordChecksum { index: 2, .. })));
}

/// A large sparse file: open must cost O(index) even when the payload area is 10 GB of holes.
/// (Writes only the header and index, so the test is cheap on any filesystem with sparse files.)
#[test]
fn opening_a_10gb_sparse_pack_reads_only_metadata() {
    use datasets::pack::format::*;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.pack");
    let side = 8192u32;
    let rec = side as u64 * side as u64 * 4;
    let n = (10u64 << 30) / rec + 1; // just over 10 GiB of payload
    let mut meta = Vec::new();
    let mut entries = Vec::new();
    for i in 0..n {
        entries.push(RecordEntry {
            offset: HEADER_LEN as u64 + i * rec,
            height: side,
            width: side,
            flags: FLAG_LABELED,
            crc: 0,
            name_offset: 0,
            name_len: 0,
        });
    }
    meta.extend_from_slice(bytemuck::cast_slice(&entries));
    let classes = encode_class_names(&["bg".to_string()]);
    meta.extend_from_slice(&classes);
    let index_offset = HEADER_LEN as u64 + n * rec;
    let mut h = Header {
        magic: MAGIC,
        version: FORMAT_VERSION,
        header_len: HEADER_LEN as u32,
        num_records: n,
        num_labeled: n,
        num_classes: 1,
        ignore_index: 255,
        index_offset,
        record_names_len: 0,
        class_names_len: classes.len() as u64,
        palette_len: 0,
        file_len: index_offset + meta.len() as u64,
        meta_crc: 0,
        reserved0: 0,
        reserved: [0; 5],
    };
    h.meta_crc = meta_crc(&h, &meta);
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(bytemuck::bytes_of(&h)).unwrap();
    f.seek(SeekFrom::Start(index_offset)).unwrap();
    f.write_all(&meta).unwrap();
    drop(f);
    let t = std::time::Instant::now();
    let pack = Pack::open(&path).unwrap();
    let took = t.elapsed();
    assert_eq!(pack.len() as u64, n);
    assert!(pack.file_len() > 10 << 30);
    // Not a timing assertion on speed, just a guard against accidentally reading 10 GB (minutes).
    assert!(took.as_secs() < 20, "open took {took:?}");
}

fn check_no_panic(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.pack");
    std::fs::write(&path, bytes).unwrap();
    if let Ok(p) = Pack::open(&path) {
        for i in 0..p.len().min(16) + 1 {
            let _ = p.info(i);
            let _ = p.record(i);
        }
        let _ = p.verify();
    }
}

#[test]
fn quickcheck_random_bytes_never_panic() {
    fn prop(mut bytes: Vec<u8>, with_magic: bool) -> TestResult {
        if with_magic && bytes.len() >= 12 {
            bytes[..8].copy_from_slice(&datasets::pack::MAGIC);
            bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        }
        check_no_panic(&bytes);
        TestResult::passed()
    }
    QuickCheck::new().tests(300).quickcheck(prop as fn(Vec<u8>, bool) -> TestResult);
}

#[test]
fn quickcheck_mutated_valid_pack_never_panics_and_detects_changes() {
    static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    GOOD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::read(write_synth(dir.path(), 3)).unwrap()
    });
    fn prop(muts: Vec<(usize, u8)>, cut: Option<usize>) -> TestResult {
        let good = GOOD.get().unwrap();
        let mut b = good.clone();
        let mut changed = false;
        for (pos, x) in muts.iter().take(8) {
            let p = pos % b.len();
            changed |= *x != 0;
            b[p] ^= x;
        }
        if let Some(c) = cut {
            let c = c % (b.len() + 1);
            changed |= c < b.len();
            b.truncate(c);
        }
        check_no_panic(&b);
        // Any real change must be caught by open or by verify (CRCs detect all 1-8 byte XORs).
        if changed && b != *good {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("m.pack");
            std::fs::write(&p, &b).unwrap();
            let detected = Pack::open(&p).and_then(|pk| pk.verify()).is_err();
            return TestResult::from_bool(detected);
        }
        TestResult::passed()
    }
    QuickCheck::new().tests(300).quickcheck(prop as fn(Vec<(usize, u8)>, Option<usize>) -> TestResult);
}
