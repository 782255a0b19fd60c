//! Montages: the 2-D slices of a 3-D result side by side in one greyscale PNG, each under its index.
//!
//! Geometry (all black between tiles): tile `k` sits in column `k % columns` and row `k / columns` of a grid
//! of cells; a cell is a label band of [`Layout::band`] rows above the tile. Cells are [`GAP`] pixels apart.
//! The label is drawn in white with a 5 x 7 pixel digit font magnified [`Layout::scale`] times, starting
//! `scale` pixels from the band's top-left corner, digits `6 * scale` pixels apart.

use std::path::Path;

use image::{ExtendedColorType, ImageFormat};
use ndarray::ArrayView3;

use super::OutputError;
use super::image::{finite_range, grey};

/// Pixels between cells.
pub const GAP: usize = 4;

/// Rows of the digits 0-9, top to bottom; bit 4 is the leftmost column.
pub const DIGITS: [[u8; 7]; 10] = [
    [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
    [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
    [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
    [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
    [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
    [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
    [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
    [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
];

/// Where everything goes in a montage of `tiles` slices of `h` x `w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Rows of one slice.
    pub h: usize,
    /// Columns of one slice.
    pub w: usize,
    /// Tiles per row.
    pub columns: usize,
    /// Rows of tiles.
    pub rows: usize,
    /// Magnification of the digit font: a hundredth of the tile's smaller side, at least 1.
    pub scale: usize,
    /// Rows of the label band above each tile: `9 * scale`.
    pub band: usize,
}

impl Layout {
    /// The layout of `tiles` slices of `h` x `w` in rows of `columns` (at least 1, at most `tiles`).
    pub fn new(tiles: usize, h: usize, w: usize, columns: usize) -> Layout {
        let columns = columns.clamp(1, tiles.max(1));
        let scale = (h.min(w) / 100).max(1);
        Layout {
            h,
            w,
            columns,
            rows: tiles.div_ceil(columns),
            scale,
            band: 9 * scale,
        }
    }

    /// Width and height of the whole image.
    pub fn size(&self) -> (usize, usize) {
        (
            self.columns * self.w + (self.columns - 1) * GAP,
            self.rows * (self.band + self.h) + (self.rows.max(1) - 1) * GAP,
        )
    }

    /// Top-left pixel `(x, y)` of the cell of tile `k` (its label band; the tile starts `band` rows lower).
    pub fn cell(&self, k: usize) -> (usize, usize) {
        let (r, c) = (k / self.columns, k % self.columns);
        (c * (self.w + GAP), r * (self.band + self.h + GAP))
    }
}

/// Writes the slices of `data` (slices x rows x columns) as a montage in rows of `columns` tiles, labelled with
/// `labels` (one per slice), all scaled together like [`super::image::write_image_png`] scales one image.
///
/// # Errors
/// When `data` is empty, `labels` has another length than the slices, the image is too large for a PNG, or the
/// file cannot be written.
pub fn write_montage_png(
    path: &Path,
    data: ArrayView3<f64>,
    labels: &[usize],
    columns: usize,
) -> Result<(), OutputError> {
    let (n, h, w) = data.dim();
    if n == 0 || h == 0 || w == 0 || labels.len() != n {
        return Err(OutputError::invalid(
            path,
            "data",
            format!(
                "cannot make a montage of a {n}x{h}x{w} array with {} labels",
                labels.len()
            ),
        ));
    }
    let layout = Layout::new(n, h, w, columns);
    let (width, height) = layout.size();
    let (Ok(w32), Ok(h32)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(OutputError::invalid(
            path,
            "data",
            format!("{width}x{height} is too large for a PNG"),
        ));
    };
    let (lo, hi) = finite_range(data.iter());
    let mut pixels = vec![0u8; width * height];
    for (k, slice) in data.outer_iter().enumerate() {
        let (x0, y0) = layout.cell(k);
        for (r, row) in slice.outer_iter().enumerate() {
            let at = (y0 + layout.band + r) * width + x0;
            for (dst, &v) in pixels[at..at + w].iter_mut().zip(row.iter()) {
                *dst = grey(v, lo, hi);
            }
        }
        draw_label(&mut pixels, width, &layout, (x0, y0), labels[k]);
    }
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

/// Draws `label` in white into the band of the cell at `(x0, y0)`, clipped to the tile's width.
fn draw_label(pixels: &mut [u8], width: usize, l: &Layout, (x0, y0): (usize, usize), label: usize) {
    let s = l.scale;
    for (d, ch) in label.to_string().bytes().enumerate() {
        let glyph = &DIGITS[usize::from(ch - b'0')];
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in (0..5).filter(|gx| bits & (0x10 >> gx) != 0) {
                for (dy, dx) in (0..s).flat_map(|dy| (0..s).map(move |dx| (dy, dx))) {
                    let x = s + d * 6 * s + gx * s + dx;
                    if x < l.w {
                        pixels[(y0 + s + gy * s + dy) * width + x0 + x] = 255;
                    }
                }
            }
        }
    }
}
