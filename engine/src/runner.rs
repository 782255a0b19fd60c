//! The local runner: manifest -> source -> plan -> execution -> output files, all or nothing.
//!
//! Outputs are written into a staging directory inside the output location and moved into place only when
//! the whole run succeeded, replacing the previous run's outputs as a whole, `summary.json` last (see
//! [`crate::output::commit`]). A failed or interrupted run leaves the previous outputs (if any) untouched and no
//! half-written file under a final name.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use crate::array::Chunk;
use crate::exec::{ChunkSink, ExecError, ExecOptions, JobProgress, NodeSnapshot, execute};
use crate::output::OutputError;
use crate::output::commit::{self, CommitError, Fingerprint, dir as outdir, s3 as publish};
use crate::output::plot::PlotSpec;
use crate::output::zarr::{ArrayPlace, ZarrOptions, ZarrWriter};
use crate::plan::{Plan, PlanError};
use crate::s3::objects::S3Location;
use crate::s3::spill::Scratch;
use crate::source::{SliceSource, SourceError};
use crate::spec::ArrayJobManifest;
use crate::store::StoreStats;

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

/// A job with its source opened and its plan built, ready to run.
#[derive(Debug)]
pub struct Prepared {
    /// The manifest.
    pub manifest: ArrayJobManifest,
    /// The opened source.
    pub source: Box<dyn SliceSource>,
    /// The plan.
    pub plan: Plan,
}

/// Opens the source of a validated manifest and builds the plan. `base_dir` resolves relative file paths
/// (the manifest's directory). The slice shape and type come from the spec when declared (so a plan can be
/// made offline; every slice read is checked against them), otherwise from reading slice 0.
///
/// # Errors
/// When the source cannot be opened or read, or the spec does not fit the data.
pub fn prepare(
    mut manifest: ArrayJobManifest,
    order: &[usize],
    base_dir: &Path,
) -> Result<Prepared, RunError> {
    let source = crate::source::open_job(&manifest.spec, base_dir)?;
    let per_chunk = &mut manifest.spec.source.slices_per_chunk;
    if per_chunk.is_none() {
        *per_chunk = source.chunk_depth();
    }
    let info = source.slice_info()?;
    let plan = Plan::build(&manifest.spec, order, source.len(), info)?;
    Ok(Prepared {
        manifest,
        source,
        plan,
    })
}

/// Where a run's outputs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutLocation {
    /// A local directory.
    Dir(PathBuf),
    /// An S3 prefix (`s3://bucket/prefix`).
    S3(S3Location),
}

impl OutLocation {
    /// `s3://bucket/prefix` as [`OutLocation::S3`], anything else as a directory.
    ///
    /// # Errors
    /// When an `s3://` URI is not valid (named as `field`).
    pub fn parse(field: &str, text: &str) -> Result<OutLocation, RunError> {
        if text.starts_with("s3://") {
            return Ok(OutLocation::S3(S3Location::parse(field, text)?));
        }
        Ok(OutLocation::Dir(PathBuf::from(text)))
    }
}

impl std::fmt::Display for OutLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutLocation::Dir(d) => write!(f, "{}", d.display()),
            OutLocation::S3(l) => write!(f, "{l}"),
        }
    }
}

/// Local run settings.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where outputs and `summary.json` go.
    pub out: OutLocation,
    /// Worker threads.
    pub threads: usize,
    /// Bytes of chunks kept in memory before spilling to disk.
    pub memory_budget: usize,
    /// Bytes spilled to local disk before the rest goes to the job's S3 scratch (with `spec.storage.s3`);
    /// `None`: disk only.
    pub spill_disk_limit: Option<u64>,
    /// A stable id for the run (`--job-id`): its scratch and staging prefixes are named by it, so a run
    /// started again with the same id resumes from the ledger of the one that was killed (outputs on S3,
    /// distributed runs; `docs/s3.md`, "Resume"). `None`: a fresh id per run.
    pub job_id: Option<String>,
}

// Lives with the spec's other name checks; re-exported at its old path.
pub use arrayjob_spec::job::check_job_id;

/// What `summary.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Job name.
    pub job: String,
    /// The run's id: its `--job-id`, or a random one.
    pub run: String,
    /// The plan's hash ([`crate::plan::PlanHash`]): runs with equal hashes compute the same results.
    pub plan_hash: crate::plan::PlanHash,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// Threads used.
    pub threads: usize,
    /// Memory budget of the chunk store, bytes.
    pub memory_budget: u64,
    /// Chunk store counters (peak resident bytes, bytes spilled and read back).
    pub store: StoreStats,
    /// Seconds after the start when the last source chunk was loaded and everything fused into its task
    /// (reductions, recentering, the rechunk's split) was done.
    pub load_end_seconds: f64,
    /// Per node (source first): tasks, bytes in/out, seconds.
    pub stages: Vec<NodeSnapshot>,
    /// Files written, relative to the output directory.
    pub outputs: Vec<OutputRecord>,
    /// S3 requests and bytes of this process, when the run used S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<crate::s3::objects::S3Counters>,
}

