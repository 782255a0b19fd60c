//! Self-describing binary frames of chunks: what a chunk is written as whenever it leaves the process's
//! memory (spilled to disk today; sent to a peer or to S3 later).
//!
//! A frame says what it holds, so a reader needs nothing but the bytes, and it carries a checksum, so a
//! truncated or corrupted frame is an error rather than wrong numbers:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `AJCF` |
//! | 1 | format version (1) |
//! | 1 | element type: 0 uint8, 1 uint16, 2 float32, 3 float64; 16 a reduction partial |
//! | 1 | number of dimensions `d` (at most 32) |
//! | 1 | reserved (0) |
//! | 8 x `d` | shape, u64 little-endian each |
//! | 8 | payload length in bytes, u64 little-endian |
//! | payload | the elements, little-endian, row-major (a partial: `Partial::to_bytes`, shape = its output's) |
//! | 4 | crc32c of everything above, u32 little-endian |
//!
//! Every number of a header is checked before it sizes anything: at most [`MAX_DIMS`] dimensions, extents and
//! lengths that fit this machine, a chunk's payload equal to its shape times its element size, and any payload
//! at most [`MAX_PAYLOAD_BYTES`] (no chunk or partial of a plan is larger). A receiver fills a chunk through a
//! [`PayloadFill`], whose room grows with the bytes that arrive: a header announcing gigabytes costs nothing
//! until they come.

use crate::array::{Chunk, DType};
use crate::data::Data;
use crate::kernels::reduce::Partial;
use crate::source::limits;

/// First bytes of every frame.
pub const MAGIC: &[u8; 4] = b"AJCF";
/// The format version written (and the only one read).
pub const VERSION: u8 = 1;
/// Most dimensions a frame may declare.
pub const MAX_DIMS: usize = 32;
/// Largest payload a frame may declare, bytes: [`limits::MAX_CHUNK_BYTES`], the largest chunk or partial a plan
/// makes.
pub const MAX_PAYLOAD_BYTES: u64 = limits::MAX_CHUNK_BYTES;
/// Longest header: magic, version, type, rank, reserved, [`MAX_DIMS`] extents, payload length.
pub const MAX_HEADER_BYTES: usize = 8 + 8 * MAX_DIMS + 8;
/// Element type code of a reduction partial (its payload is [`Partial::to_bytes`]).
const PARTIAL: u8 = 16;

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes end before the frame does.
    #[error("truncated frame: {0}")]
    Truncated(&'static str),
    /// The bytes do not start with [`MAGIC`].
    #[error("not a chunk frame (bad magic)")]
    BadMagic,
    /// Another version of the format.
    #[error("chunk frame version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    /// An element type code this build does not know.
    #[error("unknown element type code {0}")]
    DType(u8),
    /// The header does not describe a possible chunk.
    #[error("invalid frame header: {0}")]
    Header(String),
    /// The checksum does not match the content.
    #[error("chunk frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The crc32c in the frame.
        stored: u32,
        /// The crc32c of the bytes read.
        computed: u32,
    },
}

fn dtype_code(d: DType) -> u8 {
    match d {
        DType::Uint8 => 0,
        DType::Uint16 => 1,
        DType::Float32 => 2,
        DType::Float64 => 3,
    }
}

fn dtype_from_code(c: u8) -> Result<DType, FrameError> {
    Ok(match c {
        0 => DType::Uint8,
        1 => DType::Uint16,
        2 => DType::Float32,
        3 => DType::Float64,
        other => return Err(FrameError::DType(other)),
    })
}

/// The frame of `data`.
pub fn encode(data: &Data) -> Vec<u8> {
    let (header, payload, crc) = encode_parts(data);
    let mut out = Vec::with_capacity(header.len() + payload.len() + 4);
    out.extend_from_slice(&header);
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc);
    out
}

/// The frame of `data` in three parts, to send without copying the elements: the header, the payload
/// (borrowed from a contiguous chunk), the checksum.
pub fn encode_parts(data: &Data) -> (Vec<u8>, std::borrow::Cow<'_, [u8]>, [u8; 4]) {
    let (header, payload) = encode_unchecked(data);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header), &payload);
    (header, payload, crc.to_le_bytes())
}

