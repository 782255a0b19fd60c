//! Between the scheduler and the workers: the scheduler's actions become commands in the workers' mailboxes,
//! the workers' reports become the scheduler's events, and a worker that went silent (or whose process
//! exited) is declared lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::ledger::StoredObject;
use arrayjob_engine::schedule::{Action, WorkerId};

use super::report::{Event, Span};
use super::state::{CoordShared, CoordState, WorkerInfo, describe_task, stage_name, stage_node};
use crate::protocol::{Command, InputLocation, Report};

/// A task that keeps failing to get its inputs this long with no worker lost meanwhile fails the job rather
/// than being placed again forever (their holders answer but do not have them: a bookkeeping bug). A dead
/// holder is declared lost long before.
pub(super) const MAX_INPUT_WAIT: Duration = Duration::from_secs(30);

/// The workers to declare lost now: those not heard from for `timeout`, and those whose process (started
/// here) exited, matched by the launch id they registered with (not by address: two workers may share a
/// host).
pub(super) fn lost_now(
    workers: &BTreeMap<WorkerId, WorkerInfo>,
    timeout: Duration,
    exited: &[String],
) -> Vec<WorkerId> {
    workers
        .iter()
        .filter(|(_, w)| {
            !w.lost
                && (w.last_seen.elapsed() > timeout
                    || w.launch_id.as_ref().is_some_and(|l| exited.contains(l)))
        })
        .map(|(&id, _)| id)
        .collect()
}

/// Declares a worker lost: its mailbox is dropped, and the scheduler recomputes what it held elsewhere (or
/// fails the job when a task keeps losing its workers).
pub(super) fn lose_worker(shared: &CoordShared, g: &mut CoordState, id: WorkerId, now: f64) {
    let Some(w) = g.workers.get_mut(&id) else {
        return;
    };
    w.lost = true;
    w.mailbox.clear();
    g.unavailable.clear();
    tracing::warn!(worker = id.0, address = %w.address, "worker lost (exited, or no heartbeat)");
    g.workers_lost += 1;
    g.events.push(Event::Lost {
        worker: id,
        at: now,
    });
    shared.metrics.workers_lost.inc();
    match g.sched.worker_lost(id, now) {
        Ok(actions) => route(shared, g, actions),
        Err(f) => {
            let kind = g.sched.graph().task(f.task).kind;
            g.failure = Some(format!(
                "{} was running on {} workers that died: the job fails rather than lose more workers",
                describe_task(&shared.plan, kind),
                f.strikes
            ));
        }
    }
}

