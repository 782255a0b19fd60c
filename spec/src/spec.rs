//! The `ArrayJob` spec (API group `arrayjob.dev`, version `v1alpha1`).
//!
//! These are the types the operator uses as its CRD spec and the CLI reads from a manifest. The doc comment on
//! every field becomes its `kubectl explain` text, so keep them written for users.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::dtype::DType;

/// API group of the `ArrayJob` resource.
pub const GROUP: &str = "arrayjob.dev";
/// API version of the types in this module.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` string of a manifest.
pub const API_VERSION: &str = "arrayjob.dev/v1alpha1";
/// `kind` of a manifest.
pub const KIND: &str = "ArrayJob";
/// Name of the implicit input that refers to the job's source array.
pub const SOURCE_INPUT: &str = "source";
/// Default slices per source chunk, when neither the spec nor the source's own chunking gives one.
pub const DEFAULT_SLICES_PER_CHUNK: usize = 20;
/// Requests in flight at once for an `http` source when the spec does not say.
pub const DEFAULT_HTTP_CONCURRENCY: usize = 4;

/// A whole `kind: ArrayJob` manifest as read from a YAML file (the local runner's view of the resource).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArrayJobManifest {
    /// Must be `arrayjob.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `ArrayJob`.
    pub kind: String,
    /// Object metadata; only the name is used locally.
    pub metadata: ManifestMetadata,
    /// What to compute.
    pub spec: ArrayJobSpec,
}

/// The subset of Kubernetes object metadata a manifest file carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestMetadata {
    /// Name of the job; used for the output directory and in messages.
    pub name: String,
    /// Namespace (used by `kubectl apply`; ignored locally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels (used by Kubernetes; ignored locally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// Annotations (used by Kubernetes; ignored locally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// What an ArrayJob computes: a source array and a small DAG of stages over it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArrayJobSpec {
    /// Where the 3-D array comes from: one 2-D image per index along axis 0.
    pub source: SourceSpec,
    /// The stages, each reading the source or an earlier stage by name.
    pub stages: Vec<StageSpec>,
    /// Object storage the job uses: its S3 bucket and how to reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// How a distributed run moves rechunk pieces to the worker that merges them: `direct` (worker to
    /// worker, the default) or `s3` (through the job's scratch prefix on `storage.s3`, one object per sending
    /// worker and merge, so workers may come and go and a restarted coordinator can resume). Both give
    /// identical outputs; a run in one process has nothing to exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<Exchange>,
}

/// How rechunk pieces travel between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Exchange {
    /// From the producing worker's memory to the merging worker, over the network.
    #[default]
    Direct,
    /// Through objects in the job's S3 scratch prefix.
    S3,
}

impl ArrayJobSpec {
    /// `storage.s3`, when set.
    pub fn s3_storage(&self) -> Option<&S3Storage> {
        self.storage.as_ref().and_then(|s| s.s3.as_ref())
    }
}

/// Object storage of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSpec {
    /// An S3 (or S3-compatible: MinIO, SeaweedFS) bucket. Its connection settings (region, endpoint,
    /// path-style) also serve the `s3` source. Credentials come from the AWS default chain: environment,
    /// profile, web identity (IAM roles for service accounts), instance metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
}

/// The job's S3 bucket, checked (ListObjectsV2 of one key) before any work starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Storage {
    /// Bucket name; also the default bucket of an `s3` source.
    pub bucket: String,
    /// Key prefix under which the job keeps its data, e.g. `arrayjob/` (no leading '/').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Region to sign requests for. Default: `AWS_REGION` or the profile's, else `us-east-1` when an endpoint
    /// is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible server, e.g. `http://minio.storage:9000`. Default: AWS S3 (or
    /// `AWS_ENDPOINT_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket/key` instead of `bucket.endpoint/key` (MinIO and SeaweedFS usually
    /// need it). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// Size of one part of a multipart upload, MiB (5 to 5120): outputs written to S3 that are larger go up in
    /// parts. Default 16.
    #[serde(
        default,
        rename = "partSizeMiB",
        skip_serializing_if = "Option::is_none"
    )]
    pub part_size_mib: Option<u32>,
    /// Seconds a request that keeps failing for a transient reason (no answer, connection refused, 5xx,
    /// throttling) is tried again before the job fails: the S3 outage a job outlasts (0 to 3600). Default 120.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_seconds: Option<u64>,
    /// Keep a failed run's scratch prefix (`{prefix}scratch/{job}/{run}/`) for a look or a resume; a successful
    /// run's is always deleted. Default true; `arrayjob gc --scratch` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_failed_scratch: Option<bool>,
    /// Seconds a lock on S3 (an output location's, a job ledger's) stays valid without renewal (5 to 3600): a
    /// run killed without releasing it blocks the location, or the resume of its job, this long at most.
    /// Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u64>,
}

