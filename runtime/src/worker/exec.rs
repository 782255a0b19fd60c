//! A worker's compute threads: each takes the next task, fetches the inputs held elsewhere (the job's object
//! store, peers), runs it with the engine's task runner, and says how it went; a finished task is reported
//! once its output files are written.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrayjob_engine::data::{Data, DataKey};
use arrayjob_engine::exec::{ExecError, KeepingIo, TaskRunner};
use arrayjob_engine::schedule::WorkerId;
use arrayjob_engine::store::StoreError;

use super::serve::fetch_keys;
use super::shared::{Assignment, Shared, forget_damaged, lock, push_report};
use crate::protocol::{self, InputLocation, Report};

/// Sends each finished task's report once the output files it submitted are written (Zarr shards are
/// written by a background thread while the compute threads go on): a task reported done has its outputs on
/// disk.
pub(super) fn report_when_written(
    shared: &Shared,
    done: &std::sync::mpsc::Receiver<(Report, Vec<u64>)>,
) {
    for (report, marks) in done {
        let report = match (shared.sink.wait_written(&marks), report) {
            (Ok(()), r) => r,
            (Err(e), Report::Done { task, attempt, .. }) => Report::Failed {
                task,
                attempt,
                input_unavailable: false,
                error: e.to_string(),
                unreadable: Vec::new(),
            },
            (Err(_), r) => r,
        };
        push_report(shared, report);
    }
}

/// A compute thread: runs queued tasks until the job is over.
pub(super) fn compute(
    shared: &Shared,
    thread: u32,
    written: &std::sync::mpsc::Sender<(Report, Vec<u64>)>,
) {
    loop {
        let next = {
            let mut q = lock(&shared.queue);
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(a) = q.pop_front() {
                    break a;
                }
                q = shared
                    .queued
                    .wait_timeout(q, Duration::from_millis(200))
                    .map_or_else(|e| e.into_inner().0, |(g, _)| g);
            }
        };
        let report = run_assignment(shared, next, thread);
        if matches!(report, Report::Done { .. }) {
            if let Err(e) = written.send((report, shared.sink.write_marks())) {
                push_report(shared, e.0.0);
            }
        } else {
            push_report(shared, report);
        }
    }
}

/// Fetches the inputs held elsewhere, runs the task and says how it went.
pub(super) fn run_assignment(shared: &Shared, a: Assignment, thread: u32) -> Report {
    let t0 = Instant::now();
    let kind = shared.graph.task(a.task).kind;
    let fetched = match fetch_inputs(shared, &a.inputs) {
        Ok(f) => f,
        Err(f) => {
            return Report::Failed {
                task: a.task,
                attempt: a.attempt,
                input_unavailable: f.unreadable.is_empty() || !f.fatal,
                error: f.error,
                unreadable: f.unreadable,
            };
        }
    };
    let io = KeepingIo::new(&shared.store, fetched);
    let runner = TaskRunner {
        plan: &shared.job.plan,
        source: shared.job.source.as_ref(),
        sink: &shared.sink,
        progress: &shared.progress,
        store: &shared.store,
        cancel: &shared.stop,
    };
    let result = runner.run(kind, &io);
    if shared.abort_on_task == Some(a.task.0) {
        // As a kernel crash or an out-of-memory kill would, after the work and before the report.
        tracing::error!(task = a.task.0, "ARRAYJOB_FAULT_ABORT_TASK: aborting");
        std::process::abort();
    }
    match result {
        Ok(()) => {
            shared.tasks_done.fetch_add(1, Ordering::Relaxed);
            shared.metrics.tasks_done.inc();
            Report::Done {
                task: a.task,
                attempt: a.attempt,
                outputs: io.into_outputs(),
                seconds: t0.elapsed().as_secs_f64(),
                thread,
            }
        }
        Err(ExecError::Store(StoreError::Damaged { key, message })) => {
            forget_damaged(shared, key);
            Report::Failed {
                task: a.task,
                attempt: a.attempt,
                input_unavailable: true,
                error: format!(
                    "{} {}: {key} came back damaged: {message}",
                    kind.name(),
                    a.task.0
                ),
                unreadable: vec![key],
            }
        }
        Err(e) => Report::Failed {
            task: a.task,
            attempt: a.attempt,
            // A local input released meanwhile: a copy of this task finished elsewhere first.
            input_unavailable: matches!(e, ExecError::Store(StoreError::Missing(_))),
            error: format!("{} {}: {e}", kind.name(), a.task.0),
            unreadable: Vec::new(),
        },
    }
}

/// Why a task's inputs could not be fetched.
pub(super) struct FetchFailure {
    /// What failed, as the task's report says it.
    pub(super) error: String,
    /// Inputs whose object in the store is damaged or gone (rebuilt by the coordinator).
    pub(super) unreadable: Vec<DataKey>,
    /// The store could not be reached at all (beyond the outage budget): the job fails.
    pub(super) fatal: bool,
}

