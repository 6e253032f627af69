//! `LayoutAndRetouch`: the two stages composed over prompts and samples.

use std::ops::ControlFlow;

use burn::tensor::Tensor;
use image::RgbImage;
use layret_core::processor::ModelRole;
use layret_core::progress::StageProgress;
use layret_core::stable_diffusion::NoiseSource;
use layret_core::{Error, Result};

use crate::hooks::PassHooks;
use crate::layout::StepBlendedLayout;
use crate::models::ModelPair;
use crate::prompts::SubjectPrompts;
use crate::retouch::MultiSourceRetouch;
use crate::settings::MethodSettings;
use crate::stage::{LayoutRequest, LayoutStage, RetouchStage, StepMasks};

/// The subject: its phrases and reference photos.
#[derive(Debug, Clone)]
pub struct Subject {
    /// `P`, e.g. "sks dog".
    pub phrase: String,
    /// `C`, e.g. "dog".
    pub class_phrase: String,
    /// The reference photos at the generation size, each `[1, 3, H, W]` in [-1, 1]; with
    /// R of them, sample k of every prompt uses reference `k mod R` (docs/method.md).
    pub references: Vec<Tensor<4>>,
}

impl Subject {
    /// A subject with one reference photo (`[1, 3, H, W]` in [-1, 1]).
    pub fn new(
        phrase: impl Into<String>,
        class_phrase: impl Into<String>,
        reference: Tensor<4>,
    ) -> Self {
        Self {
            phrase: phrase.into(),
            class_phrase: class_phrase.into(),
            references: vec![reference],
        }
    }

    /// Which reference sample `k` uses: `k mod R`.
    pub fn reference_of(&self, sample: usize) -> usize {
        sample % self.references.len().max(1)
    }
}

/// One generation request: several prompts × `num_samples` for one subject. Build it with
/// [`new`](Self::new) and the `with_*` methods:
///
/// ```
/// use layret_pipeline::{GenerateRequest, MethodSettings};
/// let r = GenerateRequest::new(["a sks dog on the beach"], 512, 512)
///     .with_samples(2)
///     .with_seed(7)
///     .with_settings(MethodSettings::default().with_steps(30));
/// assert_eq!((r.num_samples, r.settings.steps), (2, 30));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GenerateRequest {
    /// Prompts, each containing the subject's phrase.
    pub prompts: Vec<String>,
    /// Samples per prompt (`K`).
    pub num_samples: usize,
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// Initial noise: a seed (the same for every prompt) or a `[K, 4, H/8, W/8]` tensor whose
    /// rows the K samples of each prompt use.
    pub noise: NoiseSource,
    /// The method's knobs.
    pub settings: MethodSettings,
    /// Also return the masks of the last step as images.
    pub return_masks: bool,
}

impl GenerateRequest {
    /// `prompts` at `width × height`, one sample each, seed 0, the default settings.
    pub fn new<S: Into<String>>(
        prompts: impl IntoIterator<Item = S>,
        width: usize,
        height: usize,
    ) -> Self {
        Self {
            prompts: prompts.into_iter().map(Into::into).collect(),
            num_samples: 1,
            width,
            height,
            noise: NoiseSource::Seed(0),
            settings: MethodSettings::default(),
            return_masks: false,
        }
    }

    /// `k` samples per prompt.
    pub fn with_samples(mut self, k: usize) -> Self {
        self.num_samples = k;
        self
    }

    /// Initial noise from layret's seeded generator.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.noise = NoiseSource::Seed(seed);
        self
    }

    /// Initial noise from `noise`.
    pub fn with_noise(mut self, noise: NoiseSource) -> Self {
        self.noise = noise;
        self
    }

    /// The method's settings.
    pub fn with_settings(mut self, settings: MethodSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Also return the last step's masks.
    pub fn with_masks(mut self, return_masks: bool) -> Self {
        self.return_masks = return_masks;
        self
    }
}

/// The masks of one sample as grayscale images at the generation size.
#[derive(Debug, Clone)]
pub struct MaskImages {
    /// `M_t`.
    pub target: image::GrayImage,
    /// `M_c`.
    pub context: image::GrayImage,
    /// `M_r`.
    pub reference: image::GrayImage,
    /// `M̃` (latent blending), if it ran.
    pub blend: Option<image::GrayImage>,
}

