//! Terminal output: progress bars while a job runs, and tables for plans and summaries.

use arrayjob_engine::exec::JobProgress;
use arrayjob_engine::plan::PlanReport;
use arrayjob_engine::runner::RunSummary;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One progress bar per stage.
pub struct Bars {
    _multi: MultiProgress,
    bars: Vec<ProgressBar>,
}

impl Bars {
    /// Bars for every node of the job, drawn on stderr.
    pub fn new(progress: &JobProgress) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos:>6}/{len:<6} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bars = progress
            .snapshot()
            .iter()
            .map(|n| {
                let b = multi.add(ProgressBar::new(n.tasks_total));
                b.set_style(style.clone());
                b.set_prefix(n.name.clone());
                b.set_message(n.kind.clone());
                b
            })
            .collect();
        Bars {
            _multi: multi,
            bars,
        }
    }

    /// Refreshes every bar from the counters.
    pub fn update(&self, progress: &JobProgress) {
        for (b, n) in self.bars.iter().zip(progress.snapshot()) {
            b.set_position(n.tasks_done);
        }
    }

    /// Final state: bars stay on screen when the run succeeded, and are cleared when it failed.
    pub fn finish(&self, progress: &JobProgress, ok: bool) {
        self.update(progress);
        for b in &self.bars {
            if ok {
                b.finish();
            } else {
                b.abandon();
            }
        }
    }
}

fn mb(bytes: impl Into<u64>) -> String {
    format!("{:.1}", bytes.into() as f64 / 1e6)
}

/// The table `arrayjob plan` prints.
pub fn plan_table(r: &PlanReport) -> String {
    let mut s = format!(
        "{:<14} {:<9} {:<18} {:<16} {:<8} {:>7} {:>7} {:>10}\n",
        "stage", "op", "shape", "chunks", "dtype", "chunks", "tasks", "MB"
    );
    for st in &r.stages {
        s += &format!(
            "{:<14} {:<9} {:<18} {:<16} {:<8} {:>7} {:>7} {:>10}\n",
            st.name,
            st.kind,
            format!("{:?}", st.shape),
            format!("{:?}", st.chunks),
            st.dtype.name(),
            st.num_chunks,
            st.tasks,
            mb(st.bytes as u64)
        );
    }
    let tasks: Vec<String> = r
        .task_counts
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect();
    s += &format!(
        "tasks: {} ({})\n",
        r.task_counts.values().sum::<usize>(),
        tasks.join(", ")
    );
    s += &format!("plan hash: {}\n", r.plan_hash);
    s += &format!("bytes moved by rechunks: {} MB\n", mb(r.bytes_moved as u64));
    s += &format!(
        "peak memory estimate: {} MB (without a memory limit)\n",
        mb(r.peak_memory_estimate as u64)
    );
    s
}

/// The table printed at the end of `arrayjob run`.
pub fn summary_table(sum: &RunSummary) -> String {
    let mut s = format!(
        "{:<14} {:<9} {:>7} {:>10} {:>10} {:>9} {:>9}\n",
        "stage", "op", "tasks", "MB in", "MB out", "wall s", "busy s"
    );
    for st in &sum.stages {
        s += &format!(
            "{:<14} {:<9} {:>7} {:>10} {:>10} {:>9.3} {:>9.3}\n",
            st.name,
            st.kind,
            st.tasks_done,
            mb(st.bytes_in),
            mb(st.bytes_out),
            st.seconds,
            st.busy_seconds
        );
    }
    for st in &sum.stages {
        if let Some(v) = st.value {
            s += &format!("{} = {v:?}\n", st.name);
        }
    }
    s += &format!(
        "total {:.2} s on {} thread(s); peak chunk memory {} MB, spilled {} MB\n",
        sum.seconds,
        sum.threads,
        mb(sum.store.peak_resident_bytes),
        mb(sum.store.spilled_bytes)
    );
    s
}

/// What a distributed run did: per worker, and between them.
pub fn distributed_table(r: &arrayjob_runtime::coordinator::DistributedReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>8} {:>22} {:>8} {:>7} {:>12} {:>12}",
        "worker", "address", "state", "tasks", "peak MB", "spilled MB"
    );
    for w in &r.workers {
        let _ = writeln!(
            s,
            "{:>8} {:>22} {:>8} {:>7} {:>12.1} {:>12.1}",
            w.id.0,
            w.address,
            w.state,
            w.tasks_done,
            w.store.peak_resident_bytes as f64 / 1e6,
            w.store.spilled_bytes as f64 / 1e6
        );
    }
    let _ = writeln!(
        s,
        "moved between workers: {:.1} MB ({:.1} MB of pieces as soon as they were cut); steals: {}; speculative copies: {}; workers lost: {}; tasks recomputed: {}",
        r.bytes_moved as f64 / 1e6,
        r.bytes_moved_early as f64 / 1e6,
        r.steals.len(),
        r.speculated,
        r.workers_lost,
        r.recomputed
    );
    s
}
