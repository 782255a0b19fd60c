//! The real placement policy ([`Scheduler`]) driven by a deterministic simulation: virtual workers with cores
//! and speeds, a virtual clock, links with a real rate the scheduler does not know, and modelled task costs.
//!
//! Model: a worker runs up to `cores` tasks at once, in the order it received them; a task first fetches its
//! inputs held elsewhere (bytes / link rate, one input after another, links never contended), then computes
//! (its cost / the worker's speed). Probes and early moves of pieces take `bytes / rate` and do not delay
//! tasks. A worker keeps what its tasks write (or what was moved to it) until the scheduler releases it.
//!
//! Workers can die: what runs there never reports, what it holds vanishes, and the coordinator notices a
//! heartbeat timeout later (`worker_lost`). A task whose input vanished before the coordinator knew fails to
//! fetch it and is reported (`task_failed`); a task started with an input held nowhere in any other case is
//! a scheduler bug and fails the simulation.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use arrayjob_engine::data::DataKey;
use arrayjob_engine::graph::{Task, TaskGraph, TaskId, TaskKind};
use arrayjob_engine::schedule::{Action, Scheduler, SchedulerOptions, TaskFailure, WorkerId};

const MB: u64 = 1 << 20;
/// The coordinator's heartbeat period.
const HEARTBEAT: u64 = 500_000_000;
/// A worker silent this long is declared lost.
const HEARTBEAT_TIMEOUT: u64 = 3_000_000_000;
/// Time for a worker to give up fetching from a dead one.
const FETCH_TIMEOUT: u64 = 100_000_000;
/// Simulated seconds after which a job still running is taken to be stuck.
const STUCK_AFTER: f64 = 10_000.0;

#[derive(Clone)]
struct SimWorker {
    id: u32,
    cores: usize,
    /// Compute speed (1 = nominal; 0.1 = a straggler ten times slower).
    speed: f64,
    joins_at: f64,
    dies_at: Option<f64>,
}

fn worker(id: u32, cores: usize) -> SimWorker {
    SimWorker {
        id,
        cores,
        speed: 1.0,
        joins_at: 0.0,
        dies_at: None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Join(u32),
    /// Worker, task, fetch time in ns (reported as a transfer when > 0), remote bytes, the sender.
    Finish(u32, usize, u64, u64, u32),
    Probe(u32, u32),
    /// The coordinator's heartbeat.
    Tick,
    /// The worker dies.
    Kill(u32),
    /// The coordinator notices the worker is gone.
    Lost(u32),
    /// The worker reports it could not fetch an input of the task.
    FetchFailed(u32, usize),
    /// A key moved ahead of its merge arrives: sender, receiver, key.
    Moved(u32, u32, DataKey),
}

/// One finished run of a task.
#[derive(Debug, Clone, Copy)]
struct Run {
    worker: u32,
    kind: TaskKind,
    start: f64,
    end: f64,
}

struct Outcome {
    makespan: f64,
    steals: usize,
    speculated: usize,
    finished_by: Vec<usize>,
    recomputed: usize,
    failure: Option<TaskFailure>,
    /// What was running on workers when they died.
    killed_running: Vec<TaskKind>,
    /// Tasks that could not fetch an input from a worker that had died.
    fetch_failures: usize,
    runs: Vec<Run>,
    /// Keys some live worker still holds at the end.
    held_at_end: Vec<DataKey>,
    /// Tasks struck by worker deaths, and how often.
    struck: Vec<(TaskKind, u32)>,
    /// Bytes moved ahead of the merges, and bytes merges fetched when they started.
    moved_bytes: u64,
    merge_fetched_bytes: u64,
}

/// What to simulate.
struct Setup<'a> {
    sizes: &'a BTreeMap<DataKey, u64>,
    workers: &'a [SimWorker],
    /// Real bytes per second of every link.
    link_rate: f64,
    cost: fn(&TaskKind) -> f64,
    steal: bool,
    move_early: bool,
    /// A task that kills whatever worker starts it.
    poison: Option<TaskId>,
}

