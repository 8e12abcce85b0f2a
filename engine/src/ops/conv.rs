//! 2-D convolution: strided, zero-padded, dilated (atrous), grouped (incl. depthwise), optional bias.
//!
//! PyTorch's `F.conv2d` semantics, NCHW. For `x: [N, C_in, H, W]`, `w: [C_out, C_in/G, kH, kW]`,
//! `b: [C_out]`, stride `s`, padding `p`, dilation `d`, groups `G`:
//!
//! ```text
//! OH = floor((H + 2 p_h - d_h (kH - 1) - 1) / s_h) + 1          (likewise OW)
//! y[n, o, oy, ox] = b[o] + sum_{c < C_in/G, ky, kx} w[o, c, ky, kx] x[n, g(o) C_in/G + c, oy s_h - p_h + ky d_h, ox s_w - p_w + kx d_w]
//! ```
//! with `g(o) = o / (C_out/G)` and `x = 0` outside the input (zero padding). Gradients, for the
//! incoming `G = dL/dy`:
//!
//! ```text
//! dx[n, i, iy, ix] = sum_{o in group of i, ky, kx, oy, ox : iy = oy s_h - p_h + ky d_h, ix = ...} w[o, i mod C_in/G, ky, kx] G[n, o, oy, ox]
//! dw[o, c, ky, kx] = sum_{n, oy, ox} G[n, o, oy, ox] x[n, g(o) C_in/G + c, oy s_h - p_h + ky d_h, ox s_w - p_w + kx d_w]
//! db[o]            = sum_{n, oy, ox} G[n, o, oy, ox]
//! ```
//! i.e. `dx = col2im(W^T G)` and `dw = G im2col(x)^T`, computed by the tiled kernels of
//! `kernels::cpu::conv` (see there for the algorithm). Saved for backward: `x` and `w` (shared
//! storage, no copy); the bias is not needed. Only the gradients the tape asks for are computed.
//!
//! On `Device::Cuda` (feature `cuda`, f32) the same geometry drives `kernels::cuda::conv`
//! (im2col + batched SGEMM per image, col2im as a gather for `dx`, `db` by a reduction); the
//! backward follows the device of the incoming gradient.

use crate::tape::record;
use crate::{with_dtype, Backward, Element, Error, Result, Shape, Tensor};
use kernels::cpu::conv::Conv2dGeom;
use kernels::cpu::conv::{conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight, conv2d_forward};

/// Hyperparameters of [`conv2d`] (PyTorch's `F.conv2d` semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between output positions, (h, w).
    pub stride: [usize; 2],
    /// Zero padding added on both sides, (h, w).
    pub padding: [usize; 2],
    /// Spacing between kernel taps (atrous rate), (h, w).
    pub dilation: [usize; 2],
    /// Number of channel groups (`in_channels` and `out_channels` must both divide by it).
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 }
    }
}

const OP: &str = "conv2d";

