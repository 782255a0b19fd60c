//! PNG line plots (plotters' bitmap backend, text in the embedded DejaVu Sans font).

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use super::OutputError;

/// Size of the rendered plot in pixels.
pub const PLOT_SIZE: (u32, u32) = (800, 500);

/// Font family name the plots use (registered from the embedded DejaVu Sans).
pub(super) const FAMILY: &str = "sans-serif";

/// Line colours, in order of the series (matplotlib's `tab10`).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// What to draw: one line per series, x being the index `0..n` of each value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlotSpec {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// `(legend name, values)` per line; the legend is drawn when there are several series.
    pub series: Vec<(String, Vec<f64>)>,
    /// Logarithmic y axis; values `<= 0` are drawn at [`PlotFrame::clamped_to`], a floor below every positive
    /// value, and a note on the plot says so.
    pub log_y: bool,
}

/// Outer margin of the plot, pixels.
const MARGIN: i32 = 16;
/// Height of the band above the plotting area holding the title (and the log-floor note).
const TITLE_BAND: i32 = 40;
/// Width of the y tick labels and axis description, left of the plotting area.
const Y_LABEL_AREA: i32 = 80;
/// Height of the x tick labels and axis description, below the plotting area.
const X_LABEL_AREA: i32 = 48;

/// The plotting area (inside the axes) in pixels, ends included: `left..=right`, `top..=bottom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlotArea {
    /// First column.
    pub left: i32,
    /// First row.
    pub top: i32,
    /// Last column.
    pub right: i32,
    /// Last row.
    pub bottom: i32,
}

/// Where the axes are: fixed margins, so that pixel positions follow from the data alone.
pub const PLOT_AREA: PlotArea = PlotArea {
    left: MARGIN + Y_LABEL_AREA,
    top: MARGIN + TITLE_BAND,
    right: PLOT_SIZE.0 as i32 - MARGIN - 1,
    bottom: PLOT_SIZE.1 as i32 - MARGIN - X_LABEL_AREA - 1,
};

/// The axes of a plot: their data ranges, and the mapping of data coordinates to pixels that both the drawing
/// code and tests use.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotFrame {
    /// Data range of the x axis (the value index).
    pub x: Range<f64>,
    /// Data range of the y axis, padding included.
    pub y: Range<f64>,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// On a log axis with values `<= 0`: the value they are drawn at, a power of ten at least ten times
    /// below the smallest positive value.
    pub clamped_to: Option<f64>,
}

impl PlotFrame {
    /// The axes for `spec`, or `None` when it has no finite value to draw.
    pub fn of(spec: &PlotSpec) -> Option<PlotFrame> {
        let n_max = spec.series.iter().map(|s| s.1.len()).max()?;
        let finite = || {
            spec.series
                .iter()
                .flat_map(|s| s.1.iter().copied())
                .filter(|v| v.is_finite())
        };
        let x = 0.0..((n_max.max(1) - 1).max(1)) as f64;
        if !spec.log_y {
            let (lo, hi) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
            if !lo.is_finite() {
                return None;
            }
            let pad = if hi > lo {
                (hi - lo) * 0.05
            } else {
                lo.abs().max(1.0) * 0.5
            };
            return Some(PlotFrame {
                x,
                y: lo - pad..hi + pad,
                log_y: false,
                clamped_to: None,
            });
        }
        let non_positive = spec
            .series
            .iter()
            .flat_map(|s| s.1.iter())
            .any(|v| *v <= 0.0);
        let (min_pos, hi) = finite()
            .filter(|v| *v > 0.0)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if !min_pos.is_finite() && !non_positive {
            return None;
        }
        // Only non-positive values: draw them at 1 on a 0.1..10 axis.
        let (min_pos, hi) = if min_pos.is_finite() {
            (min_pos, hi)
        } else {
            (10.0, 10.0)
        };
        let clamped_to = non_positive.then(|| 10f64.powf(min_pos.log10().floor() - 1.0));
        let lo = clamped_to.unwrap_or(min_pos);
        let (a, b) = if hi > lo {
            (lo, hi)
        } else {
            (lo / 2.0, lo * 2.0)
        };
        Some(PlotFrame {
            x,
            y: a / 1.25..b * 1.25,
            log_y: true,
            clamped_to,
        })
    }

    /// The value drawn for `v`: itself, or the log floor for values `<= 0` (NaN and infinities stay gaps).
    fn drawn(&self, v: f64) -> f64 {
        match self.clamped_to {
            Some(floor) if v <= 0.0 => floor,
            _ => v,
        }
    }

