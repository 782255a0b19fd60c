//! Zarr v3 arrays on the local filesystem (zstd-compressed chunks), written chunk by chunk (or shard by shard)
//! from many threads.
//!
//! The same writer writes under an S3 prefix ([`ArrayPlace::S3`]): metadata and unsharded chunks through zarrs'
//! storage trait, shards uploaded in the background ([`super::s3store`]).
//!
//! A stage whose results arrive in blocks of several chunks (a rechunk's merge group and the FFT fused into it)
//! is written as *shards* of that block's shape (`sharding_indexed`, inner chunks = the stage's chunks): one file
//! per block instead of one per chunk, the same logical chunks for readers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::ArrayD;
use zarrs::array::codec::bytes_to_bytes::zstd::ZstdCodec;
use zarrs::array::{Array, ArrayBuilder, ArraySubset, CodecOptions, data_type};
use zarrs::filesystem::FilesystemStore;
use zarrs::storage::WritableStorageTraits;

use super::OutputError;
use super::direct::{FileWriter, PageBuf};
use super::s3store::{S3Store, Uploads};
use crate::array::{ArrayMeta, Chunk, DType};
use crate::s3::objects::Bucket;

/// zstd level of the chunks: on the post's float32 power spectra level 1 (with [`fast_hash_log`]'s table)
/// compresses to 0.55 of the raw size, as small as level 3 (0.54) for ~15% less time, and compressing is on the
/// critical path of the last stage.
const ZSTD_LEVEL: i32 = 1;

/// How a [`ZarrWriter`] lays out and compresses its array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZarrOptions {
    /// Shard shape (a multiple of the chunk shape along every axis): one file per shard instead of one per
    /// chunk. `None`: unsharded.
    pub shard: Option<Vec<usize>>,
    /// zstd level of every chunk; `None`: chunks stored uncompressed.
    pub zstd_level: Option<i32>,
}

impl Default for ZarrOptions {
    fn default() -> Self {
        ZarrOptions {
            shard: None,
            zstd_level: Some(ZSTD_LEVEL),
        }
    }
}

/// Where an array is written.
#[derive(Debug, Clone)]
pub enum ArrayPlace {
    /// A local directory.
    Dir(PathBuf),
    /// The keys under `prefix` (empty or ending in `/`) in `bucket`.
    S3 {
        /// The bucket.
        bucket: Bucket,
        /// Key prefix of the array (its `zarr.json` is `prefix` + `zarr.json`).
        prefix: String,
    },
}

impl ArrayPlace {
    /// The place of `rel` inside this one (an array inside a staging directory or prefix).
    pub fn join(&self, rel: &str) -> ArrayPlace {
        match self {
            ArrayPlace::Dir(d) => ArrayPlace::Dir(d.join(rel)),
            ArrayPlace::S3 { bucket, prefix } => ArrayPlace::S3 {
                bucket: bucket.clone(),
                prefix: format!("{prefix}{}/", rel.trim_matches('/')),
            },
        }
    }

    /// `s3://bucket/prefix` of a place on S3.
    pub fn s3_uri(&self) -> Option<String> {
        match self {
            ArrayPlace::S3 { bucket, prefix } => Some(format!("s3://{}/{prefix}", bucket.name())),
            ArrayPlace::Dir(_) => None,
        }
    }

    /// The directory, or `s3://bucket/prefix`, as a path for messages.
    fn name(&self) -> PathBuf {
        match self {
            ArrayPlace::Dir(d) => d.clone(),
            ArrayPlace::S3 { bucket, prefix } => PathBuf::from(format!(
                "s3://{}/{}",
                bucket.name(),
                prefix.trim_end_matches('/')
            )),
        }
    }
}

/// Where the shards of a sharded array go.
#[derive(Debug)]
enum ShardSink {
    Files(FileWriter),
    S3(Uploads),
}

/// A Zarr v3 array being written: one call of [`ZarrWriter::write_chunk`] per unit of its write grid (a chunk,
/// or a shard when sharded), from any thread.
pub struct ZarrWriter {
    dir: PathBuf,
    meta: ArrayMeta,
    /// Shape of one write: the chunk shape, or the shard shape.
    unit: Vec<usize>,
    zstd_level: Option<i32>,
    array: Array<dyn WritableStorageTraits>,
    /// Writes the shards (sharded arrays only).
    files: Option<ShardSink>,
    /// The array's key prefix when it is on S3 (shard keys are this + the chunk key).
    s3_prefix: Option<String>,
}

