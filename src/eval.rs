//! `layret eval`: the scores the method is judged by (docs/evaluation.md) — CLIP-T (prompt
//! fidelity), CLIP-I and DINO (identity) and two diversities — on a folder of generated images,
//! as the DreamBooth / DreamBench protocol computes them.
//!
//! - `clip_t`: cosine of CLIP's image features and its text features of the prompt with the
//!   personal phrase replaced by the class phrase ("a sks dog on the beach" → "a dog on the
//!   beach").
//! - `clip_i`, `dino`: mean cosine of the image's CLIP image features / DINO CLS token to those
//!   of every reference photo.
//! - `diversity`: per prompt, mean `1 − cosine` of the DINO CLS tokens over pairs of its images.
//! - `layout_diversity`: per prompt, mean `1 − IoU` of the images' saved subject masks
//!   (`mask_target`, pixel ≥ 128 is subject; two empty masks have IoU 1).
//!
//! Per image, per prompt (means of its images) and overall (means over all images; the
//! diversities as means over prompts with at least two images). Cosines are of the f32
//! embeddings, computed in f64; plain cosines in [−1, 1] (no ×100, no clamp).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use image::RgbImage;
use layret_core::clip::ClipModel;
use layret_core::progress::{StageProgress, report};
use layret_core::vit::VitModel;
use layret_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One generated image to score.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalImage {
    /// The image file.
    pub path: PathBuf,
    /// Its prompt.
    pub prompt_index: usize,
    /// Its sample within the prompt.
    pub sample: usize,
    /// Its subject mask (`mask_target`), if saved.
    pub mask: Option<PathBuf>,
}

/// What a folder of generated images is scored against.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSet {
    /// The folder (named in the report).
    pub dir: PathBuf,
    /// The prompts as generated (with the personal phrase).
    pub prompts: Vec<String>,
    /// The personal phrase `P`.
    pub phrase: String,
    /// The class phrase `C`.
    pub class: String,
    /// The reference photos of the subject.
    pub references: Vec<PathBuf>,
    /// The images.
    pub images: Vec<EvalImage>,
}

fn bad(dir: &Path, message: impl Into<String>) -> Error {
    Error::invalid("eval", format!("{}: {}", dir.display(), message.into()))
}

impl EvalSet {
    /// A `layret generate` output folder, read from its `manifest.json` (prompts, phrase,
    /// class, references, images and masks). Relative reference paths are as the run gave them
    /// (relative to where it ran).
    pub fn from_run(dir: &Path) -> Result<Self> {
        let path = dir.join(crate::manifest::FILE_NAME);
        if !path.is_file() {
            return Err(Error::MissingFile {
                what: "manifest.json of a layret generate run (for another folder pass --prompts, --references, --phrase and --class)".into(),
                path,
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            file: path.clone(),
            message: e.to_string(),
        })?;
        let field = |k: &str| -> Result<&Value> {
            v.get(k).ok_or_else(|| Error::Config {
                file: path.clone(),
                message: format!("no `{k}`"),
            })
        };
        let strings = |k: &str| -> Result<Vec<String>> {
            field(k)?
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .ok_or_else(|| Error::Config {
                    file: path.clone(),
                    message: format!("`{k}` is not a list"),
                })
        };
        let text_of = |k: &str| -> Result<String> {
            field(k)?
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Config {
                    file: path.clone(),
                    message: format!("`{k}` is not a string"),
                })
        };
        let images = field("images")?
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| -> Result<EvalImage> {
                let num = |k: &str| {
                    e[k].as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| Error::Config {
                            file: path.clone(),
                            message: format!("an image entry without `{k}`: {e}"),
                        })
                };
                let image = e["image"].as_str().ok_or_else(|| Error::Config {
                    file: path.clone(),
                    message: format!("an image entry without `image`: {e}"),
                })?;
                Ok(EvalImage {
                    path: dir.join(image),
                    prompt_index: num("prompt_index")?,
                    sample: num("sample")?,
                    mask: e["mask_target"].as_str().map(|m| dir.join(m)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            prompts: strings("prompts")?,
            phrase: text_of("phrase")?,
            class: text_of("class")?,
            references: strings("references")?
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            images,
        })
    }

    /// A folder made elsewhere (e.g. `layret txt2img`): with one prompt, every PNG/JPEG in it
    /// (side files `*_mask_*`, `*_context*` and `grid.png` aside) is one of its samples; with
    /// several, files must be named `p<P>_s<K>.png` as `layret generate` names them.
    pub fn from_folder(
        dir: &Path,
        prompts: Vec<String>,
        phrase: String,
        class: String,
        references: Vec<PathBuf>,
    ) -> Result<Self> {
        if prompts.is_empty() {
            return Err(bad(dir, "no prompts (--prompts)"));
        }
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io("reading", dir, e))?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_lowercase())
                    .unwrap_or_default();
                (name.ends_with(".png") || name.ends_with(".jpg") || name.ends_with(".jpeg"))
                    && !name.starts_with('.')
                    && !name.contains("_mask_")
                    && !name.contains("_context")
                    && name != "grid.png"
            })
            .collect();
        files.sort();
        let mut images = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let stem = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let named = stem
                .strip_prefix('p')
                .and_then(|r| r.split_once("_s"))
                .and_then(|(p, s)| Some((p.parse::<usize>().ok()?, s.parse::<usize>().ok()?)));
            let (p, s) = match (named, prompts.len()) {
                (Some((p, s)), n) if p < n => (p, s),
                (None, 1) => (0, i),
                _ => {
                    return Err(bad(
                        dir,
                        format!(
                            "{} is not named p<P>_s<K> with P < {} (needed to match images to several prompts)",
                            f.display(),
                            prompts.len()
                        ),
                    ));
                }
            };
            let mask = f.with_file_name(format!("{stem}_mask_target.png"));
            images.push(EvalImage {
                path: f.clone(),
                prompt_index: p,
                sample: s,
                mask: mask.is_file().then_some(mask),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            prompts,
            phrase,
            class,
            references,
            images,
        })
    }

    /// The text CLIP-T encodes for prompt `p`: the phrase replaced by the class.
    pub fn clip_prompt(&self, p: usize) -> String {
        self.prompts[p].replace(&self.phrase, &self.class)
    }
}

