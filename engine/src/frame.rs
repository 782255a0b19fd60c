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

use crate::array::{Chunk, DType};
use crate::data::Data;
use crate::kernels::reduce::Partial;

/// First bytes of every frame.
pub const MAGIC: &[u8; 4] = b"AJCF";
/// The format version written (and the only one read).
pub const VERSION: u8 = 1;
/// Most dimensions a frame may declare.
const MAX_DIMS: usize = 32;
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
    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len + 4
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
    let body_end = h.header_len + h.payload_len;
    if h.dtype.is_none() && h.payload_len > frame.len() {
        return Err(FrameError::Truncated("payload"));
    }
    if frame.len() < body_end + 4 {
        return Err(FrameError::Truncated("payload"));
    }
    if frame.len() > body_end + 4 {
        return Err(FrameError::Header(format!(
            "{} bytes after the checksum",
            frame.len() - body_end - 4
        )));
    }
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
}
