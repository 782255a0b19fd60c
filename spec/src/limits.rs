//! Upper bounds on every number that comes from outside the process: what a source spec asks for, what an
//! image header, a TIFF directory or a Zarr metadata document says, how long an HTTP or S3 body is, what a chunk
//! frame's header announces. A larger value is an error naming the field, file, URL or key, never an overflow,
//! a panic, an attempt to allocate petabytes or a read that never ends. Validation, the planner, the sources and
//! the frame readers call the same checks, so they give the same messages. (Reading a bounded HTTP body is
//! the engine's: `arrayjob_engine::source::limits::read_body`.) `docs/manifest.md` ("Limits") lists
//! them with the reasons for their values.

use crate::error::ConfigError;

/// Most slices a source may have (length of axis 0: a spec's range, a TIFF's pages, a Zarr array's
/// `shape[0]`); also the largest `slicesPerChunk`.
pub const MAX_SLICES: u64 = 10_000_000;
/// Longest side of a slice, in pixels (`synthetic.height`/`width`, `sliceShape`, and the width and height an
/// image header, a TIFF page or a Zarr array's shape declares).
pub const MAX_SLICE_SIDE: usize = 65_536;
/// Most HTTP requests in flight at once.
pub const MAX_CONCURRENCY: usize = 1024;
/// Largest HTTP or S3 response body of one slice, bytes (1 GiB; a 65536 x 65536 uint16 TIFF is 8 GiB, but no EM
/// slice served over HTTP comes near this).
pub const MAX_SLICE_BYTES: u64 = 1 << 30;
/// Largest chunk (or reduction partial) a plan may make, bytes: the planner refuses a stage whose chunks are
/// larger (naming it), so no frame a peer or a spill file holds can be larger either, and a frame header that
/// announces more is refused before anything is allocated. 16 GiB: chunks are meant to be tens of MB.
pub const MAX_CHUNK_BYTES: u64 = 16 << 30;
/// Most stages of a job: 1000. Each select keeps its index lists (8 bytes per index of an axis of up to
/// [`MAX_SLICES`]), so the count bounds what a manifest costs to validate and plan.
pub const MAX_STAGES: usize = 1000;
/// Most values of one TIFF directory entry (strip or tile offsets and byte counts, a string's bytes): 1,048,576,
/// checked in the directory before the `tiff` crate reads it (which sizes its buffers from the count), room for
/// a 65536 x 65536 page in 64 x 64 tiles.
pub const MAX_TIFF_TAG_VALUES: u64 = 1 << 20;
/// Most chunks of one stage (the source's load tasks included): 1,000,000. A plan's task graph takes a few
/// hundred bytes per task, so a Zarr array of 10 million one-slice chunks would take gigabytes and a minute just
/// to plan; raise `slicesPerChunk` (or the stage's chunks) instead.
pub const MAX_CHUNKS_PER_STAGE: u64 = 1_000_000;
/// Most pieces a rechunk cuts its input's chunks into: 4,000,000 (the post's
/// 10,000-slice FFT rechunk cuts 650,000).
pub const MAX_PIECES_PER_STAGE: u64 = 4_000_000;
/// Largest object of the job's own bucket read whole (a chunk frame spilled to S3, a batch of pieces shipped for
/// one merge, a ledger): a chunk's frames at most, with room for their headers.
pub const MAX_SCRATCH_OBJECT_BYTES: u64 = 2 * MAX_CHUNK_BYTES;
/// Largest body of one read of a `tiff` or `zarr` source's file, URL or key (a whole Zarr chunk or shard, a
/// range of a TIFF): 1 GiB.
pub const MAX_OBJECT_BYTES: u64 = 1 << 30;
/// Largest Zarr metadata document (`zarr.json`, `.zarray`, `.zattrs`, `.zgroup`, `.zmetadata`): 64 MiB, far
/// more than the consolidated metadata of thousands of arrays.
pub const MAX_METADATA_BYTES: u64 = 64 << 20;
/// Most bytes of whole files kept in memory for servers that do not honour `Range` (each such file, and all of
/// them together): 256 MiB. A larger file on such a server is refused, naming its URL: serve it from a server
/// that honours ranges (any static file server, S3) or copy it locally.
pub const MAX_UNRANGED_BYTES: u64 = 256 << 20;
/// Largest buffer the `tiff` crate may make for one directory entry's values (it holds them in about 32 bytes
/// each): 64 MiB, beyond [`MAX_TIFF_TAG_VALUES`] values of any type.
pub const MAX_TIFF_TAG_BYTES: u64 = 64 << 20;

