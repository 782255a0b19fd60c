//! Element types of arrays, as a spec names them (`uint8`, `float32`, ...).

use serde::{Deserialize, Serialize};

/// Element type of an array or chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 8-bit unsigned integer (most EM and PNG data).
    Uint8,
    /// 16-bit unsigned integer (16-bit PNG / TIFF).
    Uint16,
    /// 32-bit float.
    Float32,
    /// 64-bit float (reductions accumulate and return this).
    Float64,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::Uint8 => 1,
            DType::Uint16 => 2,
            DType::Float32 => 4,
            DType::Float64 => 8,
        }
    }

    /// The name NumPy and Zarr v3 use for this type.
    pub fn name(self) -> &'static str {
        match self {
            DType::Uint8 => "uint8",
            DType::Uint16 => "uint16",
            DType::Float32 => "float32",
            DType::Float64 => "float64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
