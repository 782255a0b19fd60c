//! Sources: where the slices of the input array come from (one 2-D image per index along axis 0).
//!
//! Every source implements [`SliceSource`]; [`open`] builds one from the spec. A source is read in chunks of
//! consecutive slices, each checked against the shape and type of the first slice, or against the spec's
//! `sliceShape`/`dtype` when it declares them ([`Declared`]).
//!
//! Kinds: [`synthetic`] (recipe [`emstack`], generated in memory), [`files`] (index template or glob),
//! [`http`] (index template, bounded concurrency, retries) and [`s3`] (key template or listed prefix, bounded
//! concurrency, the SDK's retries); [`template`] parses index templates and [`decode`] turns PNG/TIFF/JPEG bytes
//! into slices.

use std::path::Path;
use std::sync::OnceLock;

use crate::array::{Chunk, DType};
use crate::s3::S3Error;
use crate::spec::{ArrayJobSpec, S3Storage, SourceSpec};

pub mod decode;
pub mod emstack;
pub mod files;
pub mod http;
pub mod limits;
pub mod location;
pub mod s3;
pub mod stack;
pub mod synthetic;
// Index templates are part of the spec; re-exported at their old path.
pub use arrayjob_spec::template;
pub mod tiff;
pub mod zarr;

pub use files::FilesSliceSource;
pub use http::HttpSliceSource;
pub use s3::S3SliceSource;
pub use synthetic::SyntheticSliceSource;
pub use template::IndexTemplate;
pub use tiff::TiffSliceSource;
pub use zarr::ZarrSliceSource;

/// Builds the source of a job: checks the job's bucket (`spec.storage.s3`, one ListObjectsV2 of at most one
/// key) unless the source reads that bucket itself, then opens the source ([`open_with`]). Everything here
/// happens before any work starts.
///
/// # Errors
/// As [`open_with`]; [`SourceError::S3`] naming `ListObjectsV2` and the bucket when the job's bucket is
/// missing or refuses the credentials.
pub fn open_job(spec: &ArrayJobSpec, base_dir: &Path) -> Result<Box<dyn SliceSource>, SourceError> {
    let storage = spec.s3_storage();
    if let Some(st) = storage {
        let source_bucket = spec
            .source
            .s3
            .as_ref()
            .map(|s| s.bucket.as_deref().unwrap_or(&st.bucket));
        if source_bucket != Some(st.bucket.as_str()) {
            probe_storage(st)?;
        }
    }
    open_with(&spec.source, storage, base_dir)
}

/// Checks that the job's bucket exists and takes its credentials.
fn probe_storage(storage: &S3Storage) -> Result<(), SourceError> {
    use crate::s3::{RequestPolicy, S3Connection, S3Settings, probe_bucket, runtime};
    let connection = S3Connection::connect(&S3Settings::from_spec(Some(storage)))?;
    let policy = RequestPolicy::of_storage(Some(storage));
    let client = connection.client(policy);
    runtime()?.block_on(probe_bucket(&client, &storage.bucket, policy))?;
    Ok(())
}

/// [`open_with`] without `spec.storage.s3` (an `s3` source then takes its settings from the environment).
///
/// # Errors
/// As [`open_with`].
pub fn open(spec: &SourceSpec, base_dir: &Path) -> Result<Box<dyn SliceSource>, SourceError> {
    open_with(spec, None, base_dir)
}

