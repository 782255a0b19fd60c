//! The PNG rendering, drawn with plotters in the embedded DejaVu Sans font.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::layout::{
    Layout, lost_worker, marker_legend, stage_rgb, stage_text, summary_text, ticks, title_of,
};
use super::model::{MarkerKind, TIMELINE_PNG_MAX_HEIGHT, TIMELINE_PNG_WIDTH, Timeline};
use crate::output::plot::FAMILY;

pub(super) const PNG_MARGIN: f64 = 16.0;
pub(super) const PNG_LABELS: f64 = 190.0;
pub(super) const PNG_HEADER: f64 = 64.0;
pub(super) const PNG_LEGEND_ROW: f64 = 20.0;
pub(super) const PNG_AXIS: f64 = 20.0;
pub(super) const PNG_PITCH: f64 = 14.0;
pub(super) const PNG_GAP: f64 = 4.0;
pub(super) const LEGEND_FONT: u32 = 13;

/// Where things go in the PNG, in pixels.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PngFrame {
    pub(super) height: u32,
    /// Top of the legend rows.
    pub(super) legend_top: f64,
    /// Tops of the lanes, their pitch, and the bottom of the last lane.
    pub(super) tops: Vec<f64>,
    pub(super) pitch: f64,
    pub(super) bottom: f64,
    /// The time axis: `t0..t1` onto columns `x0..x1`.
    pub(super) t0: f64,
    pub(super) t1: f64,
    pub(super) x0: f64,
    pub(super) x1: f64,
}

impl PngFrame {
    pub(super) fn of(t: &Timeline, lay: &Layout<'_>) -> PngFrame {
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

    pub(super) fn x(&self, t: f64) -> f64 {
        self.x0 + (t - self.t0) / (self.t1 - self.t0) * (self.x1 - self.x0)
    }
}

/// One legend entry of the PNG.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum LegendKey {
    Stage(usize),
    Marker(MarkerKind),
}

/// Estimated width of `text` in the legend font (exact once the font is registered).
pub(super) fn legend_text_width(text: &str) -> f64 {
    match (FAMILY, LEGEND_FONT as f64).into_font().box_size(text) {
        Ok((w, _)) => f64::from(w),
        Err(_) => text.chars().count() as f64 * 7.5,
    }
}

/// The PNG's legend entries: stages, then the markers present.
pub(super) fn legend_entries(t: &Timeline, lay: &Layout<'_>) -> Vec<(LegendKey, String)> {
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
pub(super) fn legend_rows_of(
    entries: Vec<(LegendKey, String)>,
) -> Vec<Vec<(LegendKey, String, f64)>> {
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

pub(super) fn rgb((r, g, b): (u8, u8, u8)) -> RGBColor {
    RGBColor(r, g, b)
}

pub(super) const MARKER_LINE: RGBColor = RGBColor(68, 68, 68);
pub(super) const MARKER_GLYPH: RGBColor = RGBColor(17, 17, 17);
pub(super) const LOST: RGBColor = RGBColor(230, 0, 0);
pub(super) const TEXT: RGBColor = RGBColor(34, 34, 34);
pub(super) const TEXT_GREY: RGBColor = RGBColor(90, 90, 90);

pub(super) fn text_style(size: u32, colour: &'static RGBColor, pos: Pos) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font())
        .color(colour)
        .pos(pos)
}

pub(super) fn glyph(kind: MarkerKind, (x, y): (i32, i32), r: i32) -> Vec<(i32, i32)> {
    match kind {
        MarkerKind::Steal => vec![(x, y - r), (x + r, y), (x, y + r), (x - r, y)],
        _ => vec![(x, y - r), (x + r, y + r * 4 / 5), (x - r, y + r * 4 / 5)],
    }
}

/// A small arrow head at `to`, pointing away from `from`.
pub(super) fn arrow_head(from: (i32, i32), to: (i32, i32)) -> Vec<(i32, i32)> {
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

pub(super) fn draw_png(
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