/// The header and payload of `data`'s frame, without the checksum: for a writer that computes it (crc32c of
/// the header, then of the payload, u32 little-endian after the payload) as it sends the payload.
pub fn encode_unchecked(data: &Data) -> (Vec<u8>, std::borrow::Cow<'_, [u8]>) {
    let (code, shape, payload) = match data {
        Data::Chunk(c) => (dtype_code(c.dtype()), c.shape(), c.as_le_bytes()),
        Data::Partial(p) => (PARTIAL, p.shape(), std::borrow::Cow::Owned(p.to_bytes())),
    };
    (header(code, shape, payload.len()), payload)
}

fn header(code: u8, shape: &[usize], payload_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 8 * shape.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(code);
    // Chunks have a handful of dimensions; `decode` refuses more than MAX_DIMS.
    out.push(u8::try_from(shape.len()).unwrap_or(u8::MAX));
    out.push(0);
    for &n in shape {
        out.extend_from_slice(&(n as u64).to_le_bytes());
    }
    out.extend_from_slice(&(payload_len as u64).to_le_bytes());
    out
}

/// What a frame's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHeader {
    /// Element type of a chunk; `None` for a reduction partial.
    pub dtype: Option<DType>,
    /// The value's shape.
    pub shape: Vec<usize>,
    /// Bytes of the payload.
    pub payload_len: usize,
    /// Bytes of the header (the payload starts there).
    pub header_len: usize,
}

impl FrameHeader {
    /// Bytes of the whole frame (saturating: never wraps to a small length, whatever the header says).
    pub fn frame_len(&self) -> usize {
        self.header_len
            .saturating_add(self.payload_len)
            .saturating_add(4)
    }
}

/// Reads the header at the start of `frame` (which may hold the header only: a reader of a stream calls it
/// until it stops answering [`FrameError::Truncated`]).
///
/// # Errors
/// [`FrameError::Truncated`] when the bytes end inside the header; other [`FrameError`]s when it is not a
/// valid header (magic, version, type, dimensions, a chunk's payload length against its shape).
pub fn parse_header(frame: &[u8]) -> Result<FrameHeader, FrameError> {
    let header = frame.get(..8).ok_or(FrameError::Truncated("header"))?;
    if &header[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if header[4] != VERSION {
        return Err(FrameError::Version(header[4]));
    }
    let code = header[5];
    let dtype = if code == PARTIAL {
        None
    } else {
        Some(dtype_from_code(code)?)
    };
    let ndim = usize::from(header[6]);
    if ndim > MAX_DIMS {
        return Err(FrameError::Header(format!("{ndim} dimensions")));
    }
    let mut pos = 8;
    let mut u64_at = |what: &'static str| -> Result<u64, FrameError> {
        let b = frame.get(pos..pos + 8).ok_or(FrameError::Truncated(what))?;
        pos += 8;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let mut shape = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        let n = u64_at("shape")?;
        shape.push(usize::try_from(n).map_err(|_| FrameError::Header(format!("extent {n}")))?);
    }
    let len = u64_at("payload length")?;
    if len > MAX_PAYLOAD_BYTES {
        return Err(FrameError::Header(format!(
            "payload of {len} bytes is more than the limit of {MAX_PAYLOAD_BYTES} bytes per frame"
        )));
    }
    let payload_len =
        usize::try_from(len).map_err(|_| FrameError::Header(format!("payload of {len} bytes")))?;
    if let Some(dtype) = dtype {
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |a, &n| a.checked_mul(n))
            .ok_or_else(|| FrameError::Header(format!("shape {shape:?} overflows")))?;
        if payload_len != expected {
            return Err(FrameError::Header(format!(
                "payload of {len} bytes for a {dtype} chunk of shape {shape:?} ({expected} bytes)"
            )));
        }
    }
    Ok(FrameHeader {
        dtype,
        shape,
        payload_len,
        header_len: pos,
    })
}

