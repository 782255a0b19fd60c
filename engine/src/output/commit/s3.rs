//! An output location on S3 (`--out s3://bucket/prefix`): its lock, the staging prefix of a run, and the
//! publish that makes a run's outputs appear under their final names (the protocol and its guarantees are in
//! `docs/s3.md`, "Outputs on S3"; its states and the tests that kill each in `docs/architecture.md`,
//! "Committing outputs").
//!
//! Keys of the runner under the location, all named `.arrayjob*` like on local disk:
//! - `.arrayjob.lock`: the lease of the run using the location, created with `If-None-Match: *`, renewed and
//!   taken over with `If-Match` on its ETag;
//! - `.arrayjob-staging-<run>/`: where a run writes its outputs (Zarr chunks by the workers that made them),
//!   with `.arrayjob-ledger` in it while a resumable run's ledger describes it;
//! - `.arrayjob-publish.json`: the journal of a publish under way; a run that finds one finishes it first.
//!
//! A location holds a committed result when `summary.json` is there: it is deleted first and written last by
//! every publish, and readers that check it never see a mix of two runs. Invariants every step keeps:
//! - while a journal is there, its staging prefix is whole: the journal is deleted before anything of the
//!   staging prefix is;
//! - while a staging prefix holds `.arrayjob-ledger`, it holds everything the ledger says was written: the
//!   marker is deleted first, in a request of its own, whenever a staging prefix is deleted;
//! - a journal acts only inside its location: it is refused unless its staging prefix is the location's
//!   `.arrayjob-staging-<run>/`, its paths are output paths, and the staged `summary.json` lists its outputs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    CommitError, CommittedRun, Fingerprint, LOCK_FILE, MAX_RECORD_BYTES, STAGING_PREFIX, SUMMARY,
};
use crate::s3::S3Error;
use crate::s3::objects::{Bucket, CondPut, S3Location, block};

/// The journal of a publish under way.
pub const JOURNAL: &str = ".arrayjob-publish.json";
/// How long a lock stays valid without renewal unless `storage.s3.leaseSeconds` says otherwise: a run killed
/// without releasing it blocks the location this long at most.
pub const LEASE: Duration = Duration::from_secs(60);

/// The lease of `storage` (`leaseSeconds`, default [`LEASE`]).
pub fn lease_of(storage: Option<&crate::spec::S3Storage>) -> Duration {
    storage
        .and_then(|s| s.lease_seconds)
        .map_or(LEASE, Duration::from_secs)
}
/// Copies or uploads in flight during a publish.
const PUBLISH_CONCURRENCY: usize = 16;

