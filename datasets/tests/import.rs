//! Importers on tiny generated VOC / Cityscapes / folder trees, including every bad-input case.

use std::fs;
use std::path::Path;

use datasets::import::{
    cityscapes_items, class_names_from_list, folder_items, read_class_file, voc_items, voc_palette, write_pack,
    CityscapesLabels, CityscapesOptions, FolderOptions, UnknownLabels, VocLabels, VocOptions,
};
use datasets::{DatasetError, Pack, Rng};

fn rgb(h: u32, w: u32, seed: u64) -> image::RgbImage {
    let mut r = Rng::new(seed);
    image::RgbImage::from_fn(w, h, |_, _| image::Rgb([r.below(256) as u8, r.below(256) as u8, r.below(256) as u8]))
}

fn save_png_rgb(path: &Path, img: &image::RgbImage) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

fn save_jpeg(path: &Path, img: &image::RgbImage) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, image::ImageFormat::Jpeg).unwrap();
}

/// A label PNG holding `values` raw: palette-indexed (VOC style) or 8-bit grey.
fn save_label(path: &Path, h: u32, w: u32, values: &[u8], palette: bool) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    if palette {
        enc.set_color(png::ColorType::Indexed);
        enc.set_palette((0..256 * 3).map(|i| (i * 7 % 256) as u8).collect::<Vec<u8>>());
    } else {
        enc.set_color(png::ColorType::Grayscale);
    }
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(values).unwrap();
}

fn labels(h: usize, w: usize, seed: u64, allowed: &[u8]) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..h * w).map(|_| allowed[r.below(allowed.len())]).collect()
}

/// Builds a VOC tree with `ids`; returns each id's label values.
fn voc_tree(root: &Path, ids: &[&str], aug: bool) -> Vec<Vec<u8>> {
    let base = root.join("VOCdevkit/VOC2012");
    let mut out = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let (h, w) = (10 + k as u32, 12);
        save_jpeg(&base.join(format!("JPEGImages/{id}.jpg")), &rgb(h, w, k as u64));
        let l = labels(h as usize, w as usize, k as u64, &[0, 1, 15, 20, 255]);
        let dir = if aug { "SegmentationClassAug" } else { "SegmentationClass" };
        save_label(&base.join(format!("{dir}/{id}.png")), h, w, &l, !aug);
        out.push(l);
    }
    let sets = base.join("ImageSets/Segmentation");
    fs::create_dir_all(&sets).unwrap();
    fs::write(sets.join("train.txt"), ids.join("\n") + "\n").unwrap();
    out
}

#[test]
fn voc_round_trip_palette_and_aug_labels() {
    for aug in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let ids = ["2007_000032", "2007_000039", "2008_000001"];
        let want = voc_tree(dir.path(), &ids, aug);
        let opts = VocOptions { labels: if aug { VocLabels::Aug } else { VocLabels::Class }, ..Default::default() };
        // Works from the VOCdevkit folder as well as from VOC2012 itself.
        let plan = voc_items(&dir.path().join("VOCdevkit"), "train", &opts).unwrap();
        let out = dir.path().join("voc.pack");
        let mut calls = Vec::new();
        let mut cb = |d: usize, t: usize| calls.push((d, t));
        write_pack(&plan, &out, Some(&mut cb)).unwrap();
        assert_eq!(calls.last(), Some(&(3, 3)));
        assert_eq!(calls.len(), 3);
        let pack = Pack::open(&out).unwrap();
        assert_eq!(pack.num_classes(), 21);
        assert_eq!(pack.class_names()[15], "person");
        for (k, id) in ids.iter().enumerate() {
            let r = pack.record(k).unwrap();
            assert_eq!(r.name, *id);
            assert_eq!((r.height, r.width), (10 + k, 12));
            assert_eq!(r.label.unwrap(), want[k].as_slice(), "labels are raw palette indices");
        }
    }
}

