//! Decoding slices from the bytes of PNG, TIFF or JPEG files, straight into their place in a chunk.

use std::io::Cursor;

use image::{ColorType, ImageDecoder, ImageReader};

// The chunk being filled lives in `stack`; re-exported here, where the decoders' callers look for it.
pub use super::stack::{SliceBuf, SliceStack};
use super::{SliceInfo, SourceError, mismatch};
use crate::array::DType;

/// A decoder whose header has been read, with the slice's shape and type.
fn open<'a>(
    bytes: &'a [u8],
    index: usize,
    location: &str,
) -> Result<(impl ImageDecoder + 'a, SliceInfo), SourceError> {
    let error = |message: String| SourceError::Decode {
        index,
        location: location.to_owned(),
        message,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| error(format!("cannot read the image header: {e}")))?;
    if reader.format().is_none() {
        return Err(error(format!(
            "not a PNG, TIFF or JPEG image ({} bytes, starting {:02x?})",
            bytes.len(),
            &bytes[..bytes.len().min(8)]
        )));
    }
    if reader.format() == Some(image::ImageFormat::Tiff) {
        check_single_page(bytes, &error)?;
    }
    let decoder = reader.into_decoder().map_err(|e| error(e.to_string()))?;
    let dtype = match decoder.color_type() {
        ColorType::L8 => DType::Uint8,
        ColorType::L16 => DType::Uint16,
        other => {
            return Err(error(format!(
                "colour type {other:?} is not supported: slices must be 8- or 16-bit greyscale without alpha; \
                 convert the images to greyscale first (e.g. `magick in.png -colorspace Gray -alpha off out.png`)"
            )));
        }
    };
    // Held to the slice limits before anything is sized from them.
    let (width, height) = decoder.dimensions();
    let info = SliceInfo {
        height: super::limits::header_side("the header's height", height.into()).map_err(error)?,
        width: super::limits::header_side("the header's width", width.into()).map_err(error)?,
        dtype,
    };
    Ok((decoder, info))
}

/// Refuses a TIFF file of several pages: one file is one slice here, and its other pages would be dropped.
fn check_single_page(
    bytes: &[u8],
    error: &dyn Fn(String) -> SourceError,
) -> Result<(), SourceError> {
    // The chain is walked only so far (a file of millions of tiny directories is not counted to its end).
    let mut r = Cursor::new(bytes);
    let (header, offsets) = super::tiff::page_offsets(&mut r, MAX_COUNTED_PAGES)
        .map_err(|e| error(format!("cannot read the TIFF directories: {e}")))?;
    if let Some(&first) = offsets.first() {
        super::tiff::check_directory(&mut r, header, first)
            .map_err(|e| error(format!("cannot read the TIFF directories: {e}")))?;
    }
    let pages = offsets.len();
    if pages > 1 {
        let pages = count_text(pages);
        return Err(error(format!(
            "a multi-page TIFF of {pages} pages: a files source reads one slice per file; read a stack of \
             pages with the tiff source (`source: {{tiff: {{path: ...}}}}`)"
        )));
    }
    Ok(())
}

/// Pages counted for the message refusing a multi-page TIFF given to a `files` source.
const MAX_COUNTED_PAGES: usize = 10_000;

/// `n` pages, or "at least" the count when the count stopped at [`MAX_COUNTED_PAGES`].
fn count_text(n: usize) -> String {
    if n >= MAX_COUNTED_PAGES {
        format!("at least {MAX_COUNTED_PAGES}")
    } else {
        n.to_string()
    }
}

/// Shape and type of the slice in `bytes`, from its header alone.
///
/// # Errors
/// [`SourceError::Decode`] naming `index` and `location` when the bytes are not an 8- or 16-bit greyscale
/// image of a supported format.
pub fn probe(bytes: &[u8], index: usize, location: &str) -> Result<SliceInfo, SourceError> {
    open(bytes, index, location).map(|(_, info)| info)
}

/// Decodes the image in `bytes` into `out`, after checking that it is `expected` (which comes from `basis`, for
/// messages). 16-bit samples land in native byte order.
///
/// # Errors
/// [`SourceError::Decode`] when the bytes are not a supported greyscale image or are corrupt or truncated;
/// [`SourceError::Mismatch`] when the image's shape or type is not `expected`.
pub fn decode_into(
    bytes: &[u8],
    index: usize,
    location: &str,
    expected: SliceInfo,
    basis: &str,
    out: SliceBuf<'_>,
) -> Result<(), SourceError> {
    let (decoder, found) = open(bytes, index, location)?;
    if found != expected {
        return Err(mismatch(
            index,
            location.to_owned(),
            expected,
            basis,
            &found,
        ));
    }
    let target = out.into_bytes();
    if decoder.total_bytes() != target.len() as u64 {
        return Err(SourceError::Decode {
            index,
            location: location.to_owned(),
            message: format!(
                "decoded size {} bytes differs from the slice's {} bytes",
                decoder.total_bytes(),
                target.len()
            ),
        });
    }
    decoder.read_image(target).map_err(|e| SourceError::Decode {
        index,
        location: location.to_owned(),
        message: e.to_string(),
    })
}