impl FetchFailure {
    /// A failure the coordinator answers by placing the task again (a holder gone, a key not there yet).
    fn retry(error: String) -> Self {
        FetchFailure {
            error,
            unreadable: Vec::new(),
            fatal: false,
        }
    }
}

/// Fetches the inputs not held here: from the job's object store, one GET per object; from peers, one
/// request per holder (each transfer reported).
pub(super) fn fetch_inputs(
    shared: &Shared,
    inputs: &[InputLocation],
) -> Result<HashMap<DataKey, Arc<Data>>, FetchFailure> {
    let (stored, inputs): (Vec<&InputLocation>, Vec<&InputLocation>) =
        inputs.iter().partition(|i| i.worker == WorkerId::STORE);
    let mut out = read_stored(shared, &stored)?;
    out.extend(fetch_from_peers(shared, &inputs)?);
    Ok(out)
}

/// Reads inputs held by the job's object store: each object once, its frames decoded and checked; an object
/// missing or damaged names the keys it should have held.
pub(super) fn read_stored(
    shared: &Shared,
    stored: &[&InputLocation],
) -> Result<HashMap<DataKey, Arc<Data>>, FetchFailure> {
    let mut out = HashMap::new();
    if stored.is_empty() {
        return Ok(out);
    }
    let Some(bucket) = shared.store_bucket.clone() else {
        return Err(FetchFailure::retry(
            "inputs in the object store but no scratch bucket".into(),
        ));
    };
    let mut by_object: BTreeMap<&str, Vec<&InputLocation>> = BTreeMap::new();
    for i in stored {
        by_object.entry(i.address.as_str()).or_default().push(i);
    }
    for (object, wanted) in by_object {
        let keys: Vec<DataKey> = wanted.iter().map(|i| i.key).collect();
        let (b, k) = (bucket.clone(), object.to_owned());
        let got = arrayjob_engine::s3::objects::block(async move { b.get(&k).await });
        let unreadable = |error: String| FetchFailure {
            error: format!("s3://{}/{object}: {error}", bucket.name()),
            unreadable: keys.clone(),
            fatal: false,
        };
        let body = match got {
            Ok(Some((body, _))) => body,
            Ok(None) => return Err(unreadable("not found".into())),
            Err(e) => {
                return Err(FetchFailure {
                    error: e.to_string(),
                    unreadable: keys.clone(),
                    fatal: true,
                });
            }
        };
        let mut reader = protocol::FrameReader::default();
        let decoded = match reader.push(&body) {
            Ok(()) => reader.finish(),
            Err(e) => Err(e),
        };
        let mut frames: Vec<Option<Data>> = decoded
            .map_err(|e| unreadable(format!("damaged: {e}")))?
            .into_iter()
            .map(Some)
            .collect();
        shared.metrics.bytes_fetched.inc_by(body.len() as u64);
        for i in wanted {
            let d = i
                .position
                .and_then(|p| frames.get_mut(p)?.take())
                .ok_or_else(|| unreadable(format!("has no frame {:?}", i.position)))?;
            out.insert(i.key, Arc::new(d));
        }
    }
    Ok(out)
}

/// Fetches the inputs held by other workers, one request per holder; reports each transfer.
pub(super) fn fetch_from_peers(
    shared: &Shared,
    inputs: &[&InputLocation],
) -> Result<HashMap<DataKey, Arc<Data>>, FetchFailure> {
    let remote: Vec<&InputLocation> = inputs
        .iter()
        .copied()
        .filter(|i| i.worker != shared.id)
        .collect();
    // Keys on their way here are waited for, then read from the store like local ones.
    let keys: Vec<DataKey> = remote.iter().map(|i| i.key).collect();
    shared.moves.wait_for(&keys, &shared.stop);
    let mut by_holder: BTreeMap<WorkerId, (String, Vec<DataKey>)> = BTreeMap::new();
    for i in remote.into_iter().filter(|i| !shared.store.contains(i.key)) {
        by_holder
            .entry(i.worker)
            .or_insert_with(|| (i.address.clone(), Vec::new()))
            .1
            .push(i.key);
    }
    let mut out = HashMap::new();
    for (holder, (address, keys)) in by_holder {
        let t0 = Instant::now();
        let (data, bytes) = shared
            .http
            .rt
            .block_on(fetch_keys(
                &shared.http.client,
                &shared.http.token,
                &address,
                &keys,
            ))
            .map_err(|e| {
                FetchFailure::retry(format!(
                    "fetching {} input(s) from worker {} at {address}: {e}",
                    keys.len(),
                    holder.0
                ))
            })?;
        for (key, d) in keys.iter().zip(data) {
            out.insert(*key, Arc::new(d));
        }
        shared.metrics.bytes_fetched.inc_by(bytes);
        push_report(
            shared,
            Report::Transfer {
                from: holder,
                bytes,
                seconds: t0.elapsed().as_secs_f64(),
            },
        );
    }
    Ok(out)
}
