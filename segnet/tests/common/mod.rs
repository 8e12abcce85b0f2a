//! Helpers shared by the end-to-end tests that drive the `segnet` binary.

use std::process::{Command, Output};

/// Run the `segnet` binary with `args`.
pub fn segnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segnet")).args(args).output().expect("run segnet")
}

/// Assert the run succeeded; its stdout.
pub fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "segnet failed ({:?})\nstdout:\n{out}\nstderr:\n{err}", o.status);
    out.into_owned()
}

/// Assert the run failed with an error mentioning `needle`, and did not panic.
pub fn fails_with(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure, got success; stderr: {err}");
    assert!(err.contains(needle), "error should mention {needle:?}, got: {err}");
    assert!(!err.contains("panicked"), "bad input must not panic: {err}");
}

/// The float tensors of a checkpoint by name (sorted), for bit-exact comparisons of two runs.
#[allow(dead_code)] // not every test file compares checkpoints
pub fn checkpoint_floats(path: &std::path::Path) -> Vec<(String, Vec<f64>)> {
    let x = nn::read_checkpoint(path).unwrap();
    x.model
        .iter()
        .filter_map(|(k, v)| match v {
            nn::StateValue::Float(t) => Some((k.clone(), t.to_vec_f64().unwrap())),
            _ => None,
        })
        .collect()
}
