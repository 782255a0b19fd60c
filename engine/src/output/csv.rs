//! CSV files of 1-D and 2-D results.

use std::io::Write;
use std::path::Path;

use ndarray::{ArrayViewD, Axis};

use super::OutputError;

/// Writes a 1-D result as `index,value` lines or a 2-D result as one line per row (values separated by
/// commas), after a header line of `header` joined by commas (no header line when `header` is empty).
///
/// Values use Rust's shortest round-trip formatting of f64 (`0.1`, `3.0`, `1e300`, `-3.5e-7`, `NaN`, `inf`), so
/// parsing the text (e.g. with Python's `float`) gives back exactly the same numbers.
///
/// # Errors
/// When `data` is not 1-D or 2-D, or the file cannot be written.
pub fn write_csv(path: &Path, data: ArrayViewD<f64>, header: &[&str]) -> Result<(), OutputError> {
    let ndim = data.ndim();
    if ndim != 1 && ndim != 2 {
        return Err(OutputError::invalid(
            path,
            "data",
            format!("CSV needs a 1-d or 2-d array, got {ndim}-d"),
        ));
    }
    let file = std::fs::File::create(path).map_err(|e| OutputError::io(path, "create", e))?;
    let mut out = std::io::BufWriter::new(file);
    let mut text = String::new();
    let io = |e| OutputError::io(path, "write", e);
    if !header.is_empty() {
        text.push_str(&header.join(","));
        text.push('\n');
    }
    if ndim == 1 {
        for (i, v) in data.iter().enumerate() {
            text.push_str(&format!("{i},{v:?}\n"));
            if text.len() > 1 << 16 {
                out.write_all(text.as_bytes()).map_err(io)?;
                text.clear();
            }
        }
    } else {
        for row in data.axis_iter(Axis(0)) {
            let mut first = true;
            for v in row.iter() {
                if !first {
                    text.push(',');
                }
                first = false;
                text.push_str(&format!("{v:?}"));
            }
            text.push('\n');
            if text.len() > 1 << 16 {
                out.write_all(text.as_bytes()).map_err(io)?;
                text.clear();
            }
        }
    }
    out.write_all(text.as_bytes()).map_err(io)?;
    out.flush().map_err(io)
}
