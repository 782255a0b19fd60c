//! The `tiff` source: one multi-page TIFF file (as written by tifffile or ImageJ) whose pages are the slices,
//! read locally, over HTTP(S) or from S3.
//!
//! Opening walks the chain of image file directories (one small read per page, from the cached blocks of a
//! [`RangeReader`]) and keeps each page's offset. A read decodes each page of its chunk with the `tiff` crate
//! from a reader whose header is overlaid to point at that page, after fetching the page's strips or tiles in
//! one ranged read.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};

use tiff::ColorType;
use tiff::decoder::{Decoder, Limits};
use tiff::tags::Tag;

use super::location::{Location, RangeReader};
use super::stack::SliceStack;
use super::{Declared, InfoCache, SliceInfo, SliceSource, SourceError, check_range, limits};
use crate::array::{Chunk, DType};
use crate::spec::{S3Storage, TiffSource};

/// Byte order and offset size of a TIFF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `II` (little-endian) rather than `MM`.
    pub little: bool,
    /// BigTIFF (64-bit offsets).
    pub big: bool,
}

impl Header {
    /// The first bytes of a file of this layout whose first directory is at `ifd`.
    fn bytes(self, ifd: u64) -> Vec<u8> {
        let mut out = if self.little {
            b"II".to_vec()
        } else {
            b"MM".to_vec()
        };
        let mut put = |n: u64, size: usize| {
            let le = n.to_le_bytes();
            if self.little {
                out.extend_from_slice(&le[..size]);
            } else {
                out.extend(le[..size].iter().rev());
            }
        };
        if self.big {
            put(43, 2);
            put(8, 2);
            put(0, 2);
            put(ifd, 8);
        } else {
            put(42, 2);
            put(ifd, 4);
        }
        out
    }
}

/// Reads an unsigned integer of `size` bytes in the file's byte order.
fn read_uint(r: &mut impl Read, size: usize, little: bool) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b[..size])?;
    if !little {
        b[..size].reverse();
    }
    Ok(u64::from_le_bytes(b))
}

/// The layout of the TIFF in `r` and the offsets of its first `limit` pages (directories), in file order.
///
/// # Errors
/// When `r` is not a TIFF file, a directory lies outside it, or the chain of directories loops.
pub fn page_offsets(
    r: &mut (impl Read + Seek),
    limit: usize,
) -> std::io::Result<(Header, Vec<u64>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut order = [0u8; 2];
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut order)?;
    let little = match &order {
        b"II" => true,
        b"MM" => false,
        _ => return Err(bad("not a TIFF file (no II/MM signature)")),
    };
    let header = match read_uint(r, 2, little)? {
        42 => Header { little, big: false },
        43 => {
            read_uint(r, 4, little)?;
            Header { little, big: true }
        }
        _ => return Err(bad("not a TIFF file (no 42/43 magic number)")),
    };
    let size = if header.big { 8 } else { 4 };
    let mut next = read_uint(r, size, little)?;
    let (mut pages, mut seen) = (Vec::new(), HashSet::new());
    while next != 0 && pages.len() < limit {
        if !seen.insert(next) {
            return Err(bad("the chain of image directories loops"));
        }
        pages.push(next);
        r.seek(SeekFrom::Start(next))?;
        let (count_size, entry) = if header.big { (8, 20) } else { (2, 12) };
        let entries = read_uint(r, count_size, little)?;
        let skip = entries
            .checked_mul(entry)
            .and_then(|n| n.checked_add(next))
            .and_then(|n| n.checked_add(count_size as u64))
            .ok_or_else(|| bad("directory entry count overflows"))?;
        r.seek(SeekFrom::Start(skip))?;
        next = read_uint(r, size, little)?;
    }
    Ok((header, pages))
}

