//! Sources: where the slices of the input array come from (one 2-D image per index along axis 0).
//!
//! Every source implements [`SliceSource`]; [`open`] builds one from the spec. A source is read in chunks of
//! consecutive slices, each checked against the shape and type of the first slice.

use crate::array::{Chunk, DType};

/// Shape and element type every slice of a source must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceInfo {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Element type.
    pub dtype: DType,
}

/// A stack of 2-D slices, read by index range.
pub trait SliceSource: Send + Sync + std::fmt::Debug {
    /// Number of slices (length of axis 0).
    fn len(&self) -> usize;

    /// True when the source has no slice.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape and type of a slice (the first one defines it for the whole stack).
    ///
    /// # Errors
    /// When the first slice cannot be fetched or decoded.
    fn slice_info(&self) -> Result<SliceInfo, SourceError>;

    /// Reads slices `start..end` as one `(end - start, height, width)` chunk.
    ///
    /// # Errors
    /// When a slice cannot be fetched or decoded, or differs in shape or type from [`SliceSource::slice_info`];
    /// the error names the slice index and its URL or file.
    fn read(&self, start: usize, end: usize) -> Result<Chunk, SourceError>;

    /// A short human description (e.g. `http https://host/{index} [0, 10000)`), for plans and messages.
    fn describe(&self) -> String;
}

/// What went wrong reading a source. Every variant names what was being read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The spec does not describe a readable source (bad template, no files matched, empty range...).
    #[error("{field}: {message}")]
    Config {
        /// Spec field path, e.g. `spec.source.files.glob`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An HTTP request got a non-success status (after retries for 5xx).
    #[error("slice {index}: GET {url} failed with HTTP {status} after {attempts} attempt(s)")]
    HttpStatus {
        /// Slice index.
        index: usize,
        /// Requested URL.
        url: String,
        /// Final HTTP status code.
        status: u16,
        /// Attempts made.
        attempts: u32,
    },
    /// An HTTP request failed below HTTP (connection refused or reset, timeout), after retries.
    #[error("slice {index}: GET {url} failed after {attempts} attempt(s): {message}")]
    HttpTransport {
        /// Slice index.
        index: usize,
        /// Requested URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The transport error.
        message: String,
    },
    /// A local file could not be read.
    #[error("slice {index}: cannot read {path}: {source}")]
    Io {
        /// Slice index.
        index: usize,
        /// File path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes of a slice are not a decodable image of a supported kind.
    #[error("slice {index}: cannot decode {location}: {message}")]
    Decode {
        /// Slice index.
        index: usize,
        /// URL or file path.
        location: String,
        /// Decoder message or the unsupported colour type.
        message: String,
    },
    /// A slice differs in shape or element type from the first slice.
    #[error(
        "slice {index} ({location}) is {found_height}x{found_width} {found_dtype}, but slice 0 is \
         {height}x{width} {dtype}: all slices must have the same shape and type"
    )]
    Mismatch {
        /// Slice index.
        index: usize,
        /// URL or file path.
        location: String,
        /// Rows of slice 0.
        height: usize,
        /// Columns of slice 0.
        width: usize,
        /// Type of slice 0.
        dtype: DType,
        /// Rows of this slice.
        found_height: usize,
        /// Columns of this slice.
        found_width: usize,
        /// Type of this slice.
        found_dtype: DType,
    },
}