/// The post's recenter stage: `n` loads each write one block of `block` bytes where they ran; the stack is
/// persisted (a barrier task waits for every load), then `n` map tasks each read one block.
fn map_stage(n: usize, block: u64) -> (TaskGraph, BTreeMap<DataKey, u64>) {
    let mut tasks = Vec::new();
    let mut sizes = BTreeMap::new();
    let block_key = |i| DataKey::Piece {
        node: 1,
        group: i,
        part: 0,
    };
    let loaded = |i| DataKey::Partial {
        node: 2,
        out: 0,
        leaf: i,
    };
    let go = |i| DataKey::Fold {
        node: 2,
        out: i,
        leaf: 0,
    };
    for i in 0..n {
        tasks.push(Task {
            kind: TaskKind::Load { chunk: i },
            inputs: vec![],
            outputs: vec![block_key(i), loaded(i)],
        });
        sizes.insert(block_key(i), block);
        sizes.insert(loaded(i), 0);
        sizes.insert(go(i), 0);
    }
    tasks.push(Task {
        kind: TaskKind::Combine {
            node: 2,
            out: 0,
            leaf: 0,
        },
        inputs: (0..n).map(loaded).collect(),
        outputs: (0..n).map(go).collect(),
    });
    for i in 0..n {
        tasks.push(Task {
            kind: TaskKind::Merge { node: 1, group: i },
            inputs: vec![block_key(i), go(i)],
            outputs: vec![],
        });
    }
    (TaskGraph::from_tasks(tasks).expect("graph"), sizes)
}

fn simulate(
    graph: TaskGraph,
    sizes: &BTreeMap<DataKey, u64>,
    workers: &[SimWorker],
    link_rate: f64,
    cost: fn(&TaskKind) -> f64,
    steal: bool,
) -> Outcome {
    let setup = Setup {
        sizes,
        workers,
        link_rate,
        cost,
        steal,
        move_early: true,
        poison: None,
    };
    Sim::new(graph, &setup).run()
}

fn ns(secs: f64) -> u64 {
    (secs * 1e9).round() as u64
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The simulation's state: the scheduler, the event queue, and the truth about workers and keys.
struct Sim<'a> {
    setup: &'a Setup<'a>,
    s: Scheduler,
    probe_bytes: u64,
    spec: BTreeMap<u32, SimWorker>,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    /// Events handled so far: orders what the scheduler was told and when it acted.
    step: u64,
    now: u64,
    alive: BTreeSet<u32>,
    /// Tasks a worker received and has not started, with the step that sent them.
    queued: BTreeMap<u32, VecDeque<(TaskId, u64)>>,
    /// Tasks running on each worker, with their start times.
    running: BTreeMap<u32, Vec<(TaskId, f64)>>,
    /// Which live workers hold each key (as the workers' stores would).
    held: BTreeMap<DataKey, BTreeSet<u32>>,
    /// Keys that vanished with a dead worker, and that worker.
    vanished: BTreeMap<DataKey, u32>,
    /// The step in which the scheduler was told of each dead worker.
    reported: BTreeMap<u32, u64>,
    /// The step in which each task was last reported done.
    done_in: BTreeMap<TaskId, u64>,
    killed_running: Vec<TaskKind>,
    fetch_failures: usize,
    runs: Vec<Run>,
    failure: Option<TaskFailure>,
    merge_fetched_bytes: u64,
    /// Keys on their way to a merge's gathering worker: the receiver, and when they arrive.
    moving: BTreeMap<DataKey, (u32, u64)>,
}