/// One output file of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputRecord {
    /// Stage that produced it.
    pub stage: String,
    /// `zarr`, `image`, `montage`, `plot` or `csv`.
    pub kind: String,
    /// Path relative to the output directory.
    pub path: String,
    /// What it holds (names and sizes), so that a later run can tell it is as this run wrote it before it
    /// removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
}

struct NodeSinks {
    stage: String,
    zarr: Option<ZarrWriter>,
    /// The whole result as f64, for images, plots and CSVs of small results.
    dense: Option<Mutex<Chunk>>,
    /// Chosen pixels and their series along axis 0, for plots of 3-D results.
    series: Option<PixelSeries>,
}

/// `[row, col]` pixels and, per pixel, its values along axis 0.
type PixelSeries = (Vec<[usize; 2]>, Mutex<Vec<Vec<f64>>>);

/// The outputs of a run being written in its staging directory: Zarr arrays written chunk by chunk as blocks
/// arrive, and the small outputs (images, plots, CSVs) assembled in memory and written by
/// [`Outputs::finish`].
pub struct Outputs {
    nodes: Vec<Option<NodeSinks>>,
    records: Vec<OutputRecord>,
    /// Where the small outputs are written.
    staging: PathBuf,
    /// Where the Zarr arrays are: `staging`, or the run's staging prefix on S3.
    zarr_root: ArrayPlace,
    /// The run's scratch prefix on S3 (with `spec.storage.s3`).
    scratch: Option<Scratch>,
    /// The run's ledger, when it can resume (`--job-id` with outputs on S3).
    ledger: Option<std::sync::Arc<crate::s3::ledger::Ledger>>,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs")
            .field("staging", &self.staging)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl ChunkSink for Outputs {
    fn deliver(&self, node: usize, start: &[usize], chunk: &Chunk) -> Result<(), ExecError> {
        let Some(s) = self.nodes.get(node).and_then(Option::as_ref) else {
            return Ok(());
        };
        if let Some(z) = &s.zarr {
            write_zarr_block(z, &s.stage, start, chunk)?;
        }
        self.deliver_gathered(node, start, chunk)
    }

    fn tile_shape(&self, node: usize) -> Option<Vec<usize>> {
        let s = self.nodes.get(node)?.as_ref()?;
        if s.dense.is_some() || s.series.is_some() {
            return None;
        }
        s.zarr.as_ref()?.tile_shape().map(<[usize]>::to_vec)
    }

    fn deliver_tiles(
        &self,
        node: usize,
        start: &[usize],
        _shape: &[usize],
        tiles: &[Chunk],
    ) -> Result<(), ExecError> {
        match self.nodes.get(node).and_then(Option::as_ref) {
            Some(NodeSinks {
                zarr: Some(z),
                stage,
                ..
            }) => write_zarr_tiles(z, stage, start, tiles),
            _ => Err(ExecError::Internal(format!(
                "node {node} has no sharded Zarr output to take pieces"
            ))),
        }
    }
}

/// The index in `z`'s write grid of the unit whose first element is at `start`.
fn unit_index(z: &ZarrWriter, start: &[usize]) -> Vec<usize> {
    start
        .iter()
        .zip(z.write_unit())
        .map(|(s, u)| s / u)
        .collect()
}

/// Writes the block of a node at `start` (one shard of `z`), given as its inner chunks, into its Zarr array.
///
/// # Errors
/// [`ExecError::Output`] naming the stage.
pub fn write_zarr_tiles(
    z: &ZarrWriter,
    stage: &str,
    start: &[usize],
    tiles: &[Chunk],
) -> Result<(), ExecError> {
    z.write_tiles(&unit_index(z, start), tiles)
        .map_err(|e| ExecError::Output {
            stage: stage.to_string(),
            target: "zarr".into(),
            message: e.to_string(),
        })
}

/// Writes the block of a node at `start` (one unit of `z`'s write grid) into its Zarr array.
///
/// # Errors
/// [`ExecError::Output`] naming the stage.
pub fn write_zarr_block(
    z: &ZarrWriter,
    stage: &str,
    start: &[usize],
    chunk: &Chunk,
) -> Result<(), ExecError> {
    z.write_chunk(&unit_index(z, start), chunk)
        .map_err(|e| ExecError::Output {
            stage: stage.to_string(),
            target: "zarr".into(),
            message: e.to_string(),
        })
}

impl Outputs {
    /// Takes a block of `node` into the small outputs assembled in memory (not the Zarr array).
    ///
    /// # Errors
    /// When the block does not fit the node's shape.
    pub fn deliver_gathered(
        &self,
        node: usize,
        start: &[usize],
        chunk: &Chunk,
    ) -> Result<(), ExecError> {
        let Some(s) = self.nodes.get(node).and_then(Option::as_ref) else {
            return Ok(());
        };
        if s.dense.is_some() {
            self.deliver_dense(node, start, chunk)?;
        }
        if let Some((pixels, _)) = &s.series {
            for (k, t0, values) in series_in_block(pixels, start, chunk) {
                self.deliver_series(node, k, t0, &values)?;
            }
        }
        Ok(())
    }

