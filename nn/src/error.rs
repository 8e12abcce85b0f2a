//! The error type of the nn crate: engine failures pass through unchanged; checkpoints and
//! optimiser settings add their own cases, each naming the file, tensor or setting at fault.

use std::path::PathBuf;

/// Result alias used throughout the nn crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An engine op failed (shape mismatch, invalid hyperparameter, ...).
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// A checkpoint could not be written or read: unreadable, truncated, corrupt, wrong format,
    /// or its tensors do not fit the model (the message lists them by name).
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// An invalid setting of a layer, optimiser or schedule (negative learning rate, ...).
    #[error("{what}: invalid setting: {msg}")]
    Config {
        /// The component (e.g. "sgd", "lr schedule").
        what: &'static str,
        /// What is wrong.
        msg: String,
    },
}

impl Error {
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }
    pub(crate) fn config(what: &'static str, msg: impl Into<String>) -> Self {
        Error::Config { what, msg: msg.into() }
    }
}