/// Checks the directory at `offset` before the `tiff` crate reads it: the crate sizes its buffers from each
/// entry's value count, with its default limits for the first directory it reads (up to 256 MiB). A count
/// above [`limits::MAX_TIFF_TAG_VALUES`] is refused here, naming the tag.
///
/// # Errors
/// When the directory cannot be read or an entry's count is past the limit.
pub fn check_directory(
    r: &mut (impl Read + Seek),
    header: Header,
    offset: u64,
) -> std::io::Result<()> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let (count_size, field) = if header.big { (8, 8) } else { (2, 4) };
    r.seek(SeekFrom::Start(offset))?;
    let entries = read_uint(r, count_size, header.little)?;
    // At most one entry per tag number (a u16): more is not a directory.
    if entries > u64::from(u16::MAX) {
        return Err(bad(format!("a directory of {entries} entries")));
    }
    for _ in 0..entries {
        let tag = read_uint(r, 2, header.little)?;
        let _kind = read_uint(r, 2, header.little)?;
        let count = read_uint(r, field, header.little)?;
        if count > limits::MAX_TIFF_TAG_VALUES {
            return Err(bad(format!(
                "tag {tag} has {count} values, more than the limit of {}",
                limits::MAX_TIFF_TAG_VALUES
            )));
        }
        read_uint(r, field, header.little)?;
    }
    Ok(())
}

/// Slices read from the pages of one TIFF file.
#[derive(Debug)]
pub struct TiffSliceSource {
    location: Location,
    header: Header,
    pages: Vec<u64>,
    info: InfoCache,
}

impl TiffSliceSource {
    /// Locates the file (`path` relative to `base_dir`, `url`, or `s3` on `storage`'s connection) and finds its
    /// pages. `declared` is what the spec says every slice is.
    ///
    /// # Errors
    /// [`SourceError::Config`] for an invalid location; [`SourceError::Object`] naming the file when it cannot
    /// be read or is not a TIFF file; [`SourceError::S3`] for S3 request failures.
    pub fn new(
        spec: &TiffSource,
        storage: Option<&S3Storage>,
        base_dir: &std::path::Path,
        declared: Declared,
    ) -> Result<TiffSliceSource, SourceError> {
        let location = Location::of_spec(
            "tiff",
            spec.path.as_deref(),
            spec.url.as_deref(),
            spec.s3.as_ref(),
            storage,
            base_dir,
        )?;
        let mut reader = RangeReader::new(&location, "");
        let limit = limits::MAX_SLICES as usize;
        let (header, pages) = page_offsets(&mut reader, limit + 1).map_err(|e| {
            // A failed read (missing file, HTTP or S3 error) is told as itself, the rest as a bad TIFF.
            match e.into_inner().map(|inner| inner.downcast::<SourceError>()) {
                Some(Ok(read_error)) => *read_error,
                Some(Err(other)) => SourceError::Object {
                    location: location.name(""),
                    message: format!("cannot read it as a TIFF file: {other}"),
                },
                None => SourceError::Object {
                    location: location.name(""),
                    message: "cannot read it as a TIFF file: it ends early".into(),
                },
            }
        })?;
        if pages.is_empty() || pages.len() > limit {
            return Err(SourceError::Object {
                location: location.name(""),
                message: format!("has {} pages, expected 1 to {limit}", pages.len()),
            });
        }
        Ok(TiffSliceSource {
            location,
            header,
            pages,
            info: InfoCache::new(declared),
        })
    }