    /// Whether `node` assembles its whole result in memory (images, CSVs, plots of 1-D results).
    pub fn wants_dense(&self, node: usize) -> bool {
        self.nodes
            .get(node)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.dense.is_some())
    }

    /// Pastes a block of `node` at `start` into its in-memory result.
    ///
    /// # Errors
    /// When the block does not fit the node's shape.
    pub fn deliver_dense(
        &self,
        node: usize,
        start: &[usize],
        chunk: &Chunk,
    ) -> Result<(), ExecError> {
        let Some((s, Some(d))) = self
            .nodes
            .get(node)
            .and_then(Option::as_ref)
            .map(|s| (s, s.dense.as_ref()))
        else {
            return Ok(());
        };
        let mut full = d.lock().unwrap_or_else(|e| e.into_inner());
        full.paste(start, &Chunk::F64(chunk.to_f64()))
            .map_err(|m| ExecError::Output {
                stage: s.stage.clone(),
                target: "assembly".into(),
                message: m,
            })
    }

    /// Stores `values` of plotted pixel `k` of `node`, from index `t0` along axis 0.
    ///
    /// # Errors
    /// When the pixel or the range is outside the node's result.
    pub fn deliver_series(
        &self,
        node: usize,
        k: usize,
        t0: usize,
        values: &[f64],
    ) -> Result<(), ExecError> {
        let Some((s, Some((_, series)))) = self
            .nodes
            .get(node)
            .and_then(Option::as_ref)
            .map(|s| (s, s.series.as_ref()))
        else {
            return Ok(());
        };
        let mut out = series.lock().unwrap_or_else(|e| e.into_inner());
        match out
            .get_mut(k)
            .and_then(|v| v.get_mut(t0..t0 + values.len()))
        {
            Some(slot) => {
                slot.copy_from_slice(values);
                Ok(())
            }
            None => Err(ExecError::Output {
                stage: s.stage.clone(),
                target: "plot".into(),
                message: format!(
                    "series of pixel {k} from {t0} ({} values) is outside the result",
                    values.len()
                ),
            }),
        }
    }
}

/// Whether node `node`'s outputs need its whole result in one place (an image, a CSV, a plot of a 1-D
/// result).
pub fn dense_output(node: &crate::plan::Node) -> bool {
    node.output.as_ref().is_some_and(|o| {
        o.image.is_some()
            || o.csv.is_some()
            || o.montage.is_some()
            || o.value == Some(true)
            || o.plot.as_ref().is_some_and(|p| p.pixels.is_none())
    })
}

/// The plotted pixels of node `node` (`[row, col]`), if it plots pixel series of a 3-D result.
pub fn plotted_pixels(node: &crate::plan::Node) -> Option<Vec<[usize; 2]>> {
    let px = node.output.as_ref()?.plot.as_ref()?.pixels.as_ref()?;
    Some(px.iter().map(|rc| [rc[0], rc[1]]).collect())
}

/// The parts of the series of `pixels` (`[row, col]`) inside a 3-D block at `start`: (pixel number, first
/// index along axis 0, values).
pub fn series_in_block(
    pixels: &[[usize; 2]],
    start: &[usize],
    chunk: &Chunk,
) -> Vec<(usize, usize, Vec<f64>)> {
    let shape = chunk.shape();
    if shape.len() != 3 || start.len() != 3 {
        return Vec::new();
    }
    let inside: Vec<(usize, [usize; 2])> = pixels
        .iter()
        .enumerate()
        .filter(|(_, [r, c])| {
            (start[1]..start[1] + shape[1]).contains(r)
                && (start[2]..start[2] + shape[2]).contains(c)
        })
        .map(|(k, &px)| (k, px))
        .collect();
    if inside.is_empty() {
        return Vec::new();
    }
    let vals = chunk.to_f64();
    inside
        .into_iter()
        .map(|(k, [r, c])| {
            let v = (0..shape[0])
                .map(|t| vals[[t, r - start[1], c - start[2]]])
                .collect();
            (k, start[0], v)
        })
        .collect()
}

/// Maps an I/O error on `path` to [`RunError::OutDir`].
pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |error| RunError::OutDir {
        path: path.display().to_string(),
        error,
    }
}

/// How a run executes its plan: given the outputs to deliver blocks to and the staging directory (for spill
/// files), it runs every task and returns the store counters. The local executor is one; the distributed
/// coordinator is another.
pub trait Executor {
    /// Runs the plan of `job`.
    ///
    /// # Errors
    /// The first failure.
    fn execute(
        &mut self,
        job: &Prepared,
        outputs: &Outputs,
        staging: &Path,
        progress: &JobProgress,
        cancel: &AtomicBool,
    ) -> Result<StoreStats, RunError>;