/// The scores of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageScores {
    /// The image file (relative to the folder).
    pub image: String,
    /// Its prompt.
    pub prompt_index: usize,
    /// Its sample.
    pub sample: usize,
    /// CLIP-T.
    pub clip_t: f64,
    /// CLIP-I.
    pub clip_i: f64,
    /// DINO.
    pub dino: f64,
}

/// The scores of one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptScores {
    /// Its index.
    pub prompt_index: usize,
    /// As generated.
    pub prompt: String,
    /// What CLIP-T encoded.
    pub clip_prompt: String,
    /// Its images.
    pub images: Vec<String>,
    /// Mean CLIP-T of its images.
    pub clip_t: f64,
    /// Mean CLIP-I of its images.
    pub clip_i: f64,
    /// Mean DINO of its images.
    pub dino: f64,
    /// Mean pairwise `1 − cos` of DINO CLS (None with fewer than 2 images).
    pub diversity: Option<f64>,
    /// Mean pairwise `1 − IoU` of the subject masks (None without masks or with < 2 images).
    pub layout_diversity: Option<f64>,
}

/// The averages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverallScores {
    /// Mean over images.
    pub clip_t: f64,
    /// Mean over images.
    pub clip_i: f64,
    /// Mean over images.
    pub dino: f64,
    /// Mean over prompts that have it.
    pub diversity: Option<f64>,
    /// Mean over prompts that have it.
    pub layout_diversity: Option<f64>,
}

/// `scores.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// The folder scored.
    pub dir: PathBuf,
    /// The CLIP and DINO models used.
    pub models: Value,
    /// The averages.
    pub overall: OverallScores,
    /// Per prompt.
    pub per_prompt: Vec<PromptScores>,
    /// Per image.
    pub per_image: Vec<ImageScores>,
}

/// The encoders.
pub struct Evaluator {
    /// CLIP (e.g. `openai/clip-vit-large-patch14`).
    pub clip: ClipModel,
    /// DINO (e.g. `facebook/dino-vits16`).
    pub dino: VitModel,
    /// Where they were read from.
    pub models: (PathBuf, PathBuf),
}

