//! Writes a checkpoint of a small torchvision-shaped model (stem, one ResNet layer with a
//! downsample branch, a projection head) after a few contrastive training steps, plus a
//! reference file with an input and the model's eval-mode output. `scripts/check_checkpoint.py`
//! opens both with PyTorch, loads the state dict into the same torch module (strict) and
//! compares the outputs.
//!
//! `cargo run -p nn --release --example tiny_checkpoint -- <out dir>`

use engine::ops::ContrastiveConfig;
use engine::{DType, LabelMap, Rng, Tensor};
use nn::*;

/// torchvision's `BasicBlock`.
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<Sequential>,
}

impl Block {
    fn new(cin: usize, cout: usize, stride: usize, rng: &mut Rng) -> Result<Block> {
        let c3 = ConvOptions::new().padding(1);
        Ok(Block {
            conv1: Conv2d::with_options(cin, cout, 3, c3.stride(stride), rng)?,
            bn1: BatchNorm2d::new(cout),
            conv2: Conv2d::with_options(cout, cout, 3, c3, rng)?,
            bn2: BatchNorm2d::new(cout),
            downsample: if stride != 1 || cin != cout {
                let d = Conv2d::with_options(cin, cout, 1, ConvOptions::new().stride(stride), rng)?;
                Some(Sequential::new().with(d).with(BatchNorm2d::new(cout)))
            } else {
                None
            },
        })
    }
}

impl Module for Block {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("conv1", &mut self.conv1);
        v.child("bn1", &mut self.bn1);
        v.child("conv2", &mut self.conv2);
        v.child("bn2", &mut self.bn2);
        if let Some(d) = &mut self.downsample {
            v.child("downsample", d);
        }
    }
}

impl Layer for Block {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = self.conv1.forward(x, ctx)?;
        let h = self.bn1.forward(&h, ctx)?.relu()?;
        let h = self.bn2.forward(&self.conv2.forward(&h, ctx)?, ctx)?;
        let skip = match &mut self.downsample {
            Some(d) => d.forward(x, ctx)?,
            None => x.clone(),
        };
        Ok(h.add(&skip)?.relu()?)
    }
}

/// `backbone.{conv1,bn1,layer1}` + `head`.
struct Net {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    pool: MaxPool2d,
    layer1: Sequential,
    head: ProjectionHead,
}

impl Module for Net {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        // The backbone has no struct of its own here; a nested visitor prefix gives the names.
        struct Backbone<'a>(&'a mut Net);
        impl Module for Backbone<'_> {
            fn visit(&mut self, v: &mut Visitor<'_>) {
                v.child("conv1", &mut self.0.conv1);
                v.child("bn1", &mut self.0.bn1);
                v.child("layer1", &mut self.0.layer1);
            }
        }
        v.child("backbone", &mut Backbone(self));
        v.child("head", &mut self.head);
    }
}

impl Layer for Net {
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = self.bn1.forward(&self.conv1.forward(x, ctx)?, ctx)?.relu()?;
        let h = self.layer1.forward(&self.pool.forward(&h, ctx)?, ctx)?;
        self.head.forward(&h, ctx)
    }
}

fn main() -> Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "target/tiny_checkpoint".into()));
    let mut rng = Rng::new(2024);
    let mut net = Net {
        conv1: Conv2d::with_options(3, 8, 7, ConvOptions::new().stride(2).padding(3), &mut rng)?,
        bn1: BatchNorm2d::new(8),
        pool: MaxPool2d::new(3, 2, 1),
        layer1: Sequential::new().with(Block::new(8, 16, 2, &mut rng)?).with(Block::new(16, 16, 1, &mut rng)?),
        head: ProjectionHead::new(16, 16, 8, &mut rng)?,
    };
    let x = Tensor::randn([2, 3, 32, 32], 1.0, DType::F32, &mut rng);
    let labels = LabelMap::new(2, 4, 4, (0..32).map(|i| (i % 3) as u8).collect())?;
    let loss_fn = PixelContrastiveLoss::new(ContrastiveConfig { classes: 3, ..Default::default() });
    let mut opt = Sgd::new(SgdConfig { momentum: 0.9, weight_decay: 4e-5, ..Default::default() })?;
    for step in 0..3 {
        let mut ctx = Ctx::train(rng.fork());
        let loss = loss_fn.forward(&net.forward(&x, &mut ctx)?, &labels)?;
        println!("step {step}: loss {:.5}", loss.item()?);
        let grads = ctx.backward(&loss)?;
        opt.step(&mut net, &grads, 0.05)?;
    }
    let meta = CheckpointMeta {
        step: 3,
        rng: Some(rng.clone()),
        config: "{\"example\": \"tiny_checkpoint\"}".into(),
        ..Default::default()
    };
    let ckpt = out.join("tiny.safetensors");
    save_checkpoint(&ckpt, &mut net, Some(&opt), &meta)?;

    // The reference: an input and the eval-mode output, for the Python side to reproduce.
    let probe = Tensor::randn([1, 3, 32, 32], 1.0, DType::F32, &mut rng);
    let y = net.forward(&probe, &mut Ctx::eval())?;
    let bytes = |t: &Tensor| -> Result<Vec<u8>> { Ok(t.to_vec_f32()?.iter().flat_map(|v| v.to_le_bytes()).collect()) };
    let (pb, yb) = (bytes(&probe)?, bytes(&y)?);
    let example_err = |e: &dyn std::fmt::Display| Error::Config { what: "example", msg: e.to_string() };
    fn view<'a>(t: &Tensor, b: &'a [u8]) -> Result<safetensors::tensor::TensorView<'a>> {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.dims().to_vec(), b)
            .map_err(|e| Error::Config { what: "example", msg: e.to_string() })
    }
    let tensors = vec![("input", view(&probe, &pb)?), ("output", view(&y, &yb)?)];
    let data = safetensors::serialize(tensors, None).map_err(|e| example_err(&e))?;
    std::fs::write(out.join("tiny_reference.safetensors"), data).map_err(|e| example_err(&e))?;
    println!("wrote {} and tiny_reference.safetensors", ckpt.display());
    Ok(())
}
