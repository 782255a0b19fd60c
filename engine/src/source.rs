//! Sources: where the slices of the input array come from (one 2-D image per index along axis 0).
//!
//! Every source implements [`SliceSource`]; [`open`] builds one from the spec. A source is read in chunks of
//! consecutive slices, each checked against the shape and type of the first slice.

use std::path::Path;
use std::sync::OnceLock;

use ndarray::{ArrayD, IxDyn};

use crate::array::{Chunk, DType};
use crate::spec::SourceSpec;

pub mod decode;
pub mod emstack;
pub mod files;
pub mod http;
pub mod synthetic;
pub mod template;

pub use files::FilesSliceSource;
pub use http::HttpSliceSource;
pub use synthetic::SyntheticSliceSource;
pub use template::IndexTemplate;

/// Builds the source the spec describes. Relative file paths are taken from `base_dir` (locally, the manifest's
/// directory) or from `files.baseDir`, itself relative to `base_dir`.
///
/// # Errors
/// [`SourceError::Config`] when not exactly one of `synthetic`, `files` or `http` is set, or the one set is
/// invalid (bad template, empty range, no file matched...).
pub fn open(spec: &SourceSpec, base_dir: &Path) -> Result<Box<dyn SliceSource>, SourceError> {
    match (&spec.synthetic, &spec.files, &spec.http) {
        (Some(s), None, None) => Ok(Box::new(SyntheticSliceSource::new(s)?)),
        (None, Some(f), None) => Ok(Box::new(FilesSliceSource::new(f, base_dir)?)),
        (None, None, Some(h)) => Ok(Box::new(HttpSliceSource::new(h)?)),
        (s, f, h) => {
            let set: Vec<&str> = [
                ("synthetic", s.is_some()),
                ("files", f.is_some()),
                ("http", h.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect();
            let found = if set.is_empty() {
                "none is set".to_owned()
            } else {
                format!("found {}", set.join(", "))
            };
            Err(SourceError::Config {
                field: "spec.source".into(),
                message: format!("exactly one of synthetic, files or http must be set; {found}"),
            })
        }
    }
}

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
    /// A read asked for slices the source does not have.
    #[error("slices {start}..{end} of {source_desc}: out of range, the source has {len} slice(s)")]
    OutOfRange {
        /// First slice asked for.
        start: usize,
        /// End (exclusive) of the slices asked for.
        end: usize,
        /// Number of slices of the source.
        len: usize,
        /// [`SliceSource::describe`] of the source.
        source_desc: String,
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

impl SliceInfo {
    /// Shape and type of a 2-D chunk, or `None` when it is not 2-D.
    pub fn of(slice: &Chunk) -> Option<SliceInfo> {
        match *slice.shape() {
            [height, width] => Some(SliceInfo {
                height,
                width,
                dtype: slice.dtype(),
            }),
            _ => None,
        }
    }
}

/// Checks that `start..end` is a non-empty range of slices of `source`.
fn check_range(source: &dyn SliceSource, start: usize, end: usize) -> Result<(), SourceError> {
    if start < end && end <= source.len() {
        Ok(())
    } else {
        Err(SourceError::OutOfRange {
            start,
            end,
            len: source.len(),
            source_desc: source.describe(),
        })
    }
}

/// The [`SliceInfo`] of a source, found once from slice 0 (or from the first read that includes slice 0).
#[derive(Debug, Default)]
struct InfoCache(OnceLock<SliceInfo>);

impl InfoCache {
    /// The cached info, computing it with `first_slice` if no one did yet.
    fn get_or_try(
        &self,
        first_slice: impl FnOnce() -> Result<SliceInfo, SourceError>,
    ) -> Result<SliceInfo, SourceError> {
        if let Some(info) = self.0.get() {
            return Ok(*info);
        }
        let info = first_slice()?;
        Ok(*self.0.get_or_init(|| info))
    }
}

/// Stacks decoded 2-D slices `start..` into one 3-D chunk, checking each against `info`.
/// `location` gives the file or URL of a slice index, for messages.
fn stack(
    start: usize,
    slices: Vec<Chunk>,
    info: SliceInfo,
    location: impl Fn(usize) -> String,
) -> Result<Chunk, SourceError> {
    for (i, slice) in slices.iter().enumerate() {
        if SliceInfo::of(slice) != Some(info) {
            let (found_height, found_width) = match *slice.shape() {
                [h, w] => (h, w),
                _ => (0, 0),
            };
            return Err(SourceError::Mismatch {
                index: start + i,
                location: location(start + i),
                height: info.height,
                width: info.width,
                dtype: info.dtype,
                found_height,
                found_width,
                found_dtype: slice.dtype(),
            });
        }
    }
    let shape = IxDyn(&[slices.len(), info.height, info.width]);
    macro_rules! concat {
        ($variant:ident) => {{
            let mut data = Vec::with_capacity(slices.len() * info.height * info.width);
            for slice in &slices {
                if let Chunk::$variant(a) = slice {
                    data.extend(a.iter().copied());
                }
            }
            Chunk::$variant(ArrayD::from_shape_vec(shape, data).map_err(|e| {
                SourceError::Config {
                    field: "spec.source".into(),
                    message: format!("cannot stack slices {start}..: {e}"),
                }
            })?)
        }};
    }
    Ok(match info.dtype {
        DType::Uint8 => concat!(U8),
        DType::Uint16 => concat!(U16),
        DType::Float32 => concat!(F32),
        DType::Float64 => concat!(F64),
    })
}
