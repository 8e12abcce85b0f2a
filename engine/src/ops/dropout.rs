//! Dropout (inverted): `y = x * mask` with `mask_i = 0` with probability `p` and `1 / (1 - p)`
//! otherwise, so `E[y] = x`. Backward: `dx = g * mask`.
//!
//! The mask is drawn serially from the engine's seeded [`Rng`] (one `uniform()` per element in
//! row-major order; element `i` is dropped when that draw is `< p`), so a seed fixes the mask
//! whatever the thread count. In eval mode, or with `p == 0`, dropout is the identity: the input
//! is returned as is and the generator is not advanced. Saved for backward: the scaled mask.
//!
//! On `Device::Cuda` (feature `cuda`, f32) the mask is drawn on the host with exactly the same
//! generator calls (so a seed gives the same mask on both devices), uploaded as one byte per
//! element, and applied by `kernels::cuda::elementwise::mask_scale` (`y = keep ? x scale : 0`)
//! forward and backward; the byte mask is what is saved.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Rng, Tensor};
use kernels::cpu::parallel::for_chunks_mut;

const OP: &str = "dropout";

/// In training mode zero each element with probability `p` and scale the rest by `1/(1-p)`;
/// identity in eval mode. Errors: `p` outside `[0, 1)` (or NaN).
pub fn dropout(x: &Tensor, p: f64, training: bool, rng: &mut Rng) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid(OP, format!("drop probability must be in [0, 1), got {p}")));
    }
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = x.device() {
        return on_cuda::dropout(x, p, rng);
    }
    with_dtype!(x.dtype(), T, {
        let xs = x.cpu_slice::<T>(OP)?;
        let keep = T::from_f64(1.0 / (1.0 - p));
        let mask: Vec<T> = (0..xs.len()).map(|_| if rng.uniform() < p { T::ZERO } else { keep }).collect();
        let y = masked::<T>(xs, &mask);
        let out = Tensor::from_cpu(T::wrap(y), x.shape().clone());
        record(OP, &[x], out, || Box::new(DropoutBackward { mask: Tensor::from_cpu(T::wrap(mask), x.shape().clone()) }))
    })
}

/// `v * mask` elementwise, in parallel over fixed chunks.
fn masked<T: Element>(v: &[T], mask: &[T]) -> Vec<T> {
    let mut out = vec![T::ZERO; v.len()];
    for_chunks_mut(&mut out, 8192, |s, ch| {
        for ((o, &a), &m) in ch.iter_mut().zip(&v[s..]).zip(&mask[s..]) {
            *o = a * m;
        }
    });
    out
}

/// Saves the scaled mask.
struct DropoutBackward {
    mask: Tensor,
}

impl Backward for DropoutBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn saved_bytes(&self) -> usize {
        self.mask.nbytes()
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        if g.dims() != self.mask.dims() {
            return Err(Error::shape(OP, format!("gradient {} vs output {}", g.shape(), self.mask.shape())));
        }
        with_dtype!(g.dtype(), T, {
            let dx = masked::<T>(g.cpu_slice::<T>(OP)?, self.mask.cpu_slice::<T>(OP)?);
            Ok(vec![Some(Tensor::from_cpu(T::wrap(dx), self.mask.shape().clone()))])
        })
    }
}

/// The f32 CUDA path: host-drawn byte mask, `mask_scale` on the device.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::OP;
    use crate::cuda::{alloc, buf, wrap};
    use crate::tape::record;
    use crate::{Backward, Error, Result, Rng, Tensor};
    use kernels::cuda::{elementwise::mask_scale, CudaBuf};

    pub(super) fn dropout(x: &Tensor, p: f64, rng: &mut Rng) -> Result<Tensor> {
        let xb = buf(x, OP)?;
        let n = x.numel();
        // The same draws, in the same order, as the CPU path: element i is dropped when u_i < p.
        let keep: Vec<u8> = (0..n).map(|_| u8::from(rng.uniform() >= p)).collect();
        let keep = xb.device().upload(&keep)?;
        let scale = (1.0 / (1.0 - p)) as f32;
        let mut y = alloc(xb.device(), n)?;
        mask_scale(xb, &keep, &mut y, n, scale)?;
        let out = wrap(y, x.dims().to_vec());
        record(OP, &[x], out, || Box::new(DropoutBackward { keep, scale, dims: x.dims().to_vec() }))
    }

    /// Saves the byte mask (1 = kept) and the scale `1 / (1 - p)`.
    struct DropoutBackward {
        keep: CudaBuf,
        scale: f32,
        dims: Vec<usize>,
    }

    impl Backward for DropoutBackward {
        fn name(&self) -> &'static str {
            OP
        }
        fn saved_bytes(&self) -> usize {
            self.keep.bytes()
        }
        fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
            if !needs[0] {
                return Ok(vec![None]);
            }
            if g.dims() != self.dims.as_slice() {
                return Err(Error::shape(OP, format!("gradient {} vs output {:?}", g.shape(), self.dims)));
            }
            let gb = buf(g, OP)?;
            let mut dx = alloc(gb.device(), g.numel())?;
            mask_scale(gb, &self.keep, &mut dx, g.numel(), self.scale)?;
            Ok(vec![Some(wrap(dx, self.dims.clone()))])
        }
    }
}
