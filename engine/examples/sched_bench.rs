//! Throughput of the coordinator's placement policy on a large synthetic job.
//!
//! `cargo run --release -j 1 -p arrayjob-engine --example sched_bench -- 1000000` builds a graph of about that
//! many tasks shaped like the real pipeline (bands of 10 loads each writing a piece for 2 merge groups, merges
//! reading the 10 pieces of their band and writing a reduction partial, one chain of combines per 20 merges),
//! runs it on 16 virtual workers of 8 cores with the real [`Scheduler`] (completions are simulated on a virtual
//! clock, so the only real time spent is the scheduler's and this driver's), and prints:
//!
//! - the graph build time;
//! - decisions per second: tasks sent / seconds spent inside scheduler calls (`Scheduler::new` included);
//! - coordinator memory per task: (peak RSS - RSS before the graph was built) / tasks.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::error::Error;
use std::time::{Duration, Instant};

use arrayjob_engine::data::DataKey;
use arrayjob_engine::graph::{Task, TaskGraph, TaskId, TaskKind};
use arrayjob_engine::schedule::{Action, Scheduler, SchedulerOptions, WorkerId};

const WORKERS: u32 = 16;
const CORES: usize = 8;
/// Loads per band; every merge reads one piece from each.
const BAND: usize = 10;
/// Merge groups per band.
const GROUPS: usize = 2;
/// Bands whose merges fold into one reduction output.
const BANDS_PER_OUTPUT: usize = 10;
/// Virtual seconds between heartbeats.
const HEARTBEAT: f64 = 0.5;
/// Virtual bytes per second of every link (probes are answered at once at this rate).
const LINK_RATE: f64 = 1e9;

fn main() -> Result<(), Box<dyn Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 1_000_000,
    };
    let rss_before = proc_status_kb("VmRSS")?;
    let t = Instant::now();
    let graph = pipeline(n)?;
    let build = t.elapsed();
    let tasks = graph.len();
    let counts = kind_counts(&graph);
    let run = drive(graph);
    let peak = proc_status_kb("VmHWM")?;
    let inside = run.inside.as_secs_f64();
    println!(
        "tasks: {tasks} ({} loads, {} merges, {} combines)",
        counts[0], counts[1], counts[2]
    );
    println!("graph build: {:.3} s", build.as_secs_f64());
    println!(
        "scheduler: {} decisions in {:.3} s inside scheduler calls ({:.3} s of it in Scheduler::new): {:.0} decisions/s",
        run.decisions,
        inside,
        run.new.as_secs_f64(),
        run.decisions as f64 / inside
    );
    println!(
        "events: {} completions, {} probes, {} ticks; {} steals, {} copies, {} moves, {} releases of {} keys written; virtual makespan {:.1} s; driver wall time {:.3} s",
        run.completions,
        run.probes,
        run.ticks,
        run.steals,
        run.copies,
        run.moves,
        run.releases,
        run.written,
        run.makespan,
        run.wall.as_secs_f64()
    );
    println!(
        "memory: RSS {:.1} MiB before the graph, peak {:.1} MiB: {:.0} bytes per task",
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak.saturating_sub(rss_before) as f64 * 1024.0 / tasks as f64
    );
    if !run.finished {
        return Err("the job did not finish".into());
    }
    if run.releases != run.written + run.moves {
        return Err(format!(
            "{} keys written and {} moved but {} released",
            run.written, run.moves, run.releases
        )
        .into());
    }
    Ok(())
}

/// A field of `/proc/self/status`, in kB.
fn proc_status_kb(field: &str) -> Result<u64, Box<dyn Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .ok_or_else(|| format!("no {field} in /proc/self/status"))?;
    let kb = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb)
}