#[test]
fn voc_bad_inputs_name_the_file_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    voc_tree(dir.path(), &["a", "b"], false);
    let base = dir.path().join("VOCdevkit/VOC2012");
    let sets = base.join("ImageSets/Segmentation");
    let opts = VocOptions::default();

    // A list entry with no image.
    fs::write(sets.join("missing.txt"), "a\nghost\n").unwrap();
    let err = voc_items(&base, "missing", &opts).unwrap_err();
    assert!(matches!(&err, DatasetError::MissingImage { index: 1, name, .. } if name == "ghost"), "{err}");
    assert!(err.to_string().contains("missing.txt") && err.to_string().contains("ghost.jpg"), "{err}");

    // An empty split.
    fs::write(sets.join("empty.txt"), "\n\n").unwrap();
    let err = voc_items(&base, "empty", &opts).unwrap_err();
    assert!(matches!(err, DatasetError::EmptySplit { .. }) && err.to_string().contains("empty.txt"), "{err}");

    // A label value that is neither a class nor void.
    save_label(&base.join("SegmentationClass/b.png"), 11, 12, &[30; 132], true);
    let plan = voc_items(&base, "train", &opts).unwrap();
    let err = write_pack(&plan, &dir.path().join("x.pack"), None).unwrap_err();
    assert!(matches!(err, DatasetError::LabelOutOfRange { value: 30, index: 1, .. }), "{err}");
    assert!(err.to_string().contains("b.png"), "{err}");
    assert!(!dir.path().join("x.pack").exists(), "a failed import leaves no pack");

    // Image and label of different sizes.
    save_label(&base.join("SegmentationClass/b.png"), 5, 12, &[0; 60], true);
    let err = write_pack(&plan, &dir.path().join("x.pack"), None).unwrap_err();
    assert!(matches!(err, DatasetError::SizeMismatch { .. }) && err.to_string().contains("b.png"), "{err}");

    // An unreadable JPEG.
    fs::write(base.join("JPEGImages/a.jpg"), b"\xFF\xD8\xFFnot really a jpeg").unwrap();
    let err = write_pack(&plan, &dir.path().join("x.pack"), None).unwrap_err();
    assert!(matches!(err, DatasetError::Decode { .. }) && err.to_string().contains("a.jpg"), "{err}");
    // And an unreadable PNG label.
    save_jpeg(&base.join("JPEGImages/a.jpg"), &rgb(10, 12, 0));
    fs::write(base.join("SegmentationClass/a.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    let err = write_pack(&plan, &dir.path().join("x.pack"), None).unwrap_err();
    assert!(matches!(err, DatasetError::Decode { .. }) && err.to_string().contains("a.png"), "{err}");
}

fn city_tree(root: &Path, split: &str, files: &[(&str, &str, Vec<u8>)], train_ids: bool) {
    for (city, stem, vals) in files {
        save_png_rgb(&root.join(format!("leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")), &rgb(4, 6, 1));
        let kind = if train_ids { "labelTrainIds" } else { "labelIds" };
        save_label(&root.join(format!("gtFine/{split}/{city}/{stem}_gtFine_{kind}.png")), 4, 6, vals, false);
    }
}

#[test]
fn cityscapes_maps_label_ids_to_train_ids() {
    let dir = tempfile::tempdir().unwrap();
    let raw: Vec<u8> = vec![7, 8, 26, 33, 0, 1, 4, 255, 24, 11, 23, 9, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 31];
    city_tree(
        dir.path(),
        "val",
        &[("zurich", "zurich_000001_000019", raw.clone()), ("aachen", "aachen_000000_000019", raw.clone())],
        false,
    );
    let plan = cityscapes_items(dir.path(), "val", &CityscapesOptions::default()).unwrap();
    assert_eq!(plan.items[0].name, "aachen_000000_000019", "sorted by city");
    let out = dir.path().join("c.pack");
    write_pack(&plan, &out, None).unwrap();
    let pack = Pack::open(&out).unwrap();
    assert_eq!(pack.num_classes(), 19);
    let l = pack.record(0).unwrap().label.unwrap().to_vec();
    let expect: Vec<u8> = vec![0, 1, 13, 18, 255, 255, 255, 255, 11, 2, 10, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16];
    assert_eq!(l, expect);

    // Identity option keeps the 34 label ids.
    let opts = CityscapesOptions { labels: CityscapesLabels::LabelIds, ..Default::default() };
    let plan = cityscapes_items(dir.path(), "val", &opts).unwrap();
    write_pack(&plan, &out, None).unwrap();
    let pack = Pack::open(&out).unwrap();
    assert_eq!(pack.num_classes(), 34);
    assert_eq!(pack.record(1).unwrap().label.unwrap(), raw.as_slice());

    // Empty split.
    fs::create_dir_all(dir.path().join("leftImg8bit/test/bonn")).unwrap();
    let err = cityscapes_items(dir.path(), "test", &CityscapesOptions::default()).unwrap_err();
    assert!(matches!(err, DatasetError::EmptySplit { .. }), "{err}");
}

#[test]
fn cityscapes_prefers_train_id_files() {
    let dir = tempfile::tempdir().unwrap();
    let vals: Vec<u8> = (0..24).map(|i| (i % 19) as u8).collect();
    city_tree(dir.path(), "train", &[("bonn", "bonn_000000_000019", vals.clone())], true);
    let plan = cityscapes_items(dir.path(), "train", &CityscapesOptions::default()).unwrap();
    assert!(plan.label_map.is_none());
    let out = dir.path().join("t.pack");
    write_pack(&plan, &out, None).unwrap();
    assert_eq!(Pack::open(&out).unwrap().record(0).unwrap().label.unwrap(), vals.as_slice());
}

#[test]
fn folder_pairs_by_stem_and_reports_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let (im, mk) = (dir.path().join("images"), dir.path().join("masks"));
    save_png_rgb(&im.join("b.png"), &rgb(3, 3, 1));
    save_jpeg(&im.join("a.jpg"), &rgb(2, 5, 2));
    save_label(&mk.join("a.png"), 2, 5, &[0, 1, 2, 255, 0, 1, 2, 2, 1, 0], false);
    save_label(&mk.join("b.png"), 3, 3, &[2; 9], true);
    let opts = FolderOptions {
        class_names: vec!["x".into(), "y".into(), "z".into()],
        ignore_index: 255,
        allow_unlabeled: false,
    };
    let plan = folder_items(&im, &mk, &opts).unwrap();
    let out = dir.path().join("f.pack");
    write_pack(&plan, &out, None).unwrap();
    let pack = Pack::open(&out).unwrap();
    assert_eq!(pack.info(0).unwrap().name, "a");
    assert_eq!(pack.record(0).unwrap().label.unwrap()[3], 255);
    assert_eq!(pack.record(1).unwrap().label.unwrap(), &[2; 9]);

    // An image without a mask: error, or an unlabeled record when allowed.
    save_png_rgb(&im.join("c.png"), &rgb(2, 2, 3));
    let err = folder_items(&im, &mk, &opts).unwrap_err();
    assert!(matches!(&err, DatasetError::MissingLabel { name, .. } if name == "c"), "{err}");
    let plan = folder_items(&im, &mk, &FolderOptions { allow_unlabeled: true, ..opts.clone() }).unwrap();
    write_pack(&plan, &out, None).unwrap();
    let pack = Pack::open(&out).unwrap();
    assert_eq!((pack.len(), pack.num_labeled()), (3, 2));

    // A mask without an image.
    save_label(&mk.join("d.png"), 2, 2, &[0; 4], false);
    let err = folder_items(&im, &mk, &opts).unwrap_err();
    assert!(matches!(&err, DatasetError::MissingImage { name, .. } if name == "d"), "{err}");
    assert!(err.to_string().contains("masks"), "{err}");
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A VOC-layout tree whose labels hold 0..3 and 255 (a dataset of one's own, 3 classes).
fn own_voc_tree(root: &Path, ids: &[&str]) -> Vec<Vec<u8>> {
    let base = root.join("VOC2012");
    let mut out = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        save_jpeg(&base.join(format!("JPEGImages/{id}.jpg")), &rgb(6, 8, k as u64));
        let l = labels(6, 8, k as u64, &[0, 1, 2, 255]);
        save_label(&base.join(format!("SegmentationClass/{id}.png")), 6, 8, &l, true);
        out.push(l);
    }
    fs::create_dir_all(base.join("ImageSets/Segmentation")).unwrap();
    fs::write(base.join("ImageSets/Segmentation/train.txt"), ids.join("\n")).unwrap();
    out
}

#[test]
fn voc_layout_with_own_classes() {
    let dir = tempfile::tempdir().unwrap();
    let want = own_voc_tree(dir.path(), &["x", "y"]);
    let opts = VocOptions { class_names: Some(names(&["sea", "sand", "rock"])), ..Default::default() };
    let plan = voc_items(dir.path(), "train", &opts).unwrap();
    let out = dir.path().join("own.pack");
    let summary = write_pack(&plan, &out, None).unwrap();
    assert_eq!(summary.unknown_to_ignore, 0);
    let pack = Pack::open(&out).unwrap();
    assert_eq!(pack.class_names(), names(&["sea", "sand", "rock"]).as_slice());
    assert_eq!(pack.palette().unwrap(), voc_palette().as_slice(), "own classes get the VOC colour map");
    assert_eq!(pack.record(1).unwrap().label.unwrap(), want[1].as_slice());

    // A value outside the 3 classes: an error naming the file and the value ...
    let base = dir.path().join("VOC2012");
    let mut bad = want[1].clone();
    bad[5] = 7;
    bad[9] = 3;
    save_label(&base.join("SegmentationClass/y.png"), 6, 8, &bad, true);
    let err = write_pack(&plan, &dir.path().join("bad.pack"), None).unwrap_err();
    assert!(matches!(err, DatasetError::LabelOutOfRange { value: 7, index: 1, x: 5, y: 0, .. }), "{err}");
    assert!(err.to_string().contains("y.png") && err.to_string().contains("label value 7"), "{err}");
    assert!(!dir.path().join("bad.pack").exists());
    // ... or, asked for, the ignore value.
    let mut plan = plan;
    plan.unknown_labels = UnknownLabels::Ignore;
    let summary = write_pack(&plan, &dir.path().join("ign.pack"), None).unwrap();
    assert_eq!(summary.unknown_to_ignore, 2);
    let pack = Pack::open(dir.path().join("ign.pack")).unwrap();
    let l = pack.record(1).unwrap().label.unwrap().to_vec();
    let mut expect = want[1].clone();
    expect[5] = 255;
    expect[9] = 255;
    assert_eq!(l, expect, "only the unknown pixels change");
}

#[test]
fn class_lists_are_checked_and_files_read_sensibly() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("names.txt");
    fs::write(&f, "\u{feff}# my classes\r\nbackground\r\n\r\n  road surface  \n# a comment\ncar\n\n").unwrap();
    assert_eq!(read_class_file(&f).unwrap(), names(&["background", "road surface", "car"]));

    fs::write(&f, "# nothing but comments\n\n").unwrap();
    let err = read_class_file(&f).unwrap_err().to_string();
    assert!(err.contains("names.txt") && err.contains("empty"), "{err}");
    let err = read_class_file(&dir.path().join("nope.txt")).unwrap_err().to_string();
    assert!(err.contains("nope.txt"), "{err}");
    fs::write(&f, "a\nb\na\n").unwrap();
    let err = read_class_file(&f).unwrap_err().to_string();
    assert!(err.contains("names.txt") && err.contains("\"a\" is listed twice"), "{err}");

    assert!(class_names_from_list(names(&[""]), "--classes").unwrap_err().to_string().contains("empty"));
    let err = class_names_from_list(names(&["a", "", "b"]), "--classes").unwrap_err().to_string();
    assert!(err.contains("--classes") && err.contains("class 1 has an empty name"), "{err}");
    let err = class_names_from_list(names(&["a\tb"]), "--classes").unwrap_err().to_string();
    assert!(err.contains("control character"), "{err}");
    let many: Vec<String> = (0..256).map(|k| format!("c{k}")).collect();
    assert!(class_names_from_list(many, "--classes").unwrap_err().to_string().contains("at most 255"));
    assert_eq!(class_names_from_list(names(&[" a", "b "]), "--classes").unwrap(), names(&["a", "b"]));
}