    /// Files of its own to publish with the outputs (written into `staging` after a successful execution,
    /// e.g. the distributed runtime's timeline), relative to it.
    ///
    /// # Errors
    /// When a file cannot be written.
    fn extra_outputs(&mut self, _staging: &Path) -> Result<Vec<OutputRecord>, RunError> {
        Ok(Vec::new())
    }
}

/// The local executor: [`execute`] on `threads` threads of this process.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    /// Threads.
    pub threads: usize,
    /// Bytes of chunks kept in memory before spilling.
    pub memory_budget: usize,
    /// Bytes spilled to disk before the run's S3 scratch takes the rest.
    pub spill_disk_limit: Option<u64>,
}

impl Executor for LocalExecutor {
    fn execute(
        &mut self,
        job: &Prepared,
        outputs: &Outputs,
        staging: &Path,
        progress: &JobProgress,
        cancel: &AtomicBool,
    ) -> Result<StoreStats, RunError> {
        let exec_opts = ExecOptions {
            threads: self.threads,
            memory_budget: self.memory_budget,
            spill_dir: staging.join(".spill"),
            spill_tier: outputs
                .scratch()
                .zip(self.spill_disk_limit)
                .map(|(s, limit)| crate::s3::spill::spill_tier(s, "local", limit)),
        };
        Ok(execute(
            &job.plan,
            job.source.as_ref(),
            outputs,
            &exec_opts,
            progress,
            cancel,
        )?)
    }
}

/// Runs a prepared job on this process's threads ([`run_with`] and [`LocalExecutor`]).
///
/// # Errors
/// As [`run_with`].
pub fn run(
    job: &Prepared,
    opts: &RunOptions,
    progress: &JobProgress,
    cancel: &AtomicBool,
) -> Result<RunSummary, RunError> {
    let mut local = LocalExecutor {
        threads: opts.threads,
        memory_budget: opts.memory_budget,
        spill_disk_limit: opts.spill_disk_limit,
    };
    run_with(job, opts, &mut local, progress, cancel)
}

/// Runs a prepared job with `executor` into `opts.out`: a local directory ([`run_to_dir`]) or an S3 prefix
/// ([`run_to_s3`]). Either way the outputs appear as a whole, `summary.json` last, or not at all.
///
/// # Errors
/// The first failure ([`CommitError::Busy`] at once when another run holds the location); the previous outputs
/// are kept.
pub fn run_with(
    job: &Prepared,
    opts: &RunOptions,
    executor: &mut dyn Executor,
    progress: &JobProgress,
    cancel: &AtomicBool,
) -> Result<RunSummary, RunError> {
    let run = opts.job_id.clone().unwrap_or_else(run_id);
    let storage = job.manifest.spec.s3_storage();
    let scratch = storage
        .map(|s| Scratch::of(s, &job.manifest.metadata.name, &run))
        .transpose()?;
    let places = RunPlaces {
        run: &run,
        scratch: scratch.as_ref(),
    };
    let result = match &opts.out {
        OutLocation::Dir(dir) => run_to_dir(dir, places, job, opts, executor, progress, cancel),
        OutLocation::S3(out) => run_to_s3(out, places, job, opts, executor, progress, cancel),
    };
    let keep = result.is_err() && storage.and_then(|s| s.keep_failed_scratch) != Some(false);
    if let Some(s) = &scratch
        && !keep
        && let Err(e) = s.remove()
    {
        tracing::warn!(error = %e, "cannot remove the run's scratch prefix; `arrayjob gc --scratch` does");
    }
    result
}

/// The run's id and scratch prefix.
#[derive(Debug, Clone, Copy)]
struct RunPlaces<'a> {
    run: &'a str,
    scratch: Option<&'a Scratch>,
}

/// Locks `dir` (removing what killed runs left there), executes the plan, writes every output into a staging
/// directory and, when everything succeeded, replaces the previous outputs with them as a whole,
/// `summary.json` last ([`outdir::commit`]). On failure the staging directory is removed.
fn run_to_dir(
    dir: &Path,
    places: RunPlaces<'_>,
    job: &Prepared,
    opts: &RunOptions,
    executor: &mut dyn Executor,
    progress: &JobProgress,
    cancel: &AtomicBool,
) -> Result<RunSummary, RunError> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock = outdir::OutDirLock::acquire(dir)?;
    outdir::clean(dir, &lock)?;
    let staging = tempfile::Builder::new()
        .prefix(commit::STAGING_PREFIX)
        .tempdir_in(dir)
        .map_err(io_err(dir))?;
    let root = ArrayPlace::Dir(staging.path().to_path_buf());
    let outputs = Outputs::create(job, root, staging.path(), places.scratch.cloned())?;
    let summary = execute_into(
        job,
        places.run,
        opts,
        executor,
        progress,
        cancel,
        outputs,
        staging.path(),
        started,
    )?;
    let new: Vec<outdir::NewOutput> = summary
        .outputs
        .iter()
        .map(|r| outdir::NewOutput {
            path: r.path.clone(),
            fingerprint: r.fingerprint.clone().unwrap_or_else(|| Fingerprint::of([])),
        })
        .collect();
    outdir::commit(dir, staging.path(), &new)?;
    // `staging` is dropped (removed) before `lock`, which was made first: no run sees a staging dir of ours.
    Ok(summary)
}

