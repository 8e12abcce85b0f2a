//! The layer between the engine and the models: modules with PyTorch-style parameter names,
//! layers, initialisation, losses, SGD with schedules, and safetensors checkpoints.
//!
//! * [`Module`] lists a model's parameters, buffers and children to a [`Visitor`], which builds
//!   dotted names like `backbone.layer1.0.conv1.weight`; [`Layer`] adds a one-tensor forward.
//! * [`Ctx`] carries a step's tape, train/eval flag and generator through the forward pass; it
//!   watches each trainable [`Param`] on first use and returns their [`Grads`] after backward.
//! * Layers: [`Conv2d`], [`BatchNorm2d`], [`ReLU`], [`MaxPool2d`], [`Dropout`], [`Sequential`],
//!   [`ProjectionHead`], with torchvision's initialisation ([`init`]).
//! * Losses: [`CrossEntropyLoss`], [`PixelContrastiveLoss`].
//! * [`Sgd`] (PyTorch semantics, parameter groups), [`LrSchedule`], [`clip_grad_norm`].
//! * [`save_checkpoint`] / [`load_checkpoint`]: safetensors files PyTorch can open.
//! * [`read_pth`] / [`load_state_dict`]: PyTorch zip checkpoints (`torch.save`), e.g. torchvision's
//!   ImageNet weights, read without Python.
//!
//! A training step:
//!
//! ```
//! use engine::{DType, LabelMap, Rng, Tensor};
//! use nn::*;
//! # fn main() -> nn::Result<()> {
//! let mut rng = Rng::new(0);
//! let mut model = Sequential::new()
//!     .with(Conv2d::with_options(3, 8, 3, ConvOptions::new().padding(1), &mut rng)?)
//!     .with(BatchNorm2d::new(8))
//!     .with(ReLU)
//!     .with(Conv2d::with_options(8, 2, 1, ConvOptions::new().bias(true), &mut rng)?);
//! let mut opt = Sgd::new(SgdConfig { momentum: 0.9, weight_decay: 4e-5, ..Default::default() })?
//!     .with_groups(ParamGroups { no_decay_norm_and_bias: true, ..Default::default() });
//! let sched = LrSchedule::cosine(0.01, 100)?.with_warmup(5)?;
//! let x = Tensor::randn([2, 3, 8, 8], 1.0, DType::F32, &mut rng);
//! let labels = LabelMap::new(2, 8, 8, vec![1; 128])?;
//! for step in 0..3 {
//!     let mut ctx = Ctx::train(rng.fork());
//!     let logits = model.forward(&x, &mut ctx)?;
//!     let loss = CrossEntropyLoss::new(255).forward(&logits, &labels)?;
//!     let grads = ctx.backward(&loss)?;
//!     opt.step(&mut model, &grads, sched.lr(step))?;
//! }
//! let meta = CheckpointMeta { step: 3, rng: Some(rng.clone()), ..Default::default() };
//! let path = std::env::temp_dir().join("nn-doc-example.safetensors");
//! save_checkpoint(&path, &mut model, Some(&opt), &meta)?;
//! # std::fs::remove_file(&path).ok();
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod checkpoint;
mod ctx;
mod error;
pub mod init;
mod layers;
mod loss;
mod module;
mod optim;
mod param;

pub use checkpoint::write_atomically;
pub use checkpoint::{
    check_state_dict, load_checkpoint, load_state_dict, read_checkpoint, read_pth, save_checkpoint, state_dict,
    CheckpointData, CheckpointMeta, LoadReport, PthFile, StateValue, FORMAT, FORMAT_VERSION, MOMENTUM_PREFIX,
};
pub use ctx::{Ctx, Grads};
pub use error::{Error, Result};
pub use layers::{
    BatchNorm2d, Conv2d, ConvOptions, Dropout, GlobalAvgPool2d, Identity, MaxPool2d, ProjectionHead, ReLU, Sequential,
};
pub use loss::{CrossEntropyLoss, PixelContrastiveLoss};
pub use module::{
    convert_dtype, for_each_param, num_params, param_names, set_frozen, state_names, to_device, under_prefix,
    visit_all, Layer, Module, Slot, Visitor,
};
pub use optim::{clip_grad_norm, grad_norm, Decay, LrSchedule, ParamGroups, Sgd, SgdConfig};
pub use param::{Param, ParamId, ParamKind};
