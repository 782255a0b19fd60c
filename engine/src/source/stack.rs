//! A chunk of slices filled one slice at a time: the buffer every slice source decodes or copies into.

use ndarray::{ArrayD, IxDyn};

use super::{SliceInfo, SourceError};
use crate::array::{Chunk, DType};

/// Where one slice is decoded to: its rows in the chunk being built.
#[derive(Debug)]
pub enum SliceBuf<'a> {
    /// An 8-bit slice.
    U8(&'a mut [u8]),
    /// A 16-bit slice.
    U16(&'a mut [u16]),
}

impl<'a> SliceBuf<'a> {
    /// The slice's bytes (16-bit samples in native byte order).
    pub fn into_bytes(self) -> &'a mut [u8] {
        match self {
            SliceBuf::U8(b) => b,
            SliceBuf::U16(b) => bytemuck::cast_slice_mut(b),
        }
    }
}

/// A `(n, height, width)` chunk being filled one slice at a time, in any order: one allocation per chunk, each
/// slice decoded or generated straight into its place.
#[derive(Debug)]
pub struct SliceStack {
    start: usize,
    end: usize,
    info: SliceInfo,
    data: StackData,
}

#[derive(Debug)]
enum StackData {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

impl SliceStack {
    /// Room for slices `start..end` of shape and type `info`.
    ///
    /// # Errors
    /// [`SourceError::Config`] when the chunk's size overflows or the type is not an integer image type.
    pub fn new(start: usize, end: usize, info: SliceInfo) -> Result<SliceStack, SourceError> {
        let too_big = || SourceError::Config {
            field: "spec.source".into(),
            message: format!(
                "slices {start}..{end} of {}x{} do not fit in memory",
                info.height, info.width
            ),
        };
        let len = (end - start)
            .checked_mul(info.height)
            .and_then(|n| n.checked_mul(info.width))
            .filter(|n| {
                n.checked_mul(info.dtype.size())
                    .is_some_and(|b| b <= isize::MAX as usize)
            })
            .ok_or_else(too_big)?;
        let data = match info.dtype {
            DType::Uint8 => StackData::U8(vec![0; len]),
            DType::Uint16 => StackData::U16(vec![0; len]),
            other => {
                return Err(SourceError::Config {
                    field: "spec.source.dtype".into(),
                    message: format!("sources give uint8 or uint16 slices, not {other}"),
                });
            }
        };
        Ok(SliceStack {
            start,
            end,
            info,
            data,
        })
    }

    /// The rows of slice `index` (which must lie in `start..end`).
    pub fn slot(&mut self, index: usize) -> SliceBuf<'_> {
        let plane = self.info.height * self.info.width;
        let k = index - self.start;
        match &mut self.data {
            StackData::U8(v) => SliceBuf::U8(&mut v[k * plane..(k + 1) * plane]),
            StackData::U16(v) => SliceBuf::U16(&mut v[k * plane..(k + 1) * plane]),
        }
    }

    /// The filled chunk.
    pub fn finish(self) -> Chunk {
        let shape = IxDyn(&[self.end - self.start, self.info.height, self.info.width]);
        // The buffer holds exactly the shape's number of elements.
        match self.data {
            StackData::U8(v) => Chunk::U8(ArrayD::from_shape_vec(shape, v).unwrap_or_default()),
            StackData::U16(v) => Chunk::U16(ArrayD::from_shape_vec(shape, v).unwrap_or_default()),
        }
    }
}