/// Checks the bucket, locks the location (finishing what an interrupted run left), executes the plan with the
/// Zarr arrays written under the run's staging prefix by whoever computes their chunks and the small outputs
/// in a local temporary directory, then publishes ([`publish::publish`]). On failure the staging prefix is
/// deleted and the previous outputs are untouched; once the publish began, its journal owns the staging prefix.
///
/// A resumable run (`--job-id`) whose killed predecessor already published the job's outputs (the summary at
/// the location is that run's, and every output still has its fingerprint) publishes nothing again: it returns
/// that summary.
fn run_to_s3(
    out: &S3Location,
    places: RunPlaces<'_>,
    job: &Prepared,
    opts: &RunOptions,
    executor: &mut dyn Executor,
    progress: &JobProgress,
    cancel: &AtomicBool,
) -> Result<RunSummary, RunError> {
    let started = std::time::Instant::now();
    let storage = job.manifest.spec.s3_storage();
    let bucket = crate::s3::bucket(storage, &out.bucket)?;
    bucket.probe()?;
    let run = places.run;
    let lease = publish::lease_of(storage);
    let staged = out.join(&format!("{}{run}", commit::STAGING_PREFIX));
    // A resumable run owns its job's ledger before anything else: then a lock of its own run id on the
    // location is a killed predecessor's, taken over at once.
    let ledger = match (&opts.job_id, places.scratch) {
        (Some(_), Some(scratch)) => Some((take_ledger(job, scratch, lease)?, scratch)),
        _ => None,
    };
    let lock = publish::S3OutLock::acquire(&bucket, out, run, lease)?;
    // An interrupted publish is finished first: only then is it known whether this job's staging still stands.
    publish::clean(&bucket, out, &lock, Some(&staged.prefix))?;
    let mut ledger = match ledger {
        Some((l, scratch)) => match settle_ledger(job, run, l, scratch, &bucket, out)? {
            Settled::Resume(l) => Some(*l),
            Settled::Published(summary) => return Ok(*summary),
        },
        None => None,
    };
    if ledger.is_none() && opts.job_id.is_some() {
        // No ledger (no `storage.s3`): a staging prefix of this id is a killed run's, not to be resumed.
        let (b, p) = (bucket.clone(), staged.prefix.clone());
        block(async move { publish::delete_staging(&b, &p).await })?;
    }
    let local = tempfile::Builder::new()
        .prefix("arrayjob-run-")
        .tempdir()
        .map_err(io_err(&std::env::temp_dir()))?;
    let root = ArrayPlace::S3 {
        bucket: bucket.clone(),
        prefix: staged.prefix.clone(),
    };
    let mut outputs = Outputs::create(job, root, local.path(), places.scratch.cloned())?;
    outputs.ledger = ledger.take().map(std::sync::Arc::new);
    let resumable = outputs.ledger.is_some();
    let result = execute_into(
        job,
        run,
        opts,
        executor,
        progress,
        cancel,
        outputs,
        local.path(),
        started,
    )
    .and_then(|mut summary| {
        summary.s3 = Some(crate::s3::objects::counters());
        let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
        let path = local.path().join(commit::SUMMARY);
        std::fs::write(&path, text + "\n").map_err(io_err(&path))?;
        let paths: Vec<String> = summary.outputs.iter().map(|r| r.path.clone()).collect();
        publish::publish(&bucket, out, run, local.path(), &paths, &lock)?;
        Ok(summary)
    });
    // A resumable run's staging stays with its ledger (unless its scratch goes too), for the run that resumes;
    // a publish that began belongs to its journal.
    let keep_staging = (resumable && storage.and_then(|s| s.keep_failed_scratch) != Some(false))
        || matches!(
            result,
            Err(RunError::Commit(CommitError::PublishUnfinished { .. }))
        );
    if result.is_err() && !keep_staging {
        let (b, prefix) = (bucket.clone(), staged.prefix.clone());
        if let Err(e) = block(async move { publish::delete_staging(&b, &prefix).await }) {
            tracing::warn!(error = %e, "cannot remove the staging prefix of the failed run; the next run or `arrayjob gc` does");
        }
    }
    result
}

use crate::s3::ledger::Ledger;
use crate::s3::objects::block;

/// Takes the job's ledger (waiting for a killed coordinator's lease to run out) and reads it.
fn take_ledger(
    job: &Prepared,
    scratch: &Scratch,
    lease: std::time::Duration,
) -> Result<Ledger, RunError> {
    let owner = format!("coordinator-{}", run_id());
    Ok(Ledger::open(
        scratch,
        &job.plan.hash.to_string(),
        &owner,
        lease,
    )?)
}