/// Turns the scheduler's actions into commands in the workers' mailboxes, and wakes those workers.
pub(super) fn route(shared: &CoordShared, g: &mut CoordState, actions: Vec<Action>) {
    let mut woken: Vec<WorkerId> = Vec::new();
    for a in actions {
        let (to, cmd) = match a {
            Action::Run {
                worker,
                task,
                attempt,
            } => {
                let inputs = g
                    .sched
                    .graph()
                    .task(task)
                    .inputs
                    .iter()
                    .filter_map(|&key| {
                        let (holder, _) = g.sched.location(key)?;
                        if holder == WorkerId::STORE {
                            let (object, position) = g.book.location(key)?;
                            return Some(InputLocation {
                                key,
                                worker: holder,
                                address: object.to_owned(),
                                position: Some(position),
                            });
                        }
                        let address = g.workers.get(&holder)?.address.clone();
                        Some(InputLocation {
                            key,
                            worker: holder,
                            address,
                            position: None,
                        })
                    })
                    .collect();
                (
                    worker,
                    Command::Run {
                        task,
                        attempt,
                        inputs,
                    },
                )
            }
            Action::Probe { from, to } => {
                let Some(address) = g.workers.get(&from).map(|w| w.address.clone()) else {
                    continue;
                };
                (
                    to,
                    Command::Probe {
                        from,
                        address,
                        bytes: shared.probe_bytes,
                    },
                )
            }
            Action::Move { key, from, to } => {
                let Some(address) = g.workers.get(&from).map(|w| w.address.clone()) else {
                    continue;
                };
                let sized = (key, g.sched.location(key).map_or(0, |(_, b)| b));
                if let Some(Command::Move { from: f, keys, .. }) =
                    g.workers.get_mut(&to).and_then(|w| w.mailbox.last_mut())
                    && *f == from
                {
                    keys.push(sized);
                    continue;
                }
                (
                    to,
                    Command::Move {
                        from,
                        address,
                        keys: vec![sized],
                    },
                )
            }
            Action::Ship {
                worker,
                merge,
                keys,
            } => {
                let object = g.book.object_name(merge, worker);
                let keys = keys.into_iter().map(|(k, _)| k).collect();
                (worker, Command::Ship { object, keys })
            }
            Action::Release {
                worker: WorkerId::STORE,
                key,
            } => {
                g.book.released(key);
                continue;
            }
            Action::Release { worker, key } => {
                if let Some(Command::Release { keys }) = g
                    .workers
                    .get_mut(&worker)
                    .and_then(|w| w.mailbox.last_mut())
                {
                    keys.push(key);
                    continue;
                }
                (worker, Command::Release { keys: vec![key] })
            }
        };
        if let Some(w) = g.workers.get_mut(&to).filter(|w| !w.lost) {
            w.mailbox.push(cmd);
            if !woken.contains(&to) {
                woken.push(to);
            }
        }
    }
    for id in woken {
        if let Some(w) = g.workers.get(&id) {
            w.wake.notify_one();
        }
    }
}

/// Applies one worker report to the scheduler.
pub(super) fn take_report(shared: &CoordShared, g: &mut CoordState, worker: WorkerId, r: Report) {
    let now = shared.now();
    let actions = match r {
        Report::Done {
            task,
            outputs,
            seconds,
            thread,
            ..
        } => {
            let kind = g.sched.graph().task(task).kind;
            let stage = stage_name(&shared.plan, kind);
            shared.metrics.task_done(&stage);
            g.spans.push(Span {
                worker,
                thread,
                stage,
                task: describe_task(&shared.plan, kind),
                start: (now - seconds).max(0.0),
                end: now,
            });
            if let Some(w) = g.workers.get_mut(&worker) {
                w.tasks_done += 1;
            }
            if !g.sched.is_done(task) {
                g.book.done(task);
                let bytes = outputs.iter().map(|&(_, b)| b).sum();
                g.clocks.entry(stage_node(kind)).or_default().record(
                    (now - seconds).max(0.0),
                    now,
                    bytes,
                );
            }
            g.sched.task_done(worker, task, &outputs, seconds, now)
        }
        Report::Shipped {
            object,
            keys,
            bytes,
            crc32c,
            ..
        } => {
            let names: Vec<_> = keys.iter().map(|&(k, _)| k).collect();
            let (accepted, actions) = g.sched.keys_shipped(worker, &names, now);
            g.book.shipped(
                StoredObject {
                    object,
                    keys,
                    bytes,
                    crc32c,
                },
                &accepted,
            );
            actions
        }
        Report::Damaged { keys } => {
            tracing::warn!(
                worker = worker.0,
                "spilled chunks came back damaged; rebuilding them"
            );
            g.sched.keys_unreadable(worker, &keys, now)
        }
        Report::ShipFailed { error } => {
            if g.failure.is_none() {
                g.failure = Some(format!("worker {}: {error}", worker.0));
            }
            Vec::new()
        }
        Report::Failed {
            task,
            input_unavailable: true,
            error,
            unreadable,
            ..
        } if !unreadable.is_empty() => {
            tracing::warn!(
                worker = worker.0,
                task = task.0,
                "inputs unreadable (object store or spill), rebuilding them: {error}"
            );
            for &k in &unreadable {
                g.book.forget(k);
            }
            let mut actions = g.sched.keys_unreadable(worker, &unreadable, now);
            actions.extend(g.sched.task_failed(worker, task, now));
            actions
        }
        Report::Failed {
            task,
            input_unavailable: true,
            error,
            ..
        } => {
            tracing::info!(
                worker = worker.0,
                task = task.0,
                "input unavailable: {error}"
            );
            let since = *g.unavailable.entry(task).or_insert_with(Instant::now);
            let limit =
                MAX_INPUT_WAIT.max(Duration::from_millis(shared.desc.worker_timeout_ms) * 3);
            if since.elapsed() > limit && g.failure.is_none() {
                let kind = g.sched.graph().task(task).kind;
                g.failure = Some(format!(
                    "{} could not get its inputs for {} s with every worker alive; last: {error}",
                    describe_task(&shared.plan, kind),
                    limit.as_secs()
                ));
            }
            g.sched.task_failed(worker, task, now)
        }
        Report::Failed { error, .. } => {
            if g.failure.is_none() {
                g.failure = Some(format!("worker {}: {error}", worker.0));
            }
            Vec::new()
        }
        Report::Moved {
            from,
            keys,
            bytes,
            seconds,
        } => {
            let mut actions = Vec::new();
            for key in keys {
                actions.extend(g.sched.key_moved(key, from, worker, now));
            }
            actions.extend(transfer(shared, g, from, worker, bytes, seconds));
            actions
        }
        Report::Transfer {
            from,
            bytes,
            seconds,
        } => transfer(shared, g, from, worker, bytes, seconds),
    };
    route(shared, g, actions);
}

