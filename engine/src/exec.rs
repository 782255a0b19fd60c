//! Running tasks: the [`TaskRunner`] (one task, shared with the worker processes) and the local executor,
//! which runs the [`TaskGraph`] of a [`Plan`] on a pool of threads as one in-process worker of the job's
//! [`Scheduler`], the same placement code a distributed run uses.
//!
//! Task kinds (see [`crate::graph`]): *load* a source chunk, *merge* the pieces of a rechunk's merge group,
//! *combine* a reduction partial into the fold of the partials before it. Whatever a task produces is pushed
//! through the fused stages below it at once (`TaskRunner::emit`): recenter and FFT chunks are computed in
//! place, reductions take a partial, rechunks split the chunk into pieces; partials and pieces go to the
//! [`ChunkStore`] under their [`DataKey`] until the scheduler releases them. The scheduler sends merges and
//! combines before further loads, so stored data leaves memory as soon as it can.
//!
//! Results do not depend on thread timing: partials are folded in leaf order, pieces are pasted
//! into fixed positions.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crate::data::DataKey;
use crate::graph::{TaskGraph, TaskId};
use crate::plan::Plan;
use crate::schedule::{Action, Scheduler, SchedulerOptions, WorkerId};
use crate::source::SliceSource;
use crate::store::{ChunkStore, StoreStats};

mod error;
mod progress;
mod sink;
mod task;

pub use self::error::ExecError;
pub use self::progress::{JobProgress, NodeProgress, NodeSnapshot};
pub use self::sink::ChunkSink;
pub use self::task::{KeepingIo, TaskIo, TaskRunner};

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Worker threads.
    pub threads: usize,
    /// Bytes the chunk store may keep in memory before spilling.
    pub memory_budget: usize,
    /// Directory for the spill file.
    pub spill_dir: std::path::PathBuf,
    /// Where spilling goes beyond a disk limit (the job's S3 scratch); `None`: disk only, unbounded.
    pub spill_tier: Option<crate::s3::spill::SpillTier>,
}

/// The one worker of a local run.
const LOCAL: WorkerId = WorkerId(0);

/// The local executor: one in-process worker of the job's [`Scheduler`] (the same placement code as a
/// distributed run), its threads running what the scheduler sends.
struct Exec<'a> {
    runner: TaskRunner<'a>,
    sched: Mutex<Scheduler>,
    /// Tasks the scheduler sent, in order.
    queue: Mutex<VecDeque<TaskId>>,
    wake: Condvar,
    /// Tasks queued or running.
    outstanding: AtomicUsize,
    failed: Mutex<Option<ExecError>>,
    /// The caller's cancel flag (the runner's own flag is set on the first failure or on cancel).
    cancel: &'a AtomicBool,
    start: Instant,
}

/// Runs `plan` over `source`, sending finished chunks of nodes with outputs to `sink`.
///
/// # Errors
/// The first error of any task (source, kernel, spill, output); the other threads stop at their next task.
/// [`ExecError::Cancelled`] when `cancel` is set.
pub fn execute(
    plan: &Plan,
    source: &dyn SliceSource,
    sink: &dyn ChunkSink,
    opts: &ExecOptions,
    progress: &JobProgress,
    cancel: &AtomicBool,
) -> Result<StoreStats, ExecError> {
    let spill = crate::store::FileSpill::new(&opts.spill_dir).map_err(|e| ExecError::Output {
        stage: "-".into(),
        target: opts.spill_dir.display().to_string(),
        message: format!("cannot create the spill file: {e}"),
    })?;
    let graph = TaskGraph::build(plan).map_err(|e| ExecError::Internal(e.to_string()))?;
    let spill: Box<dyn crate::store::SpillBackend> = match &opts.spill_tier {
        Some(tier) => Box::new(crate::s3::spill::TieredSpill::new(spill, tier.clone())),
        None => Box::new(spill),
    };
    let store = ChunkStore::new(opts.memory_budget, spill);
    // Set on the first failure or on cancel, so every thread stops at its next block.
    let halt = AtomicBool::new(false);
    let mut sched = Scheduler::new(
        graph,
        SchedulerOptions {
            steal: false,
            ..SchedulerOptions::default()
        },
    );
    let first = sched.add_worker(LOCAL, opts.threads.max(1), 0.0);
    let ex = Exec {
        runner: TaskRunner {
            plan,
            source,
            sink,
            progress,
            store: &store,
            cancel: &halt,
        },
        sched: Mutex::new(sched),
        outstanding: AtomicUsize::new(0),
        queue: Mutex::new(VecDeque::new()),
        wake: Condvar::new(),
        failed: Mutex::new(None),
        cancel,
        start: Instant::now(),
    };
    ex.obey(first)?;
    std::thread::scope(|s| {
        for t in 0..opts.threads.max(1) {
            let ex = &ex;
            std::thread::Builder::new()
                .name(format!("arrayjob-exec-{t}"))
                .spawn_scoped(s, move || ex.worker())
                .map(|_| ())
                .unwrap_or_else(|e| {
                    ex.fail(ExecError::Output {
                        stage: "-".into(),
                        target: "thread".into(),
                        message: e.to_string(),
                    })
                });
        }
    });
    if let Some(e) = ex.failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(ExecError::Cancelled);
    }
    ex.check_finished()?;
    Ok(store.stats())
}