/// Builds the source the spec describes. Relative file paths are taken from `base_dir` (locally, the manifest's
/// directory) or from `files.baseDir`, itself relative to `base_dir`. An `s3` source connects with `storage`'s
/// settings (then the environment's) and takes its bucket by default.
///
/// # Errors
/// [`SourceError::Config`] when not exactly one of `synthetic`, `files`, `http`, `s3`, `tiff` or `zarr` is set, or the one set is
/// invalid (bad template, empty range, no file matched...), or `sliceShape`/`dtype` are invalid;
/// [`SourceError::S3`] when an `s3` source's bucket or first key cannot be read.
pub fn open_with(
    spec: &SourceSpec,
    storage: Option<&S3Storage>,
    base_dir: &Path,
) -> Result<Box<dyn SliceSource>, SourceError> {
    let kinds = [
        ("synthetic", spec.synthetic.is_some()),
        ("files", spec.files.is_some()),
        ("http", spec.http.is_some()),
        ("s3", spec.s3.is_some()),
        ("tiff", spec.tiff.is_some()),
        ("zarr", spec.zarr.is_some()),
    ];
    let set: Vec<&str> = kinds
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
    let found = match set.as_slice() {
        [_] => String::new(),
        [] => "none is set".to_owned(),
        more => format!("found {}", more.join(", ")),
    };
    let not_one = || SourceError::Config {
        field: "spec.source".into(),
        message: format!(
            "exactly one of synthetic, files, http, s3, tiff or zarr must be set; {found}"
        ),
    };
    if set.len() != 1 {
        return Err(not_one());
    }
    if let Some(z) = &spec.zarr {
        let declared = Declared::from_spec_any(spec)?;
        return Ok(Box::new(ZarrSliceSource::new(
            z, storage, base_dir, declared,
        )?));
    }
    let declared = Declared::from_spec(spec)?;
    Ok(if let Some(s) = &spec.synthetic {
        Box::new(SyntheticSliceSource::new(s, declared)?)
    } else if let Some(f) = &spec.files {
        Box::new(FilesSliceSource::new(f, base_dir, declared)?)
    } else if let Some(h) = &spec.http {
        Box::new(HttpSliceSource::new(h, declared)?)
    } else if let Some(s) = &spec.s3 {
        Box::new(S3SliceSource::new(s, storage, declared)?)
    } else if let Some(t) = &spec.tiff {
        Box::new(TiffSliceSource::new(t, storage, base_dir, declared)?)
    } else {
        return Err(not_one());
    })
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

    /// Slices per chunk the source is stored in (a Zarr array's chunk depth along axis 0), which the plan's
    /// `slicesPerChunk` defaults to; `None` when the source has no such grain.
    fn chunk_depth(&self) -> Option<usize> {
        None
    }
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
    /// An S3 request failed, or the S3 configuration cannot work; names the operation, bucket and key.
    #[error(transparent)]
    S3(#[from] S3Error),
    /// A file, URL or key of a `tiff` or `zarr` source cannot be read, or does not hold what it should.
    #[error("{location}: {message}")]
    Object {
        /// Path, URL or `s3://` URI.
        location: String,
        /// What went wrong.
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
        "slice {index} ({location}) is {found_height}x{found_width} {found_dtype}, expected {height}x{width} \
         {dtype} (from {expected_from}): all slices must have the same shape and type"
    )]
    Mismatch {
        /// Slice index.
        index: usize,
        /// URL or file path.
        location: String,
        /// Where the expected shape and type come from: slice 0, the spec's `sliceShape`/`dtype`, or both.
        expected_from: String,
        /// Expected rows.
        height: usize,
        /// Expected columns.
        width: usize,
        /// Expected element type.
        dtype: DType,
        /// Rows of this slice.
        found_height: usize,
        /// Columns of this slice.
        found_width: usize,
        /// Type of this slice.
        found_dtype: DType,
    },
}

/// A spec check's problem ([`arrayjob_spec::ConfigError`]) is a source configuration error, with the same text.
impl From<arrayjob_spec::ConfigError> for SourceError {
    fn from(e: arrayjob_spec::ConfigError) -> SourceError {
        SourceError::Config {
            field: e.field,
            message: e.message,
        }
    }
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

/// Slice shape and type the spec declares (`sliceShape`, `dtype`), each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Declared {
    /// `[rows, cols]` from `spec.source.sliceShape`.
    pub shape: Option<(usize, usize)>,
    /// Element type from `spec.source.dtype`.
    pub dtype: Option<DType>,
}

