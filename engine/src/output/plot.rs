//! PNG line plots (plotters' bitmap backend, text in the embedded DejaVu Sans font).

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::OutputError;

/// Size of the rendered plot in pixels.
pub const PLOT_SIZE: (u32, u32) = (800, 500);

/// Font family name the plots use (registered from the embedded DejaVu Sans).
const FAMILY: &str = "sans-serif";

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
    /// Logarithmic y axis; values `<= 0` are clamped to the smallest positive value of all series.
    pub log_y: bool,
}

/// Registers the embedded font once per process.
fn ensure_font() -> Result<(), String> {
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
/// legend when there are several series. Non-finite values leave gaps in their line.
///
/// # Errors
/// When there is nothing to draw (no series, or no finite value), or drawing or writing the PNG fails.
pub fn write_plot_png(path: &Path, spec: &PlotSpec) -> Result<(), OutputError> {
    ensure_font().map_err(|e| OutputError::write(path, "load font", e))?;
    let n_max = spec.series.iter().map(|s| s.1.len()).max().unwrap_or(0);
    if n_max == 0 {
        return Err(OutputError::invalid(
            path,
            "spec",
            "no series with any value to plot",
        ));
    }
    // Values as drawn (log: clamped to the smallest positive value).
    let series: Vec<(&str, Vec<f64>)> = if spec.log_y {
        let min_pos = spec
            .series
            .iter()
            .flat_map(|s| s.1.iter())
            .filter(|v| v.is_finite() && **v > 0.0)
            .fold(f64::INFINITY, |a, &b| a.min(b));
        let floor = if min_pos.is_finite() { min_pos } else { 1.0 };
        spec.series
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str(),
                    v.iter()
                        .map(|&x| if x.is_nan() { x } else { x.max(floor) })
                        .collect(),
                )
            })
            .collect()
    } else {
        spec.series
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect()
    };
    let (lo, hi) = series
        .iter()
        .flat_map(|s| s.1.iter())
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return Err(OutputError::invalid(
            path,
            "spec",
            "no finite value to plot",
        ));
    }
    let x_range = 0f64..((n_max - 1).max(1)) as f64;
    let draw_err = |e: String| OutputError::write(path, "draw plot", e);
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
    if spec.log_y {
        let (a, b) = if hi > lo {
            (lo, hi)
        } else {
            (lo / 2.0, lo * 2.0)
        };
        let y = (a / 1.25..b * 1.25).log_scale();
        draw(&root, spec, &series, x_range, y).map_err(draw_err)?;
    } else {
        let pad = if hi > lo {
            (hi - lo) * 0.05
        } else {
            lo.abs().max(1.0) * 0.5
        };
        draw(&root, spec, &series, x_range, lo - pad..hi + pad).map_err(draw_err)?;
    }
    root.present()
        .map_err(|e| OutputError::write(path, "write PNG", e))
}

fn draw<Y>(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    spec: &PlotSpec,
    series: &[(&str, Vec<f64>)],
    x_range: Range<f64>,
    y_range: Y,
) -> Result<(), String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut chart = ChartBuilder::on(root)
        .caption(&spec.title, (FAMILY, 24).into_font().style(FontStyle::Bold))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range, y_range)
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
    for (k, (name, values)) in series.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        let style = ShapeStyle::from(&colour).stroke_width(2);
        // One line per run of finite values.
        let mut labelled = false;
        let mut i = 0;
        while i < values.len() {
            if !values[i].is_finite() {
                i += 1;
                continue;
            }
            let start = i;
            while i < values.len() && values[i].is_finite() {
                i += 1;
            }
            let points: Vec<(f64, f64)> = (start..i).map(|j| (j as f64, values[j])).collect();
            let ann = chart
                .draw_series(LineSeries::new(points, style))
                .map_err(|x| e(&x))?;
            if !labelled {
                labelled = true;
                ann.label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
        }
    }
    if series.len() > 1 {
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
