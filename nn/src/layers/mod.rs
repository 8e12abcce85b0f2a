//! Layers: the building blocks of the models, each a [`crate::Module`] with PyTorch's parameter
//! names and a [`crate::Layer`] forward over the engine ops.

mod activation;
mod batchnorm;
mod conv;
mod dropout;
mod pool;
mod projection;
mod sequential;

pub use activation::{Identity, ReLU};
pub use batchnorm::BatchNorm2d;
pub use conv::{Conv2d, ConvOptions};
pub use dropout::Dropout;
pub use pool::{GlobalAvgPool2d, MaxPool2d};
pub use projection::ProjectionHead;
pub use sequential::Sequential;