/// What the lock object says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LockBody {
    holder: String,
    run: String,
    /// Seconds since the Unix epoch after which the lock may be taken over.
    expires: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock_body(run: &str, lease: Duration) -> Bytes {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let body = LockBody {
        holder: format!("pid {} on {}", std::process::id(), host.trim()),
        run: run.to_owned(),
        expires: now_unix() + lease.as_secs(),
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The lock of an S3 output location (or of a job's ledger), renewed in the background until dropped (which
/// deletes it).
#[derive(Debug)]
pub struct S3OutLock {
    bucket: Bucket,
    lease: Duration,
    key: String,
    uri: String,
    etag: Arc<std::sync::Mutex<String>>,
    lost: Arc<AtomicBool>,
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl S3OutLock {
    /// Takes the lock of `out` for run `run`: creates the lock object, or takes over one whose lease expired.
    ///
    /// # Errors
    /// [`CommitError::Busy`] when another run holds it; the S3 error when a request fails.
    pub fn acquire(
        bucket: &Bucket,
        out: &S3Location,
        run: &str,
        lease: Duration,
    ) -> Result<S3OutLock, CommitError> {
        let dir = out.to_string().trim_end_matches('/').to_owned();
        S3OutLock::acquire_key(bucket, &out.key(LOCK_FILE), &dir, run, lease)
    }

    /// Takes the lock object `key` (of `what`, for messages) for `run`, as [`S3OutLock::acquire`].
    ///
    /// # Errors
    /// As [`S3OutLock::acquire`].
    pub fn acquire_key(
        bucket: &Bucket,
        key: &str,
        what: &str,
        run: &str,
        lease: Duration,
    ) -> Result<S3OutLock, CommitError> {
        let etag = {
            let (b, k, r) = (bucket.clone(), key.to_owned(), run.to_owned());
            block(async move { take(&b, &k, &r, lease).await })?
        };
        let etag = match etag {
            Ok(etag) => etag,
            Err(holder) => {
                return Err(CommitError::Busy {
                    dir: what.to_owned(),
                    holder,
                });
            }
        };
        let mut lock = S3OutLock {
            bucket: bucket.clone(),
            lease,
            uri: format!("s3://{}/{key}", bucket.name()),
            key: key.to_owned(),
            etag: Arc::new(std::sync::Mutex::new(etag)),
            lost: Arc::default(),
            stop: Arc::default(),
            renewer: None,
        };
        lock.renewer = Some(lock.start_renewing(run.to_owned()));
        Ok(lock)
    }

    fn start_renewing(&self, run: String) -> std::thread::JoinHandle<()> {
        let lease = self.lease;
        let (bucket, key, etag, lost, stop) = (
            self.bucket.clone(),
            self.key.clone(),
            self.etag.clone(),
            self.lost.clone(),
            self.stop.clone(),
        );
        std::thread::spawn(move || {
            loop {
                let stopped = stop.0.lock().unwrap_or_else(|e| e.into_inner());
                let (stopped, _) = stop
                    .1
                    .wait_timeout_while(stopped, lease / 3, |s| !*s)
                    .unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    return;
                }
                drop(stopped);
                let current = etag.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let (b, k, body) = (bucket.clone(), key.clone(), lock_body(&run, lease));
                match block(async move { b.put_if(&k, body, Some(&current)).await }) {
                    Ok(CondPut::Written(new)) => {
                        *etag.lock().unwrap_or_else(|e| e.into_inner()) = new;
                    }
                    Ok(CondPut::Refused) => {
                        warn!(key = %key, "the output location's lock was taken over by another run");
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    // A failed renewal is retried at the next period; the lease has room for two.
                    Err(e) => warn!(error = %e, "cannot renew the output location's lock"),
                }
            }
        })
    }

    /// Fails when another run took the lock over (this run's lease had expired).
    ///
    /// # Errors
    /// [`CommitError::Busy`]-like error naming the lock.
    pub fn check(&self) -> Result<(), CommitError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(CommitError::S3(S3Error::request(
                None,
                "PutObject",
                &self.uri,
                "this run's lock expired and another run took it over; nothing was published"
                    .into(),
            )));
        }
        Ok(())
    }
}

impl Drop for S3OutLock {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        if self.lost.load(Ordering::SeqCst) {
            return;
        }
        let (b, k) = (self.bucket.clone(), self.key.clone());
        if let Err(e) = block(async move { b.delete(&[k]).await }) {
            warn!(error = %e, "cannot remove the output location's lock; it expires by itself");
        }
    }
}

/// Creates the lock object at `key`, or takes over an expired one; `Err(holder)` when someone holds it.
async fn take(
    bucket: &Bucket,
    key: &str,
    run: &str,
    lease: Duration,
) -> Result<Result<String, String>, S3Error> {
    for _ in 0..3 {
        if let CondPut::Written(etag) = bucket.put_if(key, lock_body(run, lease), None).await? {
            return Ok(Ok(etag));
        }
        let Some((body, etag)) = bucket.get_bounded(key, MAX_RECORD_BYTES).await? else {
            continue; // released in between
        };
        let holder: Option<LockBody> = serde_json::from_slice(&body).ok();
        match holder {
            // Ours: a retried create whose first attempt had in fact succeeded.
            Some(h) if h.run == run => return Ok(Ok(etag)),
            Some(h) if h.expires > now_unix() => {
                return Ok(Err(format!("{} (run {})", h.holder, h.run)));
            }
            _ => {
                if let CondPut::Written(etag) = bucket
                    .put_if(key, lock_body(run, lease), Some(&etag))
                    .await?
                {
                    warn!(
                        key,
                        "took over an expired lock of a run that did not finish"
                    );
                    return Ok(Ok(etag));
                }
            }
        }
    }
    Ok(Err(
        "another run (the lock changed hands while being taken)".into(),
    ))
}

/// In a staging prefix while a resumable run's ledger describes it (`docs/s3.md`, "Resume").
pub const LEDGER_MARKER: &str = ".arrayjob-ledger";
/// The journal format this code writes.
const JOURNAL_VERSION: u32 = 2;

/// The journal of a publish: enough to finish it after a crash, and nothing that reaches outside its location.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Journal {
    /// [`JOURNAL_VERSION`].
    version: u32,
    /// The run whose staging is published.
    run: String,
    /// Key prefix of the run's staging: the location's `.arrayjob-staging-<run>/`.
    staging: String,
    /// Output paths of the new run (relative), `summary.json` not included.
    outputs: Vec<String>,
    /// Outputs of the previous committed run that the new run does not write and that were shown to be as that
    /// run wrote them, with the exact keys to delete (relative to the location).
    previous: Vec<PreviousOutput>,
}