impl std::fmt::Debug for ZarrWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZarrWriter")
            .field("dir", &self.dir)
            .field("meta", &self.meta)
            .field("unit", &self.unit)
            .finish_non_exhaustive()
    }
}

fn open_store(place: &ArrayPlace) -> Result<Arc<dyn WritableStorageTraits>, OutputError> {
    match place {
        ArrayPlace::Dir(dir) => FilesystemStore::new(dir)
            .map(|s| Arc::new(s) as Arc<dyn WritableStorageTraits>)
            .map_err(|e| OutputError::write(dir, "open Zarr store", e)),
        ArrayPlace::S3 { bucket, prefix } => {
            Ok(Arc::new(S3Store::new(bucket.clone(), prefix.clone())))
        }
    }
}

impl ZarrWriter {
    /// Creates a Zarr v3 array at `dir` with `meta`'s shape, chunk shape and type, zstd-compressed, fill value 0,
    /// and the given user attributes; writes its `zarr.json`. `dir` must not exist or be empty.
    ///
    /// # Errors
    /// When `dir` is a non-empty directory or cannot be created, when `meta` is inconsistent (chunk rank differs
    /// from the shape's), or when the metadata cannot be written.
    pub fn create(
        dir: &Path,
        meta: &ArrayMeta,
        attributes: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, OutputError> {
        Self::create_with(
            &ArrayPlace::Dir(dir.to_path_buf()),
            meta,
            &ZarrOptions::default(),
            attributes,
        )
    }

    /// Like [`ZarrWriter::create`] with the layout and compression of `options`. Sharded, each write is one
    /// shard, holding the chunks of `meta` inside (`sharding_indexed`, index at the end with a crc32c).
    ///
    /// # Errors
    /// As [`ZarrWriter::create`], and when the shard shape is not a multiple of the chunk shape.
    pub fn create_with(
        place: &ArrayPlace,
        meta: &ArrayMeta,
        options: &ZarrOptions,
        attributes: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, OutputError> {
        Self::build(place, meta, options, attributes, true)
    }

    /// Opens the array another process created at `dir` with the same `meta` and `options` (its `zarr.json`
    /// is left as it is), to write some of its chunks. Shards are written in the background as with
    /// [`ZarrWriter::create_with`]: [`ZarrWriter::write_mark`] and [`ZarrWriter::wait_written`] tell when
    /// the ones written so far are in their files (a worker reports a task done only then).
    ///
    /// # Errors
    /// When a local `place` has no `zarr.json`, or as [`ZarrWriter::create_with`].
    pub fn open_existing(
        place: &ArrayPlace,
        meta: &ArrayMeta,
        options: &ZarrOptions,
    ) -> Result<Self, OutputError> {
        if let ArrayPlace::Dir(dir) = place
            && !dir.join("zarr.json").is_file()
        {
            return Err(OutputError::invalid(
                dir,
                "dir",
                "no zarr.json: the coordinator creates the array before workers write to it",
            ));
        }
        Self::build(place, meta, options, serde_json::Map::new(), false)
    }

    fn build(
        place: &ArrayPlace,
        meta: &ArrayMeta,
        options: &ZarrOptions,
        attributes: serde_json::Map<String, serde_json::Value>,
        create: bool,
    ) -> Result<Self, OutputError> {
        let dir = &place.name();
        let chunks: Vec<usize> = meta.chunks.iter().map(|&c| c.max(1)).collect();
        let unit = options.shard.clone().unwrap_or_else(|| chunks.clone());
        if unit.len() != chunks.len()
            || unit.iter().zip(&chunks).any(|(u, c)| *u == 0 || u % c != 0)
        {
            return Err(OutputError::invalid(
                dir,
                "shard",
                format!("shard shape {unit:?} is not a multiple of the chunk shape {chunks:?}"),
            ));
        }
        if meta.chunks.len() != meta.shape.len() {
            return Err(OutputError::invalid(
                dir,
                "meta",
                format!(
                    "chunk shape {:?} does not match array shape {:?}",
                    meta.chunks, meta.shape
                ),
            ));
        }
        if let ArrayPlace::Dir(dir) = place {
            if create
                && let Ok(mut entries) = std::fs::read_dir(dir)
                && entries.next().is_some()
            {
                return Err(OutputError::invalid(
                    dir,
                    "dir",
                    "the directory exists and is not empty",
                ));
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| OutputError::io(dir, "create directory", e))?;
        }
        let store = open_store(place)?;
        let shape: Vec<u64> = meta.shape.iter().map(|&n| n as u64).collect();
        let outer: Vec<u64> = unit.iter().map(|&c| c as u64).collect();
        let mut builder = match meta.dtype {
            DType::Uint8 => ArrayBuilder::new(shape, outer, data_type::uint8(), 0u8),
            DType::Uint16 => ArrayBuilder::new(shape, outer, data_type::uint16(), 0u16),
            DType::Float32 => ArrayBuilder::new(shape, outer, data_type::float32(), 0f32),
            DType::Float64 => ArrayBuilder::new(shape, outer, data_type::float64(), 0f64),
        };
        if unit != chunks {
            builder.subchunk_shape(chunks.iter().map(|&c| c as u64).collect::<Vec<_>>());
        }
        builder.bytes_to_bytes_codecs(match options.zstd_level {
            Some(level) => vec![Arc::new(ZstdCodec::new(level, false))],
            None => Vec::new(),
        });
        builder.attributes(attributes);
        let array = builder
            .build(store, "/")
            .map_err(|e| OutputError::write(dir, "create Zarr array", e))?;
        if create {
            array
                .store_metadata()
                .map_err(|e| OutputError::write(dir, "write zarr.json", e))?;
        }
        let files = match place {
            _ if unit == chunks => None,
            ArrayPlace::Dir(_) => {
                Some(ShardSink::Files(FileWriter::new().map_err(|e| {
                    OutputError::io(dir, "start the shard writer", e)
                })?))
            }
            ArrayPlace::S3 { bucket, .. } => Some(ShardSink::S3(Uploads::new(bucket.clone()))),
        };
        let s3_prefix = match place {
            ArrayPlace::S3 { prefix, .. } => Some(prefix.clone()),
            ArrayPlace::Dir(_) => None,
        };
        Ok(ZarrWriter {
            dir: dir.to_path_buf(),
            meta: meta.clone(),
            unit,
            zstd_level: options.zstd_level,
            array,
            files,
            s3_prefix,
        })
    }

    /// The array's directory (`s3://bucket/prefix` for an array on S3).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The array's shape, chunk shape and type.
    pub fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    /// Shape of one write ([`ZarrWriter::write_chunk`]): the chunk shape, or the shard shape when sharded.
    pub fn write_unit(&self) -> &[usize] {
        &self.unit
    }

    /// The grid of writes: the chunk grid, or the shard grid when sharded.
    fn write_grid(&self) -> ArrayMeta {
        ArrayMeta {
            chunks: self.unit.clone(),
            ..self.meta.clone()
        }
    }

    /// Writes unit `idx` of the write grid (a chunk, or a shard when sharded). `chunk` must have the array's type
    /// and the unit's shape, which is smaller than the unit shape at the array's far edges. Safe to call from
    /// several threads for different units. Encoding runs on the calling thread.
    ///
    /// # Errors
    /// When `idx` is outside the grid, the chunk's type or shape is wrong, or encoding or storing fails.
    pub fn write_chunk(&self, idx: &[usize], chunk: &Chunk) -> Result<(), OutputError> {
        let len = self.unit_region(idx)?;
        if chunk.dtype() != self.meta.dtype {
            return Err(OutputError::invalid(
                &self.dir,
                "chunk",
                format!(
                    "chunk {idx:?} is {}, the array is {}",
                    chunk.dtype(),
                    self.meta.dtype
                ),
            ));
        }
        if chunk.shape() != len.as_slice() {
            return Err(OutputError::invalid(
                &self.dir,
                "chunk",
                format!(
                    "chunk {idx:?} has shape {:?}, expected {len:?}",
                    chunk.shape()
                ),
            ));
        }
        let zidx: Vec<u64> = idx.iter().map(|&i| i as u64).collect();
        if self.unit != self.meta.chunks {
            return self.write_shard(&zidx, |body| self.encode_shard(chunk, body));
        }
        let padded = self.padded(chunk, &self.unit)?;
        // The executor's threads are the only compute threads: no codec parallelism inside one write.
        let options = CodecOptions::default().with_concurrent_target(1);
        let res = crate::with_chunk!(padded.as_ref(), a => self.array.store_chunk_opt(&zidx, a, &options));
        res.map_err(|e| OutputError::write(&self.dir, format!("store chunk {idx:?}"), e))
    }

    /// The inner chunk shape, when the array is sharded: the pieces [`ZarrWriter::write_tiles`] takes.
    pub fn tile_shape(&self) -> Option<&[usize]> {
        (self.unit != self.meta.chunks).then_some(self.meta.chunks.as_slice())
    }

    /// Writes shard `idx` of a sharded array from its inner chunks, already cut: `tiles` in row-major order of
    /// the shard's grid of inner chunks (those inside the array), each of the array's type, as
    /// [`Chunk::split_grid`] would cut the shard's block. Like [`ZarrWriter::write_chunk`] otherwise.
    ///
    /// # Errors
    /// When the array is not sharded, `idx` is outside the grid, a tile's type or shape is wrong or one is
    /// missing, or encoding or storing fails.
    pub fn write_tiles(&self, idx: &[usize], tiles: &[Chunk]) -> Result<(), OutputError> {
        let len = self.unit_region(idx)?;
        if self.tile_shape().is_none() {
            return Err(OutputError::invalid(
                &self.dir,
                "tiles",
                "the array is not sharded",
            ));
        }
        let zidx: Vec<u64> = idx.iter().map(|&i| i as u64).collect();
        self.write_shard(&zidx, |body| self.encode_tiles(&len, tiles, body))
    }

    /// The shape of unit `idx` of the write grid (clipped at the array's far edges).
    fn unit_region(&self, idx: &[usize]) -> Result<Vec<usize>, OutputError> {
        let layout = self.write_grid();
        let grid = layout.grid();
        if idx.len() != grid.len() || idx.iter().zip(&grid).any(|(i, g)| i >= g) {
            return Err(OutputError::invalid(
                &self.dir,
                "idx",
                format!("chunk {idx:?} is outside the grid {grid:?}"),
            ));
        }
        Ok(layout.chunk_region(idx).1)
    }
}

impl ZarrWriter {
    /// `chunk` as is when it has shape `full`, else in the top-left corner of a zero-filled chunk of that shape
    /// (an edge chunk filled up with the fill value, as Zarr stores edge chunks).
    fn padded<'a>(
        &self,
        chunk: &'a Chunk,
        full: &[usize],
    ) -> Result<std::borrow::Cow<'a, Chunk>, OutputError> {
        if chunk.shape() == full {
            return Ok(std::borrow::Cow::Borrowed(chunk));
        }
        let mut out = Chunk::zeros(chunk.dtype(), full);
        out.paste(&vec![0; full.len()], chunk)
            .map_err(|m| OutputError::invalid(&self.dir, "chunk", m))?;
        Ok(std::borrow::Cow::Owned(out))
    }