impl<'a> Sim<'a> {
    fn new(graph: TaskGraph, setup: &'a Setup<'a>) -> Sim<'a> {
        let opts = SchedulerOptions {
            steal: setup.steal,
            move_early: setup.move_early,
            ..SchedulerOptions::default()
        };
        let probe_bytes = opts.probe_bytes;
        let mut sim = Sim {
            setup,
            s: Scheduler::new(graph, opts),
            probe_bytes,
            spec: setup.workers.iter().map(|w| (w.id, w.clone())).collect(),
            events: BinaryHeap::new(),
            seq: 0,
            step: 0,
            now: 0,
            alive: BTreeSet::new(),
            queued: BTreeMap::new(),
            running: BTreeMap::new(),
            held: BTreeMap::new(),
            vanished: BTreeMap::new(),
            reported: BTreeMap::new(),
            done_in: BTreeMap::new(),
            killed_running: Vec::new(),
            fetch_failures: 0,
            runs: Vec::new(),
            failure: None,
            merge_fetched_bytes: 0,
            moving: BTreeMap::new(),
        };
        for w in setup.workers {
            sim.push(ns(w.joins_at), Event::Join(w.id));
            if let Some(t) = w.dies_at {
                sim.push(ns(t), Event::Kill(w.id));
            }
        }
        sim.push(HEARTBEAT, Event::Tick);
        sim
    }

    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, e)));
    }

    fn run(mut self) -> Outcome {
        while let Some(Reverse((now, _, event))) = self.events.pop() {
            self.now = now;
            self.step += 1;
            assert!(secs(now) < STUCK_AFTER, "the job is stuck");
            let actions = self.handle(event);
            if self.failure.is_some() {
                break;
            }
            self.apply(actions);
            self.start_what_fits();
        }
        if self.failure.is_none() {
            assert!(self.s.finished(), "every task ran");
        }
        self.outcome()
    }

    fn outcome(self) -> Outcome {
        Outcome {
            makespan: self.s.finished_at().unwrap_or(secs(self.now)),
            steals: self.s.steals().len(),
            speculated: self.s.speculated().len(),
            finished_by: self
                .setup
                .workers
                .iter()
                .map(|w| self.s.finished_by(WorkerId(w.id)))
                .collect(),
            recomputed: self.s.recomputed(),
            failure: self.failure,
            killed_running: self.killed_running,
            fetch_failures: self.fetch_failures,
            runs: self.runs,
            held_at_end: self
                .held
                .iter()
                .filter(|(_, w)| !w.is_empty())
                .map(|(k, _)| *k)
                .collect(),
            struck: self
                .s
                .graph()
                .tasks()
                .filter(|&(id, _)| self.s.strikes(id) > 0)
                .map(|(id, t)| (t.kind, self.s.strikes(id)))
                .collect(),
            moved_bytes: self.s.moved_bytes(),
            merge_fetched_bytes: self.merge_fetched_bytes,
        }
    }

    fn handle(&mut self, event: Event) -> Vec<Action> {
        let now = secs(self.now);
        match event {
            Event::Tick if self.s.finished() => Vec::new(),
            Event::Tick => {
                self.push(self.now + HEARTBEAT, Event::Tick);
                self.s.tick(now)
            }
            Event::Join(w) => {
                self.alive.insert(w);
                self.s.add_worker(WorkerId(w), self.spec[&w].cores, now)
            }
            Event::Probe(from, to) if self.alive.contains(&from) && self.alive.contains(&to) => {
                let rate = self.setup.link_rate;
                let b = self.probe_bytes;
                self.s
                    .transfer_observed(WorkerId(from), WorkerId(to), b, b as f64 / rate, now)
            }
            Event::Probe(..) => Vec::new(),
            Event::Finish(w, t, fetch_ns, remote, sender) => {
                self.done_in.insert(TaskId(t), self.step);
                self.finish(w, TaskId(t), fetch_ns, remote, sender)
            }
            Event::Kill(w) => {
                self.kill(w);
                Vec::new()
            }
            Event::Lost(w) => {
                self.reported.insert(w, self.step);
                match self.s.worker_lost(WorkerId(w), now) {
                    Ok(actions) => actions,
                    Err(f) => {
                        self.failure = Some(f);
                        Vec::new()
                    }
                }
            }
            Event::FetchFailed(w, t) if self.alive.contains(&w) => {
                self.stop(w, TaskId(t));
                self.s.task_failed(WorkerId(w), TaskId(t), now)
            }
            Event::FetchFailed(..) => Vec::new(),
            Event::Moved(from, to, key) => {
                self.moving.remove(&key);
                let copied = self.alive.contains(&to)
                    && self.held.get(&key).is_some_and(|h| h.contains(&from));
                if !copied {
                    // The sender died or dropped it first: the receiver has nothing to report.
                    return Vec::new();
                }
                self.held.entry(key).or_default().insert(to);
                self.s.key_moved(key, WorkerId(from), WorkerId(to), now)
            }
        }
    }

    /// Takes `task` off `w`'s running list, returning when it started.
    fn stop(&mut self, w: u32, task: TaskId) -> f64 {
        let list = self.running.entry(w).or_default();
        let i = list.iter().position(|&(t, _)| t == task).expect("running");
        list.remove(i).1
    }

    /// Worker `w` finished `t`: it holds the outputs and reports.
    fn finish(
        &mut self,
        w: u32,
        t: TaskId,
        fetch_ns: u64,
        remote: u64,
        sender: u32,
    ) -> Vec<Action> {
        if !self.alive.contains(&w) {
            return Vec::new();
        }
        let now = secs(self.now);
        let start = self.stop(w, t);
        let kind = self.s.graph().task(t).kind;
        self.runs.push(Run {
            worker: w,
            kind,
            start,
            end: now,
        });
        let outputs: Vec<(DataKey, u64)> = self
            .s
            .graph()
            .task(t)
            .outputs
            .iter()
            .map(|k| (*k, self.size(k)))
            .collect();
        for (k, _) in &outputs {
            self.held.entry(*k).or_default().insert(w);
            self.vanished.remove(k);
        }
        let took = (self.setup.cost)(&kind) / self.spec[&w].speed;
        let mut actions = self.s.task_done(WorkerId(w), t, &outputs, took, now);
        if remote > 0 && self.alive.contains(&sender) {
            actions.extend(self.s.transfer_observed(
                WorkerId(sender),
                WorkerId(w),
                remote,
                secs(fetch_ns),
                now,
            ));
        }
        actions
    }

    fn size(&self, k: &DataKey) -> u64 {
        self.setup.sizes.get(k).copied().unwrap_or(MB)
    }

    /// Worker `w` dies: its tasks never report, its keys vanish, the coordinator notices later.
    fn kill(&mut self, w: u32) {
        if !self.alive.remove(&w) {
            return;
        }
        let running = self.running.remove(&w).unwrap_or_default();
        for (t, _) in running {
            self.killed_running.push(self.s.graph().task(t).kind);
        }
        self.queued.remove(&w);
        for (k, holders) in &mut self.held {
            if holders.remove(&w) && holders.is_empty() {
                self.vanished.insert(*k, w);
            }
        }
        self.held.retain(|_, h| !h.is_empty());
        self.push(self.now + HEARTBEAT_TIMEOUT, Event::Lost(w));
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Run { worker, task, .. } => self
                    .queued
                    .entry(worker.0)
                    .or_default()
                    .push_back((task, self.step)),
                Action::Probe { from, to } => {
                    let at = self.now + ns(self.probe_bytes as f64 / self.setup.link_rate);
                    self.push(at, Event::Probe(from.0, to.0));
                }
                Action::Move { key, from, to } => {
                    let at = self.now + ns(self.size(&key) as f64 / self.setup.link_rate);
                    self.moving.insert(key, (to.0, at));
                    self.push(at, Event::Moved(from.0, to.0, key));
                }
                Action::Release { worker, key } => self.release(worker.0, key),
                Action::Ship { .. } => panic!("the simulation runs the direct exchange"),
            }
        }
    }

    /// The scheduler has `w` drop `key`: a live worker must hold it (a dead one lost it already).
    fn release(&mut self, w: u32, key: DataKey) {
        if !self.alive.contains(&w) {
            return;
        }
        let holders = self.held.entry(key).or_default();
        assert!(
            holders.remove(&w),
            "{key} released at worker {w}, which does not hold it"
        );
        if holders.is_empty() {
            self.held.remove(&key);
        }
    }

    /// Starts what fits on every live worker.
    fn start_what_fits(&mut self) {
        let live: Vec<u32> = self.alive.iter().copied().collect();
        for w in live {
            while self.alive.contains(&w)
                && self.running.get(&w).map_or(0, Vec::len) < self.spec[&w].cores
            {
                let Some((t, sent)) = self.queued.get_mut(&w).and_then(VecDeque::pop_front) else {
                    break;
                };
                self.start(w, t, sent);
            }
        }
    }

    /// Worker `w` starts `t` (sent in step `sent`): fetches its inputs, then computes.
    fn start(&mut self, w: u32, t: TaskId, sent: u64) {
        let now = secs(self.now);
        self.running.entry(w).or_default().push((t, now));
        if self.setup.poison == Some(t) {
            self.kill(w);
            return;
        }
        let task = self.s.graph().task(t).clone();
        let (mut remote, mut sender, mut arrivals) = (0, w, self.now);
        for k in &task.inputs {
            let Some(holders) = self.held.get(k).filter(|h| !h.is_empty()) else {
                self.fetch_failed(w, t, *k, sent);
                return;
            };
            match self.moving.get(k) {
                // On its way here: the task waits for it, as a worker does.
                Some(&(to, at)) if to == w => arrivals = arrivals.max(at),
                _ if !holders.contains(&w) => {
                    remote += self.size(k);
                    sender = *holders.iter().next().expect("a holder");
                }
                _ => {}
            }
        }
        if matches!(task.kind, TaskKind::Merge { .. }) {
            self.merge_fetched_bytes += remote;
        }
        let fetch = remote as f64 / self.setup.link_rate;
        let compute = (self.setup.cost)(&task.kind) / self.spec[&w].speed;
        self.push(
            arrivals + ns(fetch + compute),
            Event::Finish(w, t.0, ns(fetch), remote, sender),
        );
    }

    /// `t` cannot fetch `key`. Fine only when the scheduler could not know better when it sent `t` (in step
    /// `sent`): the key vanished with a worker not yet reported dead, or this is a copy of a task another copy
    /// finished since (its inputs were released).
    fn fetch_failed(&mut self, w: u32, t: TaskId, key: DataKey, sent: u64) {
        let dead = self.vanished.get(&key).copied();
        let lost_unknown = dead.is_some_and(|d| self.reported.get(&d).is_none_or(|&r| sent < r));
        let stale_copy = self.done_in.get(&t).is_some_and(|&d| d > sent);
        assert!(
            lost_unknown || stale_copy,
            "{t} started on worker {w} but its input {key} is held by no live worker (lost with {dead:?})"
        );
        self.fetch_failures += 1;
        self.push(self.now + FETCH_TIMEOUT, Event::FetchFailed(w, t.0));
    }
}

