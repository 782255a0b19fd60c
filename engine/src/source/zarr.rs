//! The `zarr` source: a 3-D Zarr v2 or v3 array, or one level of an OME-Zarr multiscale image, read locally,
//! over HTTP(S) or from S3 with `zarrs` (through [`ZarrStore`], its storage trait over a [`Location`]).
//!
//! `uint8`, `uint16`, `float32` and `float64` arrays keep their type; other integer types are read as
//! `float64` (exact up to 2^53). A chunk that is not stored is the fill value, as Zarr defines (or an error
//! naming it, with `missingChunks: error`); a chunk that cannot be read (HTTP 500, 403...) fails the read,
//! naming its key.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ndarray::ArrayD;
use zarrs::array::{Array, ArraySubset, ElementOwned};
use zarrs::plugin::{ExtensionName, ZarrVersion};
use zarrs::storage::byte_range::{ByteRange, ByteRangeIterator};
use zarrs::storage::{
    MaybeBytes, MaybeBytesIterator, ReadableStorageTraits, StorageError, StoreKey,
};

use super::location::{Location, Part};
use super::{Declared, InfoCache, SliceInfo, SliceSource, SourceError, check_range, limits};
use crate::array::{Chunk, DType};
use crate::spec::{MissingChunks, S3Storage, ZarrSource};

/// zarrs' read-only storage over a [`Location`]: a key is a file, URL or object under it.
#[derive(Debug)]
pub struct ZarrStore {
    location: Location,
    /// A chunk that is not stored is an error (`missingChunks: error`), not the fill value.
    chunks_required: bool,
}

/// Names of Zarr metadata documents: their absence is how zarrs tells versions and groups apart.
const METADATA: [&str; 5] = ["zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"];

impl ZarrStore {
    /// Bytes `range` of `key`, `None` when it is not stored. A metadata document is read whole up to
    /// [`limits::MAX_METADATA_BYTES`], a chunk or shard up to [`limits::MAX_OBJECT_BYTES`].
    fn get_range(&self, key: &str, range: ByteRange) -> Result<MaybeBytes, StorageError> {
        let metadata = METADATA.contains(&key.rsplit('/').next().unwrap_or(key));
        let part = match range {
            ByteRange::FromStart(0, None) if metadata => Part::Whole {
                limit: limits::MAX_METADATA_BYTES,
                what: "a Zarr metadata document",
            },
            ByteRange::FromStart(0, None) => Part::Whole {
                limit: limits::MAX_OBJECT_BYTES,
                what: "a Zarr chunk or shard read whole",
            },
            ByteRange::FromStart(start, None) => {
                let all = self.get_range(key, ByteRange::FromStart(0, None))?;
                return Ok(all.map(|b| {
                    let at = usize::try_from(start).unwrap_or(usize::MAX).min(b.len());
                    b.slice(at..)
                }));
            }
            ByteRange::FromStart(start, Some(len)) => {
                let end = start.checked_add(len).ok_or_else(|| {
                    StorageError::Other(format!(
                        "{}: a range of {len} bytes at offset {start} overflows",
                        self.location.name(key)
                    ))
                })?;
                Part::Range(start..end)
            }
            ByteRange::Suffix(n) => Part::Suffix(n),
        };
        let got = self
            .location
            .get(key, part)
            .map_err(|e| StorageError::Other(e.to_string()))?;
        if got.is_none() && self.chunks_required && !metadata {
            return Err(StorageError::Other(format!(
                "chunk {} is not stored (spec.source.zarr.missingChunks: error)",
                self.location.name(key)
            )));
        }
        Ok(got)
    }
}

impl ReadableStorageTraits for ZarrStore {
    fn get_partial_many<'a>(
        &'a self,
        key: &StoreKey,
        byte_ranges: ByteRangeIterator<'a>,
    ) -> Result<MaybeBytesIterator<'a>, StorageError> {
        let mut parts: Vec<Bytes> = Vec::new();
        for range in byte_ranges {
            match self.get_range(key.as_str(), range)? {
                Some(b) => parts.push(b),
                None => return Ok(None),
            }
        }
        Ok(Some(Box::new(parts.into_iter().map(Ok))))
    }

    fn size_key(&self, key: &StoreKey) -> Result<Option<u64>, StorageError> {
        Ok(self
            .get_range(key.as_str(), ByteRange::FromStart(0, None))?
            .map(|b| b.len() as u64))
    }

    fn supports_get_partial(&self) -> bool {
        true
    }
}