    /// A decoder of page `index`, with the page's shape and type.
    fn open_page<'r, 'a>(
        &self,
        reader: &'r mut RangeReader<'a>,
        index: usize,
    ) -> Result<(Decoder<&'r mut RangeReader<'a>>, SliceInfo), SourceError> {
        let error = |e: &dyn std::fmt::Display| self.page_error(index, e.to_string());
        check_directory(reader, self.header, self.pages[index]).map_err(|e| error(&e))?;
        reader.set_overlay(self.header.bytes(self.pages[index]));
        reader.seek(SeekFrom::Start(0)).map_err(|e| error(&e))?;
        let mut decoder = Decoder::new(reader)
            .map_err(|e| error(&e))?
            .with_limits(decoder_limits());
        let (width, height) = decoder.dimensions().map_err(|e| error(&e))?;
        // Held to the slice limits before anything is sized from them.
        let side = |what: &str, v: u32| limits::header_side(what, v.into()).map_err(|m| error(&m));
        let (width, height) = (side("ImageWidth", width)?, side("ImageLength", height)?);
        let color = decoder.colortype().map_err(|e| error(&e))?;
        let format = decoder
            .find_tag_unsigned::<u16>(Tag::SampleFormat)
            .map_err(|e| error(&e))?
            .unwrap_or(1);
        let dtype = match (color, format) {
            (ColorType::Gray(8), 1) => DType::Uint8,
            (ColorType::Gray(16), 1) => DType::Uint16,
            _ => {
                return Err(self.page_error(
                    index,
                    format!(
                        "{color:?} with sample format {format} is not supported: pages must be 8- or 16-bit \
                         unsigned greyscale (one sample per pixel)"
                    ),
                ));
            }
        };
        let info = SliceInfo {
            height,
            width,
            dtype,
        };
        Ok((decoder, info))
    }

    /// The error of page `index`, naming the file.
    fn page_error(&self, index: usize, message: String) -> SourceError {
        SourceError::Decode {
            index,
            location: format!("page {index} of {}", self.location.name("")),
            message,
        }
    }

    /// Decodes page `index` (checked against `expected`) into `out`.
    fn read_page(
        &self,
        reader: &mut RangeReader<'_>,
        index: usize,
        expected: SliceInfo,
        out: &mut [u8],
    ) -> Result<(), SourceError> {
        let (mut decoder, found) = self.open_page(reader, index)?;
        if found != expected {
            let location = format!("page {index} of {}", self.location.name(""));
            let basis = self.info.declared.basis();
            return Err(super::mismatch(index, location, expected, basis, &found));
        }
        if let Some(span) = data_span(&mut decoder) {
            decoder.inner().prefetch(span)?;
        }
        decoder
            .read_image_bytes(out)
            .map_err(|e| self.page_error(index, e.to_string()))
    }
}

/// What the `tiff` crate may allocate from a page's directory: a tag's values at most
/// [`limits::MAX_TIFF_TAG_BYTES`], one strip or tile at most [`limits::MAX_OBJECT_BYTES`] (the page itself is
/// decoded into the chunk, sized from the checked width and height).
fn decoder_limits() -> Limits {
    let mut l = Limits::default();
    l.decoding_buffer_size = usize::try_from(limits::MAX_TIFF_TAG_BYTES).unwrap_or(usize::MAX);
    l.ifd_value_size = l.decoding_buffer_size;
    l.intermediate_buffer_size = usize::try_from(limits::MAX_OBJECT_BYTES).unwrap_or(usize::MAX);
    l
}

/// The bytes holding a page's strips or tiles, when they lie close together (so one read fetches them) and
/// within the limit of one read; offsets and counts are the file's, so the sums are checked.
fn data_span<R: Read + Seek>(decoder: &mut Decoder<R>) -> Option<std::ops::Range<u64>> {
    let (offsets, counts) = [
        (Tag::StripOffsets, Tag::StripByteCounts),
        (Tag::TileOffsets, Tag::TileByteCounts),
    ]
    .into_iter()
    .find_map(|(o, c)| {
        let offsets = decoder.find_tag_unsigned_vec::<u64>(o).ok()??;
        let counts = decoder.find_tag_unsigned_vec::<u64>(c).ok()??;
        Some((offsets, counts))
    })?;
    let start = *offsets.iter().min()?;
    let end = offsets
        .iter()
        .zip(&counts)
        .map(|(o, c)| o.checked_add(*c))
        .try_fold(0u64, |m, e| Some(m.max(e?)))?;
    let total = counts.iter().try_fold(0u64, |a, &c| a.checked_add(c))?;
    (end > start
        && end - start <= total.saturating_mul(2)
        && end - start <= limits::MAX_OBJECT_BYTES)
        .then_some(start..end)
}