/// About `n` tasks: units of `BANDS_PER_OUTPUT` bands (100 loads, 20 merges, 19 combines).
fn pipeline(n: usize) -> Result<TaskGraph, Box<dyn Error>> {
    let per_unit = BANDS_PER_OUTPUT * (BAND + GROUPS) + BANDS_PER_OUTPUT * GROUPS - 1;
    let units = (n / per_unit).max(1);
    let bands = units * BANDS_PER_OUTPUT;
    let mut tasks = Vec::with_capacity(units * per_unit);
    let piece = |group, part| DataKey::Piece {
        node: 1,
        group,
        part,
    };
    for load in 0..bands * BAND {
        let band = load / BAND;
        tasks.push(Task {
            kind: TaskKind::Load { chunk: load },
            inputs: Vec::new(),
            outputs: (0..GROUPS)
                .map(|g| piece(band * GROUPS + g, load))
                .collect(),
        });
    }
    let leaves = BANDS_PER_OUTPUT * GROUPS;
    for group in 0..bands * GROUPS {
        let band = group / GROUPS;
        tasks.push(Task {
            kind: TaskKind::Merge { node: 1, group },
            inputs: (band * BAND..(band + 1) * BAND)
                .map(|part| piece(group, part))
                .collect(),
            outputs: vec![DataKey::Partial {
                node: 2,
                out: group / leaves,
                leaf: group % leaves,
            }],
        });
    }
    for out in 0..units {
        combine_chain(2, out, leaves, &mut tasks);
    }
    Ok(TaskGraph::from_tasks(tasks)?)
}

/// The combines folding `leaves` partials of output chunk `out` of reduce `node`, in leaf order.
fn combine_chain(node: usize, out: usize, leaves: usize, tasks: &mut Vec<Task>) {
    let partial = |leaf| DataKey::Partial { node, out, leaf };
    let fold = |leaf| DataKey::Fold { node, out, leaf };
    for leaf in 1..leaves {
        let inputs = match leaf {
            1 => vec![partial(0), partial(1)],
            _ => vec![fold(leaf - 1), partial(leaf)],
        };
        let outputs = if leaf + 1 < leaves {
            vec![fold(leaf)]
        } else {
            Vec::new()
        };
        tasks.push(Task {
            kind: TaskKind::Combine { node, out, leaf },
            inputs,
            outputs,
        });
    }
}

fn kind_counts(graph: &TaskGraph) -> [usize; 3] {
    let mut counts = [0; 3];
    for (_, t) in graph.tasks() {
        counts[match t.kind {
            TaskKind::Load { .. } => 0,
            TaskKind::Merge { .. } => 1,
            TaskKind::Combine { .. } => 2,
        }] += 1;
    }
    counts
}

/// Virtual seconds a task takes.
fn cost(kind: &TaskKind) -> f64 {
    match kind {
        TaskKind::Load { .. } => 1.0,
        TaskKind::Merge { .. } => 0.5,
        TaskKind::Combine { .. } => 0.05,
    }
}

fn bytes(key: &DataKey) -> u64 {
    match key {
        DataKey::Piece { .. } => 8 << 20,
        _ => 64 << 10,
    }
}

/// What a run measured.
#[derive(Debug, Default)]
struct Run {
    /// Time inside scheduler calls, `Scheduler::new` included.
    inside: Duration,
    new: Duration,
    wall: Duration,
    decisions: u64,
    completions: u64,
    probes: u64,
    ticks: u64,
    steals: usize,
    copies: usize,
    releases: u64,
    /// Keys moved ahead of their merges (each released twice: at the sender, then after its merge).
    moves: u64,
    written: u64,
    makespan: f64,
    finished: bool,
}

/// The virtual cluster: each worker runs up to `CORES` tasks in the order it received them.
struct Cluster {
    queued: Vec<VecDeque<TaskId>>,
    running: Vec<usize>,
    /// (finish time in ns, sequence, worker, task).
    finishes: BinaryHeap<Reverse<(u64, u64, u32, usize)>>,
    seq: u64,
}

