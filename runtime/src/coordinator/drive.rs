//! The coordinator's own loop while the job runs: it delivers the gathered blocks of small outputs, keeps the
//! ledger up to date, watches heartbeats and the processes it started, ticks the scheduler, and ends when
//! every task is done, the job failed, or the run was cancelled. Also how a resumed run takes over its ledger.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::ledger::Ledger;
use arrayjob_engine::data::Data;
use arrayjob_engine::exec::{ExecError, JobProgress, NodeSnapshot};
use arrayjob_engine::plan::Plan;
use arrayjob_engine::runner::{Outputs, RunError};
use arrayjob_engine::schedule::Scheduler;

use super::error::CoordinatorError;
use super::local::LocalWorkers;
use super::options::CoordinatorOptions;
use super::routing::{lose_worker, lost_now, route};
use super::state::{CoordShared, Gathered};
use crate::exchange::{self, StoreBook};

/// Takes over what the run's ledger holds: the scheduler restores the tasks done whose outputs are durable
/// (and reopens the others), the book learns the stored objects, and the small outputs' blocks are delivered.
pub(super) fn resume(
    ledger: &Ledger,
    sched: &mut Scheduler,
    book: &mut StoreBook,
    outputs: &Outputs,
    plan: &Plan,
) -> Result<(), CoordinatorError> {
    let found = ledger.found();
    if found.segments == 0 {
        return Ok(());
    }
    book.load(&found.stored);
    let restored = sched.restore(&found.done, &found.durable());
    for b in ledger.gathered().map_err(RunError::from)? {
        deliver(
            outputs,
            plan,
            Gathered {
                node: b.node,
                start: b.start,
                pixel: b.pixel,
                frame: b.frame,
            },
        )?;
    }
    let counts = sched.store_counts();
    tracing::warn!(
        ledger = %ledger.uri(),
        restored,
        reopened = counts.restored_reopened,
        "resuming the job from its ledger"
    );
    Ok(())
}

/// Writes what the ledger has not been told yet, then deletes the exchange objects nobody reads.
pub(super) fn flush_book(shared: &CoordShared) -> Result<(), CoordinatorError> {
    let (seg, deletes) = shared.lock().book.take();
    exchange::flush(
        shared.ledger.as_deref(),
        shared.store_bucket.as_ref(),
        seg,
        deletes,
    )?;
    Ok(())
}

/// The coordinator's own loop: delivers gathered blocks, watches heartbeats and local processes, lets the
/// scheduler look for stragglers, and ends when every task is done (or the job failed or was cancelled).
pub(super) fn drive(
    shared: &CoordShared,
    opts: &CoordinatorOptions,
    outputs: &Outputs,
    progress: &JobProgress,
    cancel: &AtomicBool,
    rx: &std::sync::mpsc::Receiver<Gathered>,
    children: &mut LocalWorkers,
) -> Result<(), CoordinatorError> {
    let mut last_tick = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(g) => deliver(outputs, &shared.plan, g)?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(CoordinatorError::ServerStopped);
            }
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(CoordinatorError::Cancelled);
        }
        // The ledger hears of what is durable within about 50 ms (a write only when there is news).
        flush_book(shared)?;
        if last_tick.elapsed() < Duration::from_millis(200) {
            continue;
        }
        last_tick = Instant::now();
        let gone = children.newly_exited();
        let exited = children.exited();
        let (failure, finished) = housekeeping(shared, opts, &gone, exited);
        absorb_progress(shared, progress);
        if let Some(f) = failure {
            return Err(CoordinatorError::JobFailed(f));
        }
        if finished {
            // Every block of a finished task was sent before its report: they are all queued here.
            while let Ok(g) = rx.try_recv() {
                deliver(outputs, &shared.plan, g)?;
            }
            flush_book(shared)?;
            return Ok(());
        }
    }
}

/// Marks the job over and wakes every worker's long poll, then waits (until `deadline` at most) for every
/// live worker to have synced since, so each heard that the job is over before the server stops.
pub(super) fn tell_workers_over(shared: &CoordShared, deadline: Instant) {
    let told = Instant::now();
    {
        let mut g = shared.lock();
        g.finished = true;
        for w in g.workers.values() {
            w.wake.notify_one();
        }
    }
    while Instant::now() < deadline
        && shared
            .lock()
            .workers
            .values()
            .any(|w| !w.lost && w.last_seen < told)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Declares silent workers lost, fails a job left without workers, and ticks the scheduler. Returns the
/// job's failure, if any, and whether it is finished.
pub(super) fn housekeeping(
    shared: &CoordShared,
    opts: &CoordinatorOptions,
    exited: &[String],
    local_exited: Option<String>,
) -> (Option<String>, bool) {
    let now = shared.now();
    let mut g = shared.lock();
    let silent = lost_now(&g.workers, opts.worker_timeout, exited);
    for id in silent {
        lose_worker(shared, &mut g, id, now);
    }
    let alive = g.workers.values().filter(|w| !w.lost).count();
    shared.metrics.workers_alive.set(alive as i64);
    if alive > 0 {
        g.last_alive = Instant::now();
    } else if g.failure.is_none() && !g.sched.finished() {
        if let Some(why) = local_exited {
            g.failure = Some(format!("every worker process exited ({why})"));
        } else if g.last_alive.elapsed() > opts.no_worker_timeout {
            g.failure = Some(format!(
                "no worker for {} s: the job cannot go on",
                opts.no_worker_timeout.as_secs()
            ));
        }
    }
    if g.failure.is_none() {
        let actions = g.sched.tick(now);
        route(shared, &mut g, actions);
    }
    (g.failure.clone(), g.sched.finished())
}

/// Hands a gathered block (or a pixel's series) of a small output to the outputs.
pub(super) fn deliver(outputs: &Outputs, plan: &Plan, g: Gathered) -> Result<(), CoordinatorError> {
    let stage = plan
        .nodes
        .get(g.node)
        .map_or_else(|| format!("node {}", g.node), |n| n.name.clone());
    let bad = |m: String| ExecError::Output {
        stage: stage.clone(),
        target: "gathered block".into(),
        message: m,
    };
    let data = arrayjob_engine::frame::decode(&g.frame).map_err(|e| bad(e.to_string()))?;
    let Data::Chunk(chunk) = data else {
        return Err(bad("a gathered block is not a chunk".into()).into());
    };
    match g.pixel {
        Some(k) => {
            let values = chunk.to_f64();
            let values: Vec<f64> = values.iter().copied().collect();
            let t0 = g.start.first().copied().unwrap_or(0);
            outputs.deliver_series(g.node, k, t0, &values)?;
        }
        None => outputs.deliver_dense(g.node, &g.start, &chunk)?,
    }
    Ok(())
}

/// Sets the run's progress counters from the workers' latest snapshots.
pub(super) fn absorb_progress(shared: &CoordShared, progress: &JobProgress) {
    let g = shared.lock();
    let views: Vec<(f64, &[NodeSnapshot], f64)> = g
        .workers
        .values()
        .map(|w| (w.joined, w.stages.as_slice(), w.load_end))
        .collect();
    progress.absorb(&views);
}
