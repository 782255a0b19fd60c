//! What validation reports (a [`Problem`] per field, a [`SpecError`] per manifest) and what it knows of an
//! array's shape while it walks the stages ([`ShapeInfo`], and [`Grid`] once every length is known).

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

/// How one axis of an array is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AxisChunks {
    /// One chunk spans the axis, whatever its length.
    Whole,
    /// Chunks of this many elements (the last one shorter); a single chunk when the axis is no longer.
    Len(usize),
}

impl AxisChunks {
    /// The chunk length over an axis of length `n` (at least 1).
    pub fn length(self, n: usize) -> usize {
        match self {
            AxisChunks::Whole => n.max(1),
            AxisChunks::Len(c) => c.min(n).max(1),
        }
    }
}

/// What validation knows about an array: rank, type, the lengths it can know and how each axis is chunked.
/// With every length and the type known (see [`crate::validate::ValidatedSpec::bind`]) it is the array's
/// grid: [`ShapeInfo::grid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeInfo {
    /// Length per axis, `None` where it depends on data not read yet.
    pub dims: Vec<Option<usize>>,
    /// Chunking per axis.
    pub chunks: Vec<AxisChunks>,
    /// Element type, `None` when it depends on the source data.
    pub dtype: Option<DType>,
}

/// An array's concrete grid: its lengths, its chunk lengths and its element type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    /// Length per axis.
    pub shape: Vec<usize>,
    /// Chunk length per axis.
    pub chunks: Vec<usize>,
    /// Element type.
    pub dtype: DType,
}

impl ShapeInfo {
    /// Number of axes.
    pub fn ndim(&self) -> usize {
        self.dims.len()
    }

    /// Whether axis `a` lies in a single chunk (`false` while that depends on a length not known yet).
    pub fn is_whole(&self, a: usize) -> bool {
        match self.chunks[a] {
            AxisChunks::Whole => true,
            AxisChunks::Len(c) => self.dims[a].is_some_and(|n| c >= n),
        }
    }

    /// The concrete grid, once every length and the element type are known.
    pub fn grid(&self) -> Option<Grid> {
        let shape: Vec<usize> = self.dims.iter().copied().collect::<Option<_>>()?;
        let chunks = shape
            .iter()
            .zip(&self.chunks)
            .map(|(&n, c)| c.length(n))
            .collect();
        Some(Grid {
            shape,
            chunks,
            dtype: self.dtype?,
        })
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