impl SliceSource for TiffSliceSource {
    fn len(&self) -> usize {
        self.pages.len()
    }

    fn slice_info(&self) -> Result<SliceInfo, SourceError> {
        self.info.get_or_try(|| {
            let mut reader = RangeReader::new(&self.location, "");
            let (_, info) = self.open_page(&mut reader, 0)?;
            Ok((info, format!("page 0 of {}", self.location.name(""))))
        })
    }

    fn read(&self, start: usize, end: usize) -> Result<Chunk, SourceError> {
        check_range(self, start, end)?;
        let info = self.slice_info()?;
        let mut stack = SliceStack::new(start, end, info)?;
        let mut reader = RangeReader::new(&self.location, "");
        for index in start..end {
            let out = stack.slot(index).into_bytes();
            self.read_page(&mut reader, index, info, out)?;
        }
        Ok(stack.finish())
    }

    fn describe(&self) -> String {
        format!(
            "tiff {} ({} pages)",
            self.location.name(""),
            self.pages.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use tiff::encoder::{TiffEncoder, TiffKind, colortype::Gray16};

    use super::*;

    /// Three 4x3 16-bit pages, page `p` holding `p * 100 + i` at element `i`.
    fn pages<K: TiffKind>(mut encoder: TiffEncoder<&mut Cursor<Vec<u8>>, K>) {
        for p in 0..3u16 {
            let data: Vec<u16> = (0..12).map(|i| p * 100 + i).collect();
            encoder
                .write_image::<Gray16>(4, 3, &data)
                .expect("write page");
        }
    }

    /// Page `index` of `bytes` decoded through a header overlaid to point at it, as the source reads it.
    fn decode_page(bytes: &[u8], index: usize) -> Vec<u16> {
        let (header, offsets) = page_offsets(&mut Cursor::new(bytes), 10).expect("pages");
        assert_eq!(offsets.len(), 3);
        let mut file = bytes.to_vec();
        let overlay = header.bytes(offsets[index]);
        file[..overlay.len()].copy_from_slice(&overlay);
        let mut decoder = Decoder::new(Cursor::new(file)).expect("decoder");
        assert_eq!(decoder.dimensions().expect("dims"), (4, 3));
        let mut out = vec![0u16; 12];
        decoder
            .read_image_bytes(bytemuck::cast_slice_mut(&mut out))
            .expect("decode");
        out
    }

    #[test]
    fn an_overlaid_header_reads_any_page_of_classic_and_big_tiffs() {
        let mut classic = Cursor::new(Vec::new());
        pages(TiffEncoder::new(&mut classic).expect("encoder"));
        let mut big = Cursor::new(Vec::new());
        pages(TiffEncoder::new_big(&mut big).expect("encoder"));
        for bytes in [classic.into_inner(), big.into_inner()] {
            for p in 0..3u16 {
                let want: Vec<u16> = (0..12).map(|i| p * 100 + i).collect();
                assert_eq!(decode_page(&bytes, p as usize), want);
            }
        }
    }

    #[test]
    fn big_endian_headers_round_trip() {
        let header = Header {
            little: false,
            big: false,
        };
        let mut bytes = header.bytes(0x0102_0304);
        bytes.extend_from_slice(&[0; 4]);
        let mut r = Cursor::new(bytes);
        let e = page_offsets(&mut r, 10).expect_err("the directory lies outside the file");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(&r.get_ref()[..8], b"MM\0\x2a\x01\x02\x03\x04");
    }

    #[test]
    fn not_a_tiff_is_named_as_such() {
        let e = page_offsets(&mut Cursor::new(b"\x89PNG\r\n\x1a\n".to_vec()), 10)
            .expect_err("not a TIFF");
        assert_eq!(e.to_string(), "not a TIFF file (no II/MM signature)");
    }
}