impl MaskImages {
    /// The masks as `[H, W]` arrays (255 = subject), named `target`, `context`, `reference`
    /// and, if blending ran, `blend`.
    pub fn to_arrays(&self) -> Vec<(&'static str, layret_core::array::ndarray::Array2<u8>)> {
        use layret_core::array::gray_to_array;
        let mut out = vec![
            ("target", gray_to_array(&self.target)),
            ("context", gray_to_array(&self.context)),
            ("reference", gray_to_array(&self.reference)),
        ];
        if let Some(b) = &self.blend {
            out.push(("blend", gray_to_array(b)));
        }
        out
    }
}

/// One generated sample.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Index of the prompt in the request.
    pub prompt_index: usize,
    /// Sample index within the prompt.
    pub sample: usize,
    /// The reference image it used (`sample mod R`).
    pub reference_index: usize,
    /// The final image.
    pub image: RgbImage,
    /// The context (layout) image beside it.
    pub context_image: RgbImage,
    /// Final target latents `[1, 4, h, w]`.
    pub latents: Tensor<4>,
    /// Final context latents `[1, 4, h, w]`.
    pub context_latents: Tensor<4>,
    /// Masks, if asked for.
    pub masks: Option<MaskImages>,
}

impl Generated {
    /// The final image as an array `[H, W, 3]`.
    pub fn image_array(&self) -> layret_core::array::ndarray::Array3<u8> {
        let a = layret_core::array::images_to_array(std::slice::from_ref(&self.image));
        a.index_axis_move(layret_core::array::ndarray::Axis(0), 0)
    }
}

/// Progress of the whole pipeline: which prompt, the stage's own progress, and the steps of
/// the whole request done so far out of its total (known up front: every layout, retouch,
/// reference and decode step of every prompt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestProgress {
    /// Prompt index.
    pub prompt: usize,
    /// Number of prompts.
    pub prompts: usize,
    /// Progress of the current stage.
    pub stage: StageProgress,
    /// Steps of the whole request done.
    pub done: usize,
    /// Steps of the whole request in all.
    pub total: usize,
}

/// The Layout-and-Retouch pipeline: a [`LayoutStage`] then a [`RetouchStage`] (by default
/// [`StepBlendedLayout`] and [`MultiSourceRetouch`]); either can be a user's own.
pub struct LayoutAndRetouch<
    L: LayoutStage = StepBlendedLayout,
    R: RetouchStage = MultiSourceRetouch,
> {
    /// Stage 1.
    pub layout: L,
    /// Stage 2.
    pub retouch: R,
}

impl Default for LayoutAndRetouch {
    fn default() -> Self {
        Self {
            layout: StepBlendedLayout,
            retouch: MultiSourceRetouch::new(),
        }
    }
}

fn gray(mask: &Tensor<4>, i: usize, width: u32, height: u32) -> Result<image::GrayImage> {
    let [_, _, h, w] = mask.dims();
    let row = mask.clone().slice([i..i + 1]);
    let v = layret_core::host::to_f32_vec(row, "mask")?;
    let small = image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
        image::Luma([if v[y as usize * w + x as usize] >= 0.5 {
            255
        } else {
            0
        }])
    });
    Ok(image::imageops::resize(
        &small,
        width,
        height,
        image::imageops::FilterType::Nearest,
    ))
}

impl<L: LayoutStage, R: RetouchStage> LayoutAndRetouch<L, R> {
    /// Compose two stages.
    pub fn new(layout: L, retouch: R) -> Self {
        Self { layout, retouch }
    }

