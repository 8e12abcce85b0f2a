//! The network a run trains: DeepLabV3+ plus, in the contrastive stage, the projection head.
//!
//! State names: the DeepLabV3+ names at the top level (`backbone.*`, `classifier.*`) and the head
//! under `projection.*`, so a stage-1 checkpoint loads into the stage-2 model with `strict=false`
//! (the projection head is left out, the 1x1 classifier starts fresh).

use crate::config::TrainConfig;
use crate::model::{DeepLabV3Plus, ModelSpec};
use anyhow::Result;
use engine::{ops, Rng, Tensor};
use nn::{Ctx, Layer, Module, ProjectionHead, Visitor};

/// DeepLabV3+ with an optional projection head.
pub struct Net {
    /// The segmentation network.
    pub deeplab: DeepLabV3Plus,
    /// Stage 1 only: three 1x1 convs + L2 normalisation on the decoder features.
    pub projection: Option<ProjectionHead>,
}

impl Module for Net {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        self.deeplab.visit(v);
        if let Some(p) = &mut self.projection {
            v.child("projection", p);
        }
    }
}

/// The model shape a run's config asks for.
pub fn spec(cfg: &TrainConfig, classes: usize) -> Result<ModelSpec> {
    let m = &cfg.model;
    Ok(ModelSpec::from_config(&m.backbone, m.width, m.output_stride, m.head_channels, m.aspp_rates, classes)?)
}

impl Net {
    /// A freshly initialised network (seeded).
    pub fn new(spec: &ModelSpec, with_projection: bool, rng: &mut Rng) -> Result<Net> {
        let deeplab = DeepLabV3Plus::new(spec, rng)?;
        let projection = if with_projection {
            let c = deeplab.feature_channels();
            Some(ProjectionHead::new(c, c, c, rng)?)
        } else {
            None
        };
        Ok(Net { deeplab, projection })
    }

    /// Per-pixel class scores at the input resolution.
    pub fn logits(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        Ok(self.deeplab.forward(x, ctx)?)
    }

    /// Unit-normalised embeddings for the contrastive loss: decoder features (stride 4),
    /// bilinearly resized to `size` (align_corners=true, as the official code) unless `None`,
    /// then the projection head.
    pub fn embed(&mut self, x: &Tensor, size: Option<[usize; 2]>, ctx: &mut Ctx) -> Result<Tensor> {
        let f = self.deeplab.features(x, ctx)?;
        let f = match size {
            Some(s) if s != [f.dim(2), f.dim(3)] => ops::resize_bilinear(&f, s, true)?,
            _ => f,
        };
        let head = self.projection.as_mut().ok_or_else(|| anyhow::anyhow!("this network has no projection head"))?;
        Ok(head.forward(&f, ctx)?)
    }
}

/// The loss grid of the contrastive stage: about 1/8 of the crop, `(crop - 1) / 8 + 1`
/// (65 for a 513 crop, as DeepLab's stride-8 grid).
pub fn contrastive_grid(crop: usize) -> usize {
    (crop - 1) / 8 + 1
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
