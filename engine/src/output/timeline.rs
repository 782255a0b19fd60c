//! Task-stream timelines of a run: which worker thread ran which task when, and what happened between workers
//! (transfers, steals, speculative copies, lost workers). Plain data in, one self-contained HTML page or one
//! PNG out; nothing here reads a clock or talks to a worker.
//!
//! Both renderings share one layout: one lane per `(worker, thread)`, lanes sorted and grouped by worker,
//! stages coloured in the order they first start (the plot palette, then generated hues), and a time axis
//! from `min(0, earliest time)` to the latest time. Spans and markers with non-finite times, or ending before
//! they start, are left out and counted in the header: a diagnostic file should not fail a run.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::OutputError;
use super::plot::{FAMILY, PALETTE, ensure_font};

/// One task run as seen by the coordinator. Times are seconds since the job started.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpan {
    /// Worker that ran it.
    pub worker: u32,
    /// Thread (executor slot) of that worker.
    pub thread: u32,
    /// Stage it belongs to (e.g. `load`, `merge`, `combine`): decides its colour.
    pub stage: String,
    /// Its name, shown in tooltips.
    pub task: String,
    /// When it started.
    pub start: f64,
    /// When it ended.
    pub end: f64,
}

/// What a [`Marker`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MarkerKind {
    /// Data moved from worker `from` to worker `to`, from `at` until `end`, `bytes` of it.
    Transfer,
    /// Worker `to` took a task waiting on worker `from`.
    Steal,
    /// Worker `from` (or `to` when `from` is unset) was lost.
    WorkerLost,
    /// Worker `to` started a speculative copy of a task running on worker `from`.
    Speculated,
}

/// Something that happened between workers, drawn over the lanes. Times are seconds since the job started.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    /// What happened.
    pub kind: MarkerKind,
    /// The sending, robbed or lost worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u32>,
    /// The receiving, stealing or copying worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
    /// When it happened (a transfer: when it started).
    pub at: f64,
    /// When a transfer ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<f64>,
    /// Bytes transferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Free text shown in the marker's tooltip (e.g. the task or data key concerned).
    #[serde(default)]
    pub note: String,
}

/// A run's task stream: the spans of every task run and the markers between workers.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Timeline {
    /// Heading of the page or image.
    pub title: String,
    /// Task runs, in any order.
    pub spans: Vec<TaskSpan>,
    /// Events between workers, in any order.
    pub markers: Vec<Marker>,
}

/// Width of the PNG, pixels.
pub const TIMELINE_PNG_WIDTH: u32 = 1600;
/// The PNG grows with the number of lanes up to this height, then its lanes get thinner.
pub const TIMELINE_PNG_MAX_HEIGHT: u32 = 4000;

/// Writes `t` as one self-contained HTML page (inline CSS, an inline SVG, a few lines of inline JavaScript
/// for instant tooltips; without JavaScript the SVG `<title>` tooltips remain). Written to a temporary file
/// next to `path`, then renamed over it.
///
/// # Errors
/// When the file cannot be written.
pub fn write_timeline_html(path: &Path, t: &Timeline) -> Result<(), OutputError> {
    replace_file(path, timeline_html(t).as_bytes())
}

/// Writes `t` as a PNG [`TIMELINE_PNG_WIDTH`] pixels wide: the lanes, bars, markers and a stage legend, in
/// the embedded DejaVu Sans font. Its height follows the number of lanes, at most
/// [`TIMELINE_PNG_MAX_HEIGHT`]. Written to a temporary file next to `path`, then renamed over it.
///
/// # Errors
/// When the font cannot be loaded, drawing or encoding fails, or the file cannot be written.
pub fn write_timeline_png(path: &Path, t: &Timeline) -> Result<(), OutputError> {
    ensure_font().map_err(|e| OutputError::write(path, "load font", e))?;
    let lay = Layout::of(t);
    let frame = PngFrame::of(t, &lay);
    let (w, h) = (TIMELINE_PNG_WIDTH, frame.height);
    let mut pixels = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        draw_png(&root, t, &lay, &frame)
            .map_err(|e| OutputError::write(path, "draw timeline", e))?;
        root.present()
            .map_err(|e| OutputError::write(path, "draw timeline", e))?;
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &pixels,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| OutputError::write(path, "encode PNG", e))?;
    replace_file(path, &png)
}

/// Writes `bytes` to a new temporary file in `path`'s directory (named `.<name>.<random>.tmp`, mode 0666
/// less the umask like any created file), then renames it to `path`: readers see the old file or the new
/// one, never a part. The temporary file is removed when anything fails.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(name) = path.file_name() else {
        return Err(OutputError::invalid(path, "path", "it names no file"));
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| OutputError::io(path, "create temporary file", e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.flush())
        .map_err(|e| OutputError::io(path, "write temporary file", e))?;
    tmp.persist(path)
        .map_err(|e| OutputError::io(path, "rename temporary file", e.error))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Layout shared by both renderings.

/// A stage: its name, and its tasks' count and summed durations.
#[derive(Debug, Clone, PartialEq)]
struct Stage<'a> {
    name: &'a str,
    tasks: usize,
    busy: f64,
}

/// A lane: one thread of a worker, or (`thread: None`) a worker that ran no task but appears in a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Lane {
    worker: u32,
    thread: Option<u32>,
}

impl Lane {
    fn label(&self) -> String {
        match self.thread {
            Some(t) => format!("worker {} / thread {t}", self.worker),
            None => format!("worker {} / no tasks", self.worker),
        }
    }
}

/// The lanes of one worker (consecutive in [`Layout::lanes`]) and what they did.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    worker: u32,
    /// First lane and one past the last.
    lanes: (usize, usize),
    /// Lanes that are threads (not a `no tasks` lane).
    threads: usize,
    tasks: usize,
    busy: f64,
}

/// Spans and markers sorted into lanes, stages and a time range.
#[derive(Debug, Clone)]
struct Layout<'a> {
    /// Axis range, seconds; `t1 > t0`.
    t0: f64,
    t1: f64,
    /// Latest time minus `t0` (0 when there is nothing).
    wall: f64,
    /// In order of their first start.
    stages: Vec<Stage<'a>>,
    /// Sorted by worker, then thread.
    lanes: Vec<Lane>,
    groups: Vec<Group>,
    /// Per lane: the drawable spans on it, as (index in `Timeline::spans`, stage).
    bars: Vec<Vec<(usize, usize)>>,
    /// Indices of the drawable markers.
    markers: Vec<usize>,
    /// Group index of each worker.
    group_of: HashMap<u32, usize>,
    skipped_spans: usize,
    skipped_markers: usize,
}

fn span_ok(s: &TaskSpan) -> bool {
    s.start.is_finite() && s.end.is_finite() && s.end >= s.start
}

