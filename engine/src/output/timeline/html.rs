//! The HTML rendering: one self-contained page with an inline SVG, inline CSS and instant tooltips.

use std::fmt::Write as _;

use super::layout::{
    Layout, lost_worker, marker_legend, marker_text, stage_rgb, stage_text, summary_text, ticks,
    title_of,
};
use super::model::{MarkerKind, Timeline};

/// `s` with `& < > " '` replaced by character references: safe in text and in quoted attributes.
pub(super) fn esc(s: &str) -> std::borrow::Cow<'_, str> {
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
pub(super) const SVG_W: f64 = 1400.0;
pub(super) const SVG_X0: f64 = 175.0;
pub(super) const SVG_X1: f64 = 1385.0;
pub(super) const SVG_AXIS: f64 = 26.0;
pub(super) const SVG_PITCH: f64 = 16.0;
pub(super) const SVG_BAR: f64 = 12.0;
pub(super) const SVG_GAP: f64 = 6.0;

pub(super) const CSS: &str = "\
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
pub(super) const SCRIPT: &str = "\
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

pub(super) fn hex((r, g, b): (u8, u8, u8)) -> String {
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
pub(super) fn html_workers(h: &mut String, lay: &Layout<'_>) {
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
pub(super) fn html_legend(h: &mut String, t: &Timeline, lay: &Layout<'_>) {
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

pub(super) fn diamond(x: f64, y: f64) -> String {
    format!("M{x:.1} {:.1}l5 5-5 5-5-5z", y - 5.0)
}

pub(super) fn triangle(x: f64, y: f64) -> String {
    format!("M{x:.1} {:.1}l5 9h-10z", y - 5.0)
}

/// The lanes, bars, axes and markers.
pub(super) fn html_svg(h: &mut String, t: &Timeline, lay: &Layout<'_>) {
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