/// The value in `frame` (the whole slice must be one frame).
///
/// # Errors
/// [`FrameError`] when the bytes are truncated, too long, not a frame, of another version, inconsistent
/// (payload length against shape and type) or corrupted (checksum).
pub fn decode(frame: &[u8]) -> Result<Data, FrameError> {
    let h = parse_header(frame)?;
    let total = h.frame_len();
    if frame.len() < total {
        return Err(FrameError::Truncated("payload"));
    }
    if frame.len() > total {
        return Err(FrameError::Header(format!(
            "{} bytes after the checksum",
            frame.len() - total
        )));
    }
    let body_end = total - 4;
    let stored = u32::from_le_bytes(frame[body_end..].try_into().unwrap_or([0; 4]));
    let computed = crc32c::crc32c(&frame[..body_end]);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    let payload = &frame[h.header_len..body_end];
    match h.dtype {
        Some(dtype) => Chunk::from_le_bytes(dtype, &h.shape, payload)
            .map(Data::Chunk)
            .map_err(FrameError::Header),
        None => {
            let p = Partial::from_bytes(payload).map_err(|e| FrameError::Header(e.to_string()))?;
            if p.shape() != h.shape.as_slice() {
                return Err(FrameError::Header(format!(
                    "partial of shape {:?} in a frame of shape {:?}",
                    p.shape(),
                    h.shape
                )));
            }
            Ok(Data::Partial(p))
        }
    }
}

/// Room reserved up front for a chunk's elements: a chunk up to this size is allocated whole when its header
/// arrives (and read straight into it); a larger one grows, doubling, as its bytes arrive.
const FIRST_ROOM: usize = 64 << 20;