/// `a·b / (|a||b|)` in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// IoU of two masks (`true` = subject); two empty masks: 1.
pub fn iou(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

fn rows(t: Tensor<2>) -> Result<Vec<Vec<f32>>> {
    let [n, d] = t.dims();
    let v: Vec<f32> = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::invalid("embeddings", format!("{e:?}")))?;
    Ok((0..n).map(|i| v[i * d..(i + 1) * d].to_vec()).collect())
}

fn mean(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (s, n) = v
        .into_iter()
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

fn read_mask(path: &Path) -> Result<Vec<bool>> {
    let img = image::open(path)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .to_luma8();
    Ok(img.as_raw().iter().map(|&v| v >= 128).collect())
}

impl Evaluator {
    /// Load CLIP and DINO from their folders.
    pub fn load(clip: &Path, dino: &Path, device: &Device) -> Result<Self> {
        Ok(Self {
            clip: ClipModel::from_dir(clip, device)?,
            dino: VitModel::from_dir(dino, device)?,
            models: (clip.to_path_buf(), dino.to_path_buf()),
        })
    }

    /// Score `set`; `progress` hears one `"eval"` step per image (and may stop).
    pub fn score(
        &self,
        set: &EvalSet,
        progress: &mut dyn FnMut(StageProgress) -> ControlFlow<()>,
    ) -> Result<Scores> {
        if set.images.is_empty() {
            return Err(bad(&set.dir, "no images to score"));
        }
        if set.references.is_empty() {
            return Err(bad(&set.dir, "no reference photos (--references)"));
        }
        if let Some(i) = set
            .images
            .iter()
            .find(|i| i.prompt_index >= set.prompts.len())
        {
            return Err(bad(
                &set.dir,
                format!(
                    "{} has prompt {} of {}",
                    i.path.display(),
                    i.prompt_index,
                    set.prompts.len()
                ),
            ));
        }
        let read = |p: &Path| -> Result<RgbImage> { layret_pipeline::read_rgb(p) };
        let refs: Vec<RgbImage> = set
            .references
            .iter()
            .map(|p| read(p))
            .collect::<Result<_>>()?;
        let ref_clip = rows(self.clip.image_features(&refs)?)?;
        let ref_dino = rows(self.dino.cls(&refs)?)?;
        let clip_prompts: Vec<String> =
            (0..set.prompts.len()).map(|p| set.clip_prompt(p)).collect();
        let texts = rows(
            self.clip
                .text_features(&clip_prompts.iter().map(String::as_str).collect::<Vec<_>>())?,
        )?;
        let total = set.images.len();
        let mut per_image = Vec::with_capacity(total);
        let mut dino_of = Vec::with_capacity(total);
        for (n, im) in set.images.iter().enumerate() {
            let img = read(&im.path)?;
            let c = rows(self.clip.image_features(std::slice::from_ref(&img))?)?.remove(0);
            let d = rows(self.dino.cls(std::slice::from_ref(&img))?)?.remove(0);
            let rel = im
                .path
                .strip_prefix(&set.dir)
                .unwrap_or(&im.path)
                .display()
                .to_string();
            per_image.push(ImageScores {
                image: rel,
                prompt_index: im.prompt_index,
                sample: im.sample,
                clip_t: cosine(&c, &texts[im.prompt_index]),
                clip_i: mean(ref_clip.iter().map(|r| cosine(&c, r))).unwrap_or(f64::NAN),
                dino: mean(ref_dino.iter().map(|r| cosine(&d, r))).unwrap_or(f64::NAN),
            });
            dino_of.push(d);
            report(
                progress,
                StageProgress {
                    stage: "eval",
                    step: n + 1,
                    total,
                },
            )?;
        }
        let mut per_prompt = Vec::new();
        for (p, prompt) in set.prompts.iter().enumerate() {
            let idx: Vec<usize> = (0..total)
                .filter(|&i| set.images[i].prompt_index == p)
                .collect();
            if idx.is_empty() {
                continue;
            }
            // Pairs a < b of positions in `idx` (the prompt's images, in order).
            let pairs: Vec<(usize, usize)> = (0..idx.len())
                .flat_map(|a| (a + 1..idx.len()).map(move |b| (a, b)))
                .collect();
            let diversity = mean(
                pairs
                    .iter()
                    .map(|&(a, b)| 1.0 - cosine(&dino_of[idx[a]], &dino_of[idx[b]])),
            );
            let masks: Option<Vec<Vec<bool>>> = idx
                .iter()
                .map(|&i| set.images[i].mask.as_ref().map(|m| read_mask(m)))
                .collect::<Option<Vec<Result<_>>>>()
                .map(|v| v.into_iter().collect::<Result<Vec<_>>>())
                .transpose()?;
            let layout_diversity = match &masks {
                Some(m) if idx.len() >= 2 => {
                    if let Some(k) = m.iter().position(|mk| mk.len() != m[0].len()) {
                        return Err(bad(
                            &set.dir,
                            format!("mask of image {} has another size than the first", idx[k]),
                        ));
                    }
                    mean(pairs.iter().map(|&(a, b)| 1.0 - iou(&m[a], &m[b])))
                }
                _ => None,
            };
            let of = |f: fn(&ImageScores) -> f64| {
                mean(idx.iter().map(|&i| f(&per_image[i]))).unwrap_or(f64::NAN)
            };
            per_prompt.push(PromptScores {
                prompt_index: p,
                prompt: prompt.clone(),
                clip_prompt: clip_prompts[p].clone(),
                images: idx.iter().map(|&i| per_image[i].image.clone()).collect(),
                clip_t: of(|s| s.clip_t),
                clip_i: of(|s| s.clip_i),
                dino: of(|s| s.dino),
                diversity,
                layout_diversity,
            });
        }
        let all = |f: fn(&ImageScores) -> f64| mean(per_image.iter().map(f)).unwrap_or(f64::NAN);
        let overall = OverallScores {
            clip_t: all(|s| s.clip_t),
            clip_i: all(|s| s.clip_i),
            dino: all(|s| s.dino),
            diversity: mean(per_prompt.iter().filter_map(|p| p.diversity)),
            layout_diversity: mean(per_prompt.iter().filter_map(|p| p.layout_diversity)),
        };
        Ok(Scores {
            dir: set.dir.clone(),
            models: serde_json::json!({
                "clip": self.models.0, "dino": self.models.1,
                "clip_text": "the prompt with the personal phrase replaced by the class phrase",
            }),
            overall,
            per_prompt,
            per_image,
        })
    }
}

fn cell(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "–".into())
}

