//! How running a task fails: [`ExecError`], naming the stage and chunk.

use crate::kernels::KernelError;
use crate::source::SourceError;
use crate::store::StoreError;

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Reading the source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A kernel refused its input.
    #[error("stage '{stage}', chunk {chunk:?}: {source}")]
    Kernel {
        /// Stage name.
        stage: String,
        /// Chunk index.
        chunk: Vec<usize>,
        /// Kernel error.
        source: KernelError,
    },
    /// The chunk store failed (spill I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An output could not be written.
    #[error("stage '{stage}': writing {target} failed: {message}")]
    Output {
        /// Stage name.
        stage: String,
        /// File or directory.
        target: String,
        /// What failed.
        message: String,
    },
    /// The run was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The plan's tasks do not fit together: a bug, reported rather than run or left hanging.
    #[error("internal error: {0}")]
    Internal(String),
}
