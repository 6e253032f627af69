//! transformers' image processors for the evaluation encoders (`CLIPImageProcessor`,
//! `ViTImageProcessor`), read from `preprocessor_config.json`: resize with Pillow's 8-bit
//! resampling exactly (so pixel values match transformers' PIL backend bit for bit), center
//! crop, rescale, normalize.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use serde::Deserialize;
use serde_json::Value;

use crate::config_file::read_json;
use crate::error::{Error, Result};

/// Pillow's resampling filters (`resample` in the config: 2 bilinear, 3 bicubic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// Triangle filter, support 1 (`PIL.Image.BILINEAR`).
    Bilinear,
    /// Keys cubic with a = −0.5, support 2 (`PIL.Image.BICUBIC`).
    Bicubic,
}

impl Resample {
    fn support(self) -> f64 {
        match self {
            Resample::Bilinear => 1.0,
            Resample::Bicubic => 2.0,
        }
    }

    fn kernel(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Resample::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Resample::Bicubic => {
                let a = -0.5;
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output index, the first input
/// index and fixed-point weights with 22 fraction bits.
fn coefficients(input: usize, output: usize, filter: Resample) -> Vec<(usize, Vec<i64>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    (0..output)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast: truncation toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax =
                (((center + support + 0.5) as i64).min(input as i64) as usize).saturating_sub(xmin);
            let w: Vec<f64> = (0..xmax)
                .map(|x| filter.kernel((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    if v < 0.0 {
                        (-0.5 + v * (1u64 << 22) as f64) as i64
                    } else {
                        (0.5 + v * (1u64 << 22) as f64) as i64
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

/// `image.resize((width, height), filter)` as Pillow 13 does it on an 8-bit RGB image: two
/// separable passes, each rounding into 8 bits; the vertical one first when the height shrinks
/// by more than twice as many pixels as the width; a pass whose size does not change is skipped.
pub fn pil_resize(img: &RgbImage, width: usize, height: usize, filter: Resample) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data: Vec<i64> = img.as_raw().iter().map(|&v| v as i64).collect();
    let (mut cw, mut ch) = (w, h);
    let clamp = |s: i64| ((s + (1 << 21)) >> 22).clamp(0, 255);
    let horizontal = |data: &[i64], cw: usize, ch: usize| -> Vec<i64> {
        let coeffs = coefficients(cw, width, filter);
        let mut out = vec![0i64; ch * width * 3];
        for y in 0..ch {
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let s: i64 = k
                        .iter()
                        .enumerate()
                        .map(|(i, &kv)| data[(y * cw + xmin + i) * 3 + c] * kv)
                        .sum();
                    out[(y * width + xx) * 3 + c] = clamp(s);
                }
            }
        }
        out
    };
    let vertical = |data: &[i64], cw: usize, ch: usize| -> Vec<i64> {
        let coeffs = coefficients(ch, height, filter);
        let mut out = vec![0i64; height * cw * 3];
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..cw {
                for c in 0..3 {
                    let s: i64 = k
                        .iter()
                        .enumerate()
                        .map(|(i, &kv)| data[((ymin + i) * cw + x) * 3 + c] * kv)
                        .sum();
                    out[(yy * cw + x) * 3 + c] = clamp(s);
                }
            }
        }
        out
    };
    let vertical_first = h > height && (h - height) as i64 > 2 * (w as i64 - width as i64);
    for pass in if vertical_first {
        [true, false]
    } else {
        [false, true]
    } {
        if pass && ch != height {
            data = vertical(&data, cw, ch);
            ch = height;
        } else if !pass && cw != width {
            data = horizontal(&data, cw, ch);
            cw = width;
        }
    }
    let bytes = data.into_iter().map(|v| v as u8).collect();
    RgbImage::from_raw(width as u32, height as u32, bytes)
        .unwrap_or_else(|| unreachable!("the buffer has width × height pixels"))
}

/// How the image is resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// The shorter side to this many pixels, keeping the aspect ratio (CLIP).
    ShortestEdge(usize),
    /// Exactly `(height, width)` (ViT).
    Exact(usize, usize),
}

/// A validated `preprocessor_config.json` of a CLIP or ViT image processor.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// Resize (None: `do_resize` false).
    pub resize: Option<(ResizeTo, Resample)>,
    /// Center crop `(height, width)` (None: `do_center_crop` false).
    pub crop: Option<(usize, usize)>,
    /// `rescale_factor` (None: `do_rescale` false).
    pub rescale: Option<f64>,
    /// `(image_mean, image_std)` (None: `do_normalize` false).
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

#[derive(Deserialize)]
struct RawProcessor {
    #[serde(default)]
    image_processor_type: Option<String>,
    #[serde(default)]
    feature_extractor_type: Option<String>,
    #[serde(default = "yes")]
    do_resize: bool,
    #[serde(default)]
    size: Option<Value>,
    #[serde(default = "bicubic")]
    resample: u8,
    #[serde(default)]
    do_center_crop: Option<bool>,
    #[serde(default)]
    crop_size: Option<Value>,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "one_255")]
    rescale_factor: f64,
    #[serde(default = "yes")]
    do_normalize: bool,
    #[serde(default)]
    image_mean: Option<Vec<f32>>,
    #[serde(default)]
    image_std: Option<Vec<f32>>,
}

fn yes() -> bool {
    true
}
fn bicubic() -> u8 {
    3
}
fn one_255() -> f64 {
    1.0 / 255.0
}

impl ImageProcessor {
    /// Read `preprocessor_config.json`: a `CLIPImageProcessor`/`CLIPFeatureExtractor` (an int
    /// `size` is the shortest edge) or a `ViTImageProcessor`/`ViTFeatureExtractor` (an int
    /// `size` is a square).
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: RawProcessor = read_json(path, "image processor config")?;
        let unsupported = |key: &str, value: String, supported: &str| Error::UnsupportedConfig {
            file: path.to_path_buf(),
            key: key.into(),
            value,
            supported: supported.into(),
        };
        let kind = raw
            .image_processor_type
            .clone()
            .or(raw.feature_extractor_type.clone())
            .unwrap_or_default();
        let clip = kind.starts_with("CLIP");
        if !clip && !kind.starts_with("ViT") {
            return Err(unsupported(
                "image_processor_type",
                format!("{kind:?}"),
                "supported: CLIPImageProcessor, ViTImageProcessor (or their FeatureExtractor names)",
            ));
        }
        let num = |v: &Value, key: &str| -> Result<usize> {
            v.as_u64()
                .map(|n| n as usize)
                .filter(|&n| n > 0)
                .ok_or_else(|| unsupported(key, v.to_string(), "a positive integer"))
        };
        let hw = |v: &Value, key: &str| -> Result<(usize, usize)> {
            if let Some(n) = v.as_u64() {
                return Ok((n as usize, n as usize));
            }
            match (v.get("height"), v.get("width")) {
                (Some(h), Some(w)) => Ok((num(h, key)?, num(w, key)?)),
                _ => Err(unsupported(key, v.to_string(), "an int or {height, width}")),
            }
        };
        let resample = match raw.resample {
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            other => {
                return Err(unsupported(
                    "resample",
                    other.to_string(),
                    "supported: 2 (bilinear), 3 (bicubic)",
                ));
            }
        };
        let resize = if raw.do_resize {
            let size = raw.size.clone().unwrap_or_else(|| serde_json::json!(224));
            let to = match (&size, size.get("shortest_edge")) {
                (_, Some(s)) => ResizeTo::ShortestEdge(num(s, "size")?),
                (Value::Number(_), None) if clip => ResizeTo::ShortestEdge(num(&size, "size")?),
                _ => {
                    let (h, w) = hw(&size, "size")?;
                    ResizeTo::Exact(h, w)
                }
            };
            Some((to, resample))
        } else {
            None
        };
        let crop = if raw.do_center_crop.unwrap_or(clip) {
            let c = raw
                .crop_size
                .clone()
                .unwrap_or_else(|| serde_json::json!(224));
            Some(hw(&c, "crop_size")?)
        } else {
            None
        };
        let three = |v: Option<Vec<f32>>, key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v {
                None => Ok(default),
                Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
                Some(v) => Err(unsupported(key, format!("{v:?}"), "three values (RGB)")),
            }
        };
        let normalize = if raw.do_normalize {
            let (dm, ds) = if clip {
                (
                    [0.481_454_66, 0.457_827_5, 0.408_210_73],
                    [0.268_629_54, 0.261_302_6, 0.275_777_1],
                )
            } else {
                ([0.5; 3], [0.5; 3])
            };
            Some((
                three(raw.image_mean, "image_mean", dm)?,
                three(raw.image_std, "image_std", ds)?,
            ))
        } else {
            None
        };
        Ok(Self {
            resize,
            crop,
            rescale: raw.do_rescale.then_some(raw.rescale_factor),
            normalize,
        })
    }

    /// The resized (not yet cropped) image.
    pub fn resized(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = (img.width() as usize, img.height() as usize);
        match self.resize {
            None => img.clone(),
            Some((ResizeTo::Exact(oh, ow), f)) => pil_resize(img, ow, oh, f),
            Some((ResizeTo::ShortestEdge(s), f)) => {
                // transformers' get_resize_output_image_size(default_to_square=False).
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                let new_long = (s as f64 * long as f64 / short as f64) as usize;
                let (oh, ow) = if w <= h { (new_long, s) } else { (s, new_long) };
                pil_resize(img, ow, oh, f)
            }
        }
    }

    /// `pixel_values` of one image, as transformers' PIL backend computes them.
    ///
    /// # Shapes
    /// → `[3, H, W]` (the crop size, or the resized size without a crop).
    pub fn pixel_values(&self, img: &RgbImage) -> Result<(Vec<f32>, usize, usize)> {
        let r = self.resized(img);
        let (w, h) = (r.width() as usize, r.height() as usize);
        let (top, left, ch, cw) = match self.crop {
            None => (0, 0, h, w),
            Some((ch, cw)) => {
                if ch > h || cw > w {
                    return Err(Error::invalid(
                        "image",
                        format!("{w}×{h} after resizing is smaller than the {cw}×{ch} crop"),
                    ));
                }
                ((h - ch) / 2, (w - cw) / 2, ch, cw)
            }
        };
        let mut out = vec![0f32; 3 * ch * cw];
        for y in 0..ch {
            for x in 0..cw {
                let p = r.get_pixel((left + x) as u32, (top + y) as u32).0;
                for c in 0..3 {
                    let mut v = match self.rescale {
                        Some(f) => (p[c] as f64 * f) as f32,
                        None => p[c] as f32,
                    };
                    if let Some((mean, std)) = self.normalize {
                        v = (v - mean[c]) / std[c];
                    }
                    out[(c * ch + y) * cw + x] = v;
                }
            }
        }
        Ok((out, ch, cw))
    }

    /// `pixel_values` of a batch of images of any sizes.
    ///
    /// # Shapes
    /// → `[N, 3, H, W]`.
    pub fn batch(&self, images: &[RgbImage], device: &Device) -> Result<Tensor<4>> {
        let mut all = Vec::new();
        let mut hw = (0, 0);
        for img in images {
            let (v, h, w) = self.pixel_values(img)?;
            if !all.is_empty() && hw != (h, w) {
                return Err(Error::invalid(
                    "images",
                    "the processor gives different sizes (no crop, different aspect ratios)",
                ));
            }
            hw = (h, w);
            all.extend(v);
        }
        Ok(Tensor::from_data(
            TensorData::new(all, [images.len(), 3, hw.0, hw.1]),
            device,
        ))
    }
}
