//! Loading a reference photo as METHOD.md prescribes.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use image::{DynamicImage, RgbImage, imageops::FilterType};
use layret_core::{Error, Result, image_io};

/// Smallest accepted side of a reference photo.
pub const MIN_SIDE: u32 = 64;
/// Largest accepted side (a 16k photo is almost certainly a mistake, and costly to decode).
pub const MAX_SIDE: u32 = 8192;

/// Read an 8-bit RGB photo (PNG or JPEG), center-crop it to the aspect ratio of
/// `width × height` and resize it there with a bicubic filter (no resampling when it already
/// has that size). Grayscale, alpha and 16-bit images, and images under 64 px or over 8192 px
/// on a side, are errors naming the file.
pub fn load_reference(path: &Path, width: usize, height: usize) -> Result<RgbImage> {
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
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io("opening", path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io("reading", path, e))?
        .decode()
        .map_err(|e| err(format!("cannot decode: {e}")))?;
    let rgb = match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => {
            return Err(err(format!(
                "is {:?}; layret needs 8-bit RGB (convert it, e.g. drop the alpha channel or expand grayscale)",
                other.color()
            )));
        }
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