/// A previous output to remove, and its keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PreviousOutput {
    path: String,
    keys: Vec<String>,
}

impl Journal {
    /// The journal in `body`, found at `out`, if it is one this code writes for `out`.
    fn parse(out: &S3Location, body: &[u8]) -> Result<Journal, CommitError> {
        let refuse = |problem: String| CommitError::Journal {
            at: journal_uri(out),
            problem,
        };
        let j: Journal = serde_json::from_slice(body)
            .map_err(|e| refuse(format!("not a publish journal ({e})")))?;
        j.check(out).map_err(refuse)?;
        Ok(j)
    }

    /// What is wrong with the journal for location `out`, if anything.
    fn check(&self, out: &S3Location) -> Result<(), String> {
        if self.version != JOURNAL_VERSION {
            return Err(format!(
                "journal version {} (this arrayjob writes {JOURNAL_VERSION})",
                self.version
            ));
        }
        if !super::run_id_ok(&self.run) {
            return Err(format!("run {:?} is not a run id", self.run));
        }
        let staging = format!("{}{STAGING_PREFIX}{}/", out.prefix, self.run);
        if self.staging != staging {
            return Err(format!(
                "staging {:?} is not this location's staging prefix of run {} ({staging:?})",
                self.staging, self.run
            ));
        }
        let path_problem = |p: &str| {
            crate::validate::output_path_problem(p)
                .map(|problem| format!("names {p:?}, which is not an output path: {problem}"))
        };
        for (i, p) in self.outputs.iter().enumerate() {
            if let Some(problem) = path_problem(p) {
                return Err(problem);
            }
            if self.outputs[..i].iter().any(|q| super::overlaps(p, q)) {
                return Err(format!("output {p:?} is listed twice or inside another"));
            }
        }
        for prev in &self.previous {
            if let Some(problem) = path_problem(&prev.path) {
                return Err(problem);
            }
            if self.outputs.iter().any(|o| super::overlaps(o, &prev.path)) {
                return Err(format!(
                    "previous output {:?} is also a new output",
                    prev.path
                ));
            }
            let dir = format!("{}/", prev.path);
            let outside = |k: &String| {
                (*k != prev.path && !k.starts_with(&dir))
                    || crate::validate::output_path_problem(k).is_some()
            };
            if let Some(k) = prev.keys.iter().find(|k| outside(k)) {
                return Err(format!(
                    "key {k:?} of previous output {:?} is not inside it",
                    prev.path
                ));
            }
        }
        Ok(())
    }
}

/// `s3://bucket/prefix/.arrayjob-publish.json` of location `out`.
fn journal_uri(out: &S3Location) -> String {
    format!("s3://{}/{}", out.bucket, out.key(JOURNAL))
}

/// What [`clean`] did.
#[derive(Debug, Default)]
pub struct Cleaned {
    /// The run whose interrupted publish was finished, if one was.
    pub finished: Option<String>,
    /// The staging prefixes of killed runs that were removed (those that held objects).
    pub removed: Vec<String>,
}