/// Counts bytes `to` received from `from` and gives the scheduler the link's rate.
pub(super) fn transfer(
    shared: &CoordShared,
    g: &mut CoordState,
    from: WorkerId,
    to: WorkerId,
    bytes: u64,
    seconds: f64,
) -> Vec<Action> {
    let now = shared.now();
    g.bytes_moved += bytes;
    shared.metrics.bytes_moved.inc_by(bytes);
    g.events.push(Event::Transfer {
        from,
        to,
        bytes,
        at: now,
        seconds,
    });
    g.sched.transfer_observed(from, to, bytes, seconds, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RegisterRequest;

    fn registered(address: &str, launch_id: Option<&str>) -> WorkerInfo {
        WorkerInfo::joining(
            &RegisterRequest {
                address: address.into(),
                cores: 1,
                memory_budget: 1 << 20,
                plan_hash: "00".into(),
                version: "0".into(),
                launch_id: launch_id.map(str::to_owned),
            },
            0.0,
        )
    }

    #[test]
    fn an_exited_local_process_loses_exactly_its_worker_not_others_on_its_host() {
        let mut workers = BTreeMap::new();
        // Two local workers on one host (as 127.0.0.254 was shared past the 253rd), a worker started by hand
        // on it too, and one whose address starts with the same characters.
        workers.insert(WorkerId(0), registered("127.0.0.254:4001", Some("r-252")));
        workers.insert(WorkerId(1), registered("127.0.0.254:4002", Some("r-253")));
        workers.insert(WorkerId(2), registered("127.0.0.254:4003", None));
        workers.insert(WorkerId(3), registered("127.0.0.25:4004", Some("r-23")));
        let long = Duration::from_secs(3600);
        assert_eq!(lost_now(&workers, long, &[]), vec![]);
        assert_eq!(
            lost_now(&workers, long, &["r-253".into()]),
            vec![WorkerId(1)]
        );
        assert_eq!(
            lost_now(&workers, long, &["r-252".into(), "r-2".into()]),
            vec![WorkerId(0)]
        );
        // Already lost: not lost again; silence still loses a worker whatever its launch id.
        workers.get_mut(&WorkerId(1)).expect("w1").lost = true;
        assert_eq!(lost_now(&workers, long, &["r-253".into()]), vec![]);
        assert_eq!(
            lost_now(&workers, Duration::ZERO, &[]),
            vec![WorkerId(0), WorkerId(2), WorkerId(3)]
        );
    }
}
