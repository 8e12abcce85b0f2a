//! The network a run trains, and the small helpers the stages share.
//!
//! A contrastive-stage network is [`DeepLabV3Plus::for_pretraining`] (projection head, no
//! classifier); every other stage uses [`DeepLabV3Plus::new`]. A stage-1 checkpoint loads into the
//! stage-2 model with `strict=false`: `projection.*` is left out and the 1x1 classifier starts
//! fresh.

use crate::config::TrainConfig;
use crate::model::{DeepLabV3Plus, ModelSpec};
use anyhow::Result;
use engine::{ops, Device, Rng, Tensor};
use nn::{Ctx, Layer};

/// The trained network.
pub type Net = DeepLabV3Plus;

/// The model shape a run's config asks for.
pub fn spec(cfg: &TrainConfig, classes: usize) -> Result<ModelSpec> {
    let m = &cfg.model;
    let spec = ModelSpec::from_config(&m.backbone, m.width, m.output_stride, m.head_channels, m.aspp_rates, classes)?;
    let spec = ModelSpec { projection_layers: cfg.loss.projection_layers, ..spec };
    spec.validate()?;
    Ok(spec)
}

/// A freshly initialised network (seeded): with the projection head for the contrastive stage,
/// with the classifier otherwise.
pub fn new_net(spec: &ModelSpec, contrastive: bool, rng: &mut Rng) -> Result<Net> {
    Ok(if contrastive { DeepLabV3Plus::for_pretraining(spec, rng)? } else { DeepLabV3Plus::new(spec, rng)? })
}

/// Per-pixel class scores at the input resolution.
pub fn logits(net: &mut Net, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
    Ok(net.forward(x, ctx)?)
}

/// Unit-normalised embeddings for the contrastive loss: decoder features (stride 4), bilinearly
/// resized to `size` (align_corners=true, as the official code) unless `None`, then the
/// projection head (which ends with the L2 normalisation).
pub fn embed(net: &mut Net, x: &Tensor, size: Option<[usize; 2]>, ctx: &mut Ctx) -> Result<Tensor> {
    let f = net.features(x, ctx)?;
    let f = match size {
        Some(s) if s != [f.dim(2), f.dim(3)] => ops::resize_bilinear(&f, s, true)?,
        _ => f,
    };
    Ok(net.project(&f, ctx)?)
}

/// The device the network's parameters live on.
pub fn device_of(net: &mut Net) -> Device {
    let mut d = Device::Cpu;
    nn::for_each_param(net, |_, p| d = p.value.device());
    d
}

/// A batch of images as an input tensor on the network's device.
pub fn input(net: &mut Net, images: Vec<f32>, shape: [usize; 4]) -> Result<Tensor> {
    let dev = device_of(net);
    Ok(Tensor::from_vec(images, shape.to_vec())?.to_device(dev)?)
}

/// Parse a `--device` value. CUDA needs a build with `--features cuda`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "cuda:0" => {
            if cfg!(feature = "cuda") {
                // Open the GPU now, so a machine without one fails here, naming the flag, rather
                // than at the first op.
                #[cfg(feature = "cuda")]
                engine::cuda::device(0).map_err(|e| anyhow::anyhow!("--device cuda: cannot open GPU 0: {e}"))?;
                Ok(Device::Cuda(0))
            } else {
                anyhow::bail!("--device cuda: this binary was built without CUDA support; rebuild with `cargo build --release -p segnet --features cuda` (see kernels/README.md)")
            }
        }
        other => anyhow::bail!("--device: unknown device {other:?} (expected cpu or cuda)"),
    }
}

/// The `eighth` loss grid side ([`crate::config::LossGrid::Eighth`]): `(crop - 1) / 8 + 1`
/// (65 for a 513 crop, as DeepLab's stride-8 grid).
pub fn contrastive_grid(crop: usize) -> usize {
    (crop.max(1) - 1) / 8 + 1
}

/// Per-pixel argmax over channels of `[B, C, H, W]` logits.
pub fn argmax(logits: &Tensor) -> Result<Vec<u8>> {
    let (b, c, h, w) = (logits.dim(0), logits.dim(1), logits.dim(2), logits.dim(3));
    let v = logits.to_vec_f32()?;
    let mut out = vec![0u8; b * h * w];
    for n in 0..b {
        for p in 0..h * w {
            let mut best = 0;
            for k in 1..c {
                if v[(n * c + k) * h * w + p] > v[(n * c + best) * h * w + p] {
                    best = k;
                }
            }
            out[n * h * w + p] = best as u8;
        }
    }
    Ok(out)
}