/// The elements of a chunk being received from a frame, in a buffer of the chunk's type.
#[derive(Debug)]
enum Elements {
    U8(Vec<u8>),
    U16(Vec<u16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

macro_rules! with_elements {
    ($e:expr, $v:ident => $body:expr) => {
        match $e {
            Elements::U8($v) => $body,
            Elements::U16($v) => $body,
            Elements::F32($v) => $body,
            Elements::F64($v) => $body,
        }
    };
}

/// A chunk being filled from the payload of its frame, as the bytes arrive (a socket, the pieces of an HTTP
/// body): the caller writes into [`PayloadFill::room`] and says how much it wrote. The buffer is the chunk's own
/// (no copy at the end) and grows with what arrived, so a header that announces more than is sent costs at
/// most [`FIRST_ROOM`] bytes, or twice what was sent.
#[derive(Debug)]
pub struct PayloadFill {
    shape: Vec<usize>,
    dtype: DType,
    elements: Elements,
    /// Bytes of the payload.
    total: usize,
    /// Bytes written so far.
    filled: usize,
}

impl PayloadFill {
    /// Room for the chunk a parsed header announces; `None` for a reduction partial (decoded whole).
    pub fn new(h: &FrameHeader) -> Option<PayloadFill> {
        let dtype = h.dtype?;
        // `parse_header` checked that the payload is the shape's elements times their size.
        let first = h.payload_len.min(FIRST_ROOM) / dtype.size();
        let elements = match dtype {
            DType::Uint8 => Elements::U8(vec![0; first]),
            DType::Uint16 => Elements::U16(vec![0; first]),
            DType::Float32 => Elements::F32(vec![0.0; first]),
            DType::Float64 => Elements::F64(vec![0.0; first]),
        };
        Some(PayloadFill {
            shape: h.shape.clone(),
            dtype,
            elements,
            total: h.payload_len,
            filled: 0,
        })
    }

    /// Bytes of the payload still to come.
    pub fn remaining(&self) -> usize {
        self.total - self.filled
    }

    /// Where the next bytes of the payload go (empty when it is complete), the buffer grown first when it is
    /// full: to at most twice the bytes written so far.
    pub fn room(&mut self) -> &mut [u8] {
        let have = self.buffer_bytes();
        if self.filled == have && have < self.total {
            let want = have.max(FIRST_ROOM).saturating_mul(2).min(self.total) / self.dtype.size();
            with_elements!(&mut self.elements, v => v.resize(want, Default::default()));
        }
        let filled = self.filled;
        let bytes: &mut [u8] =
            with_elements!(&mut self.elements, v => bytemuck::cast_slice_mut(v.as_mut_slice()));
        &mut bytes[filled..]
    }

    /// Records that `n` bytes were written at the start of [`PayloadFill::room`].
    pub fn advance(&mut self, n: usize) {
        self.filled = self.filled.saturating_add(n).min(self.buffer_bytes());
    }

    /// The chunk, once every byte of its payload was written.
    ///
    /// # Errors
    /// [`FrameError::Truncated`] when bytes are missing.
    pub fn finish(mut self) -> Result<Chunk, FrameError> {
        if self.filled != self.total {
            return Err(FrameError::Truncated("payload"));
        }
        if cfg!(target_endian = "big") {
            // The bytes arrived little-endian: each element is turned around.
            match &mut self.elements {
                Elements::U8(_) => {}
                Elements::U16(v) => v.iter_mut().for_each(|x| *x = u16::from_le(*x)),
                Elements::F32(v) => v
                    .iter_mut()
                    .for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits()))),
                Elements::F64(v) => v
                    .iter_mut()
                    .for_each(|x| *x = f64::from_bits(u64::from_le(x.to_bits()))),
            }
        }
        let shape = ndarray::IxDyn(&self.shape);
        let bad = |e: ndarray::ShapeError| FrameError::Header(e.to_string());
        Ok(match self.elements {
            Elements::U8(v) => Chunk::U8(ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad)?),
            Elements::U16(v) => Chunk::U16(ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad)?),
            Elements::F32(v) => Chunk::F32(ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad)?),
            Elements::F64(v) => Chunk::F64(ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad)?),
        })
    }

    fn buffer_bytes(&self) -> usize {
        with_elements!(&self.elements, v => std::mem::size_of_val(v.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn chunks() -> Vec<Chunk> {
        vec![
            Chunk::U8(ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1, 2, 3, 4, 5, 255]).expect("s")),
            Chunk::U16(ArrayD::from_shape_vec(IxDyn(&[3]), vec![0, 65535, 7]).expect("s")),
            Chunk::F32(
                ArrayD::from_shape_vec(IxDyn(&[1, 2, 2]), vec![0.5, -1.0, f32::NAN, 3.25])
                    .expect("s"),
            ),
            Chunk::F64(ArrayD::from_shape_vec(IxDyn(&[]), vec![std::f64::consts::PI]).expect("s")),
            Chunk::F64(ArrayD::from_shape_vec(IxDyn(&[0, 4]), vec![]).expect("s")),
        ]
    }

    fn chunk_of(d: Data) -> Chunk {
        match d {
            Data::Chunk(c) => c,
            Data::Partial(p) => panic!("a partial of shape {:?}", p.shape()),
        }
    }

    #[test]
    fn frames_round_trip_every_type_and_rank() {
        for c in chunks() {
            let f = encode(&Data::Chunk(c.clone()));
            let back = chunk_of(decode(&f).expect("decode"));
            assert_eq!(back.dtype(), c.dtype());
            assert_eq!(back.shape(), c.shape());
            assert_eq!(
                back.to_le_bytes(),
                c.to_le_bytes(),
                "bit-exact, NaN included"
            );
        }
    }

    #[test]
    fn header_layout_is_as_documented() {
        let c =
            Chunk::U16(ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![0x0102, 0x0304]).expect("s"));
        let f = encode(&Data::Chunk(c));
        assert_eq!(&f[..8], b"AJCF\x01\x01\x02\x00");
        assert_eq!(&f[8..24], &[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&f[24..32], &[4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&f[32..36], &[0x02, 0x01, 0x04, 0x03]);
        assert_eq!(f.len(), 40);
        assert_eq!(
            u32::from_le_bytes(f[36..40].try_into().expect("4")),
            crc32c::crc32c(&f[..36])
        );
    }

    #[test]
    fn damaged_frames_are_refused_with_the_reason() {
        let f = encode(&Data::Chunk(chunks()[0].clone()));
        assert_eq!(decode(&f[..5]), Err(FrameError::Truncated("header")));
        assert_eq!(
            decode(&f[..f.len() - 1]),
            Err(FrameError::Truncated("payload"))
        );
        let mut long = f.clone();
        long.push(0);
        assert!(
            matches!(decode(&long), Err(FrameError::Header(m)) if m.contains("after the checksum"))
        );
        let mut bad = f.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(FrameError::BadMagic));
        let mut v2 = f.clone();
        v2[4] = 2;
        assert_eq!(decode(&v2), Err(FrameError::Version(2)));
        let mut ty = f.clone();
        ty[5] = 9;
        assert_eq!(decode(&ty), Err(FrameError::DType(9)));
        let mut flip = f.clone();
        let last_payload = flip.len() - 5;
        flip[last_payload] ^= 1;
        assert!(matches!(decode(&flip), Err(FrameError::Checksum { .. })));
        let mut shape = f.clone();
        shape[8] = 3;
        assert!(
            matches!(decode(&shape), Err(FrameError::Header(m)) if m.contains("payload of 6 bytes"))
        );
    }

    #[test]
    fn partials_round_trip_and_a_damaged_one_is_refused() {
        use crate::kernels::reduce::partial;
        use crate::spec::ReduceKind;
        let c =
            Chunk::U8(ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1, 2, 3, 4, 5, 255]).expect("s"));
        for kind in [ReduceKind::Mean, ReduceKind::Std, ReduceKind::Max] {
            let p = partial(&c, &[0], kind).expect("partial");
            let f = encode(&Data::Partial(p.clone()));
            assert_eq!(f[5], 16, "element type code of a partial");
            assert_eq!(decode(&f), Ok(Data::Partial(p)));
        }
        let p = partial(&c, &[1], ReduceKind::Sum).expect("partial");
        let mut f = encode(&Data::Partial(p));
        // Declares a shape other than the partial's (and fixes the checksum): refused, not mixed up.
        f[8] = 3;
        let body = f.len() - 4;
        let crc = crc32c::crc32c(&f[..body]).to_le_bytes();
        f[body..].copy_from_slice(&crc);
        assert!(
            matches!(decode(&f), Err(FrameError::Header(m)) if m.contains("in a frame of shape [3]"))
        );
    }

    #[test]
    fn a_header_past_the_payload_limit_or_whose_length_would_wrap_is_refused() {
        let mut f = b"AJCF\x01\x10\x01\x00".to_vec();
        f.extend_from_slice(&4u64.to_le_bytes());
        f.extend_from_slice(&(u64::MAX - 20).to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        assert_eq!(
            decode(&f),
            Err(FrameError::Header(format!(
                "payload of {} bytes is more than the limit of 17179869184 bytes per frame",
                u64::MAX - 20
            )))
        );
        let h = FrameHeader {
            dtype: None,
            shape: vec![],
            payload_len: usize::MAX - 2,
            header_len: 24,
        };
        assert_eq!(
            h.frame_len(),
            usize::MAX,
            "saturates, never wraps to a small length"
        );
    }

    #[test]
    fn a_payload_fill_grows_with_the_bytes_that_arrive() {
        // A u16 chunk of 40 M elements (80 MB): 64 MiB of room at first, the rest when that is full.
        let h = parse_header(&header(1, &[40 << 20], 80 << 20)).expect("header");
        let mut fill = PayloadFill::new(&h).expect("a chunk");
        assert_eq!(fill.room().len(), FIRST_ROOM);
        let n = fill.room().len();
        fill.room()[..n].fill(1);
        fill.advance(n);
        assert_eq!(fill.remaining(), (80 << 20) - FIRST_ROOM);
        assert_eq!(
            fill.room().len(),
            (80 << 20) - FIRST_ROOM,
            "grown to the payload"
        );
        let n = fill.room().len();
        fill.room()[..n].fill(0);
        fill.advance(n);
        let chunk = fill.finish().expect("complete");
        assert_eq!(chunk.shape(), &[40 << 20]);
        match chunk {
            Chunk::U16(a) => {
                assert_eq!(a[0], 0x0101);
                assert_eq!(a[(FIRST_ROOM / 2) - 1], 0x0101);
                assert_eq!(a[FIRST_ROOM / 2], 0);
            }
            other => panic!("{:?}", other.dtype()),
        }
        // Ended early: an error, not a chunk of zeros.
        let mut fill = PayloadFill::new(&h).expect("a chunk");
        fill.advance(10);
        assert_eq!(fill.finish().err(), Some(FrameError::Truncated("payload")));
    }
}