/// Element types of a Zarr array and how they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    U8,
    U16,
    F32,
    F64,
    /// Another integer type (`int8`...`uint64`, by its Zarr v3 name), read as `float64`.
    Widened(&'static str),
}

impl Element {
    /// The element of the Zarr v3 data type `name`, or `None` when it is not numeric (or not supported).
    fn of(name: &str) -> Option<Element> {
        Some(match name {
            "uint8" => Element::U8,
            "uint16" => Element::U16,
            "float32" => Element::F32,
            "float64" => Element::F64,
            "int8" => Element::Widened("int8"),
            "int16" => Element::Widened("int16"),
            "int32" => Element::Widened("int32"),
            "uint32" => Element::Widened("uint32"),
            "int64" => Element::Widened("int64"),
            "uint64" => Element::Widened("uint64"),
            _ => return None,
        })
    }

    fn dtype(self) -> DType {
        match self {
            Element::U8 => DType::Uint8,
            Element::U16 => DType::Uint16,
            Element::F32 => DType::Float32,
            Element::F64 | Element::Widened(_) => DType::Float64,
        }
    }
}

/// Slices read from a 3-D Zarr array along its axis 0.
#[derive(Debug)]
pub struct ZarrSliceSource {
    array: Array<ZarrStore>,
    /// The array's location (a level of an OME-Zarr image names its dataset).
    name: String,
    element: Element,
    /// `shape[0]`, `shape[1]`, `shape[2]`, checked against the source limits.
    slices: usize,
    height: usize,
    width: usize,
    info: InfoCache,
}

impl ZarrSliceSource {
    /// Locates the array (or the OME-Zarr image and its `level`), opens it and checks it is 3-D and numeric.
    ///
    /// # Errors
    /// [`SourceError::Config`] for an invalid location or a `level` on a plain array; [`SourceError::Object`]
    /// naming the location when there is no Zarr metadata there, the OME-Zarr level does not exist, or the
    /// array is not 3-D or not numeric.
    pub fn new(
        spec: &ZarrSource,
        storage: Option<&S3Storage>,
        base_dir: &Path,
        declared: Declared,
    ) -> Result<ZarrSliceSource, SourceError> {
        let location = Location::of_spec(
            "zarr",
            spec.path.as_deref(),
            spec.url.as_deref(),
            spec.s3.as_ref(),
            storage,
            base_dir,
        )?;
        let path = array_path(&location, spec.level)?;
        let name = location.name(&path);
        let store = Arc::new(ZarrStore {
            location,
            chunks_required: spec.missing_chunks == Some(MissingChunks::Error),
        });
        let open_path = format!("/{path}");
        let array = Array::open(store, &open_path).map_err(|e| SourceError::Object {
            location: name.clone(),
            message: format!("cannot open the Zarr array: {e}"),
        })?;
        let invalid = |message: String| SourceError::Object {
            location: name.clone(),
            message,
        };
        let &[slices, height, width] = array.shape() else {
            return Err(invalid(format!(
                "the array has shape {:?}: a source is 3-D (slices, rows, columns)",
                array.shape()
            )));
        };
        // The metadata's numbers are held to the source limits before anything is planned or sized from them.
        let shape = array.shape().to_vec();
        let checked =
            |r: Result<usize, String>| r.map_err(|m| invalid(format!("shape {shape:?}: {m}")));
        let slices = checked(limits::header_slices("shape[0]", slices))?;
        let height = checked(limits::header_side("shape[1]", height))?;
        let width = checked(limits::header_side("shape[2]", width))?;
        let type_name = array
            .data_type()
            .name(ZarrVersion::V3)
            .map(|n| n.to_string())
            .unwrap_or_else(|| array.data_type().to_string());
        let element = Element::of(&type_name).ok_or_else(|| {
            invalid(format!(
                "data type {type_name} is not supported: a source is an integer or float32/float64 array"
            ))
        })?;
        check_chunk_size(&array, element).map_err(invalid)?;
        Ok(ZarrSliceSource {
            array,
            name,
            element,
            slices,
            height,
            width,
            info: InfoCache::new(declared),
        })
    }