fn post_cost(k: &TaskKind) -> f64 {
    match k {
        TaskKind::Load { .. } => 1.0,
        _ => 0.5,
    }
}

/// Two workers load the stack (40 blocks, 0.1 s each); two more join at 1.5 s, when every block lives on the
/// first two and most of the 0.5 s map tasks still wait there: the post's situation.
fn late_joiners() -> Vec<SimWorker> {
    vec![
        worker(0, 2),
        worker(1, 2),
        SimWorker {
            joins_at: 3.0,
            ..worker(2, 2)
        },
        SimWorker {
            joins_at: 3.0,
            ..worker(3, 2)
        },
    ]
}

fn fast_loads(k: &TaskKind) -> f64 {
    match k {
        TaskKind::Load { .. } => 0.1,
        _ => 0.5,
    }
}

/// The map stage of `n` blocks of `block` bytes, with stealing (and copies) on and off; prints both.
fn on_and_off(
    n: usize,
    block: u64,
    workers: &[SimWorker],
    link_rate: f64,
    cost: fn(&TaskKind) -> f64,
) -> (Outcome, Outcome) {
    let run = |steal| {
        let (g, sizes) = map_stage(n, block);
        simulate(g, &sizes, workers, link_rate, cost, steal)
    };
    let (on, off) = (run(true), run(false));
    eprintln!(
        "stealing on: {:.2} s, {} steals, {} copies, tasks per worker {:?}; off: {:.2} s, {:?}",
        on.makespan, on.steals, on.speculated, on.finished_by, off.makespan, off.finished_by
    );
    (on, off)
}