/// Prepares a locked location for a run: finishes a publish that a killed run left half done and removes the
/// staging prefixes of killed runs but `keep`. (A server with real directories, such as SeaweedFS, may go on
/// listing a prefix whose objects are all gone: such an empty one is not counted.)
///
/// # Errors
/// [`CommitError::Journal`] when a journal is there that this code does not write for this location (nothing
/// is done then); the S3 error when a request fails.
pub fn clean(
    bucket: &Bucket,
    out: &S3Location,
    _lock: &S3OutLock,
    keep: Option<&str>,
) -> Result<Cleaned, CommitError> {
    let keep = keep.map(str::to_owned);
    let (b, o) = (bucket.clone(), out.clone());
    block(async move {
        let mut cleaned = Cleaned::default();
        if let Some((body, _)) = b.get_bounded(&o.key(JOURNAL), MAX_RECORD_BYTES).await? {
            let j = Journal::parse(&o, &body)?;
            warn!(location = %o, run = %j.run, "finishing the publish of a run that was interrupted");
            roll_forward(&b, &o, &j).await?;
            cleaned.finished = Some(j.run);
        }
        let ours = format!("{}{STAGING_PREFIX}", o.prefix);
        for dir in b.list_dirs(&o.prefix, STAGING_PREFIX).await? {
            let run = dir.strip_prefix(&ours).and_then(|r| r.strip_suffix('/'));
            if keep.as_deref() == Some(dir.as_str()) || !run.is_some_and(super::run_id_ok) {
                continue;
            }
            if delete_staging(&b, &dir).await? > 0 {
                warn!(prefix = %dir, "removed the staging prefix of a run that did not finish");
                cleaned.removed.push(dir);
            }
        }
        Ok(cleaned)
    })
}

/// Deletes a staging prefix, its ledger marker first and alone (so a marker never stands in a partly deleted
/// staging); returns how many objects it held. An empty one costs its listing only.
///
/// # Errors
/// When a request fails.
pub async fn delete_staging(b: &Bucket, prefix: &str) -> Result<usize, S3Error> {
    if !prefix.ends_with('/') || !prefix.contains(STAGING_PREFIX) {
        return Err(S3Error::request(
            None,
            "DeleteObjects",
            &format!("s3://{}/{prefix}", b.name()),
            "not a staging prefix".into(),
        ));
    }
    let marker = format!("{prefix}{LEDGER_MARKER}");
    let keys: Vec<String> = b.list(prefix).await?.into_iter().map(|(k, _)| k).collect();
    if keys.contains(&marker) {
        b.delete(std::slice::from_ref(&marker)).await?;
    }
    let rest: Vec<String> = keys.iter().filter(|k| **k != marker).cloned().collect();
    b.delete(&rest).await?;
    Ok(keys.len())
}

/// Publishes a finished run: uploads the files of `local` (the small outputs and `summary.json`) next to the
/// Zarr arrays already in `staging` (the location's `.arrayjob-staging-<run>/`), writes the journal, then
/// replaces the previous outputs by the new ones, `summary.json` last, and removes the staging prefix.
///
/// # Errors
/// When a request fails: before the journal is written, as the S3 error (the staging prefix may be deleted);
/// after, as [`CommitError::PublishUnfinished`] (the journal owns the staging prefix and finishes the publish).
pub fn publish(
    bucket: &Bucket,
    out: &S3Location,
    run: &str,
    local: &Path,
    outputs: &[String],
    lock: &S3OutLock,
) -> Result<(), CommitError> {
    let files = local_files(local)?;
    let staging = out.join(&format!("{STAGING_PREFIX}{run}"));
    let (b, o, s) = (bucket.clone(), out.clone(), staging.clone());
    let outputs = outputs.to_vec();
    let run = run.to_owned();
    lock.check()?;
    block(async move {
        upload(&b, &s, files).await?;
        let previous = previous_outputs(&b, &o, &outputs).await?;
        let journal = Journal {
            version: JOURNAL_VERSION,
            run,
            staging: s.prefix.clone(),
            outputs,
            previous,
        };
        let text = serde_json::to_vec(&journal).unwrap_or_default();
        let unfinished = |error: CommitError| CommitError::PublishUnfinished {
            location: o.to_string(),
            error: Box::new(error),
        };
        // From here the journal may be there: it owns the staging prefix.
        b.put(&o.key(JOURNAL), Bytes::from(text))
            .await
            .map_err(|e| unfinished(e.into()))?;
        roll_forward(&b, &o, &journal).await.map_err(unfinished)
    })
}