/// The source array. Exactly one of `synthetic`, `files`, `http`, `s3`, `tiff` or `zarr` must be set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// A deterministic EM-like test stack (recipe `emstack-v1`), generated in place: needs no data or network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticSource>,
    /// Local image files, by index template or glob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesSource>,
    /// Images fetched over HTTP(S), one URL per index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// Images in an S3 bucket, by key template or listed under a prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
    /// One multi-page TIFF file whose pages are the slices (8- or 16-bit grey, as written by tifffile or
    /// ImageJ; uncompressed, deflate, LZW or PackBits), local, over HTTP(S) or on S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiff: Option<TiffSource>,
    /// A 3-D Zarr v2 or v3 array, or one level of an OME-Zarr multiscale image, local, over HTTP(S) or on S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zarr: Option<ZarrSource>,
    /// Slices per source chunk (chunk length along axis 0). Each chunk is one load task. Default 20 (for
    /// `zarr`, the array's chunk depth along axis 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices_per_chunk: Option<usize>,
    /// Expected `[rows, cols]` of every slice. Lets `validate`/`plan` work without reading the data; a run
    /// fails if slice 0 differs. Optional for `files`/`http` (then slice 0 is read to learn it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_shape: Option<Vec<usize>>,
    /// Expected element type of every slice (`uint8` or `uint16`), checked like `sliceShape`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DType>,
}

/// Where one file (a TIFF stack) or one directory (a Zarr hierarchy) is. Exactly one of `path`, `url` or `s3`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TiffSource {
    /// Local path; relative paths are taken from the manifest's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP(S) URL. Pages are read with range requests when the server honours them, else in one GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// S3 object (ranged GETs). Connection settings come from `spec.storage.s3`, else the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Object>,
}

/// A Zarr array, or an OME-Zarr image (then `level` picks the array). Exactly one of `path`, `url` or `s3`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZarrSource {
    /// Local directory of the array or image (`img.zarr`); relative paths are taken from the manifest's
    /// directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP(S) URL of the array or image directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// S3 prefix of the array or image (`key` is the directory, e.g. `images/img.zarr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Object>,
    /// OME-Zarr: the multiscale level to read (`multiscales[0].datasets[level].path` of the group's
    /// attributes). Default 0 when the location is an OME-Zarr image; not allowed on a plain array.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<usize>,
    /// A chunk that is not stored: `fill` (default) reads it as the array's fill value, as Zarr defines (and
    /// zarr-python reads it); `error` fails the run naming the chunk, for data that must be complete (e.g. a
    /// copy still being uploaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_chunks: Option<MissingChunks>,
}

/// What a Zarr source does with a chunk that is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MissingChunks {
    /// The array's fill value.
    Fill,
    /// An error naming the chunk.
    Error,
}

/// An object (or a prefix) in an S3 bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Object {
    /// Bucket. Default: `spec.storage.s3.bucket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Key of the object (or of the directory, without a trailing '/').
    pub key: String,
}

/// Synthetic stack of recipe `emstack-v1` (see `shared/bench/gen_data.py`): a drifting bright blob on noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyntheticSource {
    /// Number of slices (length of axis 0).
    pub slices: usize,
    /// Rows per slice (a multiple of 4).
    pub height: usize,
    /// Columns per slice (a multiple of 4).
    pub width: usize,
    /// Seed of the noise stream. Default 20170117.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Local image files (PNG, TIFF or JPEG; 8- or 16-bit grey). Exactly one of `pattern` or `glob`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesSource {
    /// Path template with the slice index as `{index}`, `{index:05}`, `%d` or `%05d`; used with `start`/`stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Glob pattern; matching files are sorted by name and become indices 0, 1, 2, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// First index (inclusive), with `pattern`. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// Last index (exclusive), with `pattern`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<u64>,
    /// Relative paths are taken from this directory; locally it defaults to the manifest's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dir: Option<String>,
}

