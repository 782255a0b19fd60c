//! Which tasks of a [`TaskGraph`] are waiting, ready, running or done: the state a scheduler keeps.
//!
//! Completion is idempotent: a result reported twice (a duplicate message, or a recomputed task whose first
//! run's report arrives late) changes nothing the second time, so no consumer is released early and no count
//! drifts. Readiness is counted from the graph, not from what arrives: a task is ready when every task that
//! writes one of its inputs is done.

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
    /// Producers of each task's inputs not done yet (a producer writing two inputs counts twice).
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
