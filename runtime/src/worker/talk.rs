//! A worker's conversation with its coordinator: a long-polling loop (the heartbeat, and how commands
//! arrive) and a loop sending reports as soon as there are some; and what it does with the commands: tasks
//! are queued, keys moved here from peers ahead of their merges, pieces shipped to the job's object store,
//! keys released, links probed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrayjob_engine::data::DataKey;
use arrayjob_engine::schedule::WorkerId;

use super::error::WorkerError;
use super::join::Http;
use super::serve::fetch_keys;
use super::shared::{Assignment, Shared, forget_damaged, lock, push_report};
use crate::protocol::{self, Command, Report, SyncRequest, SyncResponse};

/// Talks to the coordinator until the job is over: a long-polling loop (the heartbeat, and how work arrives
/// when nothing is reported) and a loop sending reports as soon as there are some.
pub(super) async fn talk(shared: Arc<Shared>, heartbeat: Duration) -> Result<(), WorkerError> {
    let poller = tokio::spawn(sync_loop(shared.clone(), false, heartbeat));
    let reporter = tokio::spawn(sync_loop(shared.clone(), true, heartbeat));
    let (a, b) = tokio::join!(poller, reporter);
    shared.stop.store(true, Ordering::Relaxed);
    shared.queued.notify_all();
    let panicked = |e: tokio::task::JoinError| WorkerError::Panicked(e.to_string());
    a.map_err(panicked)??;
    b.map_err(panicked)??;
    Ok(())
}