/// Images fetched by URL, one per index in `[start, stop)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSource {
    /// URL with the slice index as `{index}` or `{index:05}` (zero-padded to 5 digits).
    pub url_template: String,
    /// First index (inclusive). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// Last index (exclusive).
    pub stop: u64,
    /// Requests in flight at once. Default 4 (raise it for distant servers, where latency dominates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Retries of one URL after a 5xx answer, a reset or a timeout, with exponential backoff. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Timeout of one request in seconds. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// Images read from an S3 bucket (PNG, TIFF or JPEG; 8- or 16-bit grey). Exactly one of `keys` or `prefix`.
/// Connection settings come from `spec.storage.s3`, or from the environment when it is not set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Source {
    /// Bucket. Default: `spec.storage.s3.bucket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Key template with the slice index as `{index}`, `{index:05}`, `%d` or `%05d`; used with `start`/`stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<String>,
    /// Key prefix, e.g. `slices/`: every object under it, sorted by key, becomes indices 0, 1, 2, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// First index (inclusive), with `keys`. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// Last index (exclusive), with `keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<u64>,
    /// Requests in flight at once, shared by every reader of the source in a process (each worker of a
    /// distributed run has its own). Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Retries of one request after a 5xx answer, throttling (`SlowDown`) or a timeout, with exponential backoff
    /// and jitter. Default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Timeout of one request attempt in seconds. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// One stage: reads `input` and applies exactly one operation (`select`, `reduce`, `recenter`, `rechunk` or
/// `fft`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageSpec {
    /// Unique name (lowercase letters, digits and '-'); other stages use it as their `input`.
    pub name: String,
    /// `source` or the name of another stage.
    pub input: String,
    /// Pick indices along some axes, like NumPy's `stack[1000:9001:1000, :, ::2]` or `stack[5000]`: one entry
    /// per selected axis (axes not listed are kept whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Vec<AxisSelection>>,
    /// Reduce over some axes (mean, sum, min, max, std).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<ReduceOp>,
    /// Crop every 2-D slice to a window around its intensity centroid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recenter: Option<RecenterOp>,
    /// Change the chunk shape (an all-to-all exchange when the chunked axes change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rechunk: Option<RechunkOp>,
    /// FFT along one axis, returned as a real spectrum (power or amplitude).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fft: Option<FftOp>,
    /// Files to write from this stage's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSpec>,
}

/// The operation of a stage, once validated.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOp {
    /// See [`AxisSelection`].
    Select(Vec<AxisSelection>),
    /// See [`ReduceOp`].
    Reduce(ReduceOp),
    /// See [`RecenterOp`].
    Recenter(RecenterOp),
    /// See [`RechunkOp`].
    Rechunk(RechunkOp),
    /// See [`FftOp`].
    Fft(FftOp),
}

impl StageSpec {
    /// The operations set on this stage (a valid stage has exactly one).
    pub fn ops(&self) -> Vec<StageOp> {
        let mut v = Vec::new();
        if let Some(o) = &self.select {
            v.push(StageOp::Select(o.clone()));
        }
        if let Some(o) = &self.reduce {
            v.push(StageOp::Reduce(o.clone()));
        }
        if let Some(o) = &self.recenter {
            v.push(StageOp::Recenter(o.clone()));
        }
        if let Some(o) = &self.rechunk {
            v.push(StageOp::Rechunk(o.clone()));
        }
        if let Some(o) = &self.fft {
            v.push(StageOp::Fft(o.clone()));
        }
        v
    }
}

/// The indices kept along one axis: exactly one of `index` (one index; the axis is dropped, like NumPy's
/// `stack[5000]`), `indices` (an increasing list; the axis is kept) or a range `start`/`stop`/`step` (kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AxisSelection {
    /// Axis of the input (0-based); each axis at most once per stage.
    pub axis: usize,
    /// One index; the result has one axis fewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Strictly increasing indices; the axis keeps one entry per index (a single index keeps length 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indices: Option<Vec<usize>>,
    /// First index of a range (inclusive). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<usize>,
    /// End of a range (exclusive, clipped to the axis length like NumPy). Default: the axis length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<usize>,
    /// Step of a range (positive). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
}

/// Reduction kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReduceKind {
    /// Arithmetic mean (float64).
    Mean,
    /// Sum (float64).
    Sum,
    /// Minimum (input type).
    Min,
    /// Maximum (input type).
    Max,
    /// Population standard deviation, like NumPy's `std` with `ddof=0` (float64).
    Std,
}

