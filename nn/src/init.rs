//! Weight initialisation, following PyTorch's `torch.nn.init` formulas so models start from the
//! same distributions as their torchvision counterparts. Every function draws from the caller's
//! seeded [`Rng`], so a model built twice from the same seed is identical.

use engine::{DType, Rng, Tensor};

/// PyTorch's `_calculate_fan_in_and_fan_out` for a weight of shape `[out, in/groups, k...]`:
/// `fan_in = in/groups * prod(k)`, `fan_out = out * prod(k)` (note: torch does *not* divide
/// `fan_out` by the groups). Rank-1 weights are treated as `[out]` with fan_in = fan_out = out.
pub fn fans(dims: &[usize]) -> (usize, usize) {
    match dims.len() {
        0 => (1, 1),
        1 => (dims[0], dims[0]),
        _ => {
            let receptive: usize = dims[2..].iter().product();
            (dims[1] * receptive, dims[0] * receptive)
        }
    }
}

/// `kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`, torchvision ResNet's conv init:
/// entries ~ N(0, std^2) with `std = sqrt(2) / sqrt(fan_out)`.
pub fn kaiming_normal_fan_out(dims: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
    let (_, fan_out) = fans(dims);
    let std = (2.0 / fan_out.max(1) as f64).sqrt();
    Tensor::randn(dims.to_vec(), std, dtype, rng)
}

/// `kaiming_uniform_(w, a=sqrt(5))`, PyTorch's default conv/linear weight init:
/// entries ~ U(-b, b) with `b = 1 / sqrt(fan_in)`.
pub fn kaiming_uniform_default(dims: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
    let (fan_in, _) = fans(dims);
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Tensor::rand_uniform(dims.to_vec(), -bound, bound, dtype, rng)
}
