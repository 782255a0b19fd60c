//! An output location on S3 (`--out s3://bucket/prefix`): its lock, the staging prefix of a run, and the
//! publish that makes a run's outputs appear under their final names (the protocol and its guarantees are in
//! `docs/s3.md`, "Outputs on S3").
//!
//! Keys of the runner under the location, all named `.arrayjob*` like on local disk:
//! - `.arrayjob.lock`: the lease of the run using the location, created with `If-None-Match: *`, renewed and
//!   taken over with `If-Match` on its ETag;
//! - `.arrayjob-staging-<run>/`: where a run writes its outputs (Zarr chunks by the workers that made them);
//! - `.arrayjob-publish.json`: the journal of a publish under way; a run that finds one finishes it first.
//!
//! A location holds a committed result when `summary.json` is there: it is deleted first and written last by
//! every publish, and readers that check it never see a mix of two runs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::S3Error;
use super::objects::{Bucket, CondPut, S3Location, block};
use crate::outdir::{LOCK_FILE, STAGING_PREFIX, SUMMARY};
use crate::runner::RunError;

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
    /// [`RunError::Busy`] when another run holds it; the S3 error when a request fails.
    pub fn acquire(
        bucket: &Bucket,
        out: &S3Location,
        run: &str,
        lease: Duration,
    ) -> Result<S3OutLock, RunError> {
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
    ) -> Result<S3OutLock, RunError> {
        let etag = {
            let (b, k, r) = (bucket.clone(), key.to_owned(), run.to_owned());
            block(async move { take(&b, &k, &r, lease).await })?
        };
        let etag = match etag {
            Ok(etag) => etag,
            Err(holder) => {
                return Err(RunError::Busy {
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
    /// [`RunError::Busy`]-like error naming the lock.
    pub fn check(&self) -> Result<(), RunError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(RunError::S3(S3Error::request(
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
        let Some((body, etag)) = bucket.get(key).await? else {
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

/// The journal of a publish: enough to finish it after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Journal {
    /// Key prefix of the run's staging (ends in `/`).
    staging: String,
    /// Output paths of the new run (relative), `summary.json` not included.
    outputs: Vec<String>,
    /// Output paths of the previous committed run, to remove when the new run does not have them.
    previous: Vec<String>,
}

/// Prepares a locked location for a run: finishes a publish that a killed run left half done and removes the
/// staging prefixes of killed runs; returns those that held objects. (A server with real directories, such as
/// SeaweedFS, may go on listing a prefix whose objects are all gone: such an empty one is not counted.)
///
/// # Errors
/// When a request fails.
pub fn clean(
    bucket: &Bucket,
    out: &S3Location,
    _lock: &S3OutLock,
    keep: Option<&str>,
) -> Result<Vec<String>, RunError> {
    let keep = keep.map(str::to_owned);
    let (b, o) = (bucket.clone(), out.clone());
    block(async move {
        if let Some((body, _)) = b.get(&o.key(JOURNAL)).await? {
            match serde_json::from_slice::<Journal>(&body) {
                Ok(j) => {
                    warn!(location = %o, "finishing the publish of a run that was interrupted");
                    roll_forward(&b, &o, &j).await?;
                }
                Err(e) => {
                    warn!(location = %o, error = %e, "ignoring an unreadable publish journal")
                }
            }
        }
        let mut removed = Vec::new();
        for dir in b.list_dirs(&o.prefix, STAGING_PREFIX).await? {
            if keep.as_deref() == Some(dir.as_str()) {
                continue;
            }
            if b.delete_prefix(&dir).await? > 0 {
                warn!(prefix = %dir, "removed the staging prefix of a run that did not finish");
                removed.push(dir);
            }
        }
        Ok(removed)
    })
    .map_err(RunError::S3)
}

/// Publishes a finished run: uploads the files of `local` (the small outputs and `summary.json`) next to the
/// Zarr arrays already in `staging`, writes the journal, then replaces the previous outputs by the new ones,
/// `summary.json` last, and removes the staging prefix.
///
/// # Errors
/// When a request fails; the journal then lets the next run finish the publish.
pub fn publish(
    bucket: &Bucket,
    out: &S3Location,
    staging: &S3Location,
    local: &Path,
    outputs: &[String],
    lock: &S3OutLock,
) -> Result<(), RunError> {
    let files = local_files(local)?;
    let (b, o, s) = (bucket.clone(), out.clone(), staging.clone());
    let outputs = outputs.to_vec();
    lock.check()?;
    block(async move {
        futures::stream::iter(files)
            .map(|(rel, path)| {
                let (b, key) = (b.clone(), s.key(&rel));
                async move {
                    let body = std::fs::read(&path).map_err(|e| {
                        S3Error::request(
                            None,
                            "PutObject",
                            &key,
                            format!("{}: {e}", path.display()),
                        )
                    })?;
                    b.put(&key, Bytes::from(body)).await
                }
            })
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let previous = match b.get(&o.key(SUMMARY)).await? {
            Some((body, _)) => previous_outputs(&body),
            None => Vec::new(),
        };
        let journal = Journal {
            staging: s.prefix.clone(),
            outputs,
            previous,
        };
        let text = serde_json::to_vec(&journal).unwrap_or_default();
        b.put(&o.key(JOURNAL), Bytes::from(text)).await?;
        roll_forward(&b, &o, &journal).await
    })
    .map_err(RunError::S3)
}

/// The output paths listed in a `summary.json`.
fn previous_outputs(summary: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(summary).unwrap_or_default();
    v["outputs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o["path"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Every file under `dir` but the spill directories, as (relative path with `/`, path).
fn local_files(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, RunError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(crate::runner::io_err(&d))? {
            let entry = entry.map_err(crate::runner::io_err(&d))?;
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

/// Keys of output `path` under `prefix`: the object `prefix/path` itself, or the objects under `prefix/path/`
/// (an array).
async fn output_keys(b: &Bucket, prefix: &str, path: &str) -> Result<Vec<String>, S3Error> {
    Ok(output_objects(b, prefix, path)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// [`output_keys`] with their sizes.
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

/// The publish proper, idempotent so that a later run can redo it from the journal: `summary.json` off, each
/// output's objects copied to their final keys (every array's `zarr.json` after its chunks) and the final keys
/// the new run does not have deleted, previous outputs that are gone deleted, `summary.json` copied last,
/// journal and staging removed.
async fn roll_forward(b: &Bucket, out: &S3Location, j: &Journal) -> Result<(), S3Error> {
    b.delete(&[out.key(SUMMARY)]).await?;
    for path in &j.outputs {
        let staged = output_objects(b, &j.staging, path).await?;
        let rel: std::collections::BTreeMap<String, u64> = staged
            .iter()
            .filter_map(|(k, size)| k.strip_prefix(&j.staging).map(|r| (r.to_owned(), *size)))
            .collect();
        if rel.is_empty() {
            // Published before the crash that left this journal (the staging copy is gone): nothing to redo.
            continue;
        }
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
        let stale: Vec<String> = output_keys(b, &out.prefix, path)
            .await?
            .into_iter()
            .filter(|k| {
                k.strip_prefix(&out.prefix)
                    .is_some_and(|r| !rel.contains_key(r))
            })
            .collect();
        b.delete(&stale).await?;
    }
    for old in j.previous.iter().filter(|p| !j.outputs.contains(p)) {
        let keys = output_keys(b, &out.prefix, old).await?;
        b.delete(&keys).await?;
    }
    let summary = format!("{}{SUMMARY}", j.staging);
    if b.get(&summary).await?.is_some() {
        b.copy(&summary, &out.key(SUMMARY)).await?;
    }
    b.delete(&[out.key(JOURNAL)]).await?;
    let n = b.delete_prefix(&j.staging).await?;
    info!(location = %out, objects = n, "published");
    Ok(())
}

/// Removes the staging prefixes at `out` that no live run owns (`arrayjob gc`): takes the location's lock
/// (so never under a running job), finishes an interrupted publish, deletes leftover staging. Returns the
/// prefixes removed.
///
/// # Errors
/// [`RunError::Busy`] when a run holds the location; the S3 error when a request fails.
pub fn gc(bucket: &Bucket, out: &S3Location) -> Result<Vec<String>, RunError> {
    let run = format!("gc-{}", std::process::id());
    let lock = S3OutLock::acquire(bucket, out, &run, LEASE)?;
    clean(bucket, out, &lock, None)
}
