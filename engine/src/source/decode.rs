//! Decoding one slice from the bytes of a PNG, TIFF or JPEG file.

use std::io::Cursor;

use image::{DynamicImage, ImageReader};
use ndarray::{ArrayD, IxDyn};

use super::SourceError;
use crate::array::Chunk;

/// Decodes an 8- or 16-bit greyscale PNG, TIFF or JPEG into a 2-D `(height, width)` chunk of `uint8` or
/// `uint16`. The format is recognised from the bytes, not from a file name.
///
/// Colour and alpha images are refused rather than converted: a silent conversion would hide a wrong source.
///
/// # Errors
/// [`SourceError::Decode`] naming `index` and `location` when the bytes are not an image of a supported format,
/// are corrupt or truncated, or hold a colour, alpha or floating-point image.
pub fn decode_slice(bytes: &[u8], index: usize, location: &str) -> Result<Chunk, SourceError> {
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
    let image = reader.decode().map_err(|e| error(e.to_string()))?;
    let shape = IxDyn(&[image.height() as usize, image.width() as usize]);
    let shape_error =
        |e: ndarray::ShapeError| error(format!("decoded buffer does not match its size: {e}"));
    match image {
        DynamicImage::ImageLuma8(img) => Ok(Chunk::U8(
            ArrayD::from_shape_vec(shape, img.into_raw()).map_err(shape_error)?,
        )),
        DynamicImage::ImageLuma16(img) => Ok(Chunk::U16(
            ArrayD::from_shape_vec(shape, img.into_raw()).map_err(shape_error)?,
        )),
        other => Err(error(format!(
            "colour type {:?} is not supported: slices must be 8- or 16-bit greyscale without alpha; convert the \
             images to greyscale first (e.g. `magick in.png -colorspace Gray -alpha off out.png`)",
            other.color()
        ))),
    }
}
