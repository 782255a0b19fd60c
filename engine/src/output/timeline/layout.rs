//! The layout both renderings share: lanes per `(worker, thread)` grouped by worker, stages in the order they
//! first start with their colours, the time axis and its ticks, and the texts of markers and the header.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use super::model::{Marker, MarkerKind, TaskSpan, Timeline};
use crate::output::plot::PALETTE;

/// A stage: its name, and its tasks' count and summed durations.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stage<'a> {
    pub(super) name: &'a str,
    pub(super) tasks: usize,
    pub(super) busy: f64,
}

/// A lane: one thread of a worker, or (`thread: None`) a worker that ran no task but appears in a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Lane {
    pub(super) worker: u32,
    pub(super) thread: Option<u32>,
}

impl Lane {
    pub(super) fn label(&self) -> String {
        match self.thread {
            Some(t) => format!("worker {} / thread {t}", self.worker),
            None => format!("worker {} / no tasks", self.worker),
        }
    }
}

/// The lanes of one worker (consecutive in [`Layout::lanes`]) and what they did.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Group {
    pub(super) worker: u32,
    /// First lane and one past the last.
    pub(super) lanes: (usize, usize),
    /// Lanes that are threads (not a `no tasks` lane).
    pub(super) threads: usize,
    pub(super) tasks: usize,
    pub(super) busy: f64,
}

/// Spans and markers sorted into lanes, stages and a time range.
#[derive(Debug, Clone)]
pub(super) struct Layout<'a> {
    /// Axis range, seconds; `t1 > t0`.
    pub(super) t0: f64,
    pub(super) t1: f64,
    /// Latest time minus `t0` (0 when there is nothing).
    pub(super) wall: f64,
    /// In order of their first start.
    pub(super) stages: Vec<Stage<'a>>,
    /// Sorted by worker, then thread.
    pub(super) lanes: Vec<Lane>,
    pub(super) groups: Vec<Group>,
    /// Per lane: the drawable spans on it, as (index in `Timeline::spans`, stage).
    pub(super) bars: Vec<Vec<(usize, usize)>>,
    /// Indices of the drawable markers.
    pub(super) markers: Vec<usize>,
    /// Group index of each worker.
    pub(super) group_of: HashMap<u32, usize>,
    pub(super) skipped_spans: usize,
    pub(super) skipped_markers: usize,
}

pub(super) fn span_ok(s: &TaskSpan) -> bool {
    s.start.is_finite() && s.end.is_finite() && s.end >= s.start
}

pub(super) fn marker_ok(m: &Marker) -> bool {
    m.at.is_finite() && m.end.is_none_or(|e| e.is_finite() && e >= m.at)
}

/// The worker a [`MarkerKind::WorkerLost`] marker is about.
pub(super) fn lost_worker(m: &Marker) -> Option<u32> {
    m.from.or(m.to)
}

