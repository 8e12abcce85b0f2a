//! Method-call sugar over [`crate::ops`], so model code reads `x.conv2d(&w, None, p)?.relu()?`.
//! Each method is exactly the op of the same name.

use crate::ops::{self, Conv2dParams};
use crate::{Result, Tensor};

#[allow(missing_docs)]
impl Tensor {
    pub fn add(&self, o: &Tensor) -> Result<Tensor> {
        ops::add(self, o)
    }
    pub fn sub(&self, o: &Tensor) -> Result<Tensor> {
        ops::sub(self, o)
    }
    pub fn mul(&self, o: &Tensor) -> Result<Tensor> {
        ops::mul(self, o)
    }
    pub fn div(&self, o: &Tensor) -> Result<Tensor> {
        ops::div(self, o)
    }
    pub fn neg(&self) -> Result<Tensor> {
        ops::neg(self)
    }
    pub fn exp(&self) -> Result<Tensor> {
        ops::exp(self)
    }
    pub fn log(&self) -> Result<Tensor> {
        ops::log(self)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        ops::sqrt(self)
    }
    pub fn relu(&self) -> Result<Tensor> {
        ops::relu(self)
    }
    pub fn affine(&self, alpha: f64, beta: f64) -> Result<Tensor> {
        ops::affine(self, alpha, beta)
    }
    pub fn sum(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        ops::sum(self, axes, keepdim)
    }
    pub fn mean(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        ops::mean(self, axes, keepdim)
    }
    pub fn sum_all(&self) -> Result<Tensor> {
        ops::sum_all(self)
    }
    pub fn mean_all(&self) -> Result<Tensor> {
        ops::mean_all(self)
    }
    pub fn reshape(&self, dims: &[usize]) -> Result<Tensor> {
        ops::reshape(self, dims)
    }
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        ops::permute(self, perm)
    }
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        ops::transpose(self, a, b)
    }
    pub fn matmul(&self, o: &Tensor) -> Result<Tensor> {
        ops::matmul(self, o)
    }
    pub fn conv2d(&self, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
        ops::conv2d(self, w, b, p)
    }
    pub fn resize_bilinear(&self, out_hw: [usize; 2], align_corners: bool) -> Result<Tensor> {
        ops::resize_bilinear(self, out_hw, align_corners)
    }
    pub fn l2_normalize(&self, eps: f64) -> Result<Tensor> {
        ops::l2_normalize(self, eps)
    }
    pub fn log_softmax(&self) -> Result<Tensor> {
        ops::log_softmax(self)
    }
}