#[test]
fn slow_links_never_carry_a_steal_and_the_stage_is_no_slower() {
    // 80 MB blocks over links that really deliver 5 MB/s: 16 s to move one, against 0.5 s of work.
    let (on, off) = on_and_off(40, 80 * MB, &late_joiners(), 5.0 * MB as f64, fast_loads);
    assert_eq!(on.steals, 0, "nothing is worth moving at 5 MB/s");
    assert!(
        on.makespan <= off.makespan + 1e-9,
        "{} vs {}",
        on.makespan,
        off.makespan
    );
}

#[test]
fn fast_links_let_idle_workers_take_waiting_tasks() {
    let (on, off) = on_and_off(40, 80 * MB, &late_joiners(), 1000.0 * MB as f64, fast_loads);
    assert!(on.steals > 0, "1 GB/s: moving 80 MB (0.08 s) beats waiting");
    assert!(
        on.makespan < off.makespan * 0.9,
        "stealing helps: {} vs {}",
        on.makespan,
        off.makespan
    );
}

#[test]
fn a_straggler_gets_fewer_tasks_and_its_waiting_work_moves() {
    let workers = vec![
        worker(0, 2),
        worker(1, 2),
        worker(2, 2),
        SimWorker {
            speed: 0.1,
            ..worker(3, 2)
        },
    ];
    let (on, off) = on_and_off(80, 8 * MB, &workers, 1000.0 * MB as f64, post_cost);
    assert!(
        on.finished_by[3] < on.finished_by[0],
        "{:?}",
        on.finished_by
    );
    assert!(
        on.speculated > 0,
        "the straggler's overdue tasks get copies"
    );
    assert!(
        on.makespan < off.makespan * 0.5,
        "{} vs {}",
        on.makespan,
        off.makespan
    );
}

