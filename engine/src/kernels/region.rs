//! Region copies between chunks (the building block of rechunking): cut a box out of a chunk, or copy a box of
//! one chunk into another of the same type.

use ndarray::{ArrayD, SliceInfoElem};

use super::KernelError;
use crate::array::Chunk;

/// Slice description of the box `start .. start + len`.
fn boxed(start: &[usize], len: &[usize]) -> Vec<SliceInfoElem> {
    start
        .iter()
        .zip(len)
        .map(|(&s, &l)| SliceInfoElem::Slice {
            start: s as isize,
            end: Some((s + l) as isize),
            step: 1,
        })
        .collect()
}

/// Checks that the box `start .. start + len` lies inside `shape`; `what` names the argument in the error.
fn check_box(
    shape: &[usize],
    start: &[usize],
    len: &[usize],
    what: &'static str,
) -> Result<(), KernelError> {
    if start.len() != shape.len() || len.len() != shape.len() {
        return Err(KernelError::arg(
            what,
            format!(
                "start {start:?} / len {len:?} do not match the {}-d chunk",
                shape.len()
            ),
        ));
    }
    for ((&s, &l), &n) in start.iter().zip(len).zip(shape) {
        if s.checked_add(l).is_none_or(|e| e > n) {
            return Err(KernelError::arg(
                what,
                format!("box at {start:?} of size {len:?} does not fit in shape {shape:?}"),
            ));
        }
    }
    Ok(())
}

/// A new chunk holding the box `start .. start + len` of `src` (same type).
///
/// # Errors
/// [`KernelError::InvalidArgument`] naming `start` when the box has the wrong rank or does not fit in `src`.
pub fn extract(src: &Chunk, start: &[usize], len: &[usize]) -> Result<Chunk, KernelError> {
    check_box(src.shape(), start, len, "start")?;
    let info = boxed(start, len);
    Ok(match src {
        Chunk::U8(a) => Chunk::U8(a.slice(info.as_slice()).to_owned()),
        Chunk::U16(a) => Chunk::U16(a.slice(info.as_slice()).to_owned()),
        Chunk::F32(a) => Chunk::F32(a.slice(info.as_slice()).to_owned()),
        Chunk::F64(a) => Chunk::F64(a.slice(info.as_slice()).to_owned()),
    })
}

/// Copies the box `src_start .. src_start + len` of `src` to `dst_start .. dst_start + len` of `dst`.
///
/// # Errors
/// [`KernelError::InvalidArgument`] naming `dst` when the types differ, `src_start` or `dst_start` when a box
/// does not fit.
pub fn copy_region(
    src: &Chunk,
    src_start: &[usize],
    dst: &mut Chunk,
    dst_start: &[usize],
    len: &[usize],
) -> Result<(), KernelError> {
    if src.dtype() != dst.dtype() {
        return Err(KernelError::arg(
            "dst",
            format!("cannot copy {} into {}", src.dtype(), dst.dtype()),
        ));
    }
    check_box(src.shape(), src_start, len, "src_start")?;
    check_box(dst.shape(), dst_start, len, "dst_start")?;
    fn go<T: Clone>(s: &ArrayD<T>, si: &[SliceInfoElem], d: &mut ArrayD<T>, di: &[SliceInfoElem]) {
        d.slice_mut(di).assign(&s.slice(si));
    }
    let (si, di) = (boxed(src_start, len), boxed(dst_start, len));
    match (src, dst) {
        (Chunk::U8(s), Chunk::U8(d)) => go(s, &si, d, &di),
        (Chunk::U16(s), Chunk::U16(d)) => go(s, &si, d, &di),
        (Chunk::F32(s), Chunk::F32(d)) => go(s, &si, d, &di),
        (Chunk::F64(s), Chunk::F64(d)) => go(s, &si, d, &di),
        // Types were checked equal above.
        _ => return Err(KernelError::arg("dst", "element types differ")),
    }
    Ok(())
}
