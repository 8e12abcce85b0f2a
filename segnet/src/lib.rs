//! segnet: DeepLabV3+ with pixel-wise label-based contrastive pretraining (Zhao et al.), trained
//! from scratch on segnet's own engine. The binary's commands live in [`commands`]; the library
//! parts (model, training stages, evaluation) are usable on their own.

pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod data_cmd;
pub mod densecl;
pub mod embed;
pub mod evaluate;
pub mod experiment;
pub mod infer;
pub mod init_backbone;
pub mod keep_awake;
pub mod malloc;
pub mod metrics;
pub mod model;
pub mod net;
pub mod objective;
pub mod pca;
pub mod plot;
pub mod predict;
pub mod run_dir;
pub mod train;
pub mod u2pl;