/// What a resumable run does with the ledger it found, once the location is clean.
enum Settled {
    /// Go on from it (or from nothing, when it was empty or unusable and reset).
    Resume(Box<Ledger>),
    /// The job's outputs are published already: the ledger is what a killed run left after its publish.
    Published(Box<RunSummary>),
}

/// Decides, with the location locked and any interrupted publish finished, what the ledger is worth:
/// - written, and the location's `summary.json` is this run's (same run id and plan, every output with its
///   fingerprint): published already;
/// - written for another plan, or its staging prefix lost its marker (deleted, or being deleted, by a publish,
///   a failed run's cleanup or `arrayjob gc`): reset, and the staging and exchange emptied: the run starts over;
/// - otherwise resumed. The staging prefix is marked as the one the ledger describes.
fn settle_ledger(
    job: &Prepared,
    run: &str,
    mut ledger: Ledger,
    scratch: &Scratch,
    bucket: &crate::s3::objects::Bucket,
    out: &S3Location,
) -> Result<Settled, RunError> {
    let staged = out.join(&format!("{}{run}", commit::STAGING_PREFIX));
    let state = ledger.found();
    if state.segments > 0
        && !state.other_plan
        && let Some(summary) = published_run(bucket, out, run, job)?
    {
        tracing::warn!(location = %out, run, "the job's outputs were published by the run that was interrupted; nothing is left to do");
        let (b, p) = (bucket.clone(), staged.prefix.clone());
        block(async move { publish::delete_staging(&b, &p).await })?;
        return Ok(Settled::Published(Box::new(summary)));
    }
    let marker = staged.key(publish::LEDGER_MARKER);
    let (b, m) = (bucket.clone(), marker.clone());
    let marked = block(async move { b.get_bounded(&m, 1024).await })?.is_some();
    if state.segments > 0 && (state.other_plan || !marked) {
        tracing::warn!(ledger = %ledger.uri(), other_plan = state.other_plan, "the job's ledger cannot be used; starting over");
        ledger.reset()?;
        let (b, p) = (bucket.clone(), staged.prefix.clone());
        block(async move { publish::delete_staging(&b, &p).await })?;
        let (b, p) = (bucket.clone(), scratch.location.key("exchange/"));
        block(async move { b.delete_prefix(&p).await })?;
    }
    let (b, body) = (bucket.clone(), bytes::Bytes::from_static(b"{}\n"));
    block(async move { b.put(&marker, body).await })?;
    Ok(Settled::Resume(Box::new(ledger)))
}

/// The summary at `out` if it is the one run `run` of `job` published and every output it lists still has its
/// fingerprint; `None` otherwise (no summary, another run's, an unreadable one, or outputs changed since).
fn published_run(
    bucket: &crate::s3::objects::Bucket,
    out: &S3Location,
    run: &str,
    job: &Prepared,
) -> Result<Option<RunSummary>, RunError> {
    let (b, k) = (bucket.clone(), out.key(commit::SUMMARY));
    let Some((body, _)) = block(async move { b.get_bounded(&k, commit::MAX_RECORD_BYTES).await })?
    else {
        return Ok(None);
    };
    let summary = match serde_json::from_slice::<RunSummary>(&body) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(location = %out, error = %e, "the summary there is not a run's");
            return Ok(None);
        }
    };
    if summary.run != run || summary.plan_hash != job.plan.hash {
        tracing::debug!(location = %out, run = %summary.run, "the summary there is another run's");
        return Ok(None);
    }
    for o in &summary.outputs {
        let now = publish::fingerprint(bucket, &out.prefix, &o.path)?;
        if o.fingerprint.is_none() || now != o.fingerprint {
            tracing::debug!(location = %out, path = %o.path, "an output is not as the summary says");
            return Ok(None);
        }
    }
    Ok(Some(summary))
}

/// A fresh run id: 16 hex digits (std's randomly seeded hasher keys as the entropy source, and the time).
pub fn run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}

