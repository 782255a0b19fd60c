//! The coordinator: one job's scheduler behind an HTTP endpoint. Workers join it, long-poll it for tasks
//! and report what they did; it places tasks with the engine's [`Scheduler`], tells holders to release data
//! nobody will read, declares silent workers lost (their data is recomputed from lineage), gathers the
//! blocks of small outputs, and serves a progress snapshot and Prometheus metrics. It never touches chunk
//! bytes except those gathered blocks.
//!
//! It is a [`runner::Executor`], so a distributed run goes through the same staging and all-or-nothing
//! commit as a local one. Its parts: `options` (how it runs), `state` (what it knows of the job and its
//! workers), `routing` (the scheduler's actions to the workers' mailboxes, their reports to the scheduler),
//! `drive` (its own loop), `http` (the endpoints), `report`
//! (`workers.json` and the timeline), `local` (worker processes started on this machine), `ledger` (what a
//! resumable run records so that a restarted coordinator goes on where a killed one stopped) and `error`.

mod drive;
mod error;
mod http;
pub mod ledger;
mod local;
mod options;
mod report;
mod routing;
mod state;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use arrayjob_engine::exec::JobProgress;
use arrayjob_engine::graph::TaskGraph;
use arrayjob_engine::runner::{self, OutputRecord, Outputs, Prepared, ResumeFound, RunError};
use arrayjob_engine::s3::spill::Scratch;
use arrayjob_engine::schedule::Scheduler;
use arrayjob_engine::store::StoreStats;

pub use self::error::CoordinatorError;
pub use self::local::local_worker_host;
pub use self::options::CoordinatorOptions;
// The progress snapshot is a wire type: its one definition is in the spec crate, shared with its readers.
pub use self::report::{DistributedReport, Event, Span, TIMELINE_HTML, TIMELINE_PNG, WORKERS_FILE};
pub use self::state::describe_task;
pub use arrayjob_spec::progress::{
    JobPhase, ProgressSnapshot, StageProgress, WorkerProgress, WorkerState,
};

use self::drive::{drive, resume, tell_workers_over};
use self::http::{dialable, serve};
use self::ledger::Ledger;
use self::local::LocalWorkers;
use self::state::{CoordShared, final_report};
use crate::exchange::StoreBook;
use crate::protocol::JobDescription;

/// The coordinator as an executor of [`runner::run_with`].
#[derive(Debug)]
pub struct Coordinator {
    opts: CoordinatorOptions,
    report: Option<DistributedReport>,
    /// The job's ledger, once taken (a resumable run).
    ledger: Option<Ledger>,
}

impl Coordinator {
    /// A coordinator with these options.
    pub fn new(opts: CoordinatorOptions) -> Coordinator {
        Coordinator {
            opts,
            report: None,
            ledger: None,
        }
    }

    /// Bytes each local worker spills to its disk before the job's S3 scratch takes the rest.
    pub fn set_worker_spill_disk_limit(&mut self, limit: Option<u64>) {
        self.opts.worker_spill_disk_limit = limit;
    }

    /// What the last run did (after [`runner::Executor::execute`]).
    pub fn report(&self) -> Option<&DistributedReport> {
        self.report.as_ref()
    }

    /// What workers are told of the job: the manifest, where its files are, and the plan hash they must
    /// compute too.
    fn describe(&self, job: &Prepared, outputs: &Outputs, staging: &Path) -> JobDescription {
        JobDescription {
            manifest: self.opts.manifest.clone(),
            base_dir: self
                .opts
                .base_dir
                .canonicalize()
                .unwrap_or_else(|_| self.opts.base_dir.clone())
                .display()
                .to_string(),
            staging_dir: staging.display().to_string(),
            zarr_root: outputs.zarr_root().s3_uri(),
            scratch: outputs.scratch().map(|s| s.location.to_string()),
            plan_hash: job.plan.hash.to_string(),
            heartbeat_ms: self.opts.heartbeat.as_millis() as u64,
            worker_timeout_ms: self.opts.worker_timeout.as_millis() as u64,
        }
    }

