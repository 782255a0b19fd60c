//! The real placement policy ([`Scheduler`]) driven by a deterministic simulation: virtual workers with cores
//! and speeds, a virtual clock, links with a real rate the scheduler does not know, and modelled task costs.
//!
//! Model: a worker runs up to `cores` tasks at once, in the order it received them; a task first fetches its
//! inputs held elsewhere (bytes / link rate, one input after another, links never contended), then computes
//! (its cost / the worker's speed). Probes take `probe_bytes / rate` and do not delay tasks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use arrayjob_engine::data::DataKey;
use arrayjob_engine::graph::{Task, TaskGraph, TaskId, TaskKind};
use arrayjob_engine::schedule::{Action, Scheduler, SchedulerOptions, WorkerId};

const MB: u64 = 1 << 20;

#[derive(Clone)]
struct SimWorker {
    id: u32,
    cores: usize,
    /// Compute speed (1 = nominal; 0.1 = a straggler ten times slower).
    speed: f64,
    joins_at: f64,
}

fn worker(id: u32, cores: usize) -> SimWorker {
    SimWorker {
        id,
        cores,
        speed: 1.0,
        joins_at: 0.0,
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
}

struct Outcome {
    makespan: f64,
    steals: usize,
    speculated: usize,
    finished_by: Vec<usize>,
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
    cost: impl Fn(&TaskKind) -> f64,
    steal: bool,
) -> Outcome {
    let opts = SchedulerOptions {
        steal,
        ..SchedulerOptions::default()
    };
    let probe_bytes = opts.probe_bytes;
    let mut s = Scheduler::new(graph, opts);
    let ns = |secs: f64| (secs * 1e9).round() as u64;
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut events: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0;
    let mut push = |events: &mut BinaryHeap<_>, at: u64, e: Event| {
        seq += 1;
        events.push(Reverse((at, seq, e)));
    };
    for w in workers {
        push(&mut events, ns(w.joins_at), Event::Join(w.id));
    }
    const HEARTBEAT: u64 = 500_000_000;
    push(&mut events, HEARTBEAT, Event::Tick);
    let spec: BTreeMap<u32, SimWorker> = workers.iter().map(|w| (w.id, w.clone())).collect();
    let mut queued: BTreeMap<u32, VecDeque<TaskId>> = BTreeMap::new();
    let mut running: BTreeMap<u32, usize> = BTreeMap::new();
    // Where each key really is (the simulation's truth, as the workers' stores would be).
    let mut held: BTreeMap<DataKey, u32> = BTreeMap::new();
    while let Some(Reverse((now, _, event))) = events.pop() {
        let actions = match event {
            Event::Tick if s.finished() => Vec::new(),
            Event::Tick => {
                push(&mut events, now + HEARTBEAT, Event::Tick);
                s.tick(secs(now))
            }
            Event::Join(w) => s.add_worker(WorkerId(w), spec[&w].cores, secs(now)),
            Event::Probe(from, to) => s.transfer_observed(
                WorkerId(from),
                WorkerId(to),
                probe_bytes,
                probe_bytes as f64 / link_rate,
                secs(now),
            ),
            Event::Finish(w, t, fetch_ns, remote, sender) => {
                *running.entry(w).or_default() -= 1;
                let mut actions = Vec::new();
                if remote > 0 {
                    actions.extend(s.transfer_observed(
                        WorkerId(sender),
                        WorkerId(w),
                        remote,
                        fetch_ns as f64 / 1e9,
                        secs(now),
                    ));
                }
                let outputs: Vec<(DataKey, u64)> = s
                    .graph()
                    .task(TaskId(t))
                    .outputs
                    .iter()
                    .map(|k| (*k, sizes.get(k).copied().unwrap_or(MB)))
                    .collect();
                for (k, _) in &outputs {
                    held.insert(*k, w);
                }
                let took = cost(&s.graph().task(TaskId(t)).kind) / spec[&w].speed;
                actions.extend(s.task_done(WorkerId(w), TaskId(t), &outputs, took, secs(now)));
                actions
            }
        };
        for a in actions {
            match a {
                Action::Run { worker, task, .. } => {
                    queued.entry(worker.0).or_default().push_back(task)
                }
                Action::Probe { from, to } => push(
                    &mut events,
                    now + ns(probe_bytes as f64 / link_rate),
                    Event::Probe(from.0, to.0),
                ),
            }
        }
        // Start what fits on every worker.
        for (&w, q) in &mut queued {
            while running.get(&w).copied().unwrap_or(0) < spec[&w].cores {
                let Some(t) = q.pop_front() else { break };
                *running.entry(w).or_default() += 1;
                let task = s.graph().task(t).clone();
                let (mut remote, mut sender) = (0, w);
                for k in &task.inputs {
                    let from = held[k];
                    if from != w {
                        remote += sizes.get(k).copied().unwrap_or(MB);
                        sender = from;
                    }
                }
                let fetch = remote as f64 / link_rate;
                let compute = cost(&task.kind) / spec[&w].speed;
                push(
                    &mut events,
                    now + ns(fetch + compute),
                    Event::Finish(w, t.0, ns(fetch), remote, sender),
                );
            }
        }
    }
    assert!(s.finished(), "every task ran");
    Outcome {
        makespan: s.finished_at().expect("finished"),
        steals: s.steals().len(),
        speculated: s.speculated().len(),
        finished_by: workers
            .iter()
            .map(|w| s.finished_by(WorkerId(w.id)))
            .collect(),
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
