//! Why a run (local or distributed) failed: [`RunError`], over the errors of the areas a run goes through, and
//! [`io_err`], which names the path of a failed filesystem call.

use std::path::Path;

use crate::exec::ExecError;
use crate::output::OutputError;
use crate::output::commit::CommitError;
use crate::plan::PlanError;
use crate::source::SourceError;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The source could not be opened or its first slice read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The spec does not fit the data.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Execution failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// An output file could not be written or moved into place.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// An S3 request failed (output location, lock, publish).
    #[error(transparent)]
    S3(#[from] crate::s3::S3Error),
    /// The output location could not be locked, prepared or committed into.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The output location could not be prepared.
    // The I/O error is in the message, not a `source`, so `{:#}` chains do not print it twice.
    #[error("output directory {path}: {error}")]
    OutDir {
        /// Directory.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// Maps an I/O error on `path` to [`RunError::OutDir`].
pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |error| RunError::OutDir {
        path: path.display().to_string(),
        error,
    }
}
