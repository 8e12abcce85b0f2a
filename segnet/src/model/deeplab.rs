//! The whole DeepLabV3+ model: backbone, head, and the stage-specific ends (1x1 classifier for
//! segmentation, projection head for contrastive pretraining).
//!
//! A pretraining model ([`DeepLabV3Plus::for_pretraining`]) has the projection head and no
//! classifier, so its checkpoints hold `backbone.*`, `classifier.*` (without
//! `classifier.classifier.6`) and `projection.*`. A segmentation model ([`DeepLabV3Plus::new`])
//! has the classifier and no projection head: loading a pretraining checkpoint into it with a
//! non-strict [`nn::load_checkpoint`] fills the shared part, reports `projection.*` as unexpected
//! and `classifier.classifier.6.{weight,bias}` as missing (they keep their fresh initialisation).

use super::blocks::check_nchw;
use super::decoder::DeepLabHeadV3Plus;
use super::resnet::ResNet;
use super::spec::ModelSpec;
use engine::{Rng, Tensor};
use nn::{Ctx, Layer, Module, ProjectionHead, Result, Visitor};

/// DeepLabV3+ with torchvision/VainF state names (`backbone.*`, `classifier.*`, `projection.*`).
pub struct DeepLabV3Plus {
    /// The shape it was built from.
    pub spec: ModelSpec,
    /// The ResNet (`backbone.*`).
    pub backbone: ResNet,
    /// ASPP + decoder + optional classifier (`classifier.*`).
    pub head: DeepLabHeadV3Plus,
    /// The contrastive projection head (`projection.*`), stage 1 only.
    pub projection: Option<ProjectionHead>,
    /// DenseCL's query heads (`densecl.*`), the DenseCL stage only.
    pub densecl: Option<crate::densecl::Heads>,
}

impl DeepLabV3Plus {
    /// A segmentation model: `spec.classes`-way classifier, no projection head.
    pub fn new(spec: &ModelSpec, rng: &mut Rng) -> Result<DeepLabV3Plus> {
        Self::build(spec, true, false, rng)
    }

    /// A contrastive pretraining model: projection head (`spec.projection_layers` 1x1 convs of the
    /// head width, conv + BN + ReLU for all but the last, then L2 normalisation), no classifier.
    pub fn for_pretraining(spec: &ModelSpec, rng: &mut Rng) -> Result<DeepLabV3Plus> {
        Self::build(spec, false, true, rng)
    }

    fn build(spec: &ModelSpec, classifier: bool, projection: bool, rng: &mut Rng) -> Result<DeepLabV3Plus> {
        spec.validate()?;
        let backbone = ResNet::new(spec, rng)?;
        let head = DeepLabHeadV3Plus::new(spec, classifier, rng)?;
        let mut model = DeepLabV3Plus { spec: spec.clone(), backbone, head, projection: None, densecl: None };
        if projection {
            model.add_projection(rng)?;
        }
        Ok(model)
    }

    /// Install a fresh projection head (replacing any existing one).
    pub fn add_projection(&mut self, rng: &mut Rng) -> Result<()> {
        let c = self.head.channels();
        self.projection = Some(ProjectionHead::with_layers(c, c, c, self.spec.projection_layers, rng)?);
        Ok(())
    }

    /// Install a fresh `spec.classes`-way classifier (replacing any existing one).
    pub fn add_classifier(&mut self, rng: &mut Rng) -> Result<()> {
        self.head.add_classifier(self.spec.classes, rng)
    }

    /// Channels of [`Self::features`] (and of the projection head's output).
    pub fn feature_channels(&self) -> usize {
        self.head.channels()
    }

    /// The decoder output before the 1x1 classifier (stride 4, the `layer1` size):
    /// `[N, 3, H, W] -> [N, C, ceil(H/4), ceil(W/4)]`, `C` = [`Self::feature_channels`].
    pub fn features(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        check_nchw("DeepLabV3Plus", x, 3)?;
        let f = self.backbone.forward_features(x, ctx)?;
        self.head.features(&f, ctx)
    }

    /// The 1x1 classifier on [`Self::features`]: stride-4 logits `[N, classes, h, w]`. Errors in
    /// a pretraining model (no classifier).
    pub fn classify(&mut self, feats: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        check_nchw("DeepLabV3Plus::classify", feats, self.head.channels())?;
        self.head.classify(feats, ctx)
    }

    /// The projection head on [`Self::features`]: unit-length embeddings `[N, C, h, w]`. Errors in
    /// a model without a projection head.
    pub fn project(&mut self, feats: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        check_nchw("DeepLabV3Plus::project", feats, self.head.channels())?;
        match &mut self.projection {
            Some(p) => p.forward(feats, ctx),
            None => Err(nn::Error::Config {
                what: "model",
                msg: "this model has no projection head; build it with for_pretraining or call add_projection".into(),
            }),
        }
    }

    /// Bilinearly resize logits (or any map) to `hw` with `align_corners = false`, as VainF/torch.
    pub fn upsample(logits: &Tensor, hw: [usize; 2]) -> Result<Tensor> {
        Ok(engine::ops::resize_bilinear(logits, hw, false)?)
    }
}

impl Module for DeepLabV3Plus {
    fn visit(&mut self, v: &mut Visitor<'_>) {
        v.child("backbone", &mut self.backbone);
        v.child("classifier", &mut self.head);
        if let Some(p) = &mut self.projection {
            v.child("projection", p);
        }
        if let Some(d) = &mut self.densecl {
            v.child("densecl", d);
        }
    }
}

impl Layer for DeepLabV3Plus {
    /// Logits at the input resolution: `classify(features(x))` bilinearly upsampled to `H x W`.
    fn forward(&mut self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let feats = self.features(x, ctx)?;
        let logits = self.classify(&feats, ctx)?;
        Self::upsample(&logits, [x.dim(2), x.dim(3)])
    }
}