    /// The array's chunk shape (of its first chunk) and its grid of chunks.
    fn chunking(&self) -> (Vec<u64>, Vec<u64>) {
        let shape = self
            .array
            .chunk_shape(&[0, 0, 0])
            .map(|s| s.iter().map(|n| n.get()).collect())
            .unwrap_or_default();
        (shape, self.array.chunk_grid_shape().to_vec())
    }

    /// Reads the array's `subset` as its element type (other integers as `float64`).
    fn retrieve(&self, subset: &ArraySubset) -> Result<Chunk, SourceError> {
        let error = |e: zarrs::array::ArrayError| SourceError::Object {
            location: self.name.clone(),
            message: format!("reading {subset:?}: {e}"),
        };
        Ok(match self.element {
            Element::U8 => Chunk::U8(self.get::<u8>(subset).map_err(error)?),
            Element::U16 => Chunk::U16(self.get::<u16>(subset).map_err(error)?),
            Element::F32 => Chunk::F32(self.get::<f32>(subset).map_err(error)?),
            Element::F64 => Chunk::F64(self.get::<f64>(subset).map_err(error)?),
            Element::Widened(name) => Chunk::F64(self.widened(name, subset).map_err(error)?),
        })
    }

    fn get<T: ElementOwned>(
        &self,
        subset: &ArraySubset,
    ) -> Result<ArrayD<T>, zarrs::array::ArrayError> {
        self.array.retrieve_array_subset::<ArrayD<T>>(subset)
    }

    /// An integer array of type `name` read as `float64`.
    fn widened(
        &self,
        name: &str,
        subset: &ArraySubset,
    ) -> Result<ArrayD<f64>, zarrs::array::ArrayError> {
        Ok(match name {
            "int8" => self.get::<i8>(subset)?.mapv(f64::from),
            "int16" => self.get::<i16>(subset)?.mapv(f64::from),
            "int32" => self.get::<i32>(subset)?.mapv(f64::from),
            "uint32" => self.get::<u32>(subset)?.mapv(f64::from),
            "int64" => self.get::<i64>(subset)?.mapv(|v| v as f64),
            _ => self.get::<u64>(subset)?.mapv(|v| v as f64),
        })
    }
}

/// Refuses an array whose chunks (or shards, or the inner chunks of a shard) are larger, decoded, than
/// [`limits::MAX_CHUNK_BYTES`]: zarrs allocates a whole chunk to decode it, whatever part of it is read.
fn check_chunk_size(array: &Array<ZarrStore>, element: Element) -> Result<(), String> {
    use zarrs::array::ArrayShardedExt;
    let size = match element {
        Element::U8 => 1,
        Element::U16 => 2,
        Element::F32 => 4,
        Element::F64 | Element::Widened(_) => 8,
    };
    let outer = array
        .chunk_shape(&[0, 0, 0])
        .map_err(|e| format!("cannot read the chunk shape: {e}"))?;
    let shapes = [Some(outer), array.effective_subchunk_shape()];
    for shape in shapes.into_iter().flatten() {
        let dims: Vec<u64> = shape.iter().map(|n| n.get()).collect();
        let bytes = dims.iter().try_fold(size, |a: u64, &n| a.checked_mul(n));
        if bytes.is_none_or(|b| b > limits::MAX_CHUNK_BYTES) {
            return Err(format!(
                "chunk shape {dims:?} of {size}-byte elements is more than the limit of {} bytes per chunk",
                limits::MAX_CHUNK_BYTES
            ));
        }
    }
    Ok(())
}

