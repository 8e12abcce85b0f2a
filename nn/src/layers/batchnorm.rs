//! 2-D batch normalisation with running statistics.

use crate::{Ctx, Layer, Module, Param, ParamKind, Result, Visitor};
use engine::{DType, Tensor};

/// `nn.BatchNorm2d(C)` (state names `weight`, `bias`, `running_mean`, `running_var`,
/// `num_batches_tracked`). Weight 1, bias 0, running mean 0, running variance 1, as torchvision.
///
/// Training mode ([`Ctx::training`]) normalises with the batch statistics, updates the running
/// ones with `momentum` (`r = (1 - m) r + m * batch`, unbiased variance) and counts the batch;
/// eval mode normalises with the running statistics. Freeze `weight`/`bias` with
/// [`crate::set_frozen`]; to keep the statistics fixed too, run the layer with an eval context.
#[derive(Debug)]
pub struct BatchNorm2d {
    /// gamma, `[C]`.
    pub weight: Param,
    /// beta, `[C]`.
    pub bias: Param,
    /// `[C]`.
    pub running_mean: Tensor,
    /// `[C]`.
    pub running_var: Tensor,
    /// Training batches seen (saved as int64, like PyTorch).
    pub num_batches_tracked: i64,
    /// Running-statistics momentum (PyTorch default 0.1).
    pub momentum: f64,
    /// Added to the variance (PyTorch default 1e-5).
    pub eps: f64,
}

impl BatchNorm2d {
    /// `C` channels, momentum 0.1, eps 1e-5.
    pub fn new(channels: usize) -> BatchNorm2d {
        BatchNorm2d {
            weight: Param::new(Tensor::ones([channels], DType::F32), ParamKind::NormWeight),
            bias: Param::new(Tensor::zeros([channels], DType::F32), ParamKind::NormBias),
            running_mean: Tensor::zeros([channels], DType::F32),
            running_var: Tensor::ones([channels], DType::F32),
            num_batches_tracked: 0,
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

impl Module for BatchNorm2d {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.param("weight", &mut self.weight);
        v.param("bias", &mut self.bias);
        v.buffer("running_mean", &mut self.running_mean);
        v.buffer("running_var", &mut self.running_var);
        v.count("num_batches_tracked", &mut self.num_batches_tracked);
    }
}

impl BatchNorm2d {
    /// `relu(self.forward(x))` as one op ([`engine::ops::batch_norm2d_relu`]): the same values
    /// and gradients, one pass over the activation fewer each way.
    pub fn forward_relu(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.run(x, ctx, engine::ops::batch_norm2d_relu)
    }

    /// Run `op` (the batch norm, with or without the fused ReLU) with this layer's parameters and
    /// statistics, counting the batch in training mode.
    fn run(&mut self, x: &Tensor, ctx: &mut Ctx, op: BnOp) -> Result<Tensor> {
        let w = ctx.param(&self.weight);
        let b = ctx.param(&self.bias);
        let y = op(
            x,
            Some(&w),
            Some(&b),
            &mut self.running_mean,
            &mut self.running_var,
            ctx.training,
            self.momentum,
            self.eps,
        )?;
        if ctx.training {
            self.num_batches_tracked += 1;
        }
        Ok(y)
    }
}

/// The signature of [`engine::ops::batch_norm2d`] and [`engine::ops::batch_norm2d_relu`].
type BnOp =
    fn(&Tensor, Option<&Tensor>, Option<&Tensor>, &mut Tensor, &mut Tensor, bool, f64, f64) -> engine::Result<Tensor>;

impl Layer for BatchNorm2d {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.run(x, ctx, engine::ops::batch_norm2d)
    }
}
