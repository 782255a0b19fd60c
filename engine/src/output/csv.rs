//! CSV files of 0-D, 1-D and 2-D results.

use std::io::Write;
use std::path::Path;

use ndarray::{ArrayViewD, Axis};

use super::OutputError;

/// Writes a result as CSV with a header line that names every column:
///
/// - 0-D: `value`, then one line with the value;
/// - 1-D: `index,value`, then one `i,v` line per element;
/// - 2-D: `row,c0,c1,...,c{W-1}`, then one line per row: its index, then its `W` values.
///
/// Values use Rust's shortest round-trip formatting of f64 (`0.1`, `3.0`, `1e300`, `-3.5e-7`, `NaN`, `inf`), so
/// parsing the text (e.g. with Python's `float`) gives back exactly the same numbers.
///
/// # Errors
/// When `data` has more than 2 dimensions, or the file cannot be written.
pub fn write_csv(path: &Path, data: ArrayViewD<f64>) -> Result<(), OutputError> {
    let ndim = data.ndim();
    if ndim > 2 {
        return Err(OutputError::invalid(
            path,
            "data",
            format!("CSV needs a 0-d, 1-d or 2-d array, got {ndim}-d"),
        ));
    }
    let file = std::fs::File::create(path).map_err(|e| OutputError::io(path, "create", e))?;
    let mut out = std::io::BufWriter::new(file);
    let io = |e| OutputError::io(path, "write", e);
    let mut text = header(&data);
    // One line per element (0-D, 1-D) or per row (2-D), each starting with its index.
    let rows: Vec<ArrayViewD<f64>> = match ndim {
        0 => vec![data.view()],
        _ => data.axis_iter(Axis(0)).collect(),
    };
    for (i, row) in rows.iter().enumerate() {
        if ndim > 0 {
            text.push_str(&format!("{i},"));
        }
        let values: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
        text.push_str(&values.join(","));
        text.push('\n');
        if text.len() > 1 << 16 {
            out.write_all(text.as_bytes()).map_err(io)?;
            text.clear();
        }
    }
    out.write_all(text.as_bytes()).map_err(io)?;
    out.flush().map_err(io)
}

/// The header line (with its newline) for a result of this shape.
fn header(data: &ArrayViewD<f64>) -> String {
    match data.shape() {
        [] => "value\n".into(),
        [_] => "index,value\n".into(),
        [_, w, ..] => {
            let cols: Vec<String> = (0..*w).map(|c| format!("c{c}")).collect();
            format!("row,{}\n", cols.join(","))
        }
    }
}
