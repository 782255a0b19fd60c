//! What validation reports (a [`Problem`] per field, a [`SpecError`] per manifest) and what it knows of an
//! array's shape while it walks the stages ([`ShapeInfo`]).

use std::fmt;

use crate::dtype::DType;
use crate::error::ConfigError;

/// One problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `spec.stages[3].rechunk.chunks`.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file is not valid YAML, or does not match the ArrayJob schema (unknown or missing field...).
    #[error("{file}: {message}")]
    Parse {
        /// Manifest file name.
        file: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The manifest parsed but has problems (all of them listed).
    #[error("{file}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Manifest file name.
        file: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// What validation knows about an array: rank, type, the lengths it can know and which axes are split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeInfo {
    /// Length per axis, `None` where it depends on data not read yet.
    pub dims: Vec<Option<usize>>,
    /// Whether each axis lies in a single chunk.
    pub whole: Vec<bool>,
    /// Element type, `None` when it depends on the source data.
    pub dtype: Option<DType>,
}

impl ShapeInfo {
    pub(super) fn ndim(&self) -> usize {
        self.dims.len()
    }
}

/// Records the problem of a failed check (which names its field); the value when it passed.
pub(super) fn check<T>(p: &mut Vec<Problem>, r: Result<T, ConfigError>) -> Option<T> {
    r.map_err(|e| p.push(e.into())).ok()
}

impl From<ConfigError> for Problem {
    fn from(e: ConfigError) -> Problem {
        Problem {
            path: e.field,
            message: e.message,
        }
    }
}
