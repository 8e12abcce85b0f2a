//! Max pooling and global average pooling over NCHW tensors.
//!
//! **max_pool2d** (PyTorch `F.max_pool2d`, dilation 1, `ceil_mode = false`): with kernel `k`,
//! stride `s`, padding `p` (padding counts as -inf, so it never wins),
//!
//! ```text
//! OH = floor((H + 2 p_h - k_h) / s_h) + 1                      (likewise OW)
//! y[n, c, oy, ox] = max_{ky < k_h, kx < k_w} x[n, c, oy s_h - p_h + ky, ox s_w - p_w + kx]
//! dx[n, c, a]     = sum_{(oy, ox) : argmax(oy, ox) = a} G[n, c, oy, ox]
//! ```
//! The argmax is the first maximum in row-major window order (ties go to the earliest element);
//! NaN propagates. Saved for backward: the argmax indices as `u32` (index within the plane), not
//! the input. As in PyTorch, `padding <= kernel / 2` is required.
//!
//! **global_avg_pool2d**: `y[n, c, 0, 0] = (1 / HW) sum_{h, w} x[n, c, h, w]`, `dx = G / (HW)`
//! broadcast over the plane. Saves nothing but the input shape.
//!
//! On `Device::Cuda` (feature `cuda`, f32) both run `kernels::cuda::pool` with the same geometry
//! and argmax convention; the max-pool argmax then stays on the device (a `u32` buffer).

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};
use kernels::cpu::pool::{
    global_avg_pool_backward, global_avg_pool_forward, max_pool2d_backward, max_pool2d_forward, Pool2dGeom,
};

fn check_4d(op: &'static str, x: &Tensor) -> Result<()> {
    if x.rank() != 4 {
        return Err(Error::shape(op, format!("input must be 4-D NCHW, got {:?}", x.dims())));
    }
    Ok(())
}

struct MaxPoolBackward {
    argmax: Vec<u32>,
    geom: Pool2dGeom,
    x_shape: Shape,
}

impl Backward for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }
    fn saved_bytes(&self) -> usize {
        self.argmax.len() * std::mem::size_of::<u32>()
    }
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        with_dtype!(g.dtype(), T, {
            let mut dx = vec![T::ZERO; self.x_shape.numel()];
            max_pool2d_backward(&self.geom, &self.argmax, g.cpu_slice::<T>("max_pool2d")?, &mut dx);
            Ok(vec![Some(Tensor::from_cpu(T::wrap(dx), self.x_shape.clone()))])
        })
    }
}

/// Max pool over `[N, C, H, W]` windows (PyTorch `F.max_pool2d`, padding with -inf). See the
/// module docs. Errors on a non-4-D input, a zero kernel or stride, `padding > kernel / 2`, or a
/// window larger than the padded input.
pub fn max_pool2d(x: &Tensor, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<Tensor> {
    const OP: &str = "max_pool2d";
    check_4d(OP, x)?;
    if kernel.contains(&0) || stride.contains(&0) {
        return Err(Error::invalid(OP, format!("kernel {kernel:?} and stride {stride:?} must be >= 1")));
    }
    if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
        return Err(Error::invalid(OP, format!("padding {padding:?} must be at most half the kernel {kernel:?}")));
    }
    let d = x.dims();
    let geom = Pool2dGeom { planes: d[0] * d[1], h: d[2], w: d[3], kernel, stride, padding };
    let Some((oh, ow)) = geom.out_hw() else {
        return Err(Error::invalid(
            OP,
            format!("kernel {kernel:?} is larger than the input {d:?} padded by {padding:?} (output size < 1)"),
        ));
    };
    if d[2] * d[3] > u32::MAX as usize {
        return Err(Error::invalid(OP, format!("planes of {d:?} are too large for u32 argmax indices")));
    }
    let out_shape = Shape(vec![d[0], d[1], oh, ow]);
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = x.device() {
        let (out, argmax) = on_cuda::max_pool_forward(&geom, x, out_shape.0)?;
        return record(OP, &[x], out, || {
            Box::new(on_cuda::MaxPoolBackward { argmax, geom, x_dims: x.dims().to_vec() })
        });
    }
    let mut argmax = vec![0u32; out_shape.numel()];
    let out = with_dtype!(x.dtype(), T, {
        let mut y = vec![T::ZERO; out_shape.numel()];
        max_pool2d_forward(&geom, x.cpu_slice::<T>(OP)?, &mut y, &mut argmax);
        Tensor::from_cpu(T::wrap(y), out_shape)
    });
    record(OP, &[x], out, || Box::new(MaxPoolBackward { argmax, geom, x_shape: x.shape.clone() }))
}

struct GlobalAvgPoolBackward {
    x_shape: Shape,
}

