//! Compute kernels on in-memory chunks: reductions, centroid recentering, FFT spectra and region copies.
//!
//! Kernels are pure functions of their inputs; they know nothing of tasks, stores or files.

pub mod fft;
pub mod recenter;
pub mod reduce;

/// An invalid argument given to a kernel (or undecodable kernel state), naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// An argument is out of range or inconsistent with the chunk it applies to.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// Name of the offending argument (e.g. `axes`, `window`).
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Serialised kernel state (e.g. a reduction partial) could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

impl KernelError {
    /// Shorthand for [`KernelError::InvalidArgument`].
    pub(crate) fn arg(name: &'static str, reason: impl Into<String>) -> Self {
        KernelError::InvalidArgument {
            name,
            reason: reason.into(),
        }
    }
}
