//! Gradient checking: analytic gradients from the tape against central finite differences.
//!
//! For an op `f` and fixed random weights `R` (same shape as `f(x)`), the scalar
//! `L(x) = sum(f(x) * R)` has gradient `dL/dx = backward(f, seed = R)`. For a sample of input
//! coordinates we compare that with `(L(x + h e_i) - L(x - h e_i)) / 2h` in f64. A wrong factor, a
//! transposed index or a missing term shows up far above the `O(h^2)` truncation error.

use crate::{DType, Rng, Tape, Tensor};

/// Settings for [`check`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Finite-difference step.
    pub eps: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// At most this many coordinates per input are perturbed (chosen at random).
    pub max_coords: usize,
    /// Seed for `R` and the coordinate sample.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { eps: 1e-6, rtol: 1e-5, atol: 1e-7, max_coords: 48, seed: 0x5eed }
    }
}

/// Check `f` at `inputs` (all f64 CPU tensors, each treated as differentiable).
/// Returns a description of the worst mismatch on failure.
pub fn check<F>(f: F, inputs: &[Tensor], cfg: &Config) -> Result<(), String>
where
    F: Fn(&[Tensor]) -> crate::Result<Tensor>,
{
    for (i, x) in inputs.iter().enumerate() {
        if x.dtype() != DType::F64 {
            return Err(format!("input {i} must be f64 for a gradient check"));
        }
    }
    let tape = Tape::new();
    let watched: Vec<Tensor> = inputs.iter().map(|x| tape.watch(x)).collect();
    let out = f(&watched).map_err(|e| format!("forward failed: {e}"))?;
    let mut rng = Rng::new(cfg.seed);
    let r = Tensor::randn(out.shape().clone(), 1.0, DType::F64, &mut rng);
    let rv = r.to_vec_f64().unwrap();
    let grads = if out.is_tracked() {
        Some(tape.backward_with(&out, &r).map_err(|e| format!("backward failed: {e}"))?)
    } else {
        None
    };
    let loss = |xs: &[Tensor]| -> Result<f64, String> {
        let o = f(xs).map_err(|e| format!("forward failed: {e}"))?;
        Ok(o.to_vec_f64().unwrap().iter().zip(&rv).map(|(a, b)| a * b).sum())
    };
    for (i, x) in inputs.iter().enumerate() {
        let analytic = match grads.as_ref().and_then(|g| g.get(&watched[i])) {
            Some(g) => {
                if g.dims() != x.dims() {
                    return Err(format!("input {i}: gradient shape {:?} != input shape {:?}", g.dims(), x.dims()));
                }
                g.to_vec_f64().unwrap()
            }
            None => vec![0.0; x.numel()],
        };
        let n = x.numel();
        let coords: Vec<usize> =
            if n <= cfg.max_coords { (0..n).collect() } else { (0..cfg.max_coords).map(|_| rng.below(n)).collect() };
        let base = x.to_vec_f64().unwrap();
        for &c in &coords {
            let eval = |delta: f64| -> Result<f64, String> {
                let mut v = base.clone();
                v[c] += delta;
                let mut xs: Vec<Tensor> = inputs.to_vec();
                xs[i] = Tensor::from_f64_vec(v, x.shape().clone(), DType::F64);
                loss(&xs)
            };
            let numeric = (eval(cfg.eps)? - eval(-cfg.eps)?) / (2.0 * cfg.eps);
            let a = analytic[c];
            let tol = cfg.atol + cfg.rtol * a.abs().max(numeric.abs());
            if (a - numeric).abs() > tol || !a.is_finite() {
                return Err(format!(
                    "input {i} (shape {:?}) coordinate {c}: analytic {a:.10e} vs numeric {numeric:.10e} (tol {tol:.2e})",
                    x.dims()
                ));
            }
        }
    }
    Ok(())
}
