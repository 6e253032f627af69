//! Loading a reference photo as docs/method.md prescribes: the photos people have, converted as
//! diffusers' `load_image` (PIL) does.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, RgbImage, imageops::FilterType};
use layret_core::{Error, Result, image_io};

/// Smallest accepted side of a reference photo.
pub const MIN_SIDE: u32 = 64;
/// Largest accepted side (a 16k photo is almost certainly a mistake, and costly to decode).
pub const MAX_SIDE: u32 = 8192;

/// Whether a JPEG's bytes end with the end-of-image marker (`FF D9`), ignoring trailing
/// padding: a file cut short has none, and decoders fill the missing rows with gray instead
/// of failing.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let end = bytes
        .iter()
        .rposition(|&b| b != 0x00 && b != 0xFF)
        .map_or(0, |i| i + 1);
    // The marker is FF D9: D9 is the last non-padding byte, FF right before it.
    end >= 2 && bytes[end - 1] == 0xD9 && bytes[end - 2] == 0xFF
}

/// Read a photo (PNG or JPEG) as 8-bit RGB the way diffusers' `load_image` does: the EXIF
/// orientation applied (`ImageOps.exif_transpose`), then PIL's `convert("RGB")` — alpha
/// dropped (not composited over a background), grayscale replicated to three channels,
/// palette images expanded, CMYK converted, 16-bit channels reduced to 8 bits. A truncated or
/// corrupt file is an error, never a partially decoded image.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    let err = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    if !path.exists() {
        return Err(Error::MissingFile {
            what: "reference image".into(),
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Error::io("reading", path, e))?;
    let format = reader.format();
    if format == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        return Err(err(
            "is truncated (the JPEG has no end-of-image marker): re-export or re-download it"
                .into(),
        ));
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| err(format!("cannot decode: {e}")))?;
    let orientation = decoder
        .orientation()
        .map_err(|e| err(format!("cannot read its EXIF orientation: {e}")))?;
    let mut img = DynamicImage::from_decoder(decoder)
        .map_err(|e| err(format!("cannot decode (truncated or corrupt?): {e}")))?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// Read a reference photo ([`read_rgb`]), center-crop it to the aspect ratio of
/// `width × height` and resize it there with a bicubic filter (no resampling when it already
/// has that size). Images under 64 px or over 8192 px on a side are errors naming the file.
pub fn load_reference(path: &Path, width: usize, height: usize) -> Result<RgbImage> {
    fit_reference(read_rgb(path)?, width, height, path)
}

/// A reference photo given as an array `[H, W, 3]` of 8-bit RGB, prepared as
/// [`load_reference`] prepares a file (center crop, bicubic resize), as a `[1, 3, H, W]`
/// tensor in [-1, 1].
pub fn reference_from_array(
    image: layret_core::array::ndarray::ArrayView3<u8>,
    width: usize,
    height: usize,
    device: &Device,
) -> Result<Tensor<4>> {
    let rgb = layret_core::array::array_to_images(
        image.insert_axis(layret_core::array::ndarray::Axis(0)),
    )?
    .pop()
    .ok_or_else(|| Error::invalid("reference image", "empty array"))?;
    let rgb = fit_reference(rgb, width, height, Path::new("<array>"))?;
    image_io::from_rgb8(&[rgb], device)
}

/// Check a reference's size and fit it to `width × height` (see [`load_reference`]).
fn fit_reference(rgb: RgbImage, width: usize, height: usize, path: &Path) -> Result<RgbImage> {
    let err = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    let (w, h) = rgb.dimensions();
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(err(format!(
            "is {w}×{h}; a reference needs at least {MIN_SIDE} px per side"
        )));
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(err(format!("is {w}×{h}; at most {MAX_SIDE} px per side")));
    }
    let (tw, th) = (width as u32, height as u32);
    if (w, h) == (tw, th) {
        return Ok(rgb);
    }
    // Largest centered crop with the target aspect ratio.
    let (cw, ch) = if (w as u64) * (th as u64) > (h as u64) * (tw as u64) {
        (((h as u64 * tw as u64) / th as u64) as u32, h)
    } else {
        (w, ((w as u64 * th as u64) / tw as u64) as u32)
    };
    let cropped = image::imageops::crop_imm(&rgb, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
    Ok(image::imageops::resize(
        &cropped,
        tw,
        th,
        FilterType::CatmullRom,
    ))
}

/// [`load_reference`] as a `[1, 3, H, W]` tensor in [-1, 1].
pub fn load_reference_tensor(
    path: &Path,
    width: usize,
    height: usize,
    device: &Device,
) -> Result<Tensor<4>> {
    image_io::from_rgb8(&[load_reference(path, width, height)?], device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_end_marker() {
        assert!(jpeg_is_complete(&[0xFF, 0xD8, 1, 2, 0xFF, 0xD9]));
        assert!(jpeg_is_complete(&[0xFF, 0xD8, 1, 2, 0xFF, 0xD9, 0, 0]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 1, 2, 3]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 1, 2, 0xD9]));
    }
}