    /// Run both stages for every prompt of `request`; the images in prompt, then sample order.
    /// The progress callback answers [`ControlFlow::Break`] to stop (at the next step
    /// boundary): the result is then [`Error::Cancelled`] — use
    /// [`generate_each`](Self::generate_each) to keep what finished before.
    pub fn generate(
        &mut self,
        models: &ModelPair,
        subject: &Subject,
        request: &GenerateRequest,
        progress: &mut dyn FnMut(RequestProgress) -> ControlFlow<()>,
    ) -> Result<Vec<Generated>> {
        let mut out = Vec::new();
        self.generate_each(models, subject, request, progress, &mut |g| {
            out.push(g);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`generate`](Self::generate), handing each prompt's images to `done` as soon as they
    /// are finished (to save them right away), in sample order. Everything is checked before
    /// any work starts. If `done` fails or `progress` asks to stop, the run ends there with
    /// that error; the images handed over before are the caller's.
    pub fn generate_each(
        &mut self,
        models: &ModelPair,
        subject: &Subject,
        request: &GenerateRequest,
        progress: &mut dyn FnMut(RequestProgress) -> ControlFlow<()>,
        done: &mut dyn FnMut(Generated) -> Result<()>,
    ) -> Result<()> {
        self.generate_with(
            models,
            subject,
            request,
            &mut PassHooks::none(),
            progress,
            done,
        )
    }

    /// [`generate_each`](Self::generate_each) with the user's attention processors on the
    /// passes of both stages (see [`PassHooks`]: layered under the built-in ones).
    pub fn generate_with(
        &mut self,
        models: &ModelPair,
        subject: &Subject,
        request: &GenerateRequest,
        hooks: &mut PassHooks,
        progress: &mut dyn FnMut(RequestProgress) -> ControlFlow<()>,
        done: &mut dyn FnMut(Generated) -> Result<()>,
    ) -> Result<()> {
        let checked = self.check(models, subject, request)?;
        let base = models.base();
        let n = request.settings.steps;
        // The whole request's steps, up front: per prompt and reference group, the layout and
        // retouch passes and a decode; per reference not yet cached, its inversion and passes.
        let groups = &checked.groups;
        let mut total = checked.prompts.len() * groups.len() * (2 * n + 1);
        if let Some(keys) = &checked.reference_keys {
            total += if hooks.touches_reference() {
                // Computed afresh per prompt and group.
                checked.prompts.len() * keys.len() * 2 * n
            } else {
                keys.iter().filter(|k| !self.retouch_caches(k)).count() * 2 * n
            };
        }
        let n_prompts = checked.prompts.len();
        let mut finished = 0usize;
        for (pi, prompts) in checked.prompts.into_iter().enumerate() {
            let mut samples = Vec::with_capacity(request.num_samples);
            for (r, rows) in groups {
                let mut report = |stage: StageProgress| {
                    finished = (finished + 1).min(total);
                    progress(RequestProgress {
                        prompt: pi,
                        prompts: n_prompts,
                        stage,
                        done: finished,
                        total,
                    })
                };
                let req = LayoutRequest {
                    prompts: prompts.clone(),
                    noise: select_rows(&checked.noise, rows),
                    settings: request.settings.clone(),
                };
                let (layout, result) = self.retouch.retouch_with(
                    models,
                    &req,
                    &mut self.layout,
                    &subject.references[*r],
                    hooks,
                    &mut report,
                )?;
                let context = layout
                    .trajectory
                    .last()
                    .cloned()
                    .ok_or_else(|| Error::invalid("layout", "empty trajectory"))?;
                let images = base.decode_to_rgb8(result.latents.clone())?;
                let context_images = base.decode_to_rgb8(context.clone())?;
                layret_core::progress::report(
                    &mut report,
                    StageProgress {
                        stage: "decode",
                        step: 1,
                        total: 1,
                    },
                )?;
                for (i, (image, context_image)) in
                    images.into_iter().zip(context_images).enumerate()
                {
                    let masks = match (&result.masks, request.return_masks) {
                        (Some(m), true) => Some(mask_images(
                            m,
                            i,
                            request.width as u32,
                            request.height as u32,
                        )?),
                        _ => None,
                    };
                    samples.push(Generated {
                        prompt_index: pi,
                        sample: rows[i],
                        reference_index: *r,
                        image,
                        context_image,
                        latents: result.latents.clone().slice([i..i + 1]),
                        context_latents: context.clone().slice([i..i + 1]),
                        masks,
                    });
                }
            }
            samples.sort_by_key(|g| g.sample);
            for g in samples {
                done(g)?;
            }
        }
        Ok(())
    }

    /// Whether the retouch stage already holds `key`.
    fn retouch_caches(&self, key: &crate::reference::ReferenceKey) -> bool {
        self.retouch.has_reference(key)
    }

    /// Check a request before any work: settings, sizes, prompts, references, noise; the
    /// prompts, the noise and the sample groups (by reference) it runs, and warnings about
    /// settings that do nothing (see [`GenerateRequest::warnings`]).
    fn check(
        &self,
        models: &ModelPair,
        subject: &Subject,
        request: &GenerateRequest,
    ) -> Result<Checked> {
        request.settings.validate()?;
        if request.prompts.is_empty() {
            return Err(Error::invalid("prompts", "no prompt given"));
        }
        if request.num_samples == 0 {
            return Err(Error::invalid("num_samples", "0; must be at least 1"));
        }
        let base = models.base();
        let (h, w) = base.latent_size(request.width, request.height)?;
        request.settings.mask_level(h, w)?;
        let noise = base.initial_noise(&request.noise, request.num_samples, h, w)?;
        let prompts = request
            .prompts
            .iter()
            .map(|p| {
                SubjectPrompts::new(
                    p,
                    &subject.phrase,
                    &subject.class_phrase,
                    &request.settings.reference_prefix,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // The subject tokens must be found (and fit in 77 tokens) in every prompt the method
        // encodes, for both models.
        for p in &prompts {
            for (which, text, phrase) in [
                (ModelRole::Personalized, &p.personal, &p.phrase),
                (ModelRole::Vanilla, &p.class, &p.class_phrase),
                (ModelRole::Personalized, &p.reference, &p.phrase),
            ] {
                crate::prompts::subject_tokens(models.tokenizer(which), text, phrase)?;
            }
        }
        if subject.references.is_empty() {
            return Err(Error::invalid("references", "no reference image given"));
        }
        for (i, r) in subject.references.iter().enumerate() {
            let want = [1, 3, request.height, request.width];
            if r.dims() != want {
                return Err(Error::Shape {
                    what: format!("reference image {i}"),
                    expected: format!("{want:?} (one image at the generation size)"),
                    got: r.dims().to_vec(),
                });
            }
        }
        // Samples grouped by the reference they use (k mod R); each group runs both stages.
        let groups: Vec<(usize, Vec<usize>)> = (0..subject.references.len())
            .map(|r| {
                let rows = (0..request.num_samples)
                    .filter(|&k| subject.reference_of(k) == r)
                    .collect::<Vec<_>>();
                (r, rows)
            })
            .filter(|(_, rows)| !rows.is_empty())
            .collect();
        let reference_keys = match prompts.first() {
            Some(p) => Some(
                groups
                    .iter()
                    .map(|(r, _)| {
                        crate::reference::ReferenceKey::new(
                            models,
                            &subject.references[*r],
                            &p.reference,
                            &request.settings,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        Ok(Checked {
            prompts,
            noise,
            groups,
            reference_keys,
        })
    }
}

/// A request as [`LayoutAndRetouch::check`] found it.
struct Checked {
    prompts: Vec<SubjectPrompts>,
    noise: Tensor<4>,
    groups: Vec<(usize, Vec<usize>)>,
    reference_keys: Option<Vec<crate::reference::ReferenceKey>>,
}

impl GenerateRequest {
    /// Settings that are valid but do nothing or less than one may think, in words (the CLI
    /// prints them before starting): a structure lock as long as the run (`swap_start ≥ N`:
    /// the two-source swap never starts), blending that never starts.
    pub fn warnings(&self) -> Vec<String> {
        let s = &self.settings;
        let mut out = Vec::new();
        if s.swap_start >= s.steps {
            out.push(format!(
                "swap_start {} ≥ steps {}: the two-source swap never starts (every step is a structure lock on the context)",
                s.swap_start, s.steps
            ));
        }
        if s.blend != crate::settings::Blend::Off && s.blend_start() >= s.steps {
            out.push(format!(
                "blend_start {} ≥ steps {}: latent blending never runs",
                s.blend_start(),
                s.steps
            ));
        }
        out
    }
}

/// Rows `rows` of `t` (all of them without a copy when `rows` is `0..n`).
fn select_rows(t: &Tensor<4>, rows: &[usize]) -> Tensor<4> {
    let n = t.dims()[0];
    if rows.len() == n && rows.iter().enumerate().all(|(i, &r)| i == r) {
        return t.clone();
    }
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let idx = Tensor::<1, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(idx, [rows.len()]),
        &t.device(),
    );
    t.clone().select(0, idx)
}

fn mask_images(m: &StepMasks, i: usize, width: u32, height: u32) -> Result<MaskImages> {
    Ok(MaskImages {
        target: gray(&m.target, i, width, height)?,
        context: gray(&m.context, i, width, height)?,
        reference: gray(&m.reference, i, width, height)?,
        blend: m
            .blend
            .as_ref()
            .map(|b| gray(b, i, width, height))
            .transpose()?,
    })
}