impl Exec<'_> {
    fn fail(&self, e: ExecError) {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        drop(f);
        self.runner.cancel.store(true, Ordering::Relaxed);
        self.wake_all();
    }

    /// Wakes every waiting thread, under the queue's lock: a thread checks its conditions (stopped, queue,
    /// outstanding) under that lock and waits atomically with its release, so a change made before this call
    /// is seen either by its check or by its wake-up, never lost in between.
    fn wake_all(&self) {
        let _q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    fn stopped(&self) -> bool {
        if self.cancel.load(Ordering::Relaxed) {
            self.runner.cancel.store(true, Ordering::Relaxed);
        }
        self.runner.cancel.load(Ordering::Relaxed)
    }

    /// Carries out the scheduler's decisions: tasks to the threads' queue, released keys out of the store.
    fn obey(&self, actions: Vec<Action>) -> Result<(), ExecError> {
        for a in actions {
            match a {
                Action::Run { task, .. } => {
                    self.outstanding.fetch_add(1, Ordering::SeqCst);
                    self.queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(task);
                    self.wake.notify_one();
                }
                Action::Release { key, .. } => {
                    self.runner.store.remove(key)?;
                }
                // One worker: no links to measure, every merge gathers where its pieces are, and nothing is
                // exchanged through the store (`exchange_store` is off here).
                Action::Probe { .. } | Action::Move { .. } | Action::Ship { .. } => {}
            }
        }
        Ok(())
    }

    /// Reports `task` done with its `outputs` and carries out what the scheduler decides next.
    fn completed(
        &self,
        task: TaskId,
        outputs: &[(DataKey, u64)],
        seconds: f64,
    ) -> Result<(), ExecError> {
        let now = self.start.elapsed().as_secs_f64();
        let actions = self
            .sched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .task_done(LOCAL, task, outputs, seconds, now);
        self.obey(actions)
    }

    /// After a run without errors: every task done and nothing left in the store, or a bug to report.
    fn check_finished(&self) -> Result<(), ExecError> {
        let sched = self.sched.lock().unwrap_or_else(|e| e.into_inner());
        if !sched.finished() {
            let total = sched.graph().len();
            let done = sched
                .graph()
                .tasks()
                .filter(|(id, _)| sched.is_done(*id))
                .count();
            return Err(ExecError::Internal(format!(
                "{} of {total} tasks never became ready",
                total - done
            )));
        }
        if !self.runner.store.is_empty() {
            return Err(ExecError::Internal(format!(
                "{} intermediate results were never read",
                self.runner.store.len()
            )));
        }
        Ok(())
    }

    fn worker(&self) {
        loop {
            let task = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if self.stopped() {
                        return;
                    }
                    if let Some(t) = q.pop_front() {
                        break t;
                    }
                    if self.outstanding.load(Ordering::SeqCst) == 0 {
                        return;
                    }
                    q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            if let Err(e) = self.run(task) {
                self.fail(e);
            }
            if self.outstanding.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.wake_all();
            }
        }
    }

    fn run(&self, task: TaskId) -> Result<(), ExecError> {
        let kind = self
            .sched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .graph()
            .task(task)
            .kind;
        let t0 = Instant::now();
        let io = KeepingIo::new(self.runner.store, std::collections::HashMap::new()).consuming();
        self.runner.run(kind, &io)?;
        self.completed(task, &io.into_outputs(), t0.elapsed().as_secs_f64())
    }
}