/// Check shapes, dtypes and hyperparameters; the kernel geometry on success.
fn geometry(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: &Conv2dParams) -> Result<Conv2dGeom> {
    if w.dtype() != x.dtype() {
        return Err(Error::DType { op: OP, lhs: x.dtype(), rhs: w.dtype() });
    }
    if let Some(b) = b {
        if b.dtype() != x.dtype() {
            return Err(Error::DType { op: OP, lhs: x.dtype(), rhs: b.dtype() });
        }
    }
    if x.device() != w.device() || b.is_some_and(|b| b.device() != x.device()) {
        return Err(Error::Device { op: OP, msg: "input, weight and bias must be on one device".into() });
    }
    let (xd, wd) = (x.dims(), w.dims());
    if xd.len() != 4 || wd.len() != 4 {
        return Err(Error::shape(OP, format!("input and weight must be 4-D (NCHW, OIHW), got x {xd:?}, w {wd:?}")));
    }
    if p.stride.contains(&0) || p.dilation.contains(&0) || p.groups == 0 {
        return Err(Error::invalid(
            OP,
            format!("stride {:?}, dilation {:?} and groups {} must be >= 1", p.stride, p.dilation, p.groups),
        ));
    }
    let (n, c_in, h, wd_) = (xd[0], xd[1], xd[2], xd[3]);
    let (c_out, cig, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
    if c_in % p.groups != 0 || c_out % p.groups != 0 {
        return Err(Error::shape(
            OP,
            format!("channels must divide by groups {}: x {xd:?} (C_in {c_in}), w {wd:?} (C_out {c_out})", p.groups),
        ));
    }
    if cig != c_in / p.groups {
        return Err(Error::shape(
            OP,
            format!("weight {wd:?} has {cig} input channels, expected C_in/groups = {c_in}/{} for x {xd:?}", p.groups),
        ));
    }
    if kh == 0 || kw == 0 || c_out == 0 {
        return Err(Error::shape(OP, format!("weight {wd:?} has a zero dimension")));
    }
    if let Some(b) = b {
        if b.dims() != [c_out] {
            return Err(Error::shape(OP, format!("bias {:?} must be [{c_out}] for weight {wd:?}", b.dims())));
        }
    }
    let g = Conv2dGeom {
        n,
        c_in,
        h,
        w: wd_,
        c_out,
        kh,
        kw,
        stride: p.stride,
        padding: p.padding,
        dilation: p.dilation,
        groups: p.groups,
    };
    if g.out_hw().is_none() {
        return Err(Error::invalid(
            OP,
            format!(
                "kernel {kh}x{kw} with dilation {:?} does not fit the input {xd:?} padded by {:?} (output size < 1)",
                p.dilation, p.padding
            ),
        ));
    }
    Ok(g)
}

struct Conv2dBackward {
    x: Tensor,
    w: Tensor,
    has_bias: bool,
    geom: Conv2dGeom,
}

impl Backward for Conv2dBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn saved_bytes(&self) -> usize {
        self.x.nbytes() + self.w.nbytes()
    }
    fn backward(&self, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let geom = &self.geom;
        #[cfg(feature = "cuda")]
        if let crate::Device::Cuda(_) = g.device() {
            return on_cuda::backward(self, g, needs);
        }
        with_dtype!(g.dtype(), T, {
            let gs = g.cpu_slice::<T>(OP)?;
            let dx = if needs[0] {
                let mut v = kernels::cpu::parallel::zeros::<T>(self.x.numel());
                conv2d_backward_input(geom, self.w.cpu_slice::<T>(OP)?, gs, &mut v);
                Some(Tensor::from_cpu(T::wrap(v), self.x.shape.clone()))
            } else {
                None
            };
            let dw = if needs[1] {
                let mut v = kernels::cpu::parallel::zeros::<T>(self.w.numel());
                conv2d_backward_weight(geom, self.x.cpu_slice::<T>(OP)?, gs, &mut v);
                Some(Tensor::from_cpu(T::wrap(v), self.w.shape.clone()))
            } else {
                None
            };
            let mut out = vec![dx, dw];
            if self.has_bias {
                out.push(if needs[2] {
                    let mut v = vec![T::ZERO; geom.c_out];
                    conv2d_backward_bias(geom, gs, &mut v);
                    Some(Tensor::from_cpu(T::wrap(v), Shape(vec![geom.c_out])))
                } else {
                    None
                });
            }
            Ok(out)
        })
    }
}

