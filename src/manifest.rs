//! `manifest.json`: what a `layret generate` run was asked, and every image it has written so
//! far, with the key that lets a later run of the same command skip it (resume).
//!
//! The file is rewritten atomically after each image, so at any moment it lists exactly the
//! images that exist (an entry whose PNG is missing or incomplete is ignored when resuming).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use layret_core::fingerprint::{Fingerprinter, of_tensor};
use layret_core::{Error, Result};
use layret_pipeline::{CacheStats, MethodSettings, ModelPair};
use serde::{Deserialize, Serialize};

/// The file name inside the output folder.
pub const FILE_NAME: &str = "manifest.json";

fn f32_name() -> String {
    "f32".into()
}

/// A run: its request and the images written so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `layret <version>`.
    pub software: String,
    /// The base model as given (`--model`).
    pub model: String,
    /// The personalizations as given, in order.
    pub personalization: Vec<String>,
    /// The personal phrase `P`.
    pub phrase: String,
    /// The class phrase `C`.
    pub class: String,
    /// The reference photos.
    pub references: Vec<PathBuf>,
    /// The prompts, in order (image `p<P>_s<K>` is prompt `P`).
    pub prompts: Vec<String>,
    /// Samples per prompt.
    pub num_samples: usize,
    /// The seed, or `noise file PATH`.
    pub seed: String,
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// The dtype of the text encoder and UNet (`--dtype`: `f32`, `f16`, `bf16`); absent in
    /// manifests written before it was recorded (read as `f32`).
    #[serde(default = "f32_name")]
    pub dtype: String,
    /// The VAE's dtype (`--vae-dtype`).
    #[serde(default = "f32_name")]
    pub vae_dtype: String,
    /// The method's settings.
    pub settings: SettingsRecord,
    /// Whether every image of the run exists.
    pub complete: bool,
    /// How the reference cache did in the latest run (`null` while it runs).
    pub reference_cache: Option<CacheRecord>,
    /// The images written, in (prompt, sample) order.
    pub images: Vec<ImageEntry>,
}

/// [`MethodSettings`] as the manifest records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsRecord {
    /// DDIM steps `N`.
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f64,
    /// The unconditional prompt.
    pub negative_prompt: String,
    /// Fraction of vanilla steps.
    pub layout_fraction: f64,
    /// `λ1 = round(layout_fraction · N)`.
    pub lambda1: usize,
    /// Structure-lock length `S`.
    pub swap_start: usize,
    /// Mask threshold `τ`.
    pub mask_threshold: f64,
    /// Mask level = latent / factor.
    pub mask_factor: usize,
    /// `otsu`, `off` or the fixed threshold.
    pub blend: String,
    /// First blended step.
    pub blend_start: usize,
    /// `split` or `concat`.
    pub mode: String,
    /// `f32`, `f16` or `recompute`.
    pub kv: String,
    /// The branches' sampler (`ddim` unless the experimental knob was used).
    #[serde(default = "ddim")]
    pub sampler: String,
    /// Karras sigmas for the sampler.
    #[serde(default)]
    pub karras: bool,
}

fn ddim() -> String {
    "ddim".into()
}

impl From<&MethodSettings> for SettingsRecord {
    fn from(s: &MethodSettings) -> Self {
        Self {
            steps: s.steps,
            guidance: s.guidance,
            negative_prompt: s.negative_prompt.clone(),
            layout_fraction: s.layout_fraction,
            lambda1: s.lambda1(),
            swap_start: s.swap_start,
            mask_threshold: s.mask_threshold,
            mask_factor: s.mask_factor,
            blend: s.blend.to_string(),
            blend_start: s.blend_start(),
            mode: s.mode.to_string(),
            kv: s.kv_policy.to_string(),
            sampler: s.sampler.to_string(),
            karras: s.karras,
        }
    }
}

/// The reference cache's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// Reused (from memory or the cache folder).
    pub hits: usize,
    /// Of the hits, those read back from the cache folder.
    pub disk_hits: usize,
    /// Computed.
    pub misses: usize,
}

impl From<CacheStats> for CacheRecord {
    fn from(s: CacheStats) -> Self {
        Self {
            hits: s.hits,
            disk_hits: s.disk_hits,
            misses: s.misses,
        }
    }
}

/// One written image and its side files (names relative to the output folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Index into [`Manifest::prompts`].
    pub prompt_index: usize,
    /// The prompt.
    pub prompt: String,
    /// Sample index within the prompt.
    pub sample: usize,
    /// The reference photo it used.
    pub reference: PathBuf,
    /// The image file.
    pub image: String,
    /// [`image_key`] of the run, prompt and sample: a rerun skips the image when it matches.
    pub key: String,
    /// The context (layout) image, if saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The target mask, if saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_target: Option<String>,
    /// The context mask, if saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_context: Option<String>,
    /// The reference mask, if saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_reference: Option<String>,
    /// The blend mask, if saved (and blending is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_blend: Option<String>,
}

