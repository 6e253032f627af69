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

/// Save an RGB image as PNG with `text` as text chunks (keyword, value), e.g. the generation
/// parameters: `tEXt` when the value is Latin-1, `iTXt` (UTF-8) otherwise, so any prompt
/// round-trips. Written atomically: a temporary file beside `path`, renamed over it once
/// complete — an error (or a kill) never leaves a partial PNG under `path`.
pub fn save_png(image: &RgbImage, path: &Path, text: &[(&str, String)]) -> Result<()> {
    save_png_as(
        image.as_raw(),
        image.width(),
        image.height(),
        png::ColorType::Rgb,
        path,
        text,
    )
}

/// [`save_png`] for an 8-bit grayscale image (masks).
pub fn save_gray_png(image: &image::GrayImage, path: &Path, text: &[(&str, String)]) -> Result<()> {
    save_png_as(
        image.as_raw(),
        image.width(),
        image.height(),
        png::ColorType::Grayscale,
        path,
        text,
    )
}

fn save_png_as(
    raw: &[u8],
    width: u32,
    height: u32,
    color: png::ColorType,
    path: &Path,
    text: &[(&str, String)],
) -> Result<()> {
    let png_err = |e: png::EncodingError| match e {
        png::EncodingError::IoError(io) => io,
        other => std::io::Error::other(other.to_string()),
    };
    crate::atomic::write_with(path, |file| {
        let mut enc = png::Encoder::new(std::io::BufWriter::new(&mut *file), width, height);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            let latin1 = v.chars().all(|c| (c as u32) < 256);
            if latin1 {
                enc.add_text_chunk(k.to_string(), v.clone())
            } else {
                enc.add_itxt_chunk(k.to_string(), v.clone())
            }
            .map_err(png_err)?;
        }
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(raw).map_err(png_err)?;
        writer.finish().map_err(png_err)
    })
}

/// The text chunks of a PNG file (tEXt, zTXt and iTXt), as (keyword, value) pairs in file
/// order, and whether the image data is complete and its checksums hold.
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let err = |m: String| Error::Image {
        path: path.to_path_buf(),
        message: m,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder
        .read_info()
        .map_err(|e| err(format!("not a readable PNG: {e}")))?;
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    reader
        .next_frame(&mut buf)
        .map_err(|e| err(format!("incomplete image data: {e}")))?;
    reader
        .finish()
        .map_err(|e| err(format!("incomplete PNG: {e}")))?;
    let info = reader.info();
    let mut out: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    for t in &info.compressed_latin1_text {
        out.push((t.keyword.clone(), t.get_text().unwrap_or_default()));
    }
    for t in &info.utf8_text {
        out.push((t.keyword.clone(), t.get_text().unwrap_or_default()));
    }
    Ok(out)
}

/// The generation parameters in AUTOMATIC1111's `parameters` text (which A1111's PNG Info,
/// ComfyUI, InvokeAI and image browsers read): the prompt, `Negative prompt: …` when there is
/// one, then `Key: value` pairs (values with `,`, `:` or `"` quoted as A1111 quotes them).
pub fn a1111_parameters(prompt: &str, negative: &str, fields: &[(&str, String)]) -> String {
    let quote = |v: &str| {
        if v.contains(',') || v.contains(':') || v.contains('"') || v.contains('\n') {
            format!(
                "\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        } else {
            v.to_string()
        }
    };
    let mut out = prompt.to_string();
    if !negative.is_empty() {
        out.push_str("\nNegative prompt: ");
        out.push_str(negative);
    }
    let pairs: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}: {}", quote(v)))
        .collect();
    out.push('\n');
    out.push_str(&pairs.join(", "));
    out
}