    /// Encodes and stores one shard. The inner chunks are cut with bulk copies and compressed with the zstd
    /// crate exactly as zarrs' `zstd` codec does (no checksum); the layout is the array's `sharding_indexed`
    /// codec: encoded chunks, then the index (little-endian `(offset, nbytes)` per chunk in C order, `u64::MAX`
    /// pairs for chunks of fill value) and its crc32c. zarrs' own shard encoder extracts inner chunks element
    /// range by element range, which costs more than the FFT for the post's `(N, 10, 10)` chunks.
    ///
    /// The shard is assembled in a page-aligned buffer and written with direct I/O by the array's writing
    /// thread ([`super::direct::FileWriter`]), while the calling thread goes back to computing.
    fn write_shard(
        &self,
        shard: &[u64],
        encode: impl Fn(&mut PageBuf) -> Result<(), OutputError>,
    ) -> Result<(), OutputError> {
        let writer = match &self.files {
            Some(ShardSink::Files(w)) => w,
            Some(ShardSink::S3(uploads)) => return self.upload_shard(uploads, shard, encode),
            None => {
                return Err(OutputError::invalid(
                    &self.dir,
                    "shard",
                    "the array is not sharded",
                ));
            }
        };
        let mut body = writer.buffer();
        if let Err(e) = encode(&mut body) {
            writer.recycle(body);
            return Err(e);
        }
        let path = self.dir.join(self.array.chunk_key(shard).as_str());
        if body.is_empty() {
            writer.recycle(body);
            // Every chunk is fill value: like zarrs, store nothing (and no stale shard of an earlier attempt).
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(OutputError::io(&path, "remove shard", e))
                }
                _ => Ok(()),
            };
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| OutputError::io(parent, "create directory", e))?;
        }
        writer
            .submit(path, body)
            .map_err(|(p, e)| OutputError::io(&p, "write shard", e))
    }

    /// Uploads one shard to S3 in the background. A shard whose chunks are all fill value is not stored (the
    /// run's prefix is new, so there is no stale object to remove).
    fn upload_shard(
        &self,
        uploads: &Uploads,
        shard: &[u64],
        encode: impl Fn(&mut PageBuf) -> Result<(), OutputError>,
    ) -> Result<(), OutputError> {
        let mut body = PageBuf::default();
        encode(&mut body)?;
        if body.is_empty() {
            return Ok(());
        }
        let key = format!(
            "{}{}",
            self.s3_prefix.as_deref().unwrap_or_default(),
            self.array.chunk_key(shard).as_str()
        );
        uploads
            .submit(key, bytes::Bytes::copy_from_slice(body.as_bytes()))
            .map_err(|(k, e)| OutputError::write(Path::new(&k), "upload shard", e))
    }

    /// A mark of the writes submitted so far, for [`ZarrWriter::wait_written`] (0 for unsharded arrays, whose
    /// chunks are in their files when [`ZarrWriter::write_chunk`] returns).
    pub fn write_mark(&self) -> u64 {
        match &self.files {
            Some(ShardSink::Files(w)) => w.submitted(),
            Some(ShardSink::S3(u)) => u.submitted(),
            None => 0,
        }
    }

    /// Waits until the shards submitted before `mark` are in their files (or objects).
    ///
    /// # Errors
    /// The first shard that could not be written.
    pub fn wait_written(&self, mark: u64) -> Result<(), OutputError> {
        match &self.files {
            Some(ShardSink::Files(w)) => w
                .wait_written(mark)
                .map_err(|(p, e)| OutputError::io(&p, "write shard", e)),
            Some(ShardSink::S3(u)) => u
                .wait_written(mark)
                .map_err(|(k, e)| OutputError::write(Path::new(&k), "upload shard", e)),
            None => Ok(()),
        }
    }

    /// Waits until every shard is written (a no-op for unsharded arrays, whose chunks are written by
    /// [`ZarrWriter::write_chunk`] itself).
    ///
    /// # Errors
    /// The first shard that could not be written.
    pub fn finish(mut self) -> Result<(), OutputError> {
        match self.files.take() {
            Some(ShardSink::Files(w)) => w
                .finish()
                .map_err(|(p, e)| OutputError::io(&p, "write shard", e)),
            Some(ShardSink::S3(u)) => u
                .finish()
                .map_err(|(k, e)| OutputError::write(Path::new(&k), "upload shard", e)),
            None => Ok(()),
        }
    }

    /// Appends the shard of `block` to `body`: its encoded inner chunks, index and crc32c; nothing when every
    /// inner chunk is fill value. The block is cut into its inner chunks in one pass, into per-thread buffers
    /// that are reused from shard to shard.
    fn encode_shard(&self, block: &Chunk, body: &mut PageBuf) -> Result<(), OutputError> {
        let inner: Vec<usize> = self.meta.chunks.iter().map(|&c| c.max(1)).collect();
        INNER_BUFS.with(|bufs| {
            let mut bufs = bufs.borrow_mut();
            let lens = block.split_grid_le_bytes(&inner, &mut bufs);
            self.encode_inner_chunks(
                block.shape(),
                block.dtype(),
                |i| {
                    Ok((
                        std::borrow::Cow::Borrowed(bufs[i].as_slice()),
                        lens[i].clone(),
                    ))
                },
                body,
            )
        })
    }

    /// Appends the shard of a block of shape `shape` given as its inner chunks (`tiles`, in row-major order of
    /// the block's grid of inner chunks, as [`Chunk::split_grid`] cuts it) to `body`, like
    /// [`ZarrWriter::encode_shard`] without the cut.
    fn encode_tiles(
        &self,
        shape: &[usize],
        tiles: &[Chunk],
        body: &mut PageBuf,
    ) -> Result<(), OutputError> {
        let tile = |i: usize| {
            let t = tiles.get(i).ok_or_else(|| {
                OutputError::invalid(&self.dir, "tiles", format!("no inner chunk {i}"))
            })?;
            if t.dtype() != self.meta.dtype {
                return Err(OutputError::invalid(
                    &self.dir,
                    "tiles",
                    format!(
                        "inner chunk {i} is {}, the array is {}",
                        t.dtype(),
                        self.meta.dtype
                    ),
                ));
            }
            let raw = t.le_bytes_slice().map_or_else(
                || std::borrow::Cow::Owned(t.to_le_bytes()),
                std::borrow::Cow::Borrowed,
            );
            Ok((raw, t.shape().to_vec()))
        };
        let count: usize = shape
            .iter()
            .zip(&self.meta.chunks)
            .map(|(s, c)| s.div_ceil((*c).max(1)))
            .product();
        if tiles.len() != count {
            return Err(OutputError::invalid(
                &self.dir,
                "tiles",
                format!("{} inner chunks for a block of {count}", tiles.len()),
            ));
        }
        self.encode_inner_chunks(shape, self.meta.dtype, tile, body)
    }

    /// Appends the encoded inner chunks of a block of shape `shape` (inner chunk `i` of its grid: `chunk(i)`, its
    /// little-endian bytes and shape), then the shard index and its crc32c, to `body`; nothing when every inner
    /// chunk is fill value.
    fn encode_inner_chunks<'b>(
        &self,
        shape: &[usize],
        dtype: DType,
        chunk: impl Fn(usize) -> Result<(std::borrow::Cow<'b, [u8]>, Vec<usize>), OutputError>,
        body: &mut PageBuf,
    ) -> Result<(), OutputError> {
        let inner: Vec<usize> = self.meta.chunks.iter().map(|&c| c.max(1)).collect();
        let per: Vec<usize> = self.unit.iter().zip(&inner).map(|(u, c)| u / c).collect();
        let have: Vec<usize> = shape
            .iter()
            .zip(&inner)
            .map(|(h, c)| h.div_ceil(*c))
            .collect();
        let mut index = Vec::with_capacity(per.iter().product::<usize>() * 16 + 4);
        let mut next = 0;
        for p in crate::array::grid_indices(&per) {
            let at = body.len() as u64;
            // Inner chunks beyond the block (at the array's far edges) are fill value.
            let stored = if p.iter().zip(&have).all(|(i, h)| i < h) {
                let (raw, len) = chunk(next)?;
                let want: Vec<usize> = p
                    .iter()
                    .zip(&inner)
                    .zip(shape)
                    .map(|((i, c), s)| (*c).min(s - i * c))
                    .collect();
                if len != want {
                    return Err(OutputError::invalid(
                        &self.dir,
                        "chunk",
                        format!("inner chunk {p:?} has shape {len:?}, expected {want:?}"),
                    ));
                }
                next += 1;
                self.encode_inner(&raw, &len, dtype, &inner, body)?
            } else {
                false
            };
            let (offset, len) = if stored {
                (at, body.len() as u64 - at)
            } else {
                (u64::MAX, u64::MAX)
            };
            index.extend_from_slice(&offset.to_le_bytes());
            index.extend_from_slice(&len.to_le_bytes());
        }
        if !body.is_empty() {
            let crc = crc32c::crc32c(&index);
            body.extend_from_slice(&index);
            body.extend_from_slice(&crc.to_le_bytes());
        }
        Ok(())
    }

    /// Appends the encoded bytes of one inner chunk (`raw`: its little-endian bytes, shape `len`, zero-padded
    /// here to `inner` at the array's far edges) to `out`; false (nothing appended) when it is all fill value
    /// (0).
    fn encode_inner(
        &self,
        raw: &[u8],
        len: &[usize],
        dtype: DType,
        inner: &[usize],
        out: &mut PageBuf,
    ) -> Result<bool, OutputError> {
        let padded;
        let raw: &[u8] = if len == inner {
            raw
        } else {
            let part = Chunk::from_le_bytes(dtype, len, raw)
                .map_err(|m| OutputError::invalid(&self.dir, "chunk", m))?;
            padded = self.padded(&part, inner)?.to_le_bytes();
            &padded
        };
        if is_zero(raw) {
            return Ok(false);
        }
        let Some(level) = self.zstd_level else {
            out.extend_from_slice(raw);
            return Ok(true);
        };
        ZSTD.with(|z| {
            let mut z = z.borrow_mut();
            let hash_log = fast_hash_log(level, raw.len());
            if z.as_ref()
                .is_none_or(|(l, h, _)| (*l, *h) != (level, hash_log))
            {
                let mut c = zstd::bulk::Compressor::new(level)
                    .map_err(|e| OutputError::write(&self.dir, "start zstd", e))?;
                if let Some(h) = hash_log {
                    c.set_parameter(zstd::zstd_safe::CParameter::HashLog(h))
                        .map_err(|e| {
                            OutputError::write(&self.dir, "set zstd's hash table size", e)
                        })?;
                }
                *z = Some((level, hash_log, c));
            }
            let Some((_, _, c)) = z.as_mut() else {
                return Ok(false);
            };
            // Compressed straight into the shard: room for the worst case, then keep what was written.
            let spare = out.spare(zstd::zstd_safe::compress_bound(raw.len()));
            let n = c
                .compress_to_buffer(raw, spare)
                .map_err(|e| OutputError::write(&self.dir, "zstd", e))?;
            out.commit(n);
            Ok(true)
        })
    }
}