impl Cluster {
    fn start_what_fits(&mut self, graph: &TaskGraph, w: usize, now: f64) {
        while self.running[w] < CORES {
            let Some(t) = self.queued[w].pop_front() else {
                break;
            };
            self.running[w] += 1;
            self.seq += 1;
            let at = ((now + cost(&graph.task(t).kind)) * 1e9).round() as u64;
            self.finishes.push(Reverse((at, self.seq, w as u32, t.0)));
        }
    }
}

/// Runs `graph` to the end, timing every scheduler call.
fn drive(graph: TaskGraph) -> Run {
    let wall = Instant::now();
    let mut run = Run::default();
    let t = Instant::now();
    let mut s = Scheduler::new(graph, SchedulerOptions::default());
    run.new = t.elapsed();
    run.inside = run.new;
    let mut cluster = Cluster {
        queued: vec![VecDeque::new(); WORKERS as usize],
        running: vec![0; WORKERS as usize],
        finishes: BinaryHeap::new(),
        seq: 0,
    };
    let mut pending: VecDeque<Action> = VecDeque::new();
    for w in 0..WORKERS {
        let t = Instant::now();
        pending.extend(s.add_worker(WorkerId(w), CORES, 0.0));
        run.inside += t.elapsed();
    }
    let mut now = 0.0;
    let mut next_tick = HEARTBEAT;
    let mut outputs: Vec<(DataKey, u64)> = Vec::new();
    loop {
        apply(&mut s, &mut pending, &mut cluster, &mut run, now);
        let Some(Reverse((at, _, w, task))) = cluster.finishes.pop() else {
            break;
        };
        now = at as f64 / 1e9;
        while next_tick <= now {
            let t = Instant::now();
            pending.extend(s.tick(next_tick));
            run.inside += t.elapsed();
            run.ticks += 1;
            next_tick += HEARTBEAT;
        }
        cluster.running[w as usize] -= 1;
        let task = TaskId(task);
        let kind = s.graph().task(task).kind;
        outputs.clear();
        outputs.extend(s.graph().task(task).outputs.iter().map(|k| (*k, bytes(k))));
        run.written += outputs.len() as u64;
        let t = Instant::now();
        pending.extend(s.task_done(WorkerId(w), task, &outputs, cost(&kind), now));
        run.inside += t.elapsed();
        run.completions += 1;
        cluster.start_what_fits(s.graph(), w as usize, now);
    }
    run.decisions = s.decisions();
    run.steals = s.steals().len();
    run.copies = s.speculated().len();
    run.makespan = now;
    run.finished = s.finished();
    run.wall = wall.elapsed();
    run
}

/// Carries out the scheduler's actions: runs are queued (and started if a core is free), probes and moves
/// answered at once, releases counted.
fn apply(
    s: &mut Scheduler,
    pending: &mut VecDeque<Action>,
    cluster: &mut Cluster,
    run: &mut Run,
    now: f64,
) {
    while let Some(action) = pending.pop_front() {
        match action {
            Action::Run { worker, task, .. } => {
                let w = worker.0 as usize;
                cluster.queued[w].push_back(task);
                cluster.start_what_fits(s.graph(), w, now);
            }
            Action::Probe { from, to } => {
                let b = SchedulerOptions::default().probe_bytes;
                let t = Instant::now();
                let more = s.transfer_observed(from, to, b, b as f64 / LINK_RATE, now);
                run.inside += t.elapsed();
                run.probes += 1;
                pending.extend(more);
            }
            Action::Move { key, from, to } => {
                let t = Instant::now();
                let more = s.key_moved(key, from, to, now);
                run.inside += t.elapsed();
                run.moves += 1;
                pending.extend(more);
            }
            Action::Release { .. } => run.releases += 1,
            // The benchmark runs the direct exchange (`exchange_store` off): nothing is shipped.
            Action::Ship { .. } => {}
        }
    }
}