impl Backward for GlobalAvgPoolBackward {
    fn name(&self) -> &'static str {
        "global_avg_pool2d"
    }
    fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let d = self.x_shape.dims();
        #[cfg(feature = "cuda")]
        if let crate::Device::Cuda(_) = g.device() {
            return Ok(vec![Some(on_cuda::global_avg_pool_backward(g, d)?)]);
        }
        with_dtype!(g.dtype(), T, {
            let mut dx = vec![T::ZERO; self.x_shape.numel()];
            global_avg_pool_backward(d[2] * d[3], g.cpu_slice::<T>("global_avg_pool2d")?, &mut dx);
            Ok(vec![Some(Tensor::from_cpu(T::wrap(dx), self.x_shape.clone()))])
        })
    }
}

/// Mean over H and W: `[N, C, H, W] -> [N, C, 1, 1]`. Errors on a non-4-D or empty-plane input.
pub fn global_avg_pool2d(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "global_avg_pool2d";
    check_4d(OP, x)?;
    let d = x.dims();
    if d[2] == 0 || d[3] == 0 {
        return Err(Error::shape(OP, format!("input {d:?} has empty planes")));
    }
    let out_shape = Shape(vec![d[0], d[1], 1, 1]);
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = x.device() {
        let out = on_cuda::global_avg_pool_forward(x, out_shape.0)?;
        return record(OP, &[x], out, || Box::new(GlobalAvgPoolBackward { x_shape: x.shape.clone() }));
    }
    let out = with_dtype!(x.dtype(), T, {
        let mut y = vec![T::ZERO; out_shape.numel()];
        global_avg_pool_forward(d[2] * d[3], x.cpu_slice::<T>(OP)?, &mut y);
        Tensor::from_cpu(T::wrap(y), out_shape)
    });
    record(OP, &[x], out, || Box::new(GlobalAvgPoolBackward { x_shape: x.shape.clone() }))
}

/// The f32 CUDA paths through `kernels::cuda::pool`.
#[cfg(feature = "cuda")]
mod on_cuda {
    use crate::cuda::{alloc, buf, wrap};
    use crate::{Backward, Result, Tensor};
    use kernels::cpu::pool::Pool2dGeom;
    use kernels::cuda::{pool as kc, CudaBuf};

    /// `y` and the `u32` argmax buffer (index within the plane, one per output).
    pub(super) fn max_pool_forward(g: &Pool2dGeom, x: &Tensor, out_dims: Vec<usize>) -> Result<(Tensor, CudaBuf)> {
        let xb = buf(x, "max_pool2d")?;
        let n_out = out_dims.iter().product::<usize>();
        let (mut y, mut argmax) = (alloc(xb.device(), n_out)?, xb.device().alloc(n_out * 4)?);
        kc::max_pool2d_forward(g, xb, &mut y, &mut argmax)?;
        Ok((wrap(y, out_dims), argmax))
    }

    /// Saves the device argmax (4 bytes per output), not the input.
    pub(super) struct MaxPoolBackward {
        pub(super) argmax: CudaBuf,
        pub(super) geom: Pool2dGeom,
        pub(super) x_dims: Vec<usize>,
    }

    impl Backward for MaxPoolBackward {
        fn name(&self) -> &'static str {
            "max_pool2d"
        }
        fn saved_bytes(&self) -> usize {
            self.argmax.bytes()
        }
        fn backward(&self, g: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
            let gb = buf(g, "max_pool2d")?;
            let mut dx = alloc(gb.device(), self.x_dims.iter().product())?;
            kc::max_pool2d_backward(&self.geom, &self.argmax, gb, &mut dx)?;
            Ok(vec![Some(wrap(dx, self.x_dims.clone()))])
        }
    }

    pub(super) fn global_avg_pool_forward(x: &Tensor, out_dims: Vec<usize>) -> Result<Tensor> {
        let xb = buf(x, "global_avg_pool2d")?;
        let d = x.dims();
        let mut y = alloc(xb.device(), d[0] * d[1])?;
        kc::global_avg_pool_forward(d[0] * d[1], d[2] * d[3], xb, &mut y)?;
        Ok(wrap(y, out_dims))
    }

    pub(super) fn global_avg_pool_backward(g: &Tensor, x_dims: &[usize]) -> Result<Tensor> {
        let gb = buf(g, "global_avg_pool2d")?;
        let planes = x_dims[0] * x_dims[1];
        let mut dx = alloc(gb.device(), planes * x_dims[2] * x_dims[3])?;
        kc::global_avg_pool_backward(planes, x_dims[2] * x_dims[3], gb, &mut dx)?;
        Ok(wrap(dx, x_dims.to_vec()))
    }
}