/// The hash table size (log2 of its entries) for zstd's fastest levels (1 and 2) on a chunk of `len` bytes:
/// about one entry per byte, from 2^12 up to 2^18 (a 1 MiB table). zstd sizes the table of these levels for
/// speed on any input (2^13-2^15 entries), so on chunks of hundreds of KB it forgets a position long before the
/// data repeats it: the mirrored half of a two-sided power spectrum (row `n - k` of a chunk is row `k`) went
/// unmatched. With the larger table the post's spectra come out about 25% smaller (0.55 instead of 0.73 of
/// their raw size) for the same compression time. `None`: zstd's own parameters for other levels.
fn fast_hash_log(level: i32, len: usize) -> Option<u32> {
    (1..=2)
        .contains(&level)
        .then(|| (usize::BITS - len.leading_zeros()).clamp(12, 18))
}

/// Whether every byte is 0 (checked 64 bytes at a time, which vectorises).
fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

thread_local! {
    /// A zstd context per thread (and level and hash table size), reused from chunk to chunk.
    #[allow(clippy::type_complexity)]
    static ZSTD: std::cell::RefCell<Option<(i32, Option<u32>, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    /// The raw bytes of the inner chunks of the shard being assembled, reused from shard to shard.
    static INNER_BUFS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads a whole Zarr v3 array written by [`ZarrWriter`] (uint8, uint16, float32 or float64) into one chunk.
///
/// # Errors
/// When the array cannot be opened or read, or has another element type.
pub fn read_all(dir: &Path) -> Result<Chunk, OutputError> {
    let meta_path = dir.join("zarr.json");
    let text =
        std::fs::read_to_string(&meta_path).map_err(|e| OutputError::io(&meta_path, "read", e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| OutputError::write(&meta_path, "parse JSON", e))?;
    let dt = json
        .get("data_type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let store = FilesystemStore::new(dir)
        .map(Arc::new)
        .map_err(|e| OutputError::write(dir, "open Zarr store", e))?;
    let array =
        Array::open(store, "/").map_err(|e| OutputError::write(dir, "open Zarr array", e))?;
    let all: ArraySubset = array.subset_all();
    let read = |e: zarrs::array::ArrayError| OutputError::write(dir, "read array", e);
    Ok(match dt.as_str() {
        "uint8" => Chunk::U8(
            array
                .retrieve_array_subset::<ArrayD<_>>(&all)
                .map_err(read)?,
        ),
        "uint16" => Chunk::U16(
            array
                .retrieve_array_subset::<ArrayD<_>>(&all)
                .map_err(read)?,
        ),
        "float32" => Chunk::F32(
            array
                .retrieve_array_subset::<ArrayD<_>>(&all)
                .map_err(read)?,
        ),
        "float64" => Chunk::F64(
            array
                .retrieve_array_subset::<ArrayD<_>>(&all)
                .map_err(read)?,
        ),
        other => {
            return Err(OutputError::invalid(
                dir,
                "data_type",
                format!("unsupported element type {other:?}"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut todo = vec![dir.join("c")];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).expect("test array") {
                let p = e.expect("test array").path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.push((
                        p.strip_prefix(dir).expect("test array").to_path_buf(),
                        std::fs::read(&p).expect("test array"),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_shard_written_from_its_inner_chunks_is_the_shard_written_whole() {
        // 3 x 7 x 23 float32 in (3, 2, 5) chunks, shards of (3, 4, 10): edge shards and edge inner chunks on
        // both cut axes, some inner chunks all zero (not stored).
        let meta = ArrayMeta {
            shape: vec![3, 7, 23],
            chunks: vec![3, 2, 5],
            dtype: DType::Float32,
        };
        let options = ZarrOptions {
            shard: Some(vec![3, 4, 10]),
            zstd_level: Some(1),
        };
        let tmp = tempfile::tempdir().expect("test array");
        let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));
        let open = |d: &Path| {
            ZarrWriter::create_with(
                &ArrayPlace::Dir(d.to_path_buf()),
                &meta,
                &options,
                Default::default(),
            )
            .expect("test array")
        };
        let (a, b) = (open(&whole), open(&cut));
        assert_eq!(b.tile_shape(), Some(&[3usize, 2, 5][..]));
        for idx in crate::array::grid_indices(&[1, 2, 3]) {
            let len = a.unit_region(&idx).expect("test array");
            let n: usize = len.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| {
                    if (i / 7) % 3 == 0 {
                        0.0
                    } else {
                        (i * 31 % 97) as f32 * 1.5
                    }
                })
                .collect();
            let block =
                Chunk::F32(ArrayD::from_shape_vec(ndarray::IxDyn(&len), v).expect("test array"));
            a.write_chunk(&idx, &block).expect("test array");
            b.write_tiles(&idx, &block.split_grid(&meta.chunks))
                .expect("test array");
        }
        a.finish().expect("test array");
        b.finish().expect("test array");
        let (fa, fb) = (shard_files(&whole), shard_files(&cut));
        assert_eq!(fa.len(), 6);
        assert_eq!(fa, fb);
    }

    #[test]
    fn missing_or_mistyped_inner_chunks_are_refused() {
        let meta = ArrayMeta {
            shape: vec![2, 4, 10],
            chunks: vec![2, 2, 5],
            dtype: DType::Float32,
        };
        let options = ZarrOptions {
            shard: Some(vec![2, 4, 10]),
            zstd_level: None,
        };
        let tmp = tempfile::tempdir().expect("test array");
        let z = ZarrWriter::create_with(
            &ArrayPlace::Dir(tmp.path().to_path_buf()),
            &meta,
            &options,
            Default::default(),
        )
        .expect("test array");
        let block = Chunk::F32(ArrayD::from_elem(ndarray::IxDyn(&[2, 4, 10]), 1.0));
        let tiles = block.split_grid(&meta.chunks);
        let e = z
            .write_tiles(&[0, 0, 0], &tiles[..3])
            .expect_err("refused")
            .to_string();
        assert!(e.contains("3 inner chunks for a block of 4"), "{e}");
        let mut wrong = tiles.clone();
        wrong[2] = Chunk::F64(ArrayD::from_elem(ndarray::IxDyn(&[2, 2, 5]), 1.0));
        let e = z
            .write_tiles(&[0, 0, 0], &wrong)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("inner chunk 2 is float64"), "{e}");
        let e = z
            .write_tiles(&[0, 1, 0], &tiles)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("outside the grid"), "{e}");
    }
}
