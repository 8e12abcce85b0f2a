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
    let out = with_dtype!(x.dtype(), T, {
        let mut y = vec![T::ZERO; out_shape.numel()];
        global_avg_pool_forward(d[2] * d[3], x.cpu_slice::<T>(OP)?, &mut y);
        Tensor::from_cpu(T::wrap(y), out_shape)
    });
    record(OP, &[x], out, || Box::new(GlobalAvgPoolBackward { x_shape: x.shape.clone() }))
}
