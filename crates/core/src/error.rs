//! The error type of the kernel layer.

use crate::{DType, Shape};

/// Result alias for kernel-layer operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors raised by backends and ops. Variants carry the op and the values involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor had the wrong shape for an op.
    #[error("{op}: expected shape {expected}, got {got}")]
    Shape {
        /// The op or place that checked.
        op: &'static str,
        /// What it needed.
        expected: Shape,
        /// What it got.
        got: Shape,
    },
    /// An op does not support a dtype on a backend.
    #[error("{op} does not support dtype {dtype} on the {backend} backend")]
    Unsupported {
        /// The op.
        op: &'static str,
        /// The offending dtype.
        dtype: DType,
        /// The backend's name.
        backend: &'static str,
    },
    /// A value was out of range or inconsistent (a message names it).
    #[error("{op}: {msg}")]
    Invalid {
        /// The op or place that checked.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// A device-level failure (driver, allocation).
    #[error("{backend} backend: {msg}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// What failed.
        msg: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid { op, msg: msg.into() }
    }
}