    /// Pixel (column, row) of the data point `(x, y)`, as plotters maps it onto [`PLOT_AREA`].
    pub fn pixel(&self, x: f64, y: f64) -> (i32, i32) {
        let a = PLOT_AREA;
        let col = map_linear(x, &self.x, (a.left, a.right));
        let row = if self.log_y {
            map_linear(
                y.ln(),
                &(self.y.start.ln()..self.y.end.ln()),
                (a.bottom, a.top),
            )
        } else {
            map_linear(y, &self.y, (a.bottom, a.top))
        };
        (col, row)
    }
}

/// plotters' linear mapping of `v` in `range` onto the pixel span `from..=to` (rounding included).
fn map_linear(v: f64, range: &Range<f64>, (from, to): (i32, i32)) -> i32 {
    if range.end == range.start {
        return (to - from) / 2;
    }
    let t = (v - range.start) / (range.end - range.start);
    let len = f64::from(to - from);
    if to > from {
        from + (len * t + 1e-3).floor() as i32
    } else {
        from + (len * t - 1e-3).ceil() as i32
    }
}

/// Registers the embedded font once per process.
pub(super) fn ensure_font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular())
            .and_then(|_| register_font(FAMILY, FontStyle::Bold, dejavu::sans::bold()))
            .map_err(|_| "the embedded DejaVu Sans font could not be loaded".to_string())
    })
    .clone()
}

/// Tick label: plain for moderate magnitudes, scientific otherwise; trailing zeros trimmed.
fn tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.1e}");
        s.replace(".0e", "e")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Writes a line chart of `spec` as an 800x500 PNG: white background, light grid, axis labels, title, and a
/// legend when there are several series. Non-finite values leave gaps in their line. On a log axis, values
/// `<= 0` are drawn at the axis floor and a note at the top right says at which value.
///
/// # Errors
/// When there is nothing to draw (no series, or no finite value), or drawing or writing the PNG fails.
pub fn write_plot_png(path: &Path, spec: &PlotSpec) -> Result<(), OutputError> {
    ensure_font().map_err(|e| OutputError::write(path, "load font", e))?;
    if spec.series.iter().all(|s| s.1.is_empty()) {
        return Err(OutputError::invalid(
            path,
            "spec",
            "no series with any value to plot",
        ));
    }
    let Some(frame) = PlotFrame::of(spec) else {
        return Err(OutputError::invalid(
            path,
            "spec",
            "no finite value to plot",
        ));
    };
    let draw_err = |e: String| OutputError::write(path, "draw plot", e);
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
    if frame.log_y {
        draw(&root, spec, &frame, frame.y.clone().log_scale()).map_err(draw_err)?;
    } else {
        draw(&root, spec, &frame, frame.y.clone()).map_err(draw_err)?;
    }
    root.present()
        .map_err(|e| OutputError::write(path, "write PNG", e))
}

/// The chart's layout: its plotting area is [`PLOT_AREA`] (the margins and label areas add up to its bounds).
fn layout<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(root);
    b.margin(MARGIN)
        .margin_top(MARGIN + TITLE_BAND)
        .x_label_area_size(X_LABEL_AREA)
        .y_label_area_size(Y_LABEL_AREA);
    b
}