/// Reduce over `axes` with a tree reduction, accumulating in float64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReduceOp {
    /// The reduction.
    pub op: ReduceKind,
    /// Axes to reduce over (0-based, distinct, in range of the input).
    pub axes: Vec<usize>,
}

/// Recenter every slice: compute its intensity centroid, clamp it so the window stays inside the slice, crop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecenterOp {
    /// Window `[rows, cols]` to crop; default half the slice in each direction, rounded down to an even
    /// length (the post's 1000 of 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Vec<usize>>,
}

/// The post's window for an `h x w` slice: `[2 * (h / 4), 2 * (w / 4)]` (bench_common.py crops `+-H/4` around
/// the clamped centroid), i.e. half the slice when its sides are multiples of 4 (1000 of 2000 in the post).
/// With this window the engine's `recenter_chunk` reproduces the post's `recenter` exactly for any slice size.
pub fn post_window(h: usize, w: usize) -> [usize; 2] {
    [2 * (h / 4), 2 * (w / 4)]
}

/// New chunk shape: one entry per axis, `-1` meaning the whole axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RechunkOp {
    /// Chunk length per axis (`-1` = whole axis).
    pub chunks: Vec<i64>,
}

/// FFT along one axis of a real input; the result is real: `|X|^2` (power) or `|X|` (amplitude).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FftOp {
    /// Axis to transform; it must lie in a single chunk (rechunk first with `-1` on it).
    pub axis: usize,
    /// `true` (default): power spectrum `|X|^2`; `false`: amplitude spectrum `|X|`.
    #[serde(default = "default_true")]
    pub power: bool,
    /// Keep only the non-negative frequencies (`n/2 + 1` of them, like `numpy.fft.rfft`). Default false: all `n`.
    #[serde(default)]
    pub onesided: bool,
    /// Result type, `float32` (default) or `float64`; computed in float64 either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<DType>,
}

fn default_true() -> bool {
    true
}

/// Files written from a stage's result. Paths are relative to the job's output location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputSpec {
    /// A Zarr v3 array (directory name, e.g. `power.zarr`) with the stage's chunk grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zarr: Option<String>,
    /// A PNG of a 2-D result, scaled from its minimum (black) to its maximum (white).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A PNG line plot of a 1-D result, or of chosen series along axis 0 of a 3-D result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plot: Option<PlotOutput>,
    /// A CSV of a 0-D result (`value`), a 1-D result (`index,value`) or a 2-D result (one row per row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<String>,
    /// Several 2-D slices of a 3-D result side by side in one PNG, each labelled with its index along axis 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub montage: Option<MontageOutput>,
    /// `true`: a 0-D result (every axis reduced) is reported as a number, in `summary.json` (the stage's
    /// `value`) and in the run's table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<bool>,
    /// Compression of the Zarr array's chunks (default `{codec: zstd, level: 1}`). Float spectra shrink only to
    /// about 0.55 of their size with zstd; `{codec: none}` writes them faster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zarr_compression: Option<ZarrCompression>,
}

/// How the chunks of a Zarr output are compressed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZarrCompression {
    /// `zstd` or `none`.
    pub codec: CompressionCodec,
    /// zstd level, from -7 (fastest) to 22 (smallest); default 1. Not allowed with `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<i32>,
}

/// A Zarr chunk compressor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CompressionCodec {
    /// zstd (the `zstd` codec of Zarr v3).
    Zstd,
    /// No compression: chunks are stored as raw little-endian bytes.
    None,
}

/// Lowest and highest zstd level accepted in `zarrCompression.level`.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=22;

/// A PNG of the slices of a 3-D result along axis 0, as tiles in rows of `columns`, scaled together from the
/// minimum over all tiles (black) to the maximum (white), each tile under a label with its index along axis 0
/// (the source's index when axis 0 came from the source through selects, recenters and rechunks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MontageOutput {
    /// File name, e.g. `row.png`.
    pub file: String,
    /// Tiles per row. Default: all slices in one row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<usize>,
}

/// A PNG line plot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlotOutput {
    /// File name, e.g. `brightness.png`.
    pub file: String,
    /// For a 3-D result: the `[row, col]` pixels whose series along axis 0 are drawn, one line each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixels: Option<Vec<Vec<usize>>>,
    /// Draw the y axis on a log scale (useful for power spectra). Default false.
    #[serde(default)]
    pub log_y: bool,
    /// Plot title; defaults to the stage name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}
