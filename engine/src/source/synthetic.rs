//! The `synthetic` source: recipe `emstack-v1` (see [`super::emstack`]) generated in memory.

use ndarray::{ArrayD, IxDyn};

use super::emstack::{self, DEFAULT_SEED, RECIPE};
use super::{Declared, SliceInfo, SliceSource, SourceError, check_range, limits};
use crate::array::{Chunk, DType};
use crate::spec::SyntheticSource;

/// A deterministic EM-like stack of `uint8` slices, generated on demand (no I/O).
#[derive(Debug, Clone)]
pub struct SyntheticSliceSource {
    slices: usize,
    height: usize,
    width: usize,
    seed: u64,
}

impl SyntheticSliceSource {
    /// Checks the spec: at least one slice, height and width positive multiples of 4, and what `declared` says
    /// (if anything) agrees with them.
    ///
    /// # Errors
    /// [`SourceError::Config`] naming the offending field.
    pub fn new(
        spec: &SyntheticSource,
        declared: Declared,
    ) -> Result<SyntheticSliceSource, SourceError> {
        let config = |field: &str, message: String| SourceError::Config {
            field: format!("spec.source.synthetic.{field}"),
            message,
        };
        limits::slices("spec.source.synthetic.slices", spec.slices as u64)?;
        for (field, v) in [("height", spec.height), ("width", spec.width)] {
            if v == 0 || !v.is_multiple_of(4) {
                return Err(config(
                    field,
                    format!("must be a positive multiple of 4 (recipe {RECIPE}), got {v}"),
                ));
            }
            limits::slice_side(&format!("spec.source.synthetic.{field}"), v)?;
        }
        if let Some((h, w)) = declared
            .shape
            .filter(|&shape| shape != (spec.height, spec.width))
        {
            return Err(SourceError::Config {
                field: "spec.source.sliceShape".into(),
                message: format!(
                    "[{h}, {w}] differs from the synthetic [{}, {}]",
                    spec.height, spec.width
                ),
            });
        }
        if let Some(d) = declared.dtype.filter(|&d| d != DType::Uint8) {
            return Err(SourceError::Config {
                field: "spec.source.dtype".into(),
                message: format!("{d} differs from the synthetic stack's uint8"),
            });
        }
        Ok(SyntheticSliceSource {
            slices: spec.slices,
            height: spec.height,
            width: spec.width,
            seed: spec.seed.unwrap_or(DEFAULT_SEED),
        })
    }
}

impl SliceSource for SyntheticSliceSource {
    fn len(&self) -> usize {
        self.slices
    }

    fn slice_info(&self) -> Result<SliceInfo, SourceError> {
        Ok(SliceInfo {
            height: self.height,
            width: self.width,
            dtype: DType::Uint8,
        })
    }

    fn read(&self, start: usize, end: usize) -> Result<Chunk, SourceError> {
        check_range(self, start, end)?;
        let plane = self.height * self.width;
        let mut data = vec![0u8; (end - start) * plane];
        // Generated on the calling (executor) thread: the executor's threads are the only compute threads.
        data.chunks_mut(plane).enumerate().for_each(|(i, out)| {
            emstack::generate_slice_into(
                (start + i) as u64,
                self.height,
                self.width,
                self.seed,
                out,
            );
        });
        let array = ArrayD::from_shape_vec(IxDyn(&[end - start, self.height, self.width]), data)
            .map_err(|e| SourceError::Config {
                field: "spec.source.synthetic".into(),
                message: format!("slices {start}..{end}: {e}"),
            })?;
        Ok(Chunk::U8(array))
    }

    fn describe(&self) -> String {
        format!(
            "synthetic {RECIPE} {}x{}x{} seed {}",
            self.slices, self.height, self.width, self.seed
        )
    }
}