/// Executes the plan into `outputs` (the small ones written in `staging`), then writes
/// `summary.json` into `staging`; returns the summary.
#[allow(clippy::too_many_arguments)]
fn execute_into(
    job: &Prepared,
    run: &str,
    opts: &RunOptions,
    executor: &mut dyn Executor,
    progress: &JobProgress,
    cancel: &AtomicBool,
    outputs: Outputs,
    staging: &Path,
    started: std::time::Instant,
) -> Result<RunSummary, RunError> {
    let store = executor.execute(job, &outputs, staging, progress, cancel)?;
    let zarr_root = outputs.zarr_root().clone();
    let (mut records, values) = outputs.finish(&job.plan)?;
    records.extend(executor.extra_outputs(staging)?);
    for r in &mut records {
        r.fingerprint = Some(fingerprint(&zarr_root, staging, r)?);
    }
    let mut stages = progress.snapshot();
    for (name, v) in values {
        if let Some(st) = stages.iter_mut().find(|s| s.name == name) {
            st.value = Some(v);
        }
    }
    let summary = RunSummary {
        job: job.manifest.metadata.name.clone(),
        run: run.to_owned(),
        plan_hash: job.plan.hash,
        seconds: started.elapsed().as_secs_f64(),
        threads: opts.threads,
        memory_budget: opts.memory_budget as u64,
        store,
        load_end_seconds: progress.load_end_seconds(),
        stages,
        outputs: records,
        s3: None,
    };
    let tmp = staging.join(commit::SUMMARY);
    let text = serde_json::to_string_pretty(&summary)
        .map_err(|e| OutputError::invalid(Path::new("summary.json"), "summary", e.to_string()))?;
    std::fs::write(&tmp, text + "\n").map_err(io_err(&tmp))?;
    Ok(summary)
}

/// The fingerprint of output `r` as staged: a Zarr array under `zarr_root`, anything else in `staging`.
fn fingerprint(
    zarr_root: &ArrayPlace,
    staging: &Path,
    r: &OutputRecord,
) -> Result<Fingerprint, RunError> {
    let found = match zarr_root {
        ArrayPlace::S3 { bucket, prefix } if r.kind == "zarr" => {
            // The array's prefix is `prefix` + path + `/`; its listing is under the staging prefix.
            publish::fingerprint(bucket, prefix, &r.path)?
        }
        _ => outdir::fingerprint(staging, &r.path)?,
    };
    Ok(found.unwrap_or_else(|| Fingerprint::of([])))
}

impl Outputs {
    /// Creates the outputs of every node of `job`'s plan: Zarr arrays (with their `zarr.json`) under
    /// `zarr_root`, and the in-memory assemblies of the small outputs, written into `staging` by
    /// [`Outputs::finish`].
    ///
    /// # Errors
    /// When an array cannot be created.
    pub fn create(
        job: &Prepared,
        zarr_root: ArrayPlace,
        staging: &Path,
        scratch: Option<Scratch>,
    ) -> Result<Outputs, RunError> {
        let plan = &job.plan;
        let mut nodes = Vec::new();
        let mut records = Vec::new();
        for n in &plan.nodes {
            let Some(o) = &n.output else {
                nodes.push(None);
                continue;
            };
            let mut zarr = None;
            if let Some(z) = &o.zarr {
                let mut attrs = serde_json::Map::new();
                attrs.insert(
                    "arrayjob".into(),
                    serde_json::json!({"job": job.manifest.metadata.name, "stage": n.name}),
                );
                zarr = Some(ZarrWriter::create_with(
                    &zarr_root.join(z),
                    &n.meta,
                    &zarr_options(n, o),
                    attrs,
                )?);
                records.push(OutputRecord {
                    stage: n.name.clone(),
                    kind: "zarr".into(),
                    path: z.clone(),
                    fingerprint: None,
                });
            }
            let wants_dense = dense_output(n);
            let series = plotted_pixels(n).map(|pixels| {
                let len = n.meta.shape[0];
                let vals = Mutex::new(vec![vec![f64::NAN; len]; pixels.len()]);
                (pixels, vals)
            });
            nodes.push(Some(NodeSinks {
                stage: n.name.clone(),
                zarr,
                dense: wants_dense
                    .then(|| Mutex::new(Chunk::zeros(crate::array::DType::Float64, &n.meta.shape))),
                series,
            }));
        }
        Ok(Outputs {
            nodes,
            records,
            staging: staging.to_path_buf(),
            zarr_root,
            scratch,
            ledger: None,
        })
    }

    /// The run's ledger, when it can resume.
    pub fn ledger(&self) -> Option<&std::sync::Arc<crate::s3::ledger::Ledger>> {
        self.ledger.as_ref()
    }

    /// The run's scratch prefix on S3, when the job has `spec.storage.s3`.
    pub fn scratch(&self) -> Option<&Scratch> {
        self.scratch.as_ref()
    }

    /// Where the Zarr arrays are written (workers open them there).
    pub fn zarr_root(&self) -> &ArrayPlace {
        &self.zarr_root
    }

