//! DeepLabV3+ for segnet: ResNet backbones, ASPP, the V3+ decoder, and the contrastive projection
//! head, with torchvision/VainF parameter names so weights can be exchanged with PyTorch.
//!
//! * [`ModelSpec`] fixes the shape (backbone, width multiplier, output stride, head widths,
//!   atrous rates, classes, dropout); [`Backbone`] names the ResNet depth.
//! * [`ResNet`] (torchvision layout, ResNet v1.5, stride replaced by dilation in the last
//!   stage(s) for output stride 16 or 8) returns the stride-4 `layer1` features and the last stage.
//! * [`Aspp`] and [`DeepLabHeadV3Plus`] follow VainF's `DeepLabHeadV3Plus` (one difference: the
//!   issue asks for two 3x3 decoder convs, VainF has one; see [`decoder`]).
//! * [`DeepLabV3Plus`] puts them together, with an optional 1x1 classifier (stage 2) and an
//!   optional [`nn::ProjectionHead`] (stage 1).
//!
//! State names (the keys of a checkpoint):
//!
//! ```text
//! backbone.conv1.weight, backbone.bn1.*, backbone.layer{1..4}.{i}.{conv,bn}{1,2[,3]}.*,
//! backbone.layer{k}.0.downsample.{0,1}.*
//! classifier.project.{0,1}.*                  low-level 1x1 -> 48 + BN
//! classifier.aspp.convs.{0..3}.{0,1}.*        1x1 and three atrous 3x3 branches
//! classifier.aspp.convs.4.{1,2}.*             image pooling branch (index 0 is the pool)
//! classifier.aspp.project.{0,1}.*             1x1 5C -> C + BN
//! classifier.classifier.{0,1,3,4}.*           two 3x3 decoder convs + BN
//! classifier.classifier.6.{weight,bias}       1x1 classifier (segmentation models only)
//! projection.{0,3}.weight, projection.{1,4}.*  projection head (pretraining models only): hidden
//! projection.6.{weight,bias}                  1x1 conv + BN (+ ReLU), final 1x1 conv (3 layers)
//! ```

pub mod aspp;
mod blocks;
pub mod decoder;
pub mod deeplab;
pub mod resnet;
mod spec;

#[cfg(test)]
mod tests;

pub use aspp::Aspp;
pub use decoder::DeepLabHeadV3Plus;
pub use deeplab::DeepLabV3Plus;
pub use resnet::{BackboneFeatures, ResNet};
pub use spec::{make_divisible, Backbone, ModelSpec};