#[test]
fn a_worker_joining_mid_job_gets_work() {
    let workers = vec![
        worker(0, 2),
        SimWorker {
            joins_at: 3.0,
            ..worker(1, 2)
        },
    ];
    let (g, sizes) = map_stage(30, 8 * MB);
    let out = simulate(g, &sizes, &workers, 100.0 * MB as f64, post_cost, true);
    assert!(out.finished_by[1] >= 10, "{:?}", out.finished_by);
    let alone = {
        let (g, sizes) = map_stage(30, 8 * MB);
        simulate(g, &sizes, &workers[..1], 100.0 * MB as f64, post_cost, true)
    };
    assert!(
        out.makespan < alone.makespan * 0.8,
        "{} vs {}",
        out.makespan,
        alone.makespan
    );
}

/// A load -> rechunk -> reduce pipeline shaped like the real one: `bands` bands of `per_band` loads. Every
/// load writes an 8 MB piece for each of the `groups` merge groups of its band and a partial of a reduction
/// over the whole stack (node 2, one chain of combines over the loads); every merge reads one piece from
/// each load of its band and writes a partial of a reduction over the merges (node 3, one chain).
fn pipeline(bands: usize, per_band: usize, groups: usize) -> (TaskGraph, BTreeMap<DataKey, u64>) {
    let mut tasks = Vec::new();
    let mut sizes = BTreeMap::new();
    let piece = |group, part| DataKey::Piece {
        node: 1,
        group,
        part,
    };
    let partial = |node, leaf| DataKey::Partial { node, out: 0, leaf };
    for load in 0..bands * per_band {
        let band = load / per_band;
        let mut outputs: Vec<DataKey> = (0..groups)
            .map(|g| piece(band * groups + g, load))
            .collect();
        for &k in &outputs {
            sizes.insert(k, 8 * MB);
        }
        outputs.push(partial(2, load));
        tasks.push(Task {
            kind: TaskKind::Load { chunk: load },
            inputs: vec![],
            outputs,
        });
    }
    for group in 0..bands * groups {
        let band = group / groups;
        tasks.push(Task {
            kind: TaskKind::Merge { node: 1, group },
            inputs: (band * per_band..(band + 1) * per_band)
                .map(|part| piece(group, part))
                .collect(),
            outputs: vec![partial(3, group)],
        });
    }
    combine_chain(2, bands * per_band, &mut tasks);
    combine_chain(3, bands * groups, &mut tasks);
    (TaskGraph::from_tasks(tasks).expect("graph"), sizes)
}

