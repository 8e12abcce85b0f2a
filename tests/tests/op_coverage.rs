//! Every op in `engine::ops::ALL` must have a gradient check named `grad_<op>` somewhere in this
//! test crate. Adding an op without one fails here.

use std::fs;
use std::path::Path;

#[test]
fn every_exported_op_has_a_gradient_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut text = String::new();
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "rs") {
            text.push_str(&fs::read_to_string(&p).unwrap());
        }
    }
    let missing: Vec<&str> =
        engine::ops::ALL.iter().copied().filter(|op| !text.contains(&format!("fn grad_{op}()"))).collect();
    assert!(missing.is_empty(), "ops without a gradient check (add `fn grad_<op>()` under tests/tests/): {missing:?}");
}

#[test]
fn op_list_has_no_duplicates() {
    let mut v = engine::ops::ALL.to_vec();
    v.sort();
    let n = v.len();
    v.dedup();
    assert_eq!(n, v.len(), "duplicate names in engine::ops::ALL");
}