impl Manifest {
    /// Write `dir/manifest.json` atomically (a reader sees the old file or the new one).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::invalid("manifest", e.to_string()))?;
        layret_core::atomic::write(&dir.join(FILE_NAME), text.as_bytes())
    }
}

/// What determines the images of a `generate` run, field by field (what a resumed run must
/// share with the one that wrote the images): the models, phrase and class, noise, size,
/// reference photos and settings. A versioned line format, never `Debug` output.
pub struct RunKey<'a> {
    /// The base and personalized models.
    pub models: &'a ModelPair,
    /// The personal phrase.
    pub phrase: &'a str,
    /// The class phrase.
    pub class_phrase: &'a str,
    /// The reference photos, as the pipeline gets them.
    pub references: &'a [Tensor<4>],
    /// The initial noise of every sample.
    pub noise: &'a Tensor<4>,
    /// The method's settings.
    pub settings: &'a MethodSettings,
    /// Width and height.
    pub size: (usize, usize),
}

impl RunKey<'_> {
    /// The key text (hashed per image by [`image_key`]).
    pub fn text(&self) -> Result<String> {
        let mut text = format!(
            "layret-generate-v1\nmodel {:016x}\nphrase {:?}\nclass {:?}\nnoise {:016x}\nsize {}x{}\n",
            self.models.fingerprint(),
            self.phrase,
            self.class_phrase,
            of_tensor(self.noise)?,
            self.size.0,
            self.size.1
        );
        for r in self.references {
            text.push_str(&format!("reference {:016x}\n", of_tensor(r)?));
        }
        text.push_str(&self.settings.key_text());
        Ok(text)
    }
}

/// The key of image (prompt, sample) of a run whose [`RunKey::text`] is `run`.
pub fn image_key(run: &str, prompt: &str, sample: usize) -> String {
    let mut f = Fingerprinter::new();
    f.update_str(run);
    f.update_str(prompt);
    f.update_u64(sample as u64);
    format!("{:016x}", f.finish())
}

/// The entries of `dir/manifest.json` whose image still exists as a complete PNG and whose key
/// is `key_of(prompt index, sample)`: (prompt index, sample) → entry. A missing or unreadable
/// manifest, or an entry of another layout or version, is simply not finished.
pub fn finished_images(
    dir: &Path,
    key_of: &dyn Fn(usize, usize) -> Option<String>,
) -> BTreeMap<(usize, usize), ImageEntry> {
    #[derive(Deserialize)]
    struct Loose {
        #[serde(default)]
        images: Vec<serde_json::Value>,
    }
    let mut done = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(dir.join(FILE_NAME)) else {
        return done;
    };
    let Ok(doc) = serde_json::from_str::<Loose>(&text) else {
        return done;
    };
    for value in doc.images {
        let Ok(e) = serde_json::from_value::<ImageEntry>(value) else {
            continue;
        };
        let valid = key_of(e.prompt_index, e.sample).as_deref() == Some(e.key.as_str())
            && layret_core::image_io::read_png_text(&dir.join(&e.image)).is_ok();
        if valid {
            done.insert((e.prompt_index, e.sample), e);
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: usize, s: usize, image: &str, key: &str) -> ImageEntry {
        ImageEntry {
            prompt_index: p,
            prompt: "a <x>".into(),
            sample: s,
            reference: "ref.png".into(),
            image: image.into(),
            key: key.into(),
            context: None,
            mask_target: None,
            mask_context: None,
            mask_reference: None,
            mask_blend: None,
        }
    }

    #[test]
    fn only_existing_images_with_their_key_are_finished() {
        let dir = tempfile::tempdir().unwrap();
        let img = image::RgbImage::new(4, 4);
        layret_core::image_io::save_png(&img, &dir.path().join("a.png"), &[]).unwrap();
        std::fs::write(dir.path().join("torn.png"), b"\x89PNG\r\n").unwrap();
        let m = Manifest {
            software: "layret".into(),
            model: "m".into(),
            personalization: vec![],
            phrase: "<x>".into(),
            class: "cat".into(),
            references: vec![],
            prompts: vec!["a <x>".into(); 2],
            num_samples: 2,
            seed: "1".into(),
            width: 32,
            height: 32,
            dtype: "f32".into(),
            vae_dtype: "f32".into(),
            settings: SettingsRecord::from(&MethodSettings::default()),
            complete: false,
            reference_cache: None,
            images: vec![
                entry(0, 0, "a.png", "k00"),
                entry(0, 1, "a.png", "stale"),
                entry(1, 0, "missing.png", "k10"),
                entry(1, 1, "torn.png", "k11"),
            ],
        };
        m.write(dir.path()).unwrap();
        let key_of = |p: usize, s: usize| Some(format!("k{p}{s}"));
        let done = finished_images(dir.path(), &key_of);
        assert_eq!(done.keys().copied().collect::<Vec<_>>(), [(0, 0)]);
        // The file reads back as written.
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.settings.blend, "otsu");
        // A damaged manifest finishes nothing (and does not panic).
        std::fs::write(dir.path().join(FILE_NAME), "{\"images\": [1, {").unwrap();
        assert!(finished_images(dir.path(), &key_of).is_empty());
    }
}
