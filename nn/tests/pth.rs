//! PyTorch zip checkpoints written by PyTorch itself (`tests/fixtures/torch/gen_pth.py`) read
//! back tensor for tensor: names, shapes and values against what PyTorch reported in the JSON
//! beside each file.

use nn::{read_pth, StateValue};
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name)
}

fn expected(name: &str) -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str::<Value>(&text).unwrap().as_object().unwrap().clone()
}

fn values(v: &StateValue) -> Vec<f64> {
    match v {
        StateValue::Float(t) => t.to_vec_f64().unwrap(),
        StateValue::Count(c) => vec![*c as f64],
    }
}

#[test]
fn a_torchvision_layout_state_dict_reads_exactly() {
    let f = read_pth(fixture("resnet18-w0.125.pth")).unwrap();
    let want = expected("resnet18-w0.125.json");
    assert_eq!(f.wrapped_in, None);
    assert!(f.skipped.is_empty(), "{:?}", f.skipped);
    let names: Vec<&String> = f.tensors.keys().collect();
    let mut want_names: Vec<&String> = want.keys().collect();
    want_names.sort();
    assert_eq!(names, want_names);
    for (name, w) in &want {
        let got = &f.tensors[name];
        let shape: Vec<usize> = w["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(got.dims(), shape, "{name}");
        let v = values(got);
        let sum: f64 = v.iter().sum();
        let sq: f64 = v.iter().map(|x| x * x).sum();
        // The values are f32: the sums agree to f32 rounding of the elements, summed in f64.
        assert!((sum - w["sum"].as_f64().unwrap()).abs() < 1e-9 * (1.0 + sq), "{name}: sum {sum} vs {}", w["sum"]);
        assert!((sq - w["sum_sq"].as_f64().unwrap()).abs() < 1e-9 * (1.0 + sq), "{name}: sum of squares");
        if name.ends_with("num_batches_tracked") {
            assert!(matches!(got, StateValue::Count(17)), "{name}: {got:?}");
        }
    }
    assert!(f.tensors.contains_key("layer4.1.bn2.running_var") && f.tensors.contains_key("fc.weight"));
}

#[test]
fn views_shared_storages_and_every_dtype() {
    let f = read_pth(fixture("misc.pth")).unwrap();
    assert_eq!(f.wrapped_in.as_deref(), Some("state_dict"));
    let want = expected("misc.json");
    for (name, w) in &want {
        if name == "indices" {
            continue; // an int64 vector: skipped, see below
        }
        let expect: Vec<f64> = w["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let got = values(&f.tensors[name]);
        assert_eq!(got.len(), expect.len(), "{name}");
        for (a, b) in got.iter().zip(&expect) {
            // f16 / bf16 widen exactly; f32 and f64 are exact.
            assert_eq!(a, b, "{name}: {got:?} vs {expect:?}");
        }
    }
    assert_eq!(values(&f.tensors["transposed"]), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert!(matches!(f.tensors["count"], StateValue::Count(42)));
    assert!(matches!(&f.tensors["double"], StateValue::Float(t) if t.dtype() == engine::DType::F64));
    assert_eq!(f.skipped.len(), 1, "{:?}", f.skipped);
    assert_eq!(f.skipped[0].0, "indices");
}

#[test]
fn foreign_and_damaged_files_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = |bytes: &[u8]| {
        let p = tmp.path().join("x.pth");
        std::fs::write(&p, bytes).unwrap();
        let e = read_pth(&p).unwrap_err().to_string();
        assert!(e.contains("x.pth"), "names the file: {e}");
        e
    };
    assert!(msg(b"hello, not a checkpoint").contains("not a PyTorch zip checkpoint"));
    assert!(msg(&[0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc]).contains("legacy"));
    let full = std::fs::read(fixture("misc.pth")).unwrap();
    // Truncated: the end record is gone.
    assert!(msg(&full[..full.len() / 2]).contains("not a PyTorch zip checkpoint"));
    // Some other file (the JSON beside the fixture).
    let st = std::fs::read(fixture("resnet18-w0.125.json")).unwrap();
    assert!(msg(&st).contains("not a PyTorch zip checkpoint"));
    let missing = read_pth(tmp.path().join("nope.pth")).unwrap_err().to_string();
    assert!(missing.contains("nope.pth") && missing.contains("cannot read"), "{missing}");
}
