//! The engine's error type: every failure names the op and the shapes involved.

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with enough context to find the offending call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes that the op cannot combine.
    #[error("{op}: shape mismatch: {msg}")]
    Shape {
        /// Op name.
        op: &'static str,
        /// Human-readable description naming the shapes.
        msg: String,
    },
    /// A hyperparameter out of its valid range (stride 0, kernel larger than the padded input, ...).
    #[error("{op}: invalid argument: {msg}")]
    Invalid {
        /// Op name.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Operands of different dtypes.
    #[error("{op}: dtype mismatch: {lhs:?} vs {rhs:?}")]
    DType {
        /// Op name.
        op: &'static str,
        /// First operand's dtype.
        lhs: crate::DType,
        /// Second operand's dtype.
        rhs: crate::DType,
    },
    /// Operands on different devices, or an op without a kernel for a device.
    #[error("{op}: device: {msg}")]
    Device {
        /// Op name.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Tensors from two different tapes combined in one op, or a gradient asked of the wrong tape.
    #[error("{op}: tape: {msg}")]
    Tape {
        /// Op name.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A CUDA failure (raw code and message), or CUDA asked for in a build without the `cuda` feature.
    #[error("cuda: {0}")]
    Cuda(String),
}

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid { op, msg: msg.into() }
    }
}