    /// Waits for the Zarr writes and writes the small outputs, once every block has arrived; returns every
    /// output file, and the number of every stage with a `value` output.
    ///
    /// # Errors
    /// The first output that cannot be written.
    pub fn finish(self, plan: &Plan) -> Result<(Vec<OutputRecord>, StageValues), RunError> {
        let mut records = self.records;
        let mut values = Vec::new();
        let staging = self.staging;
        for (node, (n, s)) in plan.nodes.iter().zip(self.nodes).enumerate() {
            let (Some(o), Some(mut s)) = (&n.output, s) else {
                continue;
            };
            if let Some(z) = s.zarr.take() {
                z.finish()?;
            }
            let dense = s
                .dense
                .map(|d| d.into_inner().unwrap_or_else(|e| e.into_inner()).to_f64());
            if let (Some(f), Some(d)) = (&o.image, &dense) {
                let d2 = d
                    .view()
                    .into_dimensionality::<ndarray::Ix2>()
                    .map_err(|e| OutputError::invalid(Path::new(f), "data", e.to_string()))?;
                crate::output::image::write_image_png(&staging_file(&staging, f)?, d2)?;
                records.push(OutputRecord {
                    stage: n.name.clone(),
                    kind: "image".into(),
                    path: f.clone(),
                    fingerprint: None,
                });
            }
            if let (Some(m), Some(d)) = (&o.montage, &dense) {
                records.push(write_montage(plan, node, m, d, &staging)?);
            }
            if let (Some(true), Some(d)) = (o.value, &dense)
                && let Some(v) = d.iter().next()
            {
                values.push((n.name.clone(), *v));
            }
            if let (Some(f), Some(d)) = (&o.csv, &dense) {
                crate::output::csv::write_csv(&staging_file(&staging, f)?, d.view())?;
                records.push(OutputRecord {
                    stage: n.name.clone(),
                    kind: "csv".into(),
                    path: f.clone(),
                    fingerprint: None,
                });
            }
            if let Some(p) = &o.plot
                && let Some(spec) = plot_spec(n, p, s.series.as_ref(), dense.as_ref())
            {
                crate::output::plot::write_plot_png(&staging_file(&staging, &p.file)?, &spec)?;
                records.push(OutputRecord {
                    stage: n.name.clone(),
                    kind: "plot".into(),
                    path: p.file.clone(),
                    fingerprint: None,
                });
            }
        }
        Ok((records, values))
    }
}

/// The stage name and number of every `value` output.
pub type StageValues = Vec<(String, f64)>;

/// Writes the montage output `m` of node `node` (whole result `d`), labelled with the source's indices along axis
/// 0 when they are known, else the positions.
fn write_montage(
    plan: &Plan,
    node: usize,
    m: &crate::spec::MontageOutput,
    d: &ndarray::ArrayD<f64>,
    staging: &Path,
) -> Result<OutputRecord, RunError> {
    let d3 = d
        .view()
        .into_dimensionality::<ndarray::Ix3>()
        .map_err(|e| OutputError::invalid(Path::new(&m.file), "data", e.to_string()))?;
    let labels = plan
        .source_indices(node)
        .unwrap_or_else(|| (0..d3.dim().0).collect());
    let columns = m.columns.unwrap_or(d3.dim().0);
    crate::output::montage::write_montage_png(
        &staging_file(staging, &m.file)?,
        d3,
        &labels,
        columns,
    )?;
    Ok(OutputRecord {
        stage: plan.nodes[node].name.clone(),
        kind: "montage".into(),
        path: m.file.clone(),
        fingerprint: None,
    })
}

/// What a plot output of node `n` draws: the chosen pixels' series, or the whole (1-D) result.
fn plot_spec(
    n: &crate::plan::Node,
    p: &crate::spec::PlotOutput,
    series: Option<&PixelSeries>,
    dense: Option<&ndarray::ArrayD<f64>>,
) -> Option<PlotSpec> {
    let (series, x_label) = match (series, dense) {
        (Some((pixels, vals)), _) => {
            let vals = vals.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let named = pixels
                .iter()
                .zip(vals)
                .map(|(px, v)| (format!("pixel ({}, {})", px[0], px[1]), v))
                .collect();
            (
                named,
                if matches!(n.op, crate::plan::NodeOp::Fft(_)) {
                    "frequency bin"
                } else {
                    "index along axis 0"
                },
            )
        }
        (None, Some(d)) => (vec![(n.name.clone(), d.iter().copied().collect())], "index"),
        (None, None) => return None,
    };
    Some(PlotSpec {
        title: p.title.clone().unwrap_or_else(|| n.name.clone()),
        x_label: x_label.to_string(),
        y_label: n.name.clone(),
        series,
        log_y: p.log_y,
    })
}

/// Layout and compression of node `n`'s Zarr output: sharded by the blocks the executor produces when they hold
/// several chunks, compressed as `zarrCompression` says.
pub fn zarr_options(n: &crate::plan::Node, o: &crate::spec::OutputSpec) -> ZarrOptions {
    use crate::spec::CompressionCodec;
    let default = ZarrOptions::default();
    ZarrOptions {
        shard: (n.block != n.meta.chunks).then(|| n.block.clone()),
        zstd_level: match &o.zarr_compression {
            None => default.zstd_level,
            Some(c) if c.codec == CompressionCodec::None => None,
            Some(c) => c.level.or(default.zstd_level),
        },
    }
}

/// Path of `rel` inside the staging directory, with its parent directories created.
fn staging_file(staging: &Path, rel: &str) -> Result<PathBuf, RunError> {
    let p = staging.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    Ok(p)
}