/// The path of the array under `location`: `""` for an array, the dataset of multiscale `level` for an OME-Zarr
/// image (v3 `zarr.json` `attributes.ome.multiscales`, or v2 `.zattrs` `multiscales`).
fn array_path(location: &Location, level: Option<usize>) -> Result<String, SourceError> {
    let json = |key: &str| -> Result<Option<serde_json::Value>, SourceError> {
        let part = Part::Whole {
            limit: limits::MAX_METADATA_BYTES,
            what: "a Zarr metadata document",
        };
        let Some(bytes) = location.get(key, part)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SourceError::Object {
                location: location.name(key),
                message: format!("not valid JSON: {e}"),
            })
    };
    let (attrs, is_array) = if let Some(meta) = json("zarr.json")? {
        let is_array = meta.get("node_type").and_then(|t| t.as_str()) == Some("array");
        let attrs = meta.get("attributes").cloned().unwrap_or_default();
        let ome = attrs.get("ome").cloned().unwrap_or(attrs);
        (ome, is_array)
    } else if json(".zarray")?.is_some() {
        (serde_json::Value::Null, true)
    } else if let Some(attrs) = json(".zattrs")? {
        (attrs, false)
    } else {
        return Err(SourceError::Object {
            location: location.name(""),
            message: "no zarr.json, .zarray or .zattrs: not a Zarr array or OME-Zarr image".into(),
        });
    };
    if is_array {
        return match level {
            None => Ok(String::new()),
            Some(_) => Err(SourceError::Config {
                field: "spec.source.zarr.level".into(),
                message: format!(
                    "{} is a Zarr array, not an OME-Zarr image: remove 'level'",
                    location.name("")
                ),
            }),
        };
    }
    ome_dataset(location, &attrs, level.unwrap_or(0))
}

/// `multiscales[0].datasets[level].path` of an OME-Zarr image's attributes.
fn ome_dataset(
    location: &Location,
    attrs: &serde_json::Value,
    level: usize,
) -> Result<String, SourceError> {
    let error = |message: String| SourceError::Object {
        location: location.name(""),
        message,
    };
    let datasets = attrs
        .pointer("/multiscales/0/datasets")
        .and_then(|d| d.as_array())
        .ok_or_else(|| {
            error("a Zarr group without OME-Zarr multiscales: point the source at an array".into())
        })?;
    let dataset = datasets.get(level).ok_or_else(|| {
        error(format!(
            "OME-Zarr level {level} does not exist: the image has {} level(s)",
            datasets.len()
        ))
    })?;
    dataset
        .get("path")
        .and_then(|p| p.as_str())
        .map(|p| p.trim_matches('/').to_owned())
        .ok_or_else(|| error(format!("multiscales[0].datasets[{level}] has no path")))
}

impl SliceSource for ZarrSliceSource {
    fn len(&self) -> usize {
        self.slices
    }

    fn slice_info(&self) -> Result<SliceInfo, SourceError> {
        self.info.get_or_try(|| {
            let info = SliceInfo {
                height: self.height,
                width: self.width,
                dtype: self.element.dtype(),
            };
            Ok((info, self.name.clone()))
        })
    }

    fn read(&self, start: usize, end: usize) -> Result<Chunk, SourceError> {
        check_range(self, start, end)?;
        self.slice_info()?;
        let subset = ArraySubset::new_with_ranges(&[
            start as u64..end as u64,
            0..self.height as u64,
            0..self.width as u64,
        ]);
        self.retrieve(&subset)
    }

    fn describe(&self) -> String {
        let (chunks, grid) = self.chunking();
        let widened = match self.element {
            Element::Widened(name) => format!(" (read as float64 from {name})"),
            _ => String::new(),
        };
        format!(
            "zarr {} {:?} {}{widened}, chunks {chunks:?}, chunk grid {grid:?}",
            self.name,
            self.array.shape(),
            self.element.dtype(),
        )
    }

    fn chunk_depth(&self) -> Option<usize> {
        // At most the array's depth (the metadata may declare deeper chunks than the array).
        let depth = *self.chunking().0.first()?;
        Some(usize::try_from(depth).map_or(self.slices, |d| d.min(self.slices)))
    }
}