/// The combines of reduce `node` over `leaves` partials (output chunk 0), as `TaskGraph::build` makes them:
/// each folds its leaf into the fold before it; the last writes nothing.
fn combine_chain(node: usize, leaves: usize, tasks: &mut Vec<Task>) {
    let partial = |leaf| DataKey::Partial { node, out: 0, leaf };
    let fold = |leaf| DataKey::Fold { node, out: 0, leaf };
    for leaf in usize::from(leaves > 1)..leaves {
        let inputs = match leaf {
            0 => vec![partial(0)],
            1 => vec![partial(0), partial(1)],
            _ => vec![fold(leaf - 1), partial(leaf)],
        };
        let outputs = if leaf + 1 < leaves {
            vec![fold(leaf)]
        } else {
            vec![]
        };
        tasks.push(Task {
            kind: TaskKind::Combine { node, out: 0, leaf },
            inputs,
            outputs,
        });
    }
}

fn pipeline_cost(k: &TaskKind) -> f64 {
    match k {
        TaskKind::Load { .. } => 1.0,
        TaskKind::Merge { .. } => 0.5,
        TaskKind::Combine { .. } => 0.1,
    }
}

/// The pipeline of 4 bands of 5 loads and 3 groups on `workers` at 100 MB/s, with stealing, maybe a poison.
fn run_pipeline(workers: &[SimWorker], poison: Option<TaskKind>) -> Outcome {
    run_pipeline_with(workers, poison, true)
}

fn run_pipeline_with(workers: &[SimWorker], poison: Option<TaskKind>, move_early: bool) -> Outcome {
    let (g, sizes) = pipeline(4, 5, 3);
    let poison = poison.map(|kind| g.tasks().find(|(_, t)| t.kind == kind).expect("task").0);
    let setup = Setup {
        sizes: &sizes,
        workers,
        link_rate: 100.0 * MB as f64,
        cost: pipeline_cost,
        steal: true,
        move_early,
        poison,
    };
    Sim::new(g, &setup).run()
}

/// Every task finished, some were recomputed, and nothing is left on any worker.
fn assert_recovered(out: &Outcome, healthy: &Outcome) {
    assert!(out.failure.is_none(), "{:?}", out.failure);
    assert!(out.recomputed > 0, "lost keys were rebuilt");
    assert!(
        out.held_at_end.is_empty(),
        "every key is released at the end: {:?}",
        out.held_at_end
    );
    assert!(healthy.held_at_end.is_empty(), "{:?}", healthy.held_at_end);
    eprintln!(
        "with a loss: {:.2} s, {} recomputed, {} fetch failures, {} copies, {} steals; without: {:.2} s",
        out.makespan,
        out.recomputed,
        out.fetch_failures,
        out.speculated,
        out.steals,
        healthy.makespan
    );
    assert!(out.makespan > healthy.makespan);
}

fn four_workers() -> Vec<SimWorker> {
    (0..4).map(|id| worker(id, 2)).collect()
}

