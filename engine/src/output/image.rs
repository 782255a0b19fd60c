//! Greyscale PNG images of 2-D results.

use std::path::Path;

use image::{ExtendedColorType, ImageFormat};
use ndarray::ArrayView2;

use super::OutputError;

/// Grey level of `v` between `lo` (black) and `hi` (white), as matplotlib's `imshow` maps a value through a
/// 256-level grey colormap: `min(floor((v - lo) / (hi - lo) * 256), 255)`. NaN is black.
pub(crate) fn grey(v: f64, lo: f64, hi: f64) -> u8 {
    if v.is_nan() || hi <= lo {
        return 0;
    }
    let t = (v - lo) / (hi - lo) * 256.0;
    t.clamp(0.0, 255.0) as u8
}

/// The minimum and maximum of the finite values (`(inf, -inf)` when there are none): the scale of an image.
pub(crate) fn finite_range<'a>(values: impl Iterator<Item = &'a f64>) -> (f64, f64) {
    values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Writes `data` (rows x columns) as an 8-bit greyscale PNG, auto-scaled like matplotlib's `imshow`: the minimum
/// is black (0), the maximum white (255), levels in between are `floor(t * 256)` clamped to 255 for the
/// normalised value `t`. A constant image is all black; NaN pixels are black; the scale is taken from the finite
/// values (+inf is white, -inf black).
///
/// # Errors
/// When `data` is empty (a PNG needs at least one pixel) or the file cannot be written.
pub fn write_image_png(path: &Path, data: ArrayView2<f64>) -> Result<(), OutputError> {
    let (h, w) = data.dim();
    if h == 0 || w == 0 {
        return Err(OutputError::invalid(
            path,
            "data",
            format!("cannot make a PNG of a {h}x{w} array"),
        ));
    }
    let (w32, h32) = match (u32::try_from(w), u32::try_from(h)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => {
            return Err(OutputError::invalid(
                path,
                "data",
                format!("{h}x{w} is too large for a PNG"),
            ));
        }
    };
    let (lo, hi) = finite_range(data.iter());
    let pixels: Vec<u8> = data.iter().map(|&v| grey(v, lo, hi)).collect();
    image::save_buffer_with_format(
        path,
        &pixels,
        w32,
        h32,
        ExtendedColorType::L8,
        ImageFormat::Png,
    )
    .map_err(|e| OutputError::write(path, "write PNG", e))
}