fn marker_ok(m: &Marker) -> bool {
    m.at.is_finite() && m.end.is_none_or(|e| e.is_finite() && e >= m.at)
}

/// The worker a [`MarkerKind::WorkerLost`] marker is about.
fn lost_worker(m: &Marker) -> Option<u32> {
    m.from.or(m.to)
}

impl<'a> Layout<'a> {
    fn of(t: &'a Timeline) -> Layout<'a> {
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

    fn tasks(&self) -> usize {
        self.stages.iter().map(|s| s.tasks).sum()
    }

    fn threads(&self) -> usize {
        self.groups.iter().map(|g| g.threads).sum()
    }

    /// Busy seconds over thread-seconds of the wall time, or `None` without threads or time.
    fn fraction(busy: f64, threads: usize, wall: f64) -> Option<f64> {
        (threads > 0 && wall > 0.0).then(|| busy / (threads as f64 * wall))
    }

    /// Top of each lane, when lanes are `pitch` apart, groups another `gap` apart, and the first starts at
    /// `origin`; and the bottom of the last lane.
    fn lane_tops(&self, origin: f64, pitch: f64, gap: f64) -> (Vec<f64>, f64) {
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
    fn skipped_note(&self) -> Option<String> {
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
fn stage_rgb(k: usize) -> (u8, u8, u8) {
    if let Some(c) = PALETTE.get(k) {
        return (c.0, c.1, c.2);
    }
    let h = ((k - PALETTE.len()) as f64 * 137.508 + 15.0) % 360.0;
    hsl(h, 0.55, 0.52)
}

fn hsl(h: f64, s: f64, l: f64) -> (u8, u8, u8) {
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
fn ticks(t0: f64, t1: f64, target: usize) -> (Vec<f64>, usize) {
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
fn human_bytes(n: u64) -> String {
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

fn who(w: Option<u32>) -> String {
    w.map_or_else(|| "an unknown worker".to_owned(), |w| format!("worker {w}"))
}

/// One line describing a marker (not escaped).
fn marker_text(m: &Marker) -> String {
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
fn marker_legend(t: &Timeline, lay: &Layout<'_>) -> Vec<(MarkerKind, String)> {
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
fn summary_text(lay: &Layout<'_>) -> String {
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

fn stage_text(st: &Stage<'_>) -> String {
    format!("{}: {} tasks, {:.2} s busy", st.name, st.tasks, st.busy)
}

fn title_of(t: &Timeline) -> &str {
    if t.title.trim().is_empty() {
        "Task stream"
    } else {
        &t.title
    }
}

// ---------------------------------------------------------------------------------------------------------
// HTML.

/// `s` with `& < > " '` replaced by character references: safe in text and in quoted attributes.
fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out.into()
}

/// SVG geometry of the page, in user units (the SVG scales to the page width).
const SVG_W: f64 = 1400.0;
const SVG_X0: f64 = 175.0;
const SVG_X1: f64 = 1385.0;
const SVG_AXIS: f64 = 26.0;
const SVG_PITCH: f64 = 16.0;
const SVG_BAR: f64 = 12.0;
const SVG_GAP: f64 = 6.0;

const CSS: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px 20px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px}
p{margin:4px 0}
.warn{color:#a40}
.empty{font-size:16px;color:#555;margin:16px 0}
table.workers{border-collapse:collapse;margin:8px 0;font-size:13px}
table.workers th,table.workers td{padding:1px 10px 1px 0;text-align:right}
table.workers th:first-child,table.workers td:first-child{text-align:left}
.frac{display:inline-block;width:80px;height:8px;background:#e6e6e6;margin-right:6px;vertical-align:middle}
.frac span{display:block;height:8px;background:#4a7ab0}
ul.legend{list-style:none;padding:0;margin:6px 0;display:flex;flex-wrap:wrap;gap:4px 18px;font-size:13px}
ul.legend li{display:flex;align-items:center;gap:6px}
.sw{display:inline-block;width:14px;height:10px}
.gl{display:block}
svg.tl{display:block;max-width:100%;height:auto;font-size:11px;margin-top:6px}
svg.tl text{fill:#333}
.g0{fill:#f3f3f3}.g1{fill:#fafafa}
.ll{text-anchor:end;dominant-baseline:central}
.tk{text-anchor:middle;fill:#555}
.gr{stroke:#ddd;stroke-width:1}
.mt{stroke:#444;stroke-width:1;stroke-opacity:.7;marker-end:url(#arr)}
.ms{stroke:#222;stroke-width:1;stroke-dasharray:3 2}
.md{fill:#111;stroke:#fff;stroke-width:1}
.ml{stroke:#e00;stroke-width:2}
#tip{position:fixed;display:none;pointer-events:none;background:#fffff0;border:1px solid #999;padding:3px 6px;font-size:12px;max-width:480px;white-space:pre-wrap}
";

/// Instant tooltips: the hovered element's `<title>` (moved into `data-tip` so the browser's own tooltip does
/// not show as well), the stage of a bar and the lane it is on.
const SCRIPT: &str = "\
(function(){
var svg=document.getElementById('tl'),tip=document.getElementById('tip');
if(!svg||!tip)return;
var names={};
document.querySelectorAll('[data-stage]').forEach(function(e){names['s'+e.dataset.stage]=e.dataset.name;});
function tipOf(e){
if(e.dataset.tip==null){var t=e.querySelector(':scope>title');if(!t)return null;e.dataset.tip=t.textContent;t.remove();}
return e.dataset.tip;}
svg.addEventListener('mouseover',function(ev){
var e=ev.target,text=null;
while(e&&e!==svg&&(text=tipOf(e))==null)e=e.parentNode;
if(text==null){tip.style.display='none';return;}
var st=names[e.getAttribute('class')],lane=e.parentNode.dataset?e.parentNode.dataset.lane:null;
tip.textContent=(st!=null?st+'\\n':'')+text+(lane?'\\n'+lane:'');
tip.style.display='block';});
svg.addEventListener('mousemove',function(ev){tip.style.left=(ev.clientX+14)+'px';tip.style.top=(ev.clientY+14)+'px';});
svg.addEventListener('mouseleave',function(){tip.style.display='none';});
})();
";

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// The page [`write_timeline_html`] writes. Each bar is one `<rect class="sK" x w h><title>...</title></rect>`
/// (about 110 bytes with a task name of 20 characters), so 100,000 tasks make a page of about 11 MB.
pub fn timeline_html(t: &Timeline) -> String {
    let lay = Layout::of(t);
    let n_bars = lay.tasks();
    let mut h = String::with_capacity(16 * 1024 + n_bars * 112);
    let title = title_of(t);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(h, "<title>{} \u{2013} task stream</title>", esc(title));
    h.push_str("<style>\n");
    h.push_str(CSS);
    for k in 0..lay.stages.len() {
        let c = hex(stage_rgb(k));
        let _ = writeln!(h, ".s{k}{{fill:{c};background:{c}}}");
    }
    h.push_str("</style>\n</head>\n<body>\n");
    let _ = writeln!(h, "<h1>{}</h1>", esc(title));
    let _ = writeln!(h, "<p class=\"sum\">{}</p>", esc(&summary_text(&lay)));
    if let Some(note) = lay.skipped_note() {
        let _ = writeln!(h, "<p class=\"warn\">{}</p>", esc(&note));
    }
    if n_bars == 0 {
        h.push_str("<p class=\"empty\">No tasks were recorded: there were no tasks to draw.</p>\n");
    }
    html_workers(&mut h, &lay);
    html_legend(&mut h, t, &lay);
    if !lay.lanes.is_empty() {
        html_svg(&mut h, t, &lay);
        h.push_str("<div id=\"tip\"></div>\n<script>\n");
        h.push_str(SCRIPT);
        h.push_str("</script>\n");
    }
    h.push_str("</body>\n</html>\n");
    h
}

/// Per-worker table: threads, tasks, busy seconds and busy fraction of the wall time.
fn html_workers(h: &mut String, lay: &Layout<'_>) {
    if lay.groups.is_empty() {
        return;
    }
    h.push_str("<table class=\"workers\">\n<tr><th>worker</th><th>threads</th><th>tasks</th><th>busy</th><th>busy fraction</th></tr>\n");
    for g in &lay.groups {
        let frac = match Layout::fraction(g.busy, g.threads, lay.wall) {
            Some(f) => format!(
                "<span class=\"frac\"><span style=\"width:{:.1}%\"></span></span>{:.1}%",
                (f * 100.0).clamp(0.0, 100.0),
                f * 100.0
            ),
            None => "\u{2013}".to_owned(),
        };
        let _ = writeln!(
            h,
            "<tr><td>worker {}</td><td>{}</td><td>{}</td><td>{:.2} s</td><td>{frac}</td></tr>",
            g.worker, g.threads, g.tasks, g.busy
        );
    }
    h.push_str("</table>\n");
}

/// Stage legend (with `data-stage`/`data-name` for the tooltip script) and marker legend.
fn html_legend(h: &mut String, t: &Timeline, lay: &Layout<'_>) {
    if !lay.stages.is_empty() {
        h.push_str("<ul class=\"legend\" id=\"stages\">\n");
        for (k, st) in lay.stages.iter().enumerate() {
            let _ = writeln!(
                h,
                "<li data-stage=\"{k}\" data-name=\"{}\"><span class=\"sw s{k}\"></span>{}</li>",
                esc(st.name),
                esc(&stage_text(st))
            );
        }
        h.push_str("</ul>\n");
    }
    let marks = marker_legend(t, lay);
    if !marks.is_empty() {
        h.push_str("<ul class=\"legend\" id=\"markers\">\n");
        for (kind, text) in marks {
            let glyph = match kind {
                MarkerKind::Transfer => {
                    "<line class=\"mt\" x1=\"1\" y1=\"6\" x2=\"17\" y2=\"6\"/>".to_owned()
                }
                MarkerKind::Steal => format!("<path class=\"md\" d=\"{}\"/>", diamond(9.0, 6.0)),
                MarkerKind::Speculated => {
                    format!("<path class=\"md\" d=\"{}\"/>", triangle(9.0, 6.0))
                }
                MarkerKind::WorkerLost => {
                    "<line class=\"ml\" x1=\"9\" y1=\"0\" x2=\"9\" y2=\"12\"/>".to_owned()
                }
            };
            let _ = writeln!(
                h,
                "<li><svg class=\"gl\" width=\"22\" height=\"12\">{glyph}</svg>{}</li>",
                esc(&text)
            );
        }
        h.push_str("</ul>\n");
    }
}

fn diamond(x: f64, y: f64) -> String {
    format!("M{x:.1} {:.1}l5 5-5 5-5-5z", y - 5.0)
}

fn triangle(x: f64, y: f64) -> String {
    format!("M{x:.1} {:.1}l5 9h-10z", y - 5.0)
}

/// The lanes, bars, axes and markers.
fn html_svg(h: &mut String, t: &Timeline, lay: &Layout<'_>) {
    let (tops, bottom) = lay.lane_tops(SVG_AXIS + 4.0, SVG_PITCH, SVG_GAP);
    let height = bottom + 4.0 + SVG_AXIS;
    let x = |v: f64| SVG_X0 + (v - lay.t0) / (lay.t1 - lay.t0) * (SVG_X1 - SVG_X0);
    let _ = writeln!(
        h,
        "<svg id=\"tl\" class=\"tl\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{SVG_W}\" height=\"{height:.0}\" viewBox=\"0 0 {SVG_W} {height:.0}\">"
    );
    h.push_str("<defs><marker id=\"arr\" viewBox=\"0 0 6 6\" refX=\"6\" refY=\"3\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto\"><path d=\"M0 0L6 3L0 6z\" fill=\"#444\"/></marker></defs>\n");
    // Worker backgrounds and lane labels.
    for (gi, g) in lay.groups.iter().enumerate() {
        let y0 = tops[g.lanes.0] - 1.0;
        let y1 = tops[g.lanes.1 - 1] + SVG_PITCH + 1.0;
        let _ = writeln!(
            h,
            "<rect class=\"g{}\" x=\"0\" y=\"{y0:.1}\" width=\"{SVG_W}\" height=\"{:.1}\"/>",
            gi % 2,
            y1 - y0
        );
        let range = g.lanes.0..g.lanes.1;
        for (top, lane) in tops[range.clone()].iter().zip(&lay.lanes[range]) {
            let _ = writeln!(
                h,
                "<text class=\"ll\" x=\"{:.0}\" y=\"{:.1}\">{}</text>",
                SVG_X0 - 8.0,
                top + SVG_PITCH / 2.0,
                lane.label()
            );
        }
    }
    // Time axis: grid lines, tick labels above and below the lanes.
    let (marks, decimals) = ticks(lay.t0, lay.t1, 12);
    h.push_str("<g>\n");
    for v in &marks {
        let xv = x(*v);
        let _ = writeln!(
            h,
            "<line class=\"gr\" x1=\"{xv:.1}\" y1=\"{:.1}\" x2=\"{xv:.1}\" y2=\"{:.1}\"/><text class=\"tk\" x=\"{xv:.1}\" y=\"{:.1}\">{v:.decimals$}</text><text class=\"tk\" x=\"{xv:.1}\" y=\"{:.1}\">{v:.decimals$}</text>",
            SVG_AXIS,
            bottom + 4.0,
            SVG_AXIS - 8.0,
            bottom + 4.0 + 16.0,
        );
    }
    let _ = writeln!(
        h,
        "<text x=\"{:.0}\" y=\"{:.1}\" style=\"text-anchor:end\">seconds</text>",
        SVG_X0 - 8.0,
        SVG_AXIS - 8.0
    );
    h.push_str("</g>\n");
    // Bars, one group per lane, translated to the lane's bar top.
    for (lane, bars) in lay.bars.iter().enumerate() {
        if bars.is_empty() {
            continue;
        }
        let _ = writeln!(
            h,
            "<g data-lane=\"{}\" transform=\"translate(0 {:.1})\">",
            lay.lanes[lane].label(),
            tops[lane] + (SVG_PITCH - SVG_BAR) / 2.0
        );
        for &(i, k) in bars {
            let s = &t.spans[i];
            let x0 = x(s.start);
            let w = (x(s.end) - x0).max(0.4);
            let _ = writeln!(
                h,
                "<rect class=\"s{k}\" x=\"{x0:.1}\" width=\"{w:.1}\" height=\"{SVG_BAR}\"><title>{} {:.3}\u{2013}{:.3} s</title></rect>",
                esc(&s.task),
                s.start,
                s.end
            );
        }
        h.push_str("</g>\n");
    }
    // Markers, over the bars.
    let centre = |w: Option<u32>| {
        w.and_then(|w| lay.group_of.get(&w)).map(|&gi| {
            let g = &lay.groups[gi];
            (tops[g.lanes.0] + tops[g.lanes.1 - 1] + SVG_PITCH) / 2.0
        })
    };
    for &i in &lay.markers {
        let m = &t.markers[i];
        let xa = x(m.at);
        let text = esc(&marker_text(m)).into_owned();
        match m.kind {
            MarkerKind::Transfer => {
                let xb = x(m.end.unwrap_or(m.at)).max(xa + 1.0);
                let (ya, yb) = match (centre(m.from), centre(m.to)) {
                    (Some(a), Some(b)) if a != b => (a, b),
                    (Some(a), _) | (None, Some(a)) => (a - 6.0, a + 6.0),
                    (None, None) => (SVG_AXIS, SVG_AXIS + 12.0),
                };
                let _ = writeln!(
                    h,
                    "<line class=\"mt\" x1=\"{xa:.1}\" y1=\"{ya:.1}\" x2=\"{xb:.1}\" y2=\"{yb:.1}\"><title>{text}</title></line>"
                );
            }
            MarkerKind::Steal | MarkerKind::Speculated => {
                let at = centre(m.to).or(centre(m.from)).unwrap_or(SVG_AXIS + 6.0);
                h.push_str("<g>");
                if let (Some(a), Some(b)) = (centre(m.from), centre(m.to)) {
                    let _ = write!(
                        h,
                        "<line class=\"ms\" x1=\"{xa:.1}\" y1=\"{a:.1}\" x2=\"{xa:.1}\" y2=\"{b:.1}\"/>"
                    );
                }
                let d = if m.kind == MarkerKind::Steal {
                    diamond(xa, at)
                } else {
                    triangle(xa, at)
                };
                let _ = writeln!(h, "<path class=\"md\" d=\"{d}\"/><title>{text}</title></g>");
            }
            MarkerKind::WorkerLost => {
                let (y0, y1) = match lost_worker(m).and_then(|w| lay.group_of.get(&w)) {
                    Some(&gi) => {
                        let g = &lay.groups[gi];
                        (tops[g.lanes.0] - 1.0, tops[g.lanes.1 - 1] + SVG_PITCH + 1.0)
                    }
                    None => (SVG_AXIS, bottom),
                };
                let _ = writeln!(
                    h,
                    "<line class=\"ml\" x1=\"{xa:.1}\" y1=\"{y0:.1}\" x2=\"{xa:.1}\" y2=\"{y1:.1}\"><title>{text}</title></line>"
                );
            }
        }
    }
    h.push_str("</svg>\n");
}

// ---------------------------------------------------------------------------------------------------------
// PNG.

const PNG_MARGIN: f64 = 16.0;
const PNG_LABELS: f64 = 190.0;
const PNG_HEADER: f64 = 64.0;
const PNG_LEGEND_ROW: f64 = 20.0;
const PNG_AXIS: f64 = 20.0;
const PNG_PITCH: f64 = 14.0;
const PNG_GAP: f64 = 4.0;
const LEGEND_FONT: u32 = 13;

/// Where things go in the PNG, in pixels.
#[derive(Debug, Clone, PartialEq)]
struct PngFrame {
    height: u32,
    /// Top of the legend rows.
    legend_top: f64,
    /// Tops of the lanes, their pitch, and the bottom of the last lane.
    tops: Vec<f64>,
    pitch: f64,
    bottom: f64,
    /// The time axis: `t0..t1` onto columns `x0..x1`.
    t0: f64,
    t1: f64,
    x0: f64,
    x1: f64,
}

impl PngFrame {
    fn of(t: &Timeline, lay: &Layout<'_>) -> PngFrame {
        let legend_rows = legend_rows_of(legend_entries(t, lay)).len().max(1) as f64;
        let legend_top = PNG_HEADER;
        let lanes_top = legend_top + legend_rows * PNG_LEGEND_ROW + 4.0 + PNG_AXIS;
        let fixed = lanes_top + PNG_AXIS + PNG_MARGIN;
        let (_, natural) = lay.lane_tops(0.0, PNG_PITCH, PNG_GAP);
        let room = f64::from(TIMELINE_PNG_MAX_HEIGHT) - fixed;
        let scale = if natural > room { room / natural } else { 1.0 };
        let pitch = PNG_PITCH * scale;
        let (tops, bottom) = lay.lane_tops(lanes_top, pitch, PNG_GAP * scale);
        let height = if lay.lanes.is_empty() {
            lanes_top + 24.0
        } else {
            bottom + PNG_AXIS + PNG_MARGIN
        };
        PngFrame {
            height: (height.ceil() as u32).min(TIMELINE_PNG_MAX_HEIGHT),
            legend_top,
            tops,
            pitch,
            bottom,
            t0: lay.t0,
            t1: lay.t1,
            x0: PNG_MARGIN + PNG_LABELS,
            x1: f64::from(TIMELINE_PNG_WIDTH) - PNG_MARGIN - 1.0,
        }
    }

    fn x(&self, t: f64) -> f64 {
        self.x0 + (t - self.t0) / (self.t1 - self.t0) * (self.x1 - self.x0)
    }
}

/// One legend entry of the PNG.
#[derive(Debug, Clone, PartialEq)]
enum LegendKey {
    Stage(usize),
    Marker(MarkerKind),
}

/// Estimated width of `text` in the legend font (exact once the font is registered).
fn legend_text_width(text: &str) -> f64 {
    match (FAMILY, LEGEND_FONT as f64).into_font().box_size(text) {
        Ok((w, _)) => f64::from(w),
        Err(_) => text.chars().count() as f64 * 7.5,
    }
}

/// The PNG's legend entries: stages, then the markers present.
fn legend_entries(t: &Timeline, lay: &Layout<'_>) -> Vec<(LegendKey, String)> {
    let stages = lay
        .stages
        .iter()
        .enumerate()
        .map(|(k, st)| (LegendKey::Stage(k), stage_text(st)));
    let markers = marker_legend(t, lay)
        .into_iter()
        .map(|(k, s)| (LegendKey::Marker(k), s));
    stages.chain(markers).collect()
}

/// Legend entries laid out in rows that fit the width: (key, text, x) per entry, one list per row.
fn legend_rows_of(entries: Vec<(LegendKey, String)>) -> Vec<Vec<(LegendKey, String, f64)>> {
    let right = f64::from(TIMELINE_PNG_WIDTH) - PNG_MARGIN;
    let mut rows: Vec<Vec<(LegendKey, String, f64)>> = Vec::new();
    let mut x = PNG_MARGIN;
    for (key, text) in entries {
        let w = 20.0 + legend_text_width(&text);
        if rows.is_empty() || (x + w > right && x > PNG_MARGIN) {
            rows.push(Vec::new());
            x = PNG_MARGIN;
        }
        if let Some(row) = rows.last_mut() {
            row.push((key, text, x));
        }
        x += w + 22.0;
    }
    rows
}

fn rgb((r, g, b): (u8, u8, u8)) -> RGBColor {
    RGBColor(r, g, b)
}

const MARKER_LINE: RGBColor = RGBColor(68, 68, 68);
const MARKER_GLYPH: RGBColor = RGBColor(17, 17, 17);
const LOST: RGBColor = RGBColor(230, 0, 0);
const TEXT: RGBColor = RGBColor(34, 34, 34);
const TEXT_GREY: RGBColor = RGBColor(90, 90, 90);

fn text_style(size: u32, colour: &'static RGBColor, pos: Pos) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font())
        .color(colour)
        .pos(pos)
}

fn glyph(kind: MarkerKind, (x, y): (i32, i32), r: i32) -> Vec<(i32, i32)> {
    match kind {
        MarkerKind::Steal => vec![(x, y - r), (x + r, y), (x, y + r), (x - r, y)],
        _ => vec![(x, y - r), (x + r, y + r * 4 / 5), (x - r, y + r * 4 / 5)],
    }
}

/// A small arrow head at `to`, pointing away from `from`.
fn arrow_head(from: (i32, i32), to: (i32, i32)) -> Vec<(i32, i32)> {
    let (dx, dy) = (f64::from(to.0 - from.0), f64::from(to.1 - from.1));
    let len = dx.hypot(dy).max(1.0);
    let (ux, uy) = (dx / len, dy / len);
    let (bx, by) = (f64::from(to.0) - 7.0 * ux, f64::from(to.1) - 7.0 * uy);
    let side = |s: f64| {
        (
            (bx - 3.5 * s * uy).round() as i32,
            (by + 3.5 * s * ux).round() as i32,
        )
    };
    vec![to, side(1.0), side(-1.0)]
}

fn draw_png(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    t: &Timeline,
    lay: &Layout<'_>,
    f: &PngFrame,
) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<_>| x.to_string();
    let w = TIMELINE_PNG_WIDTH as i32;
    let px = |v: f64| v.round() as i32;
    let left_top = Pos::new(HPos::Left, VPos::Top);
    let title = TextStyle::from((FAMILY, 22).into_font().style(FontStyle::Bold))
        .color(&TEXT)
        .pos(left_top);
    root.draw(&Text::new(title_of(t), (PNG_MARGIN as i32, 12), title))
        .map_err(e)?;
    let mut summary = summary_text(lay);
    if let Some(note) = lay.skipped_note() {
        summary.push_str(" \u{b7} ");
        summary.push_str(&note);
    }
    root.draw(&Text::new(
        summary,
        (PNG_MARGIN as i32, 42),
        text_style(14, &TEXT_GREY, left_top),
    ))
    .map_err(e)?;
    // Legend: stages then markers, in rows.
    for (r, row) in legend_rows_of(legend_entries(t, lay)).iter().enumerate() {
        let y = px(f.legend_top + r as f64 * PNG_LEGEND_ROW + PNG_LEGEND_ROW / 2.0);
        for (key, text, x) in row {
            let x = px(*x);
            match key {
                LegendKey::Stage(k) => {
                    root.draw(&Rectangle::new(
                        [(x, y - 5), (x + 14, y + 5)],
                        rgb(stage_rgb(*k)).filled(),
                    ))
                    .map_err(e)?;
                }
                LegendKey::Marker(MarkerKind::Transfer) => {
                    root.draw(&PathElement::new(vec![(x, y), (x + 14, y)], MARKER_LINE))
                        .map_err(e)?;
                }
                LegendKey::Marker(MarkerKind::WorkerLost) => {
                    root.draw(&Rectangle::new(
                        [(x + 6, y - 6), (x + 7, y + 6)],
                        LOST.filled(),
                    ))
                    .map_err(e)?;
                }
                LegendKey::Marker(kind) => {
                    root.draw(&Polygon::new(glyph(*kind, (x + 7, y), 5), MARKER_GLYPH))
                        .map_err(e)?;
                }
            }
            root.draw(&Text::new(
                text.as_str(),
                (x + 20, y),
                text_style(LEGEND_FONT, &TEXT, Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(e)?;
        }
    }
    if lay.lanes.is_empty() {
        let y = px(f.tops.first().copied().unwrap_or(f.bottom)) - PNG_AXIS as i32;
        root.draw(&Text::new(
            "No tasks were recorded.",
            (PNG_MARGIN as i32, y.max(px(f.legend_top))),
            text_style(16, &TEXT_GREY, left_top),
        ))
        .map_err(e)?;
        return Ok(());
    }
    // Worker backgrounds, lane and group labels.
    let lane_labels = f.pitch >= 11.0;
    for (gi, g) in lay.groups.iter().enumerate() {
        let y0 = f.tops[g.lanes.0];
        let y1 = f.tops[g.lanes.1 - 1] + f.pitch;
        let shade = if gi % 2 == 0 {
            RGBColor(240, 240, 240)
        } else {
            RGBColor(249, 249, 249)
        };
        root.draw(&Rectangle::new(
            [(0, px(y0)), (w - 1, (px(y1) - 1).max(px(y0)))],
            shade.filled(),
        ))
        .map_err(e)?;
        let label_x = (f.x0 - 8.0) as i32;
        if lane_labels {
            for lane in g.lanes.0..g.lanes.1 {
                root.draw(&Text::new(
                    lay.lanes[lane].label(),
                    (label_x, px(f.tops[lane] + f.pitch / 2.0)),
                    text_style(11, &TEXT, Pos::new(HPos::Right, VPos::Center)),
                ))
                .map_err(e)?;
            }
        } else if y1 - y0 >= 11.0 {
            root.draw(&Text::new(
                format!("worker {}", g.worker),
                (label_x, px((y0 + y1) / 2.0)),
                text_style(11, &TEXT, Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(e)?;
        }
    }
    // Time axis.
    let (marks, decimals) = ticks(f.t0, f.t1, 12);
    let first_top = f.tops[0];
    for v in &marks {
        let xv = px(f.x(*v));
        root.draw(&PathElement::new(
            vec![(xv, px(first_top) - 3), (xv, px(f.bottom) + 3)],
            RGBColor(215, 215, 215),
        ))
        .map_err(e)?;
        let label = format!("{v:.decimals$}");
        root.draw(&Text::new(
            label.clone(),
            (xv, px(first_top) - 5),
            text_style(12, &TEXT_GREY, Pos::new(HPos::Center, VPos::Bottom)),
        ))
        .map_err(e)?;
        root.draw(&Text::new(
            label,
            (xv, px(f.bottom) + 5),
            text_style(12, &TEXT_GREY, Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(e)?;
    }
    root.draw(&Text::new(
        "seconds",
        ((f.x0 - 8.0) as i32, px(first_top) - 5),
        text_style(12, &TEXT_GREY, Pos::new(HPos::Right, VPos::Bottom)),
    ))
    .map_err(e)?;
    // Bars.
    let pad = (f.pitch * 0.15).min(2.0);
    for (lane, bars) in lay.bars.iter().enumerate() {
        let y0 = px(f.tops[lane] + pad);
        let y1 = (px(f.tops[lane] + f.pitch - pad) - 1).max(y0);
        for &(i, k) in bars {
            let s = &t.spans[i];
            let x0 = px(f.x(s.start));
            let x1 = (px(f.x(s.end)) - 1).max(x0);
            root.draw(&Rectangle::new(
                [(x0, y0), (x1, y1)],
                rgb(stage_rgb(k)).filled(),
            ))
            .map_err(e)?;
        }
    }
    // Markers.
    let centre = |w: Option<u32>| {
        w.and_then(|w| lay.group_of.get(&w)).map(|&gi| {
            let g = &lay.groups[gi];
            px((f.tops[g.lanes.0] + f.tops[g.lanes.1 - 1] + f.pitch) / 2.0)
        })
    };
    let axis_y = px(first_top);
    for &i in &lay.markers {
        let m = &t.markers[i];
        let xa = px(f.x(m.at));
        match m.kind {
            MarkerKind::Transfer => {
                let xb = px(f.x(m.end.unwrap_or(m.at))).max(xa + 1);
                let (ya, yb) = match (centre(m.from), centre(m.to)) {
                    (Some(a), Some(b)) if a != b => (a, b),
                    (Some(a), _) | (None, Some(a)) => (a - 5, a + 5),
                    (None, None) => (axis_y, axis_y + 10),
                };
                root.draw(&PathElement::new(vec![(xa, ya), (xb, yb)], MARKER_LINE))
                    .map_err(e)?;
                root.draw(&Polygon::new(arrow_head((xa, ya), (xb, yb)), MARKER_LINE))
                    .map_err(e)?;
            }
            MarkerKind::Steal | MarkerKind::Speculated => {
                let at = centre(m.to).or(centre(m.from)).unwrap_or(axis_y + 5);
                if let (Some(a), Some(b)) = (centre(m.from), centre(m.to)) {
                    root.draw(&PathElement::new(vec![(xa, a), (xa, b)], MARKER_LINE))
                        .map_err(e)?;
                }
                root.draw(&Polygon::new(glyph(m.kind, (xa, at), 6), WHITE))
                    .map_err(e)?;
                root.draw(&Polygon::new(glyph(m.kind, (xa, at), 5), MARKER_GLYPH))
                    .map_err(e)?;
            }
            MarkerKind::WorkerLost => {
                let (y0, y1) = match lost_worker(m).and_then(|w| lay.group_of.get(&w)) {
                    Some(&gi) => {
                        let g = &lay.groups[gi];
                        (
                            px(f.tops[g.lanes.0]),
                            px(f.tops[g.lanes.1 - 1] + f.pitch) - 1,
                        )
                    }
                    None => (axis_y, px(f.bottom)),
                };
                root.draw(&Rectangle::new([(xa - 1, y0), (xa + 1, y1)], LOST.filled()))
                    .map_err(e)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(worker: u32, thread: u32, stage: &str, task: &str, start: f64, end: f64) -> TaskSpan {
        TaskSpan {
            worker,
            thread,
            stage: stage.into(),
            task: task.into(),
            start,
            end,
        }
    }

    fn marker(kind: MarkerKind, from: Option<u32>, to: Option<u32>, at: f64) -> Marker {
        Marker {
            kind,
            from,
            to,
            at,
            end: None,
            bytes: None,
            note: String::new(),
        }
    }

    /// Two workers (0 with two threads, 2 with one), three stages, one of every marker kind, and a worker (5)
    /// that only appears in a marker.
    fn small() -> Timeline {
        Timeline {
            title: "run <script>& \"x\"".into(),
            spans: vec![
                span(2, 0, "merge", "merge 0", 2.0, 3.5),
                span(0, 0, "load", "load 0", 0.0, 1.5),
                span(0, 1, "load", "load 1", 0.25, 2.0),
                span(0, 0, "load", "load <2> & 'q'", 1.5, 2.5),
                span(2, 0, "a<b", "odd \"one\"", 4.0, 4.5),
                span(0, 1, "merge", "merge 1", 2.0, 4.0),
            ],
            markers: vec![
                Marker {
                    end: Some(2.0),
                    bytes: Some(80_000_000),
                    note: "piece <0,1>".into(),
                    ..marker(MarkerKind::Transfer, Some(0), Some(2), 1.6)
                },
                marker(MarkerKind::Steal, Some(0), Some(2), 1.9),
                marker(MarkerKind::Speculated, Some(2), Some(0), 3.3),
                Marker {
                    note: "heartbeat & lease lost".into(),
                    ..marker(MarkerKind::WorkerLost, Some(2), None, 4.6)
                },
                marker(MarkerKind::Transfer, Some(5), Some(0), 0.5),
            ],
        }
    }

    /// Checks that `html` nests its elements properly, quotes attributes evenly and uses only the character
    /// references the writer emits; returns how many elements of each name it opened.
    fn check_well_formed(html: &str) -> HashMap<String, usize> {
        const VOID: [&str; 2] = ["meta", "br"];
        let mut counts = HashMap::new();
        let mut stack: Vec<String> = Vec::new();
        let mut rest = html;
        let mut text = String::new();
        while let Some(lt) = rest.find('<') {
            text.push_str(&rest[..lt]);
            let gt = lt + rest[lt..].find('>').expect("unclosed tag");
            let tag = &rest[lt + 1..gt];
            rest = &rest[gt + 1..];
            if tag.starts_with('!') {
                continue;
            }
            assert_eq!(tag.matches('"').count() % 2, 0, "quotes in <{tag}>");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "closing </{name}>");
                continue;
            }
            let name: String = tag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(!name.is_empty(), "tag <{tag}>");
            *counts.entry(name.clone()).or_insert(0) += 1;
            if tag.ends_with('/') || VOID.contains(&name.as_str()) {
                continue;
            }
            if name == "script" || name == "style" {
                let end = rest.find(&format!("</{name}>")).expect("raw text closed");
                rest = &rest[end..];
            }
            stack.push(name);
        }
        text.push_str(rest);
        assert!(stack.is_empty(), "unclosed {stack:?}");
        for (i, _) in text.match_indices('&') {
            let r = &text[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                    .iter()
                    .any(|e| r.starts_with(e)),
                "bare & in {:?}",
                &r[..r.len().min(20)]
            );
        }
        counts
    }

    #[test]
    fn timeline_html_has_lanes_bars_legend_and_escaped_text() {
        let t = small();
        let html = timeline_html(&t);
        check_well_formed(&html);
        // Lanes, grouped and sorted by worker then thread.
        let labels = [
            "worker 0 / thread 0",
            "worker 0 / thread 1",
            "worker 2 / thread 0",
            "worker 5 / no tasks",
        ];
        let at: Vec<usize> = labels
            .iter()
            .map(|l| html.find(&format!(">{l}</text>")).expect(l))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
        // Title, task and stage names, notes: escaped, never raw.
        assert!(html.contains("<h1>run &lt;script&gt;&amp; &quot;x&quot;</h1>"));
        assert!(
            html.contains(
                "<title>run &lt;script&gt;&amp; &quot;x&quot; \u{2013} task stream</title>"
            )
        );
        assert!(!html.contains("<script>&"));
        assert!(html.contains("load &lt;2&gt; &amp; &#39;q&#39; 1.500\u{2013}2.500 s"));
        assert!(html.contains("odd &quot;one&quot;"));
        assert!(html.contains("data-name=\"a&lt;b\""));
        assert!(html.contains("piece &lt;0,1&gt;"));
        assert!(html.contains("heartbeat &amp; lease lost"));
        // One bar per span, and per stage as many bars as its tasks (stages in order of first start).
        assert_eq!(html.matches("<rect class=\"s").count(), t.spans.len());
        assert_eq!(html.matches("<rect class=\"s0\"").count(), 3);
        assert_eq!(html.matches("<rect class=\"s1\"").count(), 2);
        assert_eq!(html.matches("<rect class=\"s2\"").count(), 1);
        // Legend: count and busy seconds per stage.
        assert!(html.contains("load: 3 tasks, 4.25 s busy</li>"));
        assert!(html.contains("merge: 2 tasks, 3.50 s busy</li>"));
        assert!(html.contains("a&lt;b: 1 tasks, 0.50 s busy</li>"));
        assert!(html.contains("2 transfers, 80.0 MB</li>"));
        assert!(html.contains("1 steal</li>"));
        assert!(html.contains("1 speculative copy</li>"));
        assert!(html.contains("1 worker lost</li>"));
        // Header: wall time, tasks, busy fraction per worker (worker 0: 6.25 s of 2 x 4.6 s).
        assert!(
            html.contains("wall time 4.600 s \u{b7} 6 tasks \u{b7} 3 workers \u{b7} 3 threads")
        );
        assert!(html.contains("<tr><td>worker 0</td><td>2</td><td>4</td><td>6.25 s</td>"));
        assert!(html.contains("67.9%</td></tr>"));
        // Markers: a transfer arrow, the glyphs, the lost worker's red line.
        assert_eq!(html.matches("<line class=\"mt\" x1=").count(), 3);
        assert_eq!(html.matches("<line class=\"ml\" x1=").count(), 2);
        assert_eq!(html.matches("<path class=\"md\"").count(), 4);
        // Self-contained: nothing loaded from elsewhere.
        for needle in ["src=", "href=\"http", "@import", "url(http", "<link"] {
            assert!(!html.contains(needle), "{needle}");
        }
    }

    #[test]
    fn empty_timeline_page_says_there_were_no_tasks() {
        let html = timeline_html(&Timeline::default());
        let counts = check_well_formed(&html);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("No tasks were recorded"));
        assert!(html.contains("<h1>Task stream</h1>"));
        assert!(!counts.contains_key("svg"));
        assert!(!counts.contains_key("script"));
        // Markers alone still get their workers' lanes.
        let t = Timeline {
            markers: vec![marker(MarkerKind::WorkerLost, Some(3), None, 1.0)],
            ..Timeline::default()
        };
        let html = timeline_html(&t);
        check_well_formed(&html);
        assert!(html.contains("No tasks were recorded"));
        assert!(html.contains(">worker 3 / no tasks</text>"));
        assert!(html.contains("<line class=\"ml\""));
    }

    #[test]
    fn timeline_stages_are_ordered_by_first_start_and_bad_times_left_out() {
        let t = Timeline {
            spans: vec![
                span(0, 0, "late", "a", 5.0, 6.0),
                span(0, 0, "early", "b", 1.0, 2.0),
                span(0, 0, "late", "c", 0.5, 0.75),
                span(0, 0, "tie", "d", 1.0, 1.0),
                span(0, 0, "nan", "e", f64::NAN, 1.0),
                span(0, 1, "reversed", "f", 2.0, 1.0),
            ],
            markers: vec![
                marker(MarkerKind::Steal, Some(0), Some(1), f64::INFINITY),
                Marker {
                    end: Some(0.5),
                    ..marker(MarkerKind::Transfer, Some(0), Some(1), 1.0)
                },
            ],
            ..Timeline::default()
        };
        let lay = Layout::of(&t);
        let names: Vec<&str> = lay.stages.iter().map(|s| s.name).collect();
        assert_eq!(names, ["late", "early", "tie"]);
        assert_eq!((lay.skipped_spans, lay.skipped_markers), (2, 2));
        assert_eq!(
            lay.lanes.len(),
            1,
            "worker 1 only appears in dropped markers"
        );
        assert_eq!((lay.t0, lay.t1, lay.wall), (0.0, 6.0, 6.0));
        let html = timeline_html(&t);
        assert!(html.contains("2 spans and 2 markers with non-finite or reversed times left out."));
        assert_eq!(html.matches("<rect class=\"s").count(), 4);
        // The palette: the plot's ten colours, then distinct generated hues.
        assert_eq!(stage_rgb(1), (PALETTE[1].0, PALETTE[1].1, PALETTE[1].2));
        let more: BTreeSet<(u8, u8, u8)> = (0..40).map(stage_rgb).collect();
        assert_eq!(more.len(), 40);
    }

    #[test]
    fn timeline_ticks_are_round_seconds() {
        assert_eq!(
            ticks(0.0, 10.0, 10),
            (vec![0.0, 1., 2., 3., 4., 5., 6., 7., 8., 9., 10.], 0)
        );
        let (t, d) = ticks(-0.3, 1.0, 8);
        assert_eq!(
            (t.first().copied(), t.last().copied(), d),
            (Some(-0.2), Some(1.0), 1)
        );
        let (t, d) = ticks(0.0, 737.0, 12);
        assert_eq!((t[1], t.len(), d), (100.0, 8, 0));
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(80_000_000), "80.0 MB");
    }

    #[test]
    fn timeline_serde_is_camel_case() {
        let t = small();
        let json = serde_json::to_string(&t).expect("json");
        assert!(json.contains("\"kind\":\"workerLost\""));
        assert!(!json.contains("\"end\":null"));
        let back: Timeline = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, t);
        let m: Marker = serde_json::from_str("{\"kind\":\"steal\",\"at\":1.5}").expect("parse");
        assert_eq!(m, marker(MarkerKind::Steal, None, None, 1.5));
    }

    fn decode(path: &Path) -> image::RgbImage {
        image::open(path).expect("decode").to_rgb8()
    }

    #[test]
    fn timeline_png_has_lanes_and_bars_in_stage_colours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("timeline.png");
        let t = small();
        write_timeline_png(&path, &t).expect("write");
        let img = decode(&path);
        let lay = Layout::of(&t);
        let frame = PngFrame::of(&t, &lay);
        assert_eq!(img.width(), TIMELINE_PNG_WIDTH);
        assert_eq!(img.height(), frame.height);
        let first = *img.get_pixel(0, 0);
        assert!(img.pixels().any(|p| *p != first), "all one colour");
        // The middle of each span is its stage's colour.
        for s in &t.spans {
            let lane = lay
                .lanes
                .iter()
                .position(|l| {
                    *l == Lane {
                        worker: s.worker,
                        thread: Some(s.thread),
                    }
                })
                .expect("lane");
            let k = lay
                .stages
                .iter()
                .position(|st| st.name == s.stage)
                .expect("stage");
            let x = frame.x((s.start + s.end) / 2.0).round() as u32;
            let y = (frame.tops[lane] + frame.pitch / 2.0).round() as u32;
            let (r, g, b) = stage_rgb(k);
            assert_eq!(img.get_pixel(x, y).0, [r, g, b], "{}", s.task);
        }
    }

    #[test]
    fn timeline_png_of_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.png");
        write_timeline_png(&path, &Timeline::default()).expect("write");
        let img = decode(&path);
        assert_eq!(img.width(), TIMELINE_PNG_WIDTH);
        let first = *img.get_pixel(0, 0);
        assert!(img.pixels().any(|p| *p != first), "the header is drawn");
    }

    #[test]
    fn timeline_png_height_grows_with_lanes_up_to_a_cap() {
        let lanes = |workers: u32, threads: u32| Timeline {
            spans: (0..workers)
                .flat_map(|w| (0..threads).map(move |th| span(w, th, "load", "t", 0.0, 1.0)))
                .collect(),
            ..Timeline::default()
        };
        let height = |t: &Timeline| PngFrame::of(t, &Layout::of(t)).height;
        let (a, b) = (height(&lanes(2, 2)), height(&lanes(4, 2)));
        assert_eq!(b - a, 4 * PNG_PITCH as u32 + 2 * PNG_GAP as u32);
        let big = lanes(500, 8);
        assert_eq!(height(&big), TIMELINE_PNG_MAX_HEIGHT);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.png");
        write_timeline_png(&path, &big).expect("write");
        let img = decode(&path);
        assert_eq!(
            (img.width(), img.height()),
            (TIMELINE_PNG_WIDTH, TIMELINE_PNG_MAX_HEIGHT)
        );
    }

    #[test]
    fn timeline_files_are_replaced_through_a_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("timeline.html");
        std::fs::write(&path, "old").expect("write");
        write_timeline_html(&path, &small()).expect("write");
        write_timeline_png(&dir.path().join("timeline.png"), &small()).expect("write");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["timeline.html", "timeline.png"]);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            timeline_html(&small())
        );
        // The mode of any newly created file, not the temporary file's 0600.
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).expect("create");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
        // A missing directory is an error naming the file.
        let missing = dir.path().join("no/such/dir/t.html");
        let err = write_timeline_html(&missing, &small()).expect_err("missing dir");
        assert!(err.to_string().contains("t.html"), "{err}");
    }

    #[test]
    fn timeline_of_100000_spans_stays_small() {
        // 16 workers x 4 threads, 100,000 tasks of 20 to 80 ms in three stages, names like the task graph's.
        let mut spans = Vec::with_capacity(100_000);
        let mut clock = [0.0f64; 64];
        for i in 0..100_000usize {
            let lane = i % 64;
            let d = 0.02 + (i * 7919 % 61) as f64 * 0.001;
            let (stage, task) = match i % 10 {
                0..=5 => ("load", format!("load chunk {i}")),
                6..=8 => ("merge", format!("merge node 3 group {i}")),
                _ => (
                    "combine",
                    format!("combine node 4 out {} leaf {}", i % 97, i / 97),
                ),
            };
            spans.push(span(
                (lane / 4) as u32,
                (lane % 4) as u32,
                stage,
                &task,
                clock[lane],
                clock[lane] + d,
            ));
            clock[lane] += d + 0.001;
        }
        let markers = (0..1000u32)
            .map(|i| Marker {
                end: Some(f64::from(i) * 0.09 + 0.05),
                bytes: Some(8_000_000),
                note: format!("piece {i}"),
                ..marker(
                    MarkerKind::Transfer,
                    Some(i % 16),
                    Some((i + 5) % 16),
                    f64::from(i) * 0.09,
                )
            })
            .collect();
        let t = Timeline {
            title: "100,000 tasks".into(),
            spans,
            markers,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.html");
        write_timeline_html(&path, &t).expect("write");
        let size = std::fs::metadata(&path).expect("stat").len();
        println!("HTML of 100,000 spans: {size} bytes");
        assert!(size < 15_000_000, "{size} bytes");
        let html = std::fs::read_to_string(&path).expect("read");
        assert_eq!(html.matches("<rect class=\"s").count(), 100_000);
        let png = dir.path().join("big.png");
        write_timeline_png(&png, &t).expect("write");
        let img = decode(&png);
        assert_eq!(img.width(), TIMELINE_PNG_WIDTH);
        println!(
            "PNG of 100,000 spans: {}x{}, {} bytes",
            img.width(),
            img.height(),
            std::fs::metadata(&png).expect("stat").len()
        );
    }
}
