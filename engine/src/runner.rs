//! Running a job: the all-or-nothing flow every run goes through ([`run_with`], with an [`Executor`]: the
//! local one here, or the distributed coordinator), and the local run ([`run`]).
//!
//! Outputs are written into a staging directory inside the output location and moved into place only when
//! the whole run succeeded, replacing the previous run's outputs as a whole, `summary.json` last (see
//! [`crate::output::commit`]). A failed or interrupted run leaves the previous outputs (if any) untouched and no
//! half-written file under a final name.
//!
//! What a run is made of lives in modules of its own, re-exported here for the paths callers used:
//! [`crate::job`] (the prepared job), [`crate::error`] (`RunError`), [`crate::output::sink`] (the outputs) and
//! [`crate::summary`] (`summary.json`).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::exec::{ExecOptions, JobProgress, execute};
use crate::output::OutputError;
use crate::output::commit::{self, CommitError, Fingerprint, dir as outdir, s3 as publish};
use crate::output::zarr::ArrayPlace;
use crate::s3::objects::{S3Location, block};
use crate::s3::spill::Scratch;
use crate::store::StoreStats;

pub use crate::error::{RunError, io_err};
pub use crate::job::{Prepared, prepare};
pub use crate::output::sink::{OutputRecord, Outputs, StageValues, zarr_options};
pub use crate::summary::RunSummary;

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

    /// For a resumable run (`--job-id`, a scratch bucket, outputs on S3): takes the job's record of what a
    /// killed predecessor made durable (the distributed coordinator's ledger), waiting out a killed owner's
    /// lease, and says what it holds. `None`: this executor does not resume (the local one runs everything
    /// again), so the run flow deletes a staging prefix of the same id.
    ///
    /// # Errors
    /// When the record cannot be read or taken (another owner holds it).
    fn take_resume(
        &mut self,
        _job: &Prepared,
        _scratch: &Scratch,
        _lease: std::time::Duration,
    ) -> Result<Option<ResumeFound>, RunError> {
        Ok(None)
    }

    /// Empties the record taken by [`Executor::take_resume`]: what it holds cannot be used, the run starts
    /// over.
    ///
    /// # Errors
    /// When it cannot be written.
    fn reset_resume(&mut self) -> Result<(), RunError> {
        Ok(())
    }
}

/// What an executor's resume record holds (see [`Executor::take_resume`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeFound {
    /// Whether a killed run wrote anything to it.
    pub written: bool,
    /// Whether that was for another plan (its results cannot be used).
    pub other_plan: bool,
    /// Where it is, for the log.
    pub uri: String,
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
    // A resumable run owns its job's resume record before anything else: then a lock of its own run id on the
    // location is a killed predecessor's, taken over at once.
    let found = match (&opts.job_id, places.scratch) {
        (Some(_), Some(scratch)) => executor
            .take_resume(job, scratch, lease)?
            .map(|f| (f, scratch)),
        _ => None,
    };
    let lock = publish::S3OutLock::acquire(&bucket, out, run, lease)?;
    // An interrupted publish is finished first: only then is it known whether this job's staging still stands.
    publish::clean(&bucket, out, &lock, Some(&staged.prefix))?;
    let resumable = found.is_some();
    if let Some((found, scratch)) = found {
        let place = Place {
            run,
            bucket: &bucket,
            out,
            scratch,
        };
        if let Some(summary) = settle_resume(job, &place, &found, executor)? {
            return Ok(summary);
        }
    } else if opts.job_id.is_some() {
        // Nothing resumes (no `storage.s3`, or a local run): a staging prefix of this id is a killed run's.
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
    let outputs = Outputs::create(job, root, local.path(), places.scratch.cloned())?;
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

/// Where a resumable run publishes: its run id, the output location and the job's scratch.
struct Place<'a> {
    run: &'a str,
    bucket: &'a crate::s3::objects::Bucket,
    out: &'a S3Location,
    scratch: &'a Scratch,
}

/// Decides, with the location locked and any interrupted publish finished, what the resume record found is
/// worth; the summary to return when there is nothing left to do:
/// - written, and the location's `summary.json` is this run's (same run id and plan, every output with its
///   fingerprint): published already, the summary;
/// - written for another plan, or its staging prefix lost its marker (deleted, or being deleted, by a publish,
///   a failed run's cleanup or `arrayjob gc`): reset, and the staging and exchange emptied: the run starts over;
/// - otherwise resumed. The staging prefix is marked as the one the record describes.
fn settle_resume(
    job: &Prepared,
    place: &Place<'_>,
    found: &ResumeFound,
    executor: &mut dyn Executor,
) -> Result<Option<RunSummary>, RunError> {
    let Place {
        run,
        bucket,
        out,
        scratch,
    } = *place;
    let staged = out.join(&format!("{}{run}", commit::STAGING_PREFIX));
    if found.written
        && !found.other_plan
        && let Some(summary) = published_run(bucket, out, run, job)?
    {
        tracing::warn!(location = %out, run, "the job's outputs were published by the run that was interrupted; nothing is left to do");
        let (b, p) = (bucket.clone(), staged.prefix.clone());
        block(async move { publish::delete_staging(&b, &p).await })?;
        return Ok(Some(summary));
    }
    let marker = staged.key(publish::LEDGER_MARKER);
    let (b, m) = (bucket.clone(), marker.clone());
    let marked = block(async move { b.get_bounded(&m, 1024).await })?.is_some();
    if found.written && (found.other_plan || !marked) {
        tracing::warn!(ledger = %found.uri, other_plan = found.other_plan, "the job's ledger cannot be used; starting over");
        executor.reset_resume()?;
        let (b, p) = (bucket.clone(), staged.prefix.clone());
        block(async move { publish::delete_staging(&b, &p).await })?;
        let (b, p) = (bucket.clone(), scratch.location.key("exchange/"));
        block(async move { b.delete_prefix(&p).await })?;
    }
    let (b, body) = (bucket.clone(), bytes::Bytes::from_static(b"{}\n"));
    block(async move { b.put(&marker, body).await })?;
    Ok(None)
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