impl Declared {
    /// Reads and checks `sliceShape` and `dtype` of the spec.
    ///
    /// # Errors
    /// [`SourceError::Config`] when `sliceShape` is not two positive lengths or `dtype` is not `uint8`/`uint16`.
    pub fn from_spec(spec: &SourceSpec) -> Result<Declared, SourceError> {
        if let Some(d @ (DType::Float32 | DType::Float64)) = spec.dtype {
            return Err(SourceError::Config {
                field: "spec.source.dtype".into(),
                message: format!("image sources give uint8 or uint16 slices, not {d}"),
            });
        }
        Declared::from_spec_any(spec)
    }

    /// [`Declared::from_spec`] allowing every element type (a Zarr array has any).
    ///
    /// # Errors
    /// [`SourceError::Config`] when `sliceShape` is not two positive lengths.
    pub fn from_spec_any(spec: &SourceSpec) -> Result<Declared, SourceError> {
        let shape = match spec.slice_shape.as_deref() {
            None => None,
            Some(&[h, w]) if h > 0 && w > 0 => {
                limits::slice_side("spec.source.sliceShape[0]", h)?;
                limits::slice_side("spec.source.sliceShape[1]", w)?;
                Some((h, w))
            }
            Some(other) => {
                return Err(SourceError::Config {
                    field: "spec.source.sliceShape".into(),
                    message: format!("must be [rows, cols] with both positive, got {other:?}"),
                });
            }
        };
        Ok(Declared {
            shape,
            dtype: spec.dtype,
        })
    }

    /// Where expectations come from, for messages.
    fn basis(&self) -> &'static str {
        match (self.shape, self.dtype) {
            (None, None) => "slice 0",
            (Some(_), None) => "spec.source.sliceShape and slice 0",
            (None, Some(_)) => "slice 0 and spec.source.dtype",
            (Some(_), Some(_)) => "spec.source.sliceShape and dtype",
        }
    }
}

/// The [`SliceInfo`] of a source: declared by the spec, or found once from slice 0 (or from the first read that
/// includes slice 0), and checked against what the spec declares.
#[derive(Debug)]
struct InfoCache {
    declared: Declared,
    cell: OnceLock<SliceInfo>,
}

impl InfoCache {
    fn new(declared: Declared) -> InfoCache {
        InfoCache {
            declared,
            cell: OnceLock::new(),
        }
    }

    /// The info, learning it with `first_slice` (info and location of slice 0) if no one did yet and the spec
    /// does not declare it all.
    fn get_or_try(
        &self,
        first_slice: impl FnOnce() -> Result<(SliceInfo, String), SourceError>,
    ) -> Result<SliceInfo, SourceError> {
        if let Some(info) = self.cell.get() {
            return Ok(*info);
        }
        let info = match self.declared {
            Declared {
                shape: Some((height, width)),
                dtype: Some(dtype),
            } => SliceInfo {
                height,
                width,
                dtype,
            },
            Declared { shape, dtype } => {
                let (found, location) = first_slice()?;
                let (height, width) = shape.unwrap_or((found.height, found.width));
                let expected = SliceInfo {
                    height,
                    width,
                    dtype: dtype.unwrap_or(found.dtype),
                };
                if found != expected {
                    return Err(mismatch(
                        0,
                        location,
                        expected,
                        self.declared.basis(),
                        &found,
                    ));
                }
                expected
            }
        };
        Ok(*self.cell.get_or_init(|| info))
    }
}

/// The [`SourceError::Mismatch`] of a slice found as `found` where `expected` (from `basis`) was.
fn mismatch(
    index: usize,
    location: String,
    expected: SliceInfo,
    basis: &str,
    found: &SliceInfo,
) -> SourceError {
    SourceError::Mismatch {
        index,
        location,
        expected_from: basis.to_owned(),
        height: expected.height,
        width: expected.width,
        dtype: expected.dtype,
        found_height: found.height,
        found_width: found.width,
        found_dtype: found.dtype,
    }
}
