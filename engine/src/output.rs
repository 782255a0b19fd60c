//! Output writers: Zarr v3 arrays, PNG images and montages, PNG line plots, CSV files, and task-stream timelines (HTML, PNG).
//!
//! Writers write where they are told; making a run's outputs appear atomically is the runner's job. The
//! timeline writers, whose files are diagnostics written outside that commit, replace their file through a
//! temporary file and a rename themselves.

use std::path::{Path, PathBuf};

pub mod commit;
pub mod csv;
pub mod direct;
pub mod image;
pub mod montage;
pub mod plot;
pub mod s3store;
pub mod sink;
pub mod timeline;
pub mod zarr;

/// A failure to write (or read back) an output, naming the file or directory and what failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A filesystem operation failed.
    #[error("{}: {action} failed: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (e.g. `create directory`).
        action: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An encoder or library call failed (Zarr, PNG, plotting).
    #[error("{}: {action} failed: {reason}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (e.g. `store chunk [0, 1]`).
        action: String,
        /// The library's message.
        reason: String,
    },
    /// The data or arguments given to the writer do not fit the output.
    #[error("{}: invalid {name}: {reason}", path.display())]
    Invalid {
        /// The file or directory.
        path: PathBuf,
        /// The offending argument (e.g. `chunk`, `data`).
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl OutputError {
    pub(crate) fn write(
        path: &Path,
        action: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> Self {
        OutputError::Write {
            path: path.to_path_buf(),
            action: action.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn invalid(path: &Path, name: &'static str, reason: impl Into<String>) -> Self {
        OutputError::Invalid {
            path: path.to_path_buf(),
            name,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        OutputError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}
