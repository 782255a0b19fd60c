//! Task-stream timelines of a run: which worker thread ran which task when, and what happened between workers
//! (transfers, steals, speculative copies, lost workers). Plain data in, one self-contained HTML page or one
//! PNG out; nothing here reads a clock or talks to a worker.
//!
//! Both renderings share one layout: one lane per `(worker, thread)`, lanes sorted and grouped by worker,
//! stages coloured in the order they first start (the plot palette, then generated hues), and a time axis
//! from `min(0, earliest time)` to the latest time. Spans and markers with non-finite times, or ending before
//! they start, are left out and counted in the header: a diagnostic file should not fail a run.

use std::io::Write as _;
use std::path::Path;

use plotters::prelude::*;

use self::html::timeline_html;
use self::layout::Layout;
use self::png::{PngFrame, draw_png};
use super::OutputError;
use super::plot::ensure_font;

mod html;
mod layout;
mod model;
mod png;

pub use self::model::{
    Marker, MarkerKind, TIMELINE_PNG_MAX_HEIGHT, TIMELINE_PNG_WIDTH, TaskSpan, Timeline,
};

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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::layout::{Lane, human_bytes, stage_rgb, ticks};
    use super::png::{PNG_GAP, PNG_PITCH};
    use super::*;
    use crate::output::plot::PALETTE;

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
