//! Which tasks of a [`TaskGraph`] are waiting, ready, running or done: the state a scheduler keeps.
//!
//! Completion is idempotent: a result reported twice (a duplicate message, or a recomputed task whose first
//! run's report arrives late) changes nothing the second time, so no consumer is released early and no count
//! drifts. Readiness is counted from the graph, not from what arrives: a task is ready when every task that
//! writes one of its inputs is done.
//!
//! Work can also be undone: when a worker dies with keys nobody has finished reading, their producers are
//! [reopened](TaskTracker::reopen) (run again from lineage), and a task whose run failed is
//! [retried](TaskTracker::retry). The count behind readiness stays exact through both: a task that is not done
//! misses one input for every input whose producer is not done; a done task misses nothing.

use crate::graph::{TaskGraph, TaskId};

/// Which run of a task a result comes from (1 for the first).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Attempt(pub u32);

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Some input is not written yet.
    Waiting,
    /// Every input is there; not handed out.
    Ready,
    /// Handed out; the attempt running.
    Running(Attempt),
    /// Its outputs were written.
    Done,
}

/// What a completion report changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The task is now done; these tasks became ready, in task order.
    Done(Vec<TaskId>),
    /// The task was already done: nothing changed.
    Duplicate,
}

/// Task states of one graph.
#[derive(Debug, Clone)]
pub struct TaskTracker {
    state: Vec<TaskState>,
    /// Producers of each task's inputs not done yet (a producer writing two inputs counts twice); 0 for done
    /// tasks.
    missing: Vec<usize>,
    attempts: Vec<u32>,
    done: usize,
}