/// One of the two loops of [`talk`]: the poller (takes commands, waits up to a heartbeat for them) or the
/// reporter (sends reports as soon as there are some). Either ends when the job is over, or with the error
/// that ends the worker.
async fn sync_loop(
    shared: Arc<Shared>,
    reporter: bool,
    heartbeat: Duration,
) -> Result<(), WorkerError> {
    let mut failures = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        if reporter {
            let _ = tokio::time::timeout(heartbeat, shared.report_ready.notified()).await;
        }
        let reports = std::mem::take(&mut *lock(&shared.reports));
        if reporter && reports.is_empty() {
            continue;
        }
        // Only the poller takes commands: one ordered stream (a release must not overtake the run that
        // writes the key again).
        let req = sync_request(
            &shared,
            reports.clone(),
            if reporter {
                0
            } else {
                heartbeat.as_millis() as u64
            },
            !reporter,
        );
        match send_sync(&shared.http, &req).await {
            Ok(resp) => {
                failures = 0;
                if resp.finished {
                    shared.stop.store(true, Ordering::Relaxed);
                    shared.queued.notify_all();
                    shared.report_ready.notify_one();
                    return Ok(());
                }
                obey(&shared, resp.commands);
            }
            Err(SyncError::Refused(msg)) => {
                shared.stop.store(true, Ordering::Relaxed);
                shared.queued.notify_all();
                shared.report_ready.notify_one();
                return Err(WorkerError::Dropped(msg));
            }
            Err(SyncError::Unreachable(e)) => {
                // Put the reports back; they go with the next attempt.
                lock(&shared.reports).splice(0..0, reports);
                failures += 1;
                if failures > 50 {
                    shared.stop.store(true, Ordering::Relaxed);
                    shared.queued.notify_all();
                    shared.report_ready.notify_one();
                    return Err(WorkerError::LostCoordinator {
                        url: shared.http.coordinator.clone(),
                        message: e,
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}

/// Why a sync got no answer to act on.
enum SyncError {
    /// The coordinator refused it (4xx): this worker is not in the job any more.
    Refused(String),
    /// No answer, or not one that could be read: tried again, up to a limit.
    Unreachable(String),
}

fn sync_request(
    shared: &Shared,
    reports: Vec<Report>,
    wait_ms: u64,
    take_commands: bool,
) -> SyncRequest {
    SyncRequest {
        take_commands,
        worker: shared.id,
        reports,
        store: shared.store.stats(),
        resident_bytes: shared.store.resident_bytes() as u64,
        s3: arrayjob_engine::s3::objects::counters(),
        stages: shared.progress.snapshot(),
        load_end_seconds: shared.progress.load_end_seconds(),
        wait_ms,
    }
}

async fn send_sync(http: &Http, req: &SyncRequest) -> Result<SyncResponse, SyncError> {
    let r = http
        .send(
            http.client
                .post(format!("{}/v1/sync", http.coordinator))
                .json(req),
        )
        .await
        .map_err(|e| SyncError::Unreachable(e.to_string()))?;
    let status = r.status();
    if status.is_client_error() {
        return Err(SyncError::Refused(format!(
            "{status}: {}",
            r.text().await.unwrap_or_default()
        )));
    }
    if !status.is_success() {
        return Err(SyncError::Unreachable(status.to_string()));
    }
    r.json()
        .await
        .map_err(|e| SyncError::Unreachable(e.to_string()))
}

/// Carries out the coordinator's commands: tasks are queued for the compute threads, releases free the
/// store, probes time a link in the background.
pub(super) fn obey(shared: &Arc<Shared>, commands: Vec<Command>) {
    for c in commands {
        match c {
            Command::Run {
                task,
                attempt,
                inputs,
            } => {
                lock(&shared.queue).push_back(Assignment {
                    task,
                    attempt,
                    inputs,
                });
                shared.queued.notify_one();
            }
            Command::Move {
                from,
                address,
                keys,
            } => {
                if shared.moves.queue(from, address, keys) {
                    tokio::spawn(move_from(shared.clone(), from));
                }
            }
            Command::Ship { object, keys } => {
                tokio::spawn(ship(shared.clone(), object, keys));
            }
            Command::Release { keys } => {
                for key in keys {
                    if let Err(e) = shared.store.remove(key) {
                        tracing::warn!("releasing {key}: {e}");
                    }
                }
            }
            Command::Probe {
                from,
                address,
                bytes,
            } => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let url = format!("http://{address}/v1/probe?bytes={bytes}");
                    let got = shared.http.send(shared.http.client.get(url)).await;
                    if let Ok(r) = got
                        && r.status().is_success()
                        && let Ok(body) = r.bytes().await
                    {
                        push_report(
                            &shared,
                            Report::Transfer {
                                from,
                                bytes: body.len() as u64,
                                seconds: t0.elapsed().as_secs_f64(),
                            },
                        );
                    }
                });
            }
        }
    }
}

/// Copies what is queued from `from` into this worker's store, a batch at a time, and reports each batch.
/// A failed batch is only logged: its keys stay where they were, and a task reading them fetches them
/// itself (or finds their holder gone, as any fetch would).
pub(super) async fn move_from(shared: Arc<Shared>, from: WorkerId) {
    while let Some((address, keys)) = shared.moves.next_batch(from) {
        let wanted: Vec<DataKey> = keys
            .iter()
            .copied()
            .filter(|&k| !shared.store.contains(k))
            .collect();
        let t0 = Instant::now();
        let got = if wanted.is_empty() {
            Ok((Vec::new(), 0))
        } else {
            fetch_keys(&shared.http.client, &shared.http.token, &address, &wanted).await
        };
        let stored = got.map_err(|e| e.to_string()).and_then(|(data, bytes)| {
            for (&key, d) in wanted.iter().zip(data) {
                shared
                    .store
                    .put(key, d, usize::MAX)
                    .map_err(|e| e.to_string())?;
            }
            Ok(bytes)
        });
        shared.moves.settled(&keys);
        match stored {
            Ok(bytes) => {
                shared.metrics.bytes_fetched.inc_by(bytes);
                push_report(
                    &shared,
                    Report::Moved {
                        from,
                        // Those a duplicate task wrote here meanwhile included: this worker holds them.
                        keys,
                        bytes,
                        seconds: t0.elapsed().as_secs_f64(),
                    },
                );
            }
            Err(e) => tracing::info!(
                "moving {} key(s) from worker {} at {address}: {e}",
                wanted.len(),
                from.0
            ),
        }
    }
}

/// Uploads `keys` from the store as one object at `object` (their frames in order, as a fetch answer) and
/// reports it; a failed upload (after the S3 retries and outage budget) fails the job.
pub(super) async fn ship(shared: Arc<Shared>, object: String, keys: Vec<DataKey>) {
    let Ok(_permit) = shared.uploads.clone().acquire_owned().await else {
        return;
    };
    let s = shared.clone();
    let report = tokio::task::spawn_blocking(move || ship_now(&s, &object, &keys))
        .await
        .unwrap_or_else(|e| Report::ShipFailed {
            error: format!("the upload task stopped: {e}"),
        });
    push_report(&shared, report);
}

pub(super) fn ship_now(shared: &Shared, object: &str, keys: &[DataKey]) -> Report {
    let t0 = Instant::now();
    let Some(bucket) = shared.store_bucket.clone() else {
        return Report::ShipFailed {
            error: "exchange through S3 without a scratch bucket".into(),
        };
    };
    let mut body = Vec::new();
    let mut sized = Vec::with_capacity(keys.len());
    for &key in keys {
        match shared.store.get(key) {
            Ok(d) => {
                sized.push((key, d.nbytes() as u64));
                for part in protocol::answer_parts(&d) {
                    body.extend_from_slice(&part);
                }
            }
            Err(e) => {
                return Report::ShipFailed {
                    error: format!("worker {} cannot ship {key}: {e}", shared.id.0),
                };
            }
        }
    }
    let crc32c = crc32c::crc32c(&body);
    let bytes = body.len() as u64;
    let key = object.to_owned();
    let put = arrayjob_engine::s3::objects::block(async move {
        bucket.put(&key, bytes::Bytes::from(body)).await
    });
    match put {
        Ok(()) => Report::Shipped {
            object: object.to_owned(),
            keys: sized,
            bytes,
            crc32c,
            seconds: t0.elapsed().as_secs_f64(),
        },
        Err(e) => Report::ShipFailed {
            error: e.to_string(),
        },
    }
}

/// Reports the keys the data server found damaged in this worker's spill: dropped here, rebuilt elsewhere.
pub(super) async fn report_damaged(
    shared: Arc<Shared>,
    mut keys: tokio::sync::mpsc::UnboundedReceiver<DataKey>,
) {
    while let Some(key) = keys.recv().await {
        forget_damaged(&shared, key);
        push_report(&shared, Report::Damaged { keys: vec![key] });
    }
}
