//! Between image tensors and 8-bit RGB images.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use crate::error::{Error, Result};

/// Decoded images `[B, 3, H, W]` in about [-1, 1] to 8-bit RGB: `(x/2 + 0.5)` clamped to
/// [0, 1], then `round(255·x)` (half away from zero).
pub fn to_rgb8(images: Tensor<4>) -> Result<Vec<RgbImage>> {
    let [b, c, h, w] = images.dims();
    if c != 3 {
        return Err(Error::Shape {
            what: "decoded images".into(),
            expected: "[B, 3, H, W]".into(),
            got: vec![b, c, h, w],
        });
    }
    let x = (images / 2.0 + 0.5).clamp(0.0, 1.0);
    let values = crate::host::to_f32_vec(x, "decoded images")?;
    let plane = h * w;
    Ok((0..b)
        .map(|i| {
            let base = i * 3 * plane;
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                let px = |ch: usize| (values[base + ch * plane + p] * 255.0).round() as u8;
                image::Rgb([px(0), px(1), px(2)])
            })
        })
        .collect())
}

/// 8-bit RGB images to a `[B, 3, H, W]` tensor in [-1, 1] (`2·v/255 − 1`); all images must
/// have the same size.
pub fn from_rgb8(images: &[RgbImage], device: &Device) -> Result<Tensor<4>> {
    let Some(first) = images.first() else {
        return Err(Error::invalid("images", "no image given"));
    };
    let (w, h) = first.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut values = Vec::with_capacity(images.len() * 3 * h * w);
    for img in images {
        if img.dimensions() != first.dimensions() {
            return Err(Error::Shape {
                what: "image batch".into(),
                expected: format!("all {w}×{h}"),
                got: vec![img.width() as usize, img.height() as usize],
            });
        }
        for ch in 0..3 {
            values.extend(img.pixels().map(|p| 2.0 * (p.0[ch] as f32 / 255.0) - 1.0));
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(values, [images.len(), 3, h, w]),
        device,
    ))
}

/// Save an RGB image as PNG with `text` as `tEXt` chunks (keyword, value), e.g. the
/// generation parameters.
pub fn save_png(image: &RgbImage, path: &Path, text: &[(&str, String)]) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io("creating", path, e))?;
    let png_err = |e: png::EncodingError| match e {
        png::EncodingError::IoError(io) => Error::io("writing", path, io),
        other => Error::Image {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    };
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), image.width(), image.height());
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    for (k, v) in text {
        enc.add_text_chunk(k.to_string(), v.clone())
            .map_err(png_err)?;
    }
    let mut writer = enc.write_header().map_err(png_err)?;
    writer.write_image_data(image.as_raw()).map_err(png_err)?;
    writer.finish().map_err(png_err)
}