thread_local! {
    /// The geometries of the convs [`conv2d`] ran on this thread while [`record_geometries`] runs.
    static RECORDED: std::cell::RefCell<Option<Vec<Conv2dGeom>>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` and return, beside its result, the geometry of every [`conv2d`] it called on this
/// thread, in call order: what `segnet bench convs` times, so that its shapes are the model's
/// own. Not reentrant (an inner call takes the outer one's record).
pub fn record_geometries<R>(f: impl FnOnce() -> R) -> (R, Vec<Conv2dGeom>) {
    RECORDED.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let out = f();
    let geoms = RECORDED.with(|r| r.borrow_mut().take()).unwrap_or_default();
    (out, geoms)
}

/// `y = conv2d(x, w) + b` for `x: [N, C_in, H, W]`, `w: [C_out, C_in/groups, kH, kW]`,
/// `b: [C_out]`. See the module docs for the math, gradients and what is saved.
///
/// Errors (naming the shapes) on non-4-D operands, channels not divisible by `groups`, a weight
/// whose input channels are not `C_in / groups`, a bias that is not `[C_out]`, stride, dilation or
/// groups of 0, an output smaller than 1x1, or mixed dtypes/devices.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    let geom = geometry(x, w, b, &p)?;
    RECORDED.with(|r| r.borrow_mut().as_mut().map(|v| v.push(geom)));
    let (oh, ow) = geom.out_hw().expect("validated");
    let out_shape = Shape(vec![geom.n, geom.c_out, oh, ow]);
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(_) = x.device() {
        let out = on_cuda::forward(&geom, x, w, b, out_shape.0)?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        return record(OP, &inputs, out, || {
            Box::new(Conv2dBackward { x: x.detach(), w: w.detach(), has_bias: b.is_some(), geom })
        });
    }
    let out = with_dtype!(x.dtype(), T, {
        let mut y = kernels::cpu::parallel::zeros::<T>(out_shape.numel());
        let bias = match b {
            Some(b) => Some(b.cpu_slice::<T>(OP)?),
            None => None,
        };
        conv2d_forward(&geom, x.cpu_slice::<T>(OP)?, w.cpu_slice::<T>(OP)?, bias, &mut y);
        Tensor::from_cpu(T::wrap(y), out_shape)
    });
    let mut inputs = vec![x, w];
    inputs.extend(b);
    record(OP, &inputs, out, || Box::new(Conv2dBackward { x: x.detach(), w: w.detach(), has_bias: b.is_some(), geom }))
}

/// The f32 CUDA path: the same math through `kernels::cuda::conv`, one new buffer per result.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::{Conv2dBackward, OP};
    use crate::cuda::{alloc, buf, wrap};
    use crate::{Result, Tensor};
    use kernels::cpu::conv::Conv2dGeom;
    use kernels::cuda::conv as kc;

    pub(super) fn forward(
        geom: &Conv2dGeom,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        out_dims: Vec<usize>,
    ) -> Result<Tensor> {
        let (xb, wb) = (buf(x, OP)?, buf(w, OP)?);
        let bb = b.map(|b| buf(b, OP)).transpose()?;
        let mut y = alloc(xb.device(), out_dims.iter().product())?;
        kc::conv2d_forward(geom, xb, wb, bb, &mut y)?;
        Ok(wrap(y, out_dims))
    }

    pub(super) fn backward(s: &Conv2dBackward, g: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let geom = &s.geom;
        let gb = buf(g, OP)?;
        let dev = gb.device();
        let dx = if needs[0] {
            let mut v = alloc(dev, s.x.numel())?;
            kc::conv2d_backward_input(geom, buf(&s.w, OP)?, gb, &mut v)?;
            Some(wrap(v, s.x.dims().to_vec()))
        } else {
            None
        };
        let dw = if needs[1] {
            let mut v = alloc(dev, s.w.numel())?;
            kc::conv2d_backward_weight(geom, buf(&s.x, OP)?, gb, &mut v)?;
            Some(wrap(v, s.w.dims().to_vec()))
        } else {
            None
        };
        let mut out = vec![dx, dw];
        if s.has_bias {
            out.push(if needs[2] {
                let mut v = alloc(dev, geom.c_out)?;
                kc::conv2d_backward_bias(geom, gb, &mut v)?;
                Some(wrap(v, vec![geom.c_out]))
            } else {
                None
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the convs run inside `record_geometries` are recorded, each with its own geometry, in order.
    #[test]
    fn record_geometries_sees_the_convs_inside_only() {
        let x = Tensor::from_vec(vec![0.5f32; 2 * 3 * 5 * 5], vec![2, 3, 5, 5]).unwrap();
        let w = Tensor::from_vec(vec![0.1f32; 4 * 3 * 3 * 3], vec![4, 3, 3, 3]).unwrap();
        let strided = Conv2dParams { stride: [2, 2], padding: [1, 1], ..Conv2dParams::default() };
        conv2d(&x, &w, None, Conv2dParams::default()).unwrap();
        let (out, geoms) = record_geometries(|| {
            conv2d(&x, &w, None, Conv2dParams::default()).and_then(|_| conv2d(&x, &w, None, strided))
        });
        assert_eq!(out.unwrap().dims(), &[2, 4, 3, 3]);
        assert_eq!(geoms.len(), 2);
        assert_eq!((geoms[0].stride, geoms[1].stride, geoms[1].padding), ([1, 1], [2, 2], [1, 1]));
        assert_eq!((geoms[0].n, geoms[0].c_in, geoms[0].c_out, geoms[0].h), (2, 3, 4, 5));
        // Recording stopped with the closure: a later conv leaves no record behind.
        conv2d(&x, &w, None, Conv2dParams::default()).unwrap();
        assert!(RECORDED.with(|r| r.borrow().is_none()));
    }
}