impl<'a> Layout<'a> {
    pub(super) fn of(t: &'a Timeline) -> Layout<'a> {
        let mut lo = 0f64;
        let mut hi = f64::NEG_INFINITY;
        // Stages keyed by name: (index in `stages`), and the (start, span index) of their first span.
        let mut stage_idx: HashMap<&str, usize> = HashMap::new();
        let mut stages: Vec<(Stage<'a>, (f64, usize))> = Vec::new();
        let mut lane_set: BTreeSet<Lane> = BTreeSet::new();
        let mut skipped_spans = 0;
        for (i, s) in t.spans.iter().enumerate() {
            if !span_ok(s) {
                skipped_spans += 1;
                continue;
            }
            lo = lo.min(s.start);
            hi = hi.max(s.end);
            let k = *stage_idx.entry(s.stage.as_str()).or_insert_with(|| {
                stages.push((
                    Stage {
                        name: s.stage.as_str(),
                        tasks: 0,
                        busy: 0.0,
                    },
                    (s.start, i),
                ));
                stages.len() - 1
            });
            let (st, first) = &mut stages[k];
            st.tasks += 1;
            st.busy += s.end - s.start;
            if s.start < first.0 {
                *first = (s.start, i);
            }
            lane_set.insert(Lane {
                worker: s.worker,
                thread: Some(s.thread),
            });
        }
        let workers_with_spans: BTreeSet<u32> = lane_set.iter().map(|l| l.worker).collect();
        let mut markers = Vec::new();
        let mut skipped_markers = 0;
        for (i, m) in t.markers.iter().enumerate() {
            if !marker_ok(m) {
                skipped_markers += 1;
                continue;
            }
            markers.push(i);
            lo = lo.min(m.at);
            hi = hi.max(m.end.unwrap_or(m.at));
            for w in [m.from, m.to].into_iter().flatten() {
                if !workers_with_spans.contains(&w) {
                    lane_set.insert(Lane {
                        worker: w,
                        thread: None,
                    });
                }
            }
        }
        stages.sort_by(|a, b| a.1.0.total_cmp(&b.1.0).then(a.1.1.cmp(&b.1.1)));
        let rank: HashMap<&str, usize> = stages
            .iter()
            .enumerate()
            .map(|(r, s)| (s.0.name, r))
            .collect();
        let lanes: Vec<Lane> = lane_set.into_iter().collect();
        let lane_idx: HashMap<Lane, usize> =
            lanes.iter().enumerate().map(|(i, l)| (*l, i)).collect();
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of = HashMap::new();
        for (i, l) in lanes.iter().enumerate() {
            if groups.last().is_none_or(|g| g.worker != l.worker) {
                group_of.insert(l.worker, groups.len());
                groups.push(Group {
                    worker: l.worker,
                    lanes: (i, i),
                    threads: 0,
                    tasks: 0,
                    busy: 0.0,
                });
            }
            if let Some(g) = groups.last_mut() {
                g.lanes.1 = i + 1;
                g.threads += usize::from(l.thread.is_some());
            }
        }
        let mut bars = vec![Vec::new(); lanes.len()];
        for (i, s) in t.spans.iter().enumerate() {
            if !span_ok(s) {
                continue;
            }
            let lane = lane_idx[&Lane {
                worker: s.worker,
                thread: Some(s.thread),
            }];
            bars[lane].push((i, rank[s.stage.as_str()]));
            let g = &mut groups[group_of[&s.worker]];
            g.tasks += 1;
            g.busy += s.end - s.start;
        }
        let wall = if hi.is_finite() { hi - lo } else { 0.0 };
        Layout {
            t0: lo,
            t1: if wall > 0.0 { hi } else { lo + 1.0 },
            wall,
            stages: stages.into_iter().map(|s| s.0).collect(),
            lanes,
            groups,
            bars,
            markers,
            group_of,
            skipped_spans,
            skipped_markers,
        }
    }

    pub(super) fn tasks(&self) -> usize {
        self.stages.iter().map(|s| s.tasks).sum()
    }

    pub(super) fn threads(&self) -> usize {
        self.groups.iter().map(|g| g.threads).sum()
    }

    /// Busy seconds over thread-seconds of the wall time, or `None` without threads or time.
    pub(super) fn fraction(busy: f64, threads: usize, wall: f64) -> Option<f64> {
        (threads > 0 && wall > 0.0).then(|| busy / (threads as f64 * wall))
    }

    /// Top of each lane, when lanes are `pitch` apart, groups another `gap` apart, and the first starts at
    /// `origin`; and the bottom of the last lane.
    pub(super) fn lane_tops(&self, origin: f64, pitch: f64, gap: f64) -> (Vec<f64>, f64) {
        let mut tops = Vec::with_capacity(self.lanes.len());
        let mut y = origin;
        for (gi, g) in self.groups.iter().enumerate() {
            if gi > 0 {
                y += gap;
            }
            for _ in g.lanes.0..g.lanes.1 {
                tops.push(y);
                y += pitch;
            }
        }
        (tops, y)
    }

    /// Skipped inputs, as a sentence, if any.
    pub(super) fn skipped_note(&self) -> Option<String> {
        let part = |n: usize, what: &str| match n {
            0 => None,
            1 => Some(format!("1 {what}")),
            n => Some(format!("{n} {what}s")),
        };
        let parts: Vec<String> = [
            part(self.skipped_spans, "span"),
            part(self.skipped_markers, "marker"),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| {
            format!(
                "{} with non-finite or reversed times left out.",
                parts.join(" and ")
            )
        })
    }
}

/// Colour of the `k`-th stage: the plot palette (matplotlib's `tab10`), then hues 137.5 degrees apart.
pub(super) fn stage_rgb(k: usize) -> (u8, u8, u8) {
    if let Some(c) = PALETTE.get(k) {
        return (c.0, c.1, c.2);
    }
    let h = ((k - PALETTE.len()) as f64 * 137.508 + 15.0) % 360.0;
    hsl(h, 0.55, 0.52)
}

pub(super) fn hsl(h: f64, s: f64, l: f64) -> (u8, u8, u8) {
    let c = (1.0 - (2.0 * l - 1.0).abs()) * s;
    let hp = h / 60.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = l - c / 2.0;
    let v = |u: f64| ((u + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    (v(r), v(g), v(b))
}

/// Tick positions for `t0..t1` (about `target` of them, a step of 1, 2 or 5 times a power of ten) and the
/// number of decimals their labels need.
pub(super) fn ticks(t0: f64, t1: f64, target: usize) -> (Vec<f64>, usize) {
    let raw = (t1 - t0) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let mut out = Vec::new();
    let mut k = (t0 / step - 1e-9).ceil();
    while k * step <= t1 + step * 1e-9 {
        let v = k * step;
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        k += 1.0;
    }
    (out, decimals)
}

/// `n` bytes in decimal units (`812 B`, `80.0 MB`).
pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub(super) fn who(w: Option<u32>) -> String {
    w.map_or_else(|| "an unknown worker".to_owned(), |w| format!("worker {w}"))
}

/// One line describing a marker (not escaped).
pub(super) fn marker_text(m: &Marker) -> String {
    let mut s = match m.kind {
        MarkerKind::Transfer => {
            let mut s = format!("transfer {} \u{2192} {}", who(m.from), who(m.to));
            if let Some(b) = m.bytes {
                let _ = write!(s, ", {}", human_bytes(b));
            }
            match m.end {
                Some(e) => {
                    let _ = write!(s, ", {:.3}\u{2013}{e:.3} s", m.at);
                    if let Some(b) = m.bytes.filter(|_| e > m.at) {
                        let _ = write!(s, " ({}/s)", human_bytes((b as f64 / (e - m.at)) as u64));
                    }
                }
                None => {
                    let _ = write!(s, ", at {:.3} s", m.at);
                }
            }
            s
        }
        MarkerKind::Steal => format!(
            "steal by {} from {} at {:.3} s",
            who(m.to),
            who(m.from),
            m.at
        ),
        MarkerKind::Speculated => format!(
            "speculative copy on {} of a task on {} at {:.3} s",
            who(m.to),
            who(m.from),
            m.at
        ),
        MarkerKind::WorkerLost => format!("{} lost at {:.3} s", who(lost_worker(m)), m.at),
    };
    if !m.note.is_empty() {
        s.push_str(": ");
        s.push_str(&m.note);
    }
    s
}

/// Legend entries of the markers present: (kind, text), in a fixed order.
pub(super) fn marker_legend(t: &Timeline, lay: &Layout<'_>) -> Vec<(MarkerKind, String)> {
    let kinds = [
        MarkerKind::Transfer,
        MarkerKind::Steal,
        MarkerKind::Speculated,
        MarkerKind::WorkerLost,
    ];
    kinds
        .into_iter()
        .filter_map(|kind| {
            let of_kind = || {
                lay.markers
                    .iter()
                    .map(|&i| &t.markers[i])
                    .filter(move |m| m.kind == kind)
            };
            let n = of_kind().count();
            if n == 0 {
                return None;
            }
            let plural = |one: &str, many: &str| if n == 1 { one } else { many }.to_owned();
            let text = match kind {
                MarkerKind::Transfer => {
                    let bytes: u64 = of_kind().filter_map(|m| m.bytes).sum();
                    format!(
                        "{n} {}, {}",
                        plural("transfer", "transfers"),
                        human_bytes(bytes)
                    )
                }
                MarkerKind::Steal => format!("{n} {}", plural("steal", "steals")),
                MarkerKind::Speculated => {
                    format!("{n} {}", plural("speculative copy", "speculative copies"))
                }
                MarkerKind::WorkerLost => format!("{n} {}", plural("worker lost", "workers lost")),
            };
            Some((kind, text))
        })
        .collect()
}

/// Summary line: wall time, tasks, workers, threads, overall busy fraction (not escaped).
pub(super) fn summary_text(lay: &Layout<'_>) -> String {
    let mut s = format!(
        "wall time {:.3} s \u{b7} {} tasks \u{b7} {} workers \u{b7} {} threads",
        lay.wall,
        lay.tasks(),
        lay.groups.len(),
        lay.threads()
    );
    let busy: f64 = lay.stages.iter().map(|st| st.busy).sum();
    if let Some(f) = Layout::fraction(busy, lay.threads(), lay.wall) {
        let _ = write!(s, " \u{b7} {:.1}% busy", f * 100.0);
    }
    s
}

pub(super) fn stage_text(st: &Stage<'_>) -> String {
    format!("{}: {} tasks, {:.2} s busy", st.name, st.tasks, st.busy)
}

pub(super) fn title_of(t: &Timeline) -> &str {
    if t.title.trim().is_empty() {
        "Task stream"
    } else {
        &t.title
    }
}