    /// Runs the job: listens, starts the local workers, drives the scheduler until the job is over, then
    /// tells the workers and keeps the run's report.
    fn run_job(
        &mut self,
        job: &Prepared,
        outputs: &Outputs,
        staging: &Path,
        progress: &JobProgress,
        cancel: &AtomicBool,
    ) -> Result<StoreStats, CoordinatorError> {
        let graph = TaskGraph::build(&job.plan)?;
        let staging = staging.canonicalize().map_err(runner::io_err(staging))?;
        let desc = self.describe(job, outputs, &staging);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("arrayjob-coordinator")
            .enable_all()
            .build()
            .map_err(CoordinatorError::Runtime)?;
        let listen = |source| CoordinatorError::Listen {
            address: self.opts.listen,
            source,
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(self.opts.listen))
            .map_err(listen)?;
        let bound = listener.local_addr().map_err(listen)?;
        let url = format!(
            "http://{}",
            self.opts
                .advertise
                .clone()
                .unwrap_or_else(|| dialable(bound).to_string())
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sched_opts = self.opts.scheduler.clone();
        sched_opts.exchange_store =
            job.manifest.spec.exchange == Some(arrayjob_engine::spec::Exchange::S3);
        let mut sched = Scheduler::new(graph, sched_opts);
        let ledger = self.ledger.take().map(Arc::new);
        let scratch = outputs.scratch();
        let mut book = StoreBook::new(
            scratch.map_or_else(String::new, |s| {
                s.location.key(&format!("exchange/{}/", runner::run_id()))
            }),
            ledger.is_some(),
        );
        if let Some(l) = &ledger {
            resume(l, &mut sched, &mut book, outputs, &job.plan)?;
        }
        let shared = Arc::new(CoordShared::new(
            sched,
            book,
            desc,
            job.plan.clone(),
            tx,
            &self.opts,
            ledger,
            scratch.map(|s| s.bucket.clone()),
        ));
        let server = rt.spawn(serve(listener, shared.clone()));
        if self.opts.announce {
            eprintln!(
                "coordinator listening at {url} (plan hash {})",
                job.plan.hash
            );
        }
        let mut children = LocalWorkers::start(&self.opts, &url, &staging)
            .map_err(CoordinatorError::LocalWorkers)?;
        let result = drive(
            &shared,
            &self.opts,
            outputs,
            progress,
            cancel,
            &rx,
            &mut children,
        );
        // Tell the workers the job is over, and give them a moment to hear it (all of them: those started
        // elsewhere too, which would otherwise find the server gone and take the coordinator for lost).
        let grace = Instant::now() + Duration::from_secs(3);
        tell_workers_over(&shared, grace);
        children.wait_or_kill(grace.saturating_duration_since(Instant::now()));
        server.abort();
        let (report, stats) = final_report(&shared, &url);
        self.report = Some(report);
        result.map(|()| stats)
    }
}

impl runner::Executor for Coordinator {
    fn execute(
        &mut self,
        job: &Prepared,
        outputs: &Outputs,
        staging: &Path,
        progress: &JobProgress,
        cancel: &AtomicBool,
    ) -> Result<StoreStats, RunError> {
        Ok(self.run_job(job, outputs, staging, progress, cancel)?)
    }

    fn extra_outputs(&mut self, staging: &Path) -> Result<Vec<OutputRecord>, RunError> {
        match &self.report {
            Some(r) => Ok(report::write_reports(r, staging)?),
            None => Ok(Vec::new()),
        }
    }

    fn take_resume(
        &mut self,
        job: &Prepared,
        scratch: &Scratch,
        lease: Duration,
    ) -> Result<Option<ResumeFound>, RunError> {
        let owner = format!("coordinator-{}", runner::run_id());
        let ledger = Ledger::open(scratch, &job.plan.hash.to_string(), &owner, lease)?;
        let state = ledger.found();
        let found = ResumeFound {
            written: state.segments > 0,
            other_plan: state.other_plan,
            uri: ledger.uri(),
        };
        self.ledger = Some(ledger);
        Ok(Some(found))
    }

    fn reset_resume(&mut self) -> Result<(), RunError> {
        if let Some(l) = &mut self.ledger {
            l.reset()?;
        }
        Ok(())
    }
}
