//! Small models shared by the nn tests. They use only matmul and elementwise ops, so they run
//! without conv or batch norm.
#![allow(dead_code)]

use engine::{DType, Rng, Tensor};
use nn::{init, Ctx, Layer, Module, Param, ParamKind, Result, Visitor};

/// `y = x W^T + b`, `x: [N, in]`, `W: [out, in]` (PyTorch's `nn.Linear` layout).
pub struct Linear {
    pub weight: Param,
    pub bias: Param,
}

impl Linear {
    pub fn new(i: usize, o: usize, rng: &mut Rng) -> Linear {
        Linear {
            weight: Param::new(init::kaiming_uniform_default(&[o, i], DType::F32, rng), ParamKind::Weight),
            bias: Param::new(Tensor::rand_uniform([1, o], -0.1, 0.1, DType::F32, rng), ParamKind::Bias),
        }
    }
}

impl Module for Linear {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.param("weight", &mut self.weight);
        v.param("bias", &mut self.bias);
    }
}

impl Layer for Linear {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let w = ctx.param(&self.weight);
        let b = ctx.param(&self.bias);
        Ok(x.matmul(&w.transpose(0, 1)?)?.add(&b)?)
    }
}

/// Two linear layers with a ReLU, plus a float buffer and a counter (to exercise checkpoints
/// without batch norm): `fc1.weight`, `fc1.bias`, `fc2.weight`, `fc2.bias`, `stats`, `calls`.
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub stats: Tensor,
    pub calls: i64,
}

impl Mlp {
    pub fn new(i: usize, h: usize, o: usize, rng: &mut Rng) -> Mlp {
        Mlp {
            fc1: Linear::new(i, h, rng),
            fc2: Linear::new(h, o, rng),
            stats: Tensor::zeros([h], DType::F32),
            calls: 0,
        }
    }
}

impl Module for Mlp {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("fc1", &mut self.fc1);
        v.child("fc2", &mut self.fc2);
        v.buffer("stats", &mut self.stats);
        v.count("calls", &mut self.calls);
    }
}

impl Layer for Mlp {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = self.fc1.forward(x, ctx)?.relu()?;
        if ctx.training {
            self.calls += 1;
            // A running mean of the hidden activations, like a batch-norm statistic.
            let m = h.detach().mean(&[0], false)?.to_vec_f32()?;
            self.stats.update_cpu::<f32>(|s| s.iter_mut().zip(&m).for_each(|(r, v)| *r = 0.9 * *r + 0.1 * v))?;
        }
        self.fc2.forward(&h, ctx)
    }
}

/// Mean squared error `mean((y - t)^2)`.
pub fn mse(y: &Tensor, t: &Tensor) -> Result<Tensor> {
    let d = y.sub(t)?;
    Ok(d.mul(&d)?.mean_all()?)
}

/// A fixed regression batch: `x: [n, i]`, targets `[n, o]` from a fixed random linear map.
pub fn regression_batch(n: usize, i: usize, o: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let x = Tensor::randn([n, i], 1.0, DType::F32, &mut rng);
    let w = Tensor::randn([i, o], 0.5, DType::F32, &mut rng);
    let t = x.matmul(&w).unwrap().relu().unwrap();
    (x, t)
}

/// Bit patterns of every tensor of a model's state, by name (for exact comparisons).
pub fn state_bits<M: Module + ?Sized>(m: &mut M) -> Vec<(String, Vec<u64>)> {
    nn::state_dict(m)
        .into_iter()
        .map(|(k, v)| {
            let bits = match v {
                nn::StateValue::Float(t) => t.to_vec_f64().unwrap().into_iter().map(f64::to_bits).collect(),
                nn::StateValue::Count(c) => vec![c as u64],
            };
            (k, bits)
        })
        .collect()
}