#[test]
fn pieces_move_to_their_merge_while_the_loads_run() {
    let early = run_pipeline_with(&four_workers(), None, true);
    let late = run_pipeline_with(&four_workers(), None, false);
    let pieces = 4 * 5 * 3 * 8 * MB;
    eprintln!(
        "moved early: {} MB, fetched by merges {} MB, {:.2} s; without: fetched {} MB, {:.2} s",
        early.moved_bytes / MB,
        early.merge_fetched_bytes / MB,
        early.makespan,
        late.merge_fetched_bytes / MB,
        late.makespan
    );
    assert_eq!(late.moved_bytes, 0);
    // Each band's pieces come from 5 loads spread over 4 workers: most must travel, either way.
    assert!(
        late.merge_fetched_bytes >= pieces / 2,
        "{}",
        late.merge_fetched_bytes
    );
    assert!(early.moved_bytes >= pieces / 2, "{}", early.moved_bytes);
    // Moved as they were written: the merges find their pieces there, and hardly more bytes travel.
    assert_eq!(early.merge_fetched_bytes, 0);
    assert!(
        early.moved_bytes <= late.merge_fetched_bytes * 5 / 4,
        "{} vs {}",
        early.moved_bytes,
        late.merge_fetched_bytes
    );
    assert!(
        early.makespan < late.makespan,
        "{} vs {}",
        early.makespan,
        late.makespan
    );
    assert!(early.held_at_end.is_empty(), "{:?}", early.held_at_end);
}

#[test]
fn a_worker_lost_during_the_loads_is_recovered_from_lineage() {
    let healthy = run_pipeline(&four_workers(), None);
    let mut workers = four_workers();
    workers[1].dies_at = Some(1.5);
    let out = run_pipeline(&workers, None);
    assert!(
        out.killed_running
            .iter()
            .any(|k| matches!(k, TaskKind::Load { .. })),
        "{:?}",
        out.killed_running
    );
    assert_recovered(&out, &healthy);
}

#[test]
fn a_worker_lost_during_the_merges_is_recovered_from_lineage() {
    let healthy = run_pipeline(&four_workers(), None);
    // Kill the worker of a merge of the last band halfway through it (the run is the same up to then).
    let merge = healthy
        .runs
        .iter()
        .filter(|r| matches!(r.kind, TaskKind::Merge { .. }))
        .nth(6)
        .expect("merges");
    let mut workers = four_workers();
    workers[merge.worker as usize].dies_at = Some((merge.start + merge.end) / 2.0);
    let out = run_pipeline(&workers, None);
    assert!(
        out.killed_running.contains(&merge.kind),
        "{:?} {:?}",
        merge,
        out.killed_running
    );
    assert_recovered(&out, &healthy);
}

#[test]
fn a_task_that_kills_its_workers_fails_the_job_after_three_strikes() {
    let workers: Vec<SimWorker> = (0..6).map(|id| worker(id, 2)).collect();
    for poison in [
        TaskKind::Load { chunk: 7 },
        TaskKind::Merge { node: 1, group: 4 },
        TaskKind::Combine {
            node: 2,
            out: 0,
            leaf: 10,
        },
    ] {
        let out = run_pipeline(&workers, Some(poison));
        eprintln!(
            "poison {poison}: {:?}; struck {:?}; killed while running {:?}",
            out.failure, out.struck, out.killed_running
        );
        let failure = out.failure.expect("the job fails");
        assert_eq!(failure.kind, poison);
        assert_eq!(failure.strikes, 3);
        assert_eq!(
            failure.to_string(),
            format!("task {poison} was running on 3 workers that died")
        );
        // The tasks that ran beside it were struck with it, then kept apart: none comes close.
        assert!(
            out.struck.iter().all(|&(k, n)| k == poison || n < 3),
            "{:?}",
            out.struck
        );
        let kills = out.killed_running.iter().filter(|&&k| k == poison).count();
        assert!((3..=4).contains(&kills), "{:?}", out.killed_running);
    }
}