fn draw<Y>(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    spec: &PlotSpec,
    frame: &PlotFrame,
    y_range: Y,
) -> Result<(), String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let title = TextStyle::from((FAMILY, 24).into_font().style(FontStyle::Bold))
        .pos(Pos::new(HPos::Center, VPos::Top));
    root.draw(&Text::new(
        spec.title.as_str(),
        (PLOT_SIZE.0 as i32 / 2, MARGIN),
        title,
    ))
    .map_err(|x| e(&x))?;
    if let Some(floor) = frame.clamped_to {
        let note = format!("values \u{2264} 0 drawn at {}", tick(floor));
        root.draw(&Text::new(
            note,
            (PLOT_AREA.right, MARGIN + TITLE_BAND - 4),
            TextStyle::from((FAMILY, 13).into_font())
                .color(&RGBColor(90, 90, 90))
                .pos(Pos::new(HPos::Right, VPos::Bottom)),
        ))
        .map_err(|x| e(&x))?;
    }
    let mut chart = layout(root)
        .build_cartesian_2d(frame.x.clone(), y_range)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(&spec.x_label)
        .y_desc(&spec.y_label)
        .axis_desc_style((FAMILY, 16))
        .label_style((FAMILY, 13))
        .light_line_style(RGBColor(246, 246, 246))
        .bold_line_style(RGBColor(215, 215, 215))
        .axis_style(RGBColor(90, 90, 90))
        .x_labels(10)
        .y_labels(8)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()
        .map_err(|x| e(&x))?;
    for (k, (name, values)) in spec.series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let style = ShapeStyle::from(&colour).stroke_width(2);
        let drawn: Vec<f64> = values.iter().map(|&v| frame.drawn(v)).collect();
        // One line per run of finite values, through the pixels of PlotFrame::pixel.
        let mut i = 0;
        while i < drawn.len() {
            if !drawn[i].is_finite() {
                i += 1;
                continue;
            }
            let start = i;
            while i < drawn.len() && drawn[i].is_finite() {
                i += 1;
            }
            let pixels: Vec<(i32, i32)> = (start..i)
                .map(|j| frame.pixel(j as f64, drawn[j]))
                .collect();
            root.draw(&PathElement::new(pixels, style))
                .map_err(|x| e(&x))?;
        }
        // The legend entry, from an empty series of the chart.
        chart
            .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
            .map_err(|x| e(&x))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    if spec.series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font((FAMILY, 14))
            .draw()
            .map_err(|x| e(&x))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PlotFrame::pixel` and the plotting area agree with plotters' own mapping (the mesh and tick labels).
    #[test]
    fn frame_pixels_match_plotters() {
        let mut buf = vec![0u8; (PLOT_SIZE.0 * PLOT_SIZE.1 * 3) as usize];
        let root = BitMapBackend::with_buffer(&mut buf, PLOT_SIZE).into_drawing_area();
        let spec = |log_y, v: Vec<f64>| PlotSpec {
            series: vec![("a".into(), v)],
            log_y,
            ..PlotSpec::default()
        };
        let lin = PlotFrame::of(&spec(false, vec![-3.0, 7.5, 2.0, 40.0, 0.25])).expect("frame");
        let chart = layout(&root)
            .build_cartesian_2d(lin.x.clone(), lin.y.clone())
            .expect("chart");
        let (xs, ys) = chart.plotting_area().get_pixel_range();
        assert_eq!(
            (xs.start, ys.start, xs.end - 1, ys.end - 1),
            (
                PLOT_AREA.left,
                PLOT_AREA.top,
                PLOT_AREA.right,
                PLOT_AREA.bottom
            )
        );
        for p in [
            (0.0, -3.0),
            (1.0, 7.5),
            (2.5, 0.1),
            (4.0, 40.0),
            (3.0, 12.345),
        ] {
            assert_eq!(lin.pixel(p.0, p.1), chart.backend_coord(&p), "{p:?}");
        }
        let log = PlotFrame::of(&spec(true, vec![3.0, 0.0, 2e4, 17.0])).expect("frame");
        assert_eq!(log.clamped_to, Some(0.1));
        let chart = layout(&root)
            .build_cartesian_2d(log.x.clone(), log.y.clone().log_scale())
            .expect("chart");
        for p in [
            (0.0, 3.0),
            (1.0, 0.1),
            (2.0, 2e4),
            (3.0, 17.0),
            (1.5, 555.0),
        ] {
            assert_eq!(log.pixel(p.0, p.1), chart.backend_coord(&p), "{p:?}");
        }
    }

    #[test]
    fn log_floor_is_a_power_of_ten_below_the_smallest_positive_value() {
        let frame = |v: Vec<f64>| {
            PlotFrame::of(&PlotSpec {
                series: vec![("a".into(), v)],
                log_y: true,
                ..PlotSpec::default()
            })
        };
        let f = frame(vec![0.37, 0.0, 50.0]).expect("frame");
        assert_eq!(f.clamped_to, Some(0.01));
        assert_eq!(f.y, 0.01 / 1.25..50.0 * 1.25);
        assert_eq!(f.drawn(-2.0), 0.01);
        assert!(f.drawn(f64::NAN).is_nan());
        let f = frame(vec![10.0, f64::NEG_INFINITY]).expect("frame");
        assert_eq!(f.clamped_to, Some(1.0));
        assert_eq!(frame(vec![2.0, 8.0]).expect("frame").clamped_to, None);
        assert_eq!(frame(vec![0.0]).expect("frame").clamped_to, Some(1.0));
        assert_eq!(frame(vec![f64::NAN]), None);
    }
}