impl TaskTracker {
    /// Every task of `graph` waiting, except those without inputs (returned: they are ready).
    pub fn new(graph: &TaskGraph) -> (TaskTracker, Vec<TaskId>) {
        let missing: Vec<usize> = graph.tasks().map(|(_, t)| t.inputs.len()).collect();
        let mut ready = Vec::new();
        let state = missing
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                if m == 0 {
                    ready.push(TaskId(i));
                    TaskState::Ready
                } else {
                    TaskState::Waiting
                }
            })
            .collect();
        let tracker = TaskTracker {
            state,
            attempts: vec![0; missing.len()],
            missing,
            done: 0,
        };
        (tracker, ready)
    }

    /// The state of `task`.
    pub fn state(&self, task: TaskId) -> TaskState {
        self.state[task.0]
    }

    /// Marks a ready task as handed out and returns which attempt this is.
    pub fn start(&mut self, task: TaskId) -> Attempt {
        self.attempts[task.0] += 1;
        let a = Attempt(self.attempts[task.0]);
        if self.state[task.0] != TaskState::Done {
            self.state[task.0] = TaskState::Running(a);
        }
        a
    }

    /// Records that `task` wrote its outputs. The first report releases its consumers; later ones (from
    /// any attempt) change nothing.
    pub fn complete(&mut self, graph: &TaskGraph, task: TaskId) -> Completion {
        if self.state[task.0] == TaskState::Done {
            return Completion::Duplicate;
        }
        self.state[task.0] = TaskState::Done;
        // A task that ran while one of its producers was reopened had its inputs already.
        self.missing[task.0] = 0;
        self.done += 1;
        let mut ready = Vec::new();
        for &key in &graph.task(task).outputs {
            for &c in graph.consumers(key) {
                let m = &mut self.missing[c.0];
                *m = m.saturating_sub(1);
                if *m == 0 && self.state[c.0] == TaskState::Waiting {
                    self.state[c.0] = TaskState::Ready;
                    ready.push(c);
                }
            }
        }
        ready.sort_unstable();
        Completion::Done(ready)
    }

    /// Undoes `task` because some of its outputs were lost: a done task becomes ready again (or waiting, if a
    /// producer of its inputs was itself reopened and is not done), its attempts kept. Every consumer of its
    /// outputs that is not done misses one more input per key (as [`TaskTracker::complete`] counted them off);
    /// those that were ready go back to waiting and are returned, in task order, for the caller to take out of
    /// its queues. Running consumers stay running (they may have their inputs already). A task that is not done
    /// is left alone (returns nothing), so reopening twice is harmless.
    pub fn reopen(&mut self, graph: &TaskGraph, task: TaskId) -> Vec<TaskId> {
        if self.state[task.0] != TaskState::Done {
            return Vec::new();
        }
        self.done -= 1;
        let missing = self.missing_inputs(graph, task);
        self.missing[task.0] = missing;
        self.state[task.0] = if missing == 0 {
            TaskState::Ready
        } else {
            TaskState::Waiting
        };
        let mut unready = Vec::new();
        for &key in &graph.task(task).outputs {
            for &c in graph.consumers(key) {
                if self.state[c.0] == TaskState::Done {
                    continue;
                }
                self.missing[c.0] += 1;
                if self.state[c.0] == TaskState::Ready {
                    self.state[c.0] = TaskState::Waiting;
                    unready.push(c);
                }
            }
        }
        unready.sort_unstable();
        unready.dedup();
        unready
    }

    /// A running `task` did not finish (its worker could not fetch an input, or died): it goes back to ready,
    /// or to waiting if a producer of its inputs was reopened meanwhile. Returns its state (unchanged when it
    /// was not running).
    pub fn retry(&mut self, task: TaskId) -> TaskState {
        if let TaskState::Running(_) = self.state[task.0] {
            self.state[task.0] = if self.missing[task.0] == 0 {
                TaskState::Ready
            } else {
                TaskState::Waiting
            };
        }
        self.state[task.0]
    }

    /// How many inputs of `task` have a producer that is not done.
    fn missing_inputs(&self, graph: &TaskGraph, task: TaskId) -> usize {
        graph
            .task(task)
            .inputs
            .iter()
            .filter(|&&k| {
                graph
                    .producer(k)
                    .is_some_and(|p| self.state[p.0] != TaskState::Done)
            })
            .count()
    }

    /// Tasks done so far.
    pub fn done(&self) -> usize {
        self.done
    }

    /// True when every task is done.
    pub fn finished(&self) -> bool {
        self.done == self.state.len()
    }

    /// How many times `task` was handed out.
    pub fn attempts(&self, task: TaskId) -> u32 {
        self.attempts[task.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::TaskKind;
    use crate::plan::test_plan;

    /// 3 loads, a rechunk into 2 merge groups, a reduction with 3 leaves.
    fn graph() -> TaskGraph {
        let stages = "  - {name: m, input: source, reduce: {op: mean, axes: [0]}}
  - {name: s, input: source, rechunk: {chunks: [-1, 4, 8]}}
";
        TaskGraph::build(&test_plan(stages, 30, 8)).expect("graph")
    }

    fn find(g: &TaskGraph, kind: TaskKind) -> TaskId {
        g.tasks().find(|(_, t)| t.kind == kind).expect("task").0
    }

    #[test]
    fn tasks_become_ready_when_their_producers_are_done_and_duplicates_change_nothing() {
        let g = graph();
        let (mut t, ready) = TaskTracker::new(&g);
        assert_eq!(
            ready,
            vec![TaskId(0), TaskId(1), TaskId(2)],
            "the three loads"
        );
        let (m, s) = (1, 2);
        let merge = |group| find(&g, TaskKind::Merge { node: s, group });
        let combine = |leaf| {
            find(
                &g,
                TaskKind::Combine {
                    node: m,
                    out: 0,
                    leaf,
                },
            )
        };
        assert_eq!(t.start(TaskId(0)), Attempt(1));
        assert_eq!(t.complete(&g, TaskId(0)), Completion::Done(vec![]));
        // The same result again (say, a recomputed load) must not count as load 1's.
        assert_eq!(t.complete(&g, TaskId(0)), Completion::Duplicate);
        assert_eq!(t.state(combine(1)), TaskState::Waiting);
        assert_eq!(
            t.complete(&g, TaskId(1)),
            Completion::Done(vec![combine(1)])
        );
        assert_eq!(t.complete(&g, TaskId(1)), Completion::Duplicate);
        assert_eq!(
            t.state(merge(0)),
            TaskState::Waiting,
            "still needs load 2's piece"
        );
        assert_eq!(
            t.complete(&g, TaskId(2)),
            Completion::Done(vec![merge(0), merge(1)])
        );
        // Combine 2 waits for combine 1's fold, not only for its partial.
        assert_eq!(t.state(combine(2)), TaskState::Waiting);
        assert_eq!(
            t.complete(&g, combine(1)),
            Completion::Done(vec![combine(2)])
        );
        for task in [merge(0), merge(1), combine(2)] {
            assert_eq!(t.complete(&g, task), Completion::Done(vec![]));
        }
        assert!(t.finished());
        assert_eq!(t.done(), g.len());
        assert_eq!(t.complete(&g, merge(1)), Completion::Duplicate);
        assert_eq!(t.done(), g.len());
    }

    #[test]
    fn reopening_a_load_sends_its_ready_consumers_back_to_waiting_and_keeps_running_ones() {
        let g = graph();
        let (mut t, _) = TaskTracker::new(&g);
        let (m, s) = (1, 2);
        let merge = |group| find(&g, TaskKind::Merge { node: s, group });
        let combine = |leaf| {
            find(
                &g,
                TaskKind::Combine {
                    node: m,
                    out: 0,
                    leaf,
                },
            )
        };
        for load in 0..3 {
            t.start(TaskId(load));
            t.complete(&g, TaskId(load));
        }
        t.start(merge(0));
        t.start(combine(1));
        t.complete(&g, combine(1));
        assert_eq!(t.done(), 4);

        // Load 0's pieces feed both merges (one running, one ready) and its partial the done combine 1.
        assert_eq!(t.reopen(&g, TaskId(0)), vec![merge(1)]);
        assert_eq!(t.state(TaskId(0)), TaskState::Ready);
        assert_eq!(t.attempts(TaskId(0)), 1, "attempts are kept");
        assert_eq!(t.state(merge(0)), TaskState::Running(Attempt(1)));
        assert_eq!(t.state(merge(1)), TaskState::Waiting);
        assert_eq!(t.state(combine(1)), TaskState::Done);
        assert_eq!(t.done(), 3);
        // Idempotent: a task that is not done is not reopened again, nothing is counted twice.
        assert_eq!(t.reopen(&g, TaskId(0)), vec![]);
        assert_eq!(t.done(), 3);

        assert_eq!(t.start(TaskId(0)), Attempt(2));
        assert_eq!(
            t.complete(&g, TaskId(0)),
            Completion::Done(vec![merge(1)]),
            "only the waiting merge is released; the running one never stopped"
        );
        assert_eq!(t.state(merge(0)), TaskState::Running(Attempt(1)));
        assert_eq!(t.retry(merge(0)), TaskState::Ready, "nothing missing");
    }

    #[test]
    fn a_reopened_task_waits_for_a_producer_reopened_before_it_and_retries_wait_too() {
        let g = graph();
        let (mut t, _) = TaskTracker::new(&g);
        let (m, s) = (1, 2);
        let merge = |group| find(&g, TaskKind::Merge { node: s, group });
        let combine = |leaf| {
            find(
                &g,
                TaskKind::Combine {
                    node: m,
                    out: 0,
                    leaf,
                },
            )
        };
        for load in 0..3 {
            t.complete(&g, TaskId(load));
        }
        t.complete(&g, combine(1));
        t.start(merge(0));
        t.start(merge(1));
        assert_eq!(t.state(combine(2)), TaskState::Ready);

        // Load 1 is reopened: the done combine 1 is untouched, the running merges miss one input each.
        assert_eq!(t.reopen(&g, TaskId(1)), vec![]);
        assert_eq!(t.state(combine(1)), TaskState::Done);
        // Merge 0 cannot fetch load 1's piece: back to waiting. Merge 1 had it and finishes.
        assert_eq!(t.retry(merge(0)), TaskState::Waiting);
        assert_eq!(
            t.retry(merge(0)),
            TaskState::Waiting,
            "not running: unchanged"
        );
        assert_eq!(t.complete(&g, merge(1)), Completion::Done(vec![]));
        // Combine 1's fold is lost too: it waits for load 1, and combine 2 for it.
        assert_eq!(t.reopen(&g, combine(1)), vec![combine(2)]);
        assert_eq!(t.state(combine(1)), TaskState::Waiting);
        assert_eq!(t.state(combine(2)), TaskState::Waiting);
        assert_eq!(t.done(), 3, "loads 0 and 2, merge 1");

        let mut both = vec![merge(0), combine(1)];
        both.sort_unstable();
        assert_eq!(t.complete(&g, TaskId(1)), Completion::Done(both));
        assert_eq!(
            t.complete(&g, combine(1)),
            Completion::Done(vec![combine(2)])
        );
        for task in [merge(0), combine(2)] {
            assert_eq!(t.complete(&g, task), Completion::Done(vec![]));
        }
        assert!(t.finished());
        assert_eq!(t.done(), g.len());
        assert_eq!(t.complete(&g, TaskId(1)), Completion::Duplicate);
        assert_eq!(t.done(), g.len());
    }

    #[test]
    fn attempts_are_counted_per_task() {
        let g = graph();
        let (mut t, _) = TaskTracker::new(&g);
        assert_eq!(t.start(TaskId(1)), Attempt(1));
        assert_eq!(t.state(TaskId(1)), TaskState::Running(Attempt(1)));
        assert_eq!(t.start(TaskId(1)), Attempt(2));
        assert_eq!(t.attempts(TaskId(1)), 2);
        assert_eq!(t.attempts(TaskId(0)), 0);
        assert_eq!(t.complete(&g, TaskId(1)), Completion::Done(vec![]));
        assert_eq!(t.state(TaskId(1)), TaskState::Done);
    }
}