#[test]
fn cityscapes_own_classes_name_train_ids_or_label_ids() {
    let dir = tempfile::tempdir().unwrap();
    // Custom train ids 0..3 (e.g. from an own labels.py) plus void.
    let vals: Vec<u8> = (0..24).map(|i| [0u8, 1, 2, 255][i % 4]).collect();
    city_tree(dir.path(), "train", &[("bonn", "bonn_000000_000019", vals.clone())], true);
    let own = names(&["flat", "thing", "sky"]);
    let opts = CityscapesOptions { class_names: Some(own.clone()), ..Default::default() };
    let plan = cityscapes_items(dir.path(), "train", &opts).unwrap();
    let out = dir.path().join("t.pack");
    write_pack(&plan, &out, None).unwrap();
    let pack = Pack::open(&out).unwrap();
    assert_eq!(pack.class_names(), own.as_slice());
    assert_eq!(pack.record(0).unwrap().label.unwrap(), vals.as_slice());
    // Two names for three train ids: id 2 is unknown.
    let opts = CityscapesOptions { class_names: Some(names(&["flat", "thing"])), ..Default::default() };
    let plan = cityscapes_items(dir.path(), "train", &opts).unwrap();
    let err = write_pack(&plan, &out, None).unwrap_err();
    assert!(matches!(err, DatasetError::LabelOutOfRange { value: 2, .. }), "{err}");
    assert!(err.to_string().contains("labelTrainIds.png"), "{err}");

    // labelIds through the official table: at most 19 names; identity names the raw ids.
    let raw: Vec<u8> = vec![7; 24];
    city_tree(dir.path(), "val", &[("ulm", "ulm_000000_000019", raw.clone())], false);
    let twenty: Vec<String> = (0..20).map(|k| format!("c{k}")).collect();
    let opts = CityscapesOptions { class_names: Some(twenty.clone()), ..Default::default() };
    let err = cityscapes_items(dir.path(), "val", &opts).unwrap_err().to_string();
    assert!(err.contains("only 19 train ids") && err.contains("identity"), "{err}");
    let opts = CityscapesOptions { labels: CityscapesLabels::LabelIds, class_names: Some(twenty) };
    let plan = cityscapes_items(dir.path(), "val", &opts).unwrap();
    write_pack(&plan, &out, None).unwrap();
    let pack = Pack::open(&out).unwrap();
    assert_eq!((pack.num_classes(), pack.class_names()[7].as_str()), (20, "c7"));
    assert_eq!(pack.record(0).unwrap().label.unwrap(), raw.as_slice());
}