/// Uploads `files` (relative path, local path) under `staging`.
async fn upload(
    b: &Bucket,
    staging: &S3Location,
    files: Vec<(String, std::path::PathBuf)>,
) -> Result<(), S3Error> {
    futures::stream::iter(files)
        .map(|(rel, path)| {
            let (b, key) = (b.clone(), staging.key(&rel));
            async move {
                let body = std::fs::read(&path).map_err(|e| {
                    S3Error::request(None, "PutObject", &key, format!("{}: {e}", path.display()))
                })?;
                b.put(&key, Bytes::from(body)).await
            }
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The outputs of the run committed at `out` that a run writing `new` removes: those its `summary.json` lists
/// with a fingerprint that their objects still have (anything else is left in place), with their keys.
async fn previous_outputs(
    b: &Bucket,
    out: &S3Location,
    new: &[String],
) -> Result<Vec<PreviousOutput>, S3Error> {
    let committed = match b.get_bounded(&out.key(SUMMARY), MAX_RECORD_BYTES).await? {
        Some((body, _)) => CommittedRun::parse(&body).unwrap_or_default(),
        None => CommittedRun::default(),
    };
    let mut previous = Vec::new();
    for (path, recorded) in committed.candidates(new) {
        let objects = output_objects(b, &out.prefix, path).await?;
        if objects.is_empty() {
            continue;
        }
        if fingerprint_of(&objects, &out.prefix, path) != *recorded {
            warn!(location = %out, path, "left in place: the previous summary.json lists it, but it is not as that run wrote it");
            continue;
        }
        let keys = objects
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix(&out.prefix).map(str::to_owned))
            .collect();
        previous.push(PreviousOutput {
            path: path.to_owned(),
            keys,
        });
    }
    Ok(previous)
}

/// Every file under `dir` but the spill directories, as (relative path with `/`, path).
fn local_files(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, CommitError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(super::io_err(&d))? {
            let entry = entry.map_err(super::io_err(&d))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".spill") {
                continue;
            }
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push((rel.to_string_lossy().replace('\\', "/"), path.clone()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The objects of output `path` under `prefix`, with their sizes: the object `prefix/path` itself, or the
/// objects under `prefix/path/` (an array).
async fn output_objects(
    b: &Bucket,
    prefix: &str,
    path: &str,
) -> Result<Vec<(String, u64)>, S3Error> {
    let exact = format!("{prefix}{path}");
    let dir = format!("{exact}/");
    Ok(b.list(&exact)
        .await?
        .into_iter()
        .filter(|(k, _)| *k == exact || k.starts_with(&dir))
        .collect())
}

/// The fingerprint of output `path`'s `objects` (from [`output_objects`] under `prefix`).
fn fingerprint_of(objects: &[(String, u64)], prefix: &str, path: &str) -> Fingerprint {
    let exact = format!("{prefix}{path}");
    Fingerprint::of(objects.iter().filter_map(|(k, size)| {
        let rel = k.strip_prefix(&exact)?;
        Some((rel.strip_prefix('/').unwrap_or(rel).to_owned(), *size))
    }))
}

/// The fingerprint of output `path` under the key prefix `prefix` (empty or ending in `/`), `None` when it has
/// no objects.
///
/// # Errors
/// When the listing fails.
pub fn fingerprint(
    bucket: &Bucket,
    prefix: &str,
    path: &str,
) -> Result<Option<Fingerprint>, S3Error> {
    let (b, p, o) = (bucket.clone(), prefix.to_owned(), path.to_owned());
    block(async move {
        let objects = output_objects(&b, &p, &o).await?;
        Ok((!objects.is_empty()).then(|| fingerprint_of(&objects, &p, &o)))
    })
}

/// Checks that the staging of a journal holds the run it describes: its `summary.json` names the journal's
/// run and exactly its outputs (a journal stands only while its staging is whole).
async fn check_staged(b: &Bucket, out: &S3Location, j: &Journal) -> Result<(), CommitError> {
    let refuse = |problem: String| CommitError::Journal {
        at: journal_uri(out),
        problem,
    };
    let summary = format!("{}{SUMMARY}", j.staging);
    let Some((body, _)) = b.get_bounded(&summary, MAX_RECORD_BYTES).await? else {
        return Err(refuse(format!("its staging has no {SUMMARY}")));
    };
    let staged = CommittedRun::parse(&body)
        .ok_or_else(|| refuse(format!("its staging's {SUMMARY} is not a run's summary")))?;
    let mut listed: Vec<&str> = staged.outputs.iter().map(|o| o.path.as_str()).collect();
    let mut journaled: Vec<&str> = j.outputs.iter().map(String::as_str).collect();
    listed.sort_unstable();
    journaled.sort_unstable();
    if staged.run.as_deref() != Some(j.run.as_str()) || listed != journaled {
        return Err(refuse(format!(
            "its staging's {SUMMARY} is not the summary of run {} with the journal's outputs",
            j.run
        )));
    }
    Ok(())
}

/// The publish proper, idempotent so that a later run can redo it from the journal: `summary.json` off, each
/// output's objects copied to their final keys (every array's `zarr.json` after its chunks) and the final keys
/// the new run does not have deleted, the previous outputs' recorded keys deleted, `summary.json` copied last,
/// then the journal removed and only then the staging prefix.
async fn roll_forward(b: &Bucket, out: &S3Location, j: &Journal) -> Result<(), CommitError> {
    check_staged(b, out, j).await?;
    b.delete(&[out.key(SUMMARY)]).await?;
    for path in &j.outputs {
        let staged = output_objects(b, &j.staging, path).await?;
        let rel: std::collections::BTreeMap<String, u64> = staged
            .iter()
            .filter_map(|(k, size)| k.strip_prefix(&j.staging).map(|r| (r.to_owned(), *size)))
            .collect();
        type Objects = Vec<(String, u64)>;
        let (meta, data): (Objects, Objects) = rel
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .partition(|(k, _)| k.ends_with("zarr.json"));
        for batch in [data, meta] {
            futures::stream::iter(batch)
                .map(|(k, size)| {
                    let (b, from, to) = (b.clone(), format!("{}{k}", j.staging), out.key(&k));
                    async move { b.copy_sized(&from, &to, size).await }
                })
                .buffer_unordered(PUBLISH_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
        }
        let stale: Vec<String> = output_objects(b, &out.prefix, path)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| {
                k.strip_prefix(&out.prefix)
                    .is_some_and(|r| !rel.contains_key(r))
            })
            .collect();
        b.delete(&stale).await?;
    }
    for prev in &j.previous {
        let keys: Vec<String> = prev.keys.iter().map(|k| out.key(k)).collect();
        b.delete(&keys).await?;
    }
    b.copy(&format!("{}{SUMMARY}", j.staging), &out.key(SUMMARY))
        .await?;
    b.delete(&[out.key(JOURNAL)]).await?;
    let n = delete_staging(b, &j.staging).await?;
    info!(location = %out, objects = n, "published");
    Ok(())
}

/// Removes the staging prefixes at `out` that no live run owns (`arrayjob gc`): takes the location's lock
/// (so never under a running job), finishes an interrupted publish, deletes leftover staging. Returns the
/// prefixes removed.
///
/// # Errors
/// [`CommitError::Busy`] when a run holds the location; [`CommitError::Journal`] when a journal there is not
/// one this code writes; the S3 error when a request fails.
pub fn gc(bucket: &Bucket, out: &S3Location) -> Result<Vec<String>, CommitError> {
    let run = format!("gc-{}", std::process::id());
    let lock = S3OutLock::acquire(bucket, out, &run, LEASE)?;
    Ok(clean(bucket, out, &lock, None)?.removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out() -> S3Location {
        S3Location::parse("--out", "s3://bkt/out").expect("location")
    }

    fn problem(journal: &str) -> String {
        match Journal::parse(&out(), journal.as_bytes()) {
            Ok(j) => panic!("accepted {j:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_journal_of_this_location_is_accepted() {
        let j = Journal::parse(
            &out(),
            br#"{"version":2,"run":"r-1","staging":"out/.arrayjob-staging-r-1/","outputs":["a.png","p.zarr"],"previous":[{"path":"old","keys":["old/x","old/c/0"]},{"path":"f.csv","keys":["f.csv"]}]}"#,
        )
        .expect("accepted");
        assert_eq!(j.outputs, ["a.png", "p.zarr"]);
        assert_eq!(j.previous.len(), 2);
    }

    #[test]
    fn a_journal_reaching_outside_its_location_is_refused() {
        let cases = [
            (
                r#"{"staging":"","outputs":[],"previous":[]}"#,
                "not a publish journal",
            ),
            (
                r#"{"version":1,"run":"r","staging":"out/.arrayjob-staging-r/","outputs":[],"previous":[]}"#,
                "journal version 1",
            ),
            (
                r#"{"version":2,"run":"r","staging":"","outputs":[],"previous":[]}"#,
                "is not this location's staging prefix",
            ),
            (
                r#"{"version":2,"run":"r","staging":"out/","outputs":[],"previous":[]}"#,
                "is not this location's staging prefix",
            ),
            (
                r#"{"version":2,"run":"r","staging":"other/.arrayjob-staging-r/","outputs":[],"previous":[]}"#,
                "is not this location's staging prefix",
            ),
            (
                r#"{"version":2,"run":"","staging":"out/.arrayjob-staging-/","outputs":[],"previous":[]}"#,
                "is not a run id",
            ),
            (
                r#"{"version":2,"run":"r","staging":"out/.arrayjob-staging-r/","outputs":["../x"],"previous":[]}"#,
                "not an output path",
            ),
            (
                r#"{"version":2,"run":"r","staging":"out/.arrayjob-staging-r/","outputs":[".arrayjob.lock"],"previous":[]}"#,
                "not an output path",
            ),
            (
                r#"{"version":2,"run":"r","staging":"out/.arrayjob-staging-r/","outputs":["a","a/b"],"previous":[]}"#,
                "listed twice or inside another",
            ),
            (
                r#"{"version":2,"run":"r","staging":"out/.arrayjob-staging-r/","outputs":["a"],"previous":[{"path":"a","keys":["a"]}]}"#,
                "is also a new output",
            ),
            (
                r#"{"version":2,"run":"r","staging":"out/.arrayjob-staging-r/","outputs":[],"previous":[{"path":"p","keys":["p2/x"]}]}"#,
                "is not inside it",
            ),
            (
                r#"{"version":2,"run":"r","staging":"out/.arrayjob-staging-r/","outputs":[],"previous":[{"path":"p","keys":[""]}]}"#,
                "is not inside it",
            ),
            (
                r#"{"version":2,"run":"r","staging":"out/.arrayjob-staging-r/","outputs":[],"previous":[{"path":"p","keys":["p/../../x"]}]}"#,
                "is not inside it",
            ),
            (
                r#"{"version":2,"run":"r","staging":"out/.arrayjob-staging-r/","outputs":[],"previous":[],"extra":1}"#,
                "not a publish journal",
            ),
        ];
        for (journal, expected) in cases {
            let e = problem(journal);
            assert!(
                e.starts_with("s3://bkt/out/.arrayjob-publish.json: ") && e.contains(expected),
                "{journal}: {e}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    //! Property tests of the journal reader: whatever the bytes or fields, it never panics, and a journal it
    //! accepts touches only keys inside its location, without `.`, `..` or empty components (a server with a
    //! filesystem behind it may resolve those).

    use super::*;
    use proptest::prelude::*;

    fn out() -> S3Location {
        S3Location::parse("--out", "s3://bkt/out").expect("location")
    }

    fn piece() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "",
            "a",
            "b.zarr",
            "c/0",
            "..",
            ".",
            "../x",
            "a/../b",
            "/abs",
            "a//b",
            ".arrayjob-x",
            "summary.json",
            "r",
            "r-1",
            "R",
            "out/",
            "out/.arrayjob-staging-r/",
            "out/.arrayjob-staging-/",
            "other/",
        ])
        .prop_map(str::to_owned)
    }

    fn joined() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 1..3).prop_map(|p| p.join("/"))
    }

    prop_compose! {
        fn journal()(
            version in 1u32..4,
            run in piece(),
            staging in prop_oneof![piece(), Just("out/.arrayjob-staging-r/".to_owned())],
            outputs in prop::collection::vec(joined(), 0..4),
            previous in prop::collection::vec((joined(), prop::collection::vec(joined(), 0..4)), 0..3),
        ) -> Journal {
            Journal {
                version,
                run,
                staging,
                outputs,
                previous: previous.into_iter().map(|(path, keys)| PreviousOutput { path, keys }).collect(),
            }
        }
    }

    fn plain(key: &str) -> bool {
        !key.split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    }

    proptest! {
        #[test]
        fn an_accepted_journal_touches_only_its_location(j in journal()) {
            let text = serde_json::to_vec(&j).expect("json");
            if let Ok(j) = Journal::parse(&out(), &text) {
                let o = out();
                prop_assert!(j.staging.starts_with("out/.arrayjob-staging-") && j.staging.ends_with('/'));
                prop_assert!(plain(j.staging.trim_end_matches('/')));
                for p in &j.outputs {
                    prop_assert!(o.key(p).starts_with("out/") && plain(p));
                }
                for prev in &j.previous {
                    let inside = format!("out/{}", prev.path);
                    for k in &prev.keys {
                        let key = o.key(k);
                        prop_assert!(key.starts_with(&inside) && plain(k), "{}", key);
                    }
                }
            }
        }

        #[test]
        fn any_bytes_are_refused_or_read_without_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = Journal::parse(&out(), &bytes);
        }
    }
}