fn config(field: &str, message: String) -> ConfigError {
    ConfigError::new(field, message)
}

/// Number of slices of the index range `[start, stop)` of the source section `section` (e.g.
/// `spec.source.files`).
///
/// # Errors
/// Naming `section.stop` when the range is empty or longer than [`MAX_SLICES`].
pub fn slice_count(section: &str, start: u64, stop: u64) -> Result<usize, ConfigError> {
    let field = format!("{section}.stop");
    if stop <= start {
        return Err(config(
            &field,
            format!("empty range [{start}, {stop}): stop must be greater than start"),
        ));
    }
    slices(&field, stop - start)
}

/// Checks a slice count (or `slicesPerChunk`): at least 1 and at most [`MAX_SLICES`].
///
/// # Errors
/// Naming `field` when it is out of that range.
pub fn slices(field: &str, n: u64) -> Result<usize, ConfigError> {
    if n == 0 {
        return Err(config(field, "must be at least 1".into()));
    }
    if n > MAX_SLICES {
        return Err(config(
            field,
            format!("{n} slices is more than the limit of {MAX_SLICES}"),
        ));
    }
    usize::try_from(n).map_err(|_| config(field, format!("{n} does not fit this machine")))
}

/// Checks one side of a slice: at most [`MAX_SLICE_SIDE`] pixels (positivity is checked by the caller, whose
/// message says more, e.g. "a multiple of 4").
///
/// # Errors
/// Naming `field` when the side is too long.
pub fn slice_side(field: &str, v: usize) -> Result<(), ConfigError> {
    if v > MAX_SLICE_SIDE {
        return Err(config(
            field,
            format!("{v} pixels is more than the limit of {MAX_SLICE_SIDE}"),
        ));
    }
    Ok(())
}

/// Checks an HTTP `concurrency`: between 1 and [`MAX_CONCURRENCY`].
///
/// # Errors
/// Naming `field` when it is out of that range.
pub fn concurrency(field: &str, v: usize) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(config(field, "must be at least 1".into()));
    }
    if v > MAX_CONCURRENCY {
        return Err(config(
            field,
            format!("{v} requests in flight is more than the limit of {MAX_CONCURRENCY}"),
        ));
    }
    Ok(())
}

/// Checks a slice side read from a file (an image header, a TIFF page, a Zarr array's shape): 1 to
/// [`MAX_SLICE_SIDE`].
///
/// # Errors
/// A message naming `what` (e.g. `width`) and the value, for the caller's error, which names the file.
pub fn header_side(what: &str, v: u64) -> Result<usize, String> {
    if v == 0 {
        return Err(format!("{what} is 0"));
    }
    usize::try_from(v)
        .ok()
        .filter(|&n| n <= MAX_SLICE_SIDE)
        .ok_or_else(|| format!("{what} of {v} pixels is more than the limit of {MAX_SLICE_SIDE}"))
}

/// Checks a number of slices read from a file (a Zarr array's `shape[0]`): 1 to [`MAX_SLICES`].
///
/// # Errors
/// A message naming `what` and the value.
pub fn header_slices(what: &str, v: u64) -> Result<usize, String> {
    if v == 0 {
        return Err(format!("{what} is 0: the source has no slices"));
    }
    usize::try_from(v)
        .ok()
        .filter(|_| v <= MAX_SLICES)
        .ok_or_else(|| format!("{what} of {v} slices is more than the limit of {MAX_SLICES}"))
}

/// Bytes of a chunk of `shape` with elements of `size` bytes; `None` when that overflows a `u64`.
pub fn chunk_bytes(shape: &[usize], size: usize) -> Option<u64> {
    shape
        .iter()
        .try_fold(size as u64, |a, &n| a.checked_mul(n as u64))
}