impl Scores {
    /// Write `scores.json` and `scores.md` into `dir` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::invalid("scores", e.to_string()))?;
        layret_core::atomic::write(&dir.join("scores.json"), text.as_bytes())?;
        layret_core::atomic::write(&dir.join("scores.md"), self.markdown().as_bytes())
    }

    /// A markdown table: overall, then one row per prompt.
    pub fn markdown(&self) -> String {
        let o = &self.overall;
        let mut s = format!("# Scores of {}\n\n{TABLE_HEADER}", self.dir.display());
        s.push_str(&table_row(
            "**overall**",
            [o.clip_t, o.clip_i, o.dino],
            [o.diversity, o.layout_diversity],
        ));
        for p in &self.per_prompt {
            s.push_str(&table_row(
                &p.prompt.replace('|', "\\|"),
                [p.clip_t, p.clip_i, p.dino],
                [p.diversity, p.layout_diversity],
            ));
        }
        s
    }
}

const TABLE_HEADER: &str =
    "| | CLIP-T | CLIP-I | DINO | diversity | layout diversity |\n|---|---|---|---|---|---|\n";

/// One table row: a label, the three identity/fidelity scores, the two optional diversities.
fn table_row(label: &str, scores: [f64; 3], diversities: [Option<f64>; 2]) -> String {
    format!(
        "| {label} | {:.4} | {:.4} | {:.4} | {} | {} |\n",
        scores[0],
        scores[1],
        scores[2],
        cell(diversities[0]),
        cell(diversities[1])
    )
}

/// One table comparing the overall scores of several folders side by side (the paper's
/// comparison: Layout-and-Retouch vs the personalized model alone).
pub fn comparison_table(scores: &[Scores]) -> String {
    let mut s = String::from(TABLE_HEADER);
    for sc in scores {
        let o = &sc.overall;
        s.push_str(&table_row(
            &sc.dir.display().to_string(),
            [o.clip_t, o.clip_i, o.dino],
            [o.diversity, o.layout_diversity],
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_and_iou() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(iou(&[false, false], &[false, false]), 1.0);
        assert_eq!(iou(&[true, false], &[false, false]), 0.0);
        assert_eq!(iou(&[true, true, false], &[true, false, false]), 0.5);
    }
}
