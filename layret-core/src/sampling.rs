//! One implementation each of prompt encoding, classifier-free guidance, the sampling loop
//! and DDIM inversion, shared by every model: the vanilla [`StableDiffusion`](crate::stable_diffusion::StableDiffusion), a
//! personalized model beside it, and whatever a user assembles from their parts (a
//! [`Denoiser`] is a borrowed tokenizer + text encoder + UNet).
//!
//! [`sample`] runs CFG sampling for a batch of rows with their own prompts in a multi-branch
//! [`BatchLayout`], with an attention processor: text-to-image is the one-branch case, and a
//! researcher's multi-branch method (a target beside its sources) is another.
//!
//! ```no_run
//! use layret_core::processor::{BatchLayout, Branch, DefaultAttention};
//! use layret_core::sampling::{BatchText, SampleBatch, sample};
//! use layret_core::scheduler::SamplerKind;
//! use layret_core::stable_diffusion::{LoadOptions, StableDiffusion};
//! # fn main() -> layret_core::Result<()> {
//! let device = burn::tensor::Device::flex();
//! let sd = StableDiffusion::load("stable-diffusion-v1-5", &device, &LoadOptions::default())?;
//! let model = sd.denoiser();
//! // Two rows with their own prompts: branch Source(0) then branch Target, one sample each.
//! let text = BatchText::encode(&model, &["a watercolor fox", "a watercolor owl"], &["", ""])?;
//! let batch = SampleBatch::new(
//!     text,
//!     BatchLayout::new(vec![Branch::Source(0), Branch::Target], 1, true)?,
//!     7.5,
//! );
//! // Any sampler: DDIM, or e.g. DPM++ 2M with Karras sigmas.
//! let mut scheduler = sd.sampler(SamplerKind::DpmPp2m, 20, true, 0.0)?;
//! let noise = sd.initial_noise(&layret_core::stable_diffusion::NoiseSource::Seed(1), 2, 64, 64)?
//!     * scheduler.init_noise_sigma();
//! let latents = sample(&model, &batch, scheduler.as_mut(), noise, &mut DefaultAttention,
//!                      &mut layret_core::ignore_progress)?;
//! # Ok(()) }
//! ```

use std::ops::ControlFlow;

use burn::tensor::Tensor;

use crate::clip::ClipTextEncoder;
use crate::error::{Error, Result};
use crate::noise::seeded_noise;
use crate::processor::{AttentionProcessor, BatchLayout, ModelRole, Pass, StepContext};
use crate::progress::{StageProgress, report};
use crate::scheduler::{DdimScheduler, Scheduler};
use crate::tokenizer::ClipTokenizer;
use crate::unet::UNet2DConditionModel;

/// The parts that predict noise from text: a tokenizer, a text encoder and a UNet, and which
/// model of a vanilla/personalized pair they are (told to processors).
#[derive(Debug, Clone, Copy)]
pub struct Denoiser<'a> {
    tokenizer: &'a ClipTokenizer,
    text_encoder: &'a ClipTextEncoder,
    unet: &'a UNet2DConditionModel,
    role: ModelRole,
}

impl<'a> Denoiser<'a> {
    /// A denoiser from borrowed parts.
    pub fn new(
        tokenizer: &'a ClipTokenizer,
        text_encoder: &'a ClipTextEncoder,
        unet: &'a UNet2DConditionModel,
        role: ModelRole,
    ) -> Self {
        Self {
            tokenizer,
            text_encoder,
            unet,
            role,
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &'a ClipTokenizer {
        self.tokenizer
    }

    /// The text encoder.
    pub fn text_encoder(&self) -> &'a ClipTextEncoder {
        self.text_encoder
    }

    /// The UNet.
    pub fn unet(&self) -> &'a UNet2DConditionModel {
        self.unet
    }

    /// Vanilla or personalized.
    pub fn role(&self) -> ModelRole {
        self.role
    }

    /// `last_hidden_state` of each prompt (tokenized, padded to 77; over-long prompts fail).
    ///
    /// # Shapes
    /// `n` prompts → `[n, 77, hidden]`.
    pub fn encode(&self, prompts: &[&str]) -> Result<Tensor<3>> {
        let ids = prompts
            .iter()
            .map(|p| self.tokenizer.encode(p))
            .collect::<Result<Vec<_>>>()?;
        self.text_encoder.encode(&ids, 0)
    }

    /// One UNet pass over `latents` (one row per row of a half of `layout`), classifier-free
    /// guided when the layout has CFG halves: the batch `[latents; latents]` with the text
    /// `[uncond; cond]` gives `ε_u + w·(ε_c − ε_u)`; without CFG the plain prediction.
    ///
    /// # Shapes
    /// `latents` `[R, C, h, w]` with `R = layout.rows_per_half()` → `[R, C, h, w]`.
    pub fn guided_eps(
        &self,
        pass: &GuidedPass,
        latents: Tensor<4>,
        text: &BatchText,
        processor: &mut dyn AttentionProcessor,
    ) -> Result<Tensor<4>> {
        let layout = &pass.layout;
        let rows = latents.dims()[0];
        if rows != layout.rows_per_half() || text.rows() != rows {
            return Err(Error::Shape {
                what: "latents and text of a guided pass".into(),
                expected: format!(
                    "{} rows (the layout's branches × samples), text for each",
                    layout.rows_per_half()
                ),
                got: vec![rows, text.rows()],
            });
        }
        let ctx = StepContext::new(pass.step, pass.timestep, layout.clone())
            .with_pass(pass.kind)
            .with_model(self.role);
        if layout.cfg() {
            let uncond = text.uncond.as_ref().ok_or_else(|| {
                Error::invalid(
                    "batch text",
                    "the layout has CFG halves but the text has no unconditional rows",
                )
            })?;
            let context = Tensor::cat(vec![uncond.clone(), text.cond.clone()], 0);
            let input = Tensor::cat(vec![latents.clone(), latents], 0);
            self.unet.check_inputs(&input, &context)?;
            let eps = self
                .unet
                .forward(input, pass.timestep, &context, processor, &ctx)?;
            let eu = eps.clone().slice([0..rows]);
            let ec = eps.slice([rows..2 * rows]);
            Ok(eu.clone() + (ec - eu) * pass.guidance)
        } else {
            self.unet.check_inputs(&latents, &text.cond)?;
            self.unet
                .forward(latents, pass.timestep, &text.cond, processor, &ctx)
        }
    }

    /// DDIM inversion as docs/method.md defines it: from clean latents `x`, for
    /// the scheduler's timesteps in ascending order, `ε = ε(x, t, prompt)` without CFG, then
    /// the [inversion step](DdimScheduler::inversion_step). Returns `(t, z(t))` after each
    /// update, in ascending `t`. Processors see [`Pass::Invert`] passes with step
    /// `N − 1 − j` (the sampling step of the same timestep).
    pub fn invert(
        &self,
        latents: Tensor<4>,
        prompt: &str,
        scheduler: &DdimScheduler,
        processor: &mut dyn AttentionProcessor,
        progress: &mut dyn FnMut(StageProgress) -> ControlFlow<()>,
    ) -> Result<Vec<(usize, Tensor<4>)>> {
        let b = latents.dims()[0];
        let text = BatchText::unguided(self.encode(&[prompt])?, b);
        let layout = BatchLayout::single(crate::processor::Branch::Reference, b, false);
        let ts = scheduler.inversion_timesteps();
        let mut guard = FiniteGuard::new("inverted latents", &latents.device());
        let mut x = latents;
        let mut out = Vec::with_capacity(ts.len());
        for (j, &t) in ts.iter().enumerate() {
            let pass = GuidedPass {
                step: ts.len() - 1 - j,
                timestep: t as f64,
                kind: Pass::Invert,
                layout: layout.clone(),
                guidance: 1.0,
            };
            let eps = self.guided_eps(&pass, x.clone(), &text, processor)?;
            x = scheduler.inversion_step(eps, t, x);
            guard.check(&x, j)?;
            out.push((t, x.clone()));
            report(
                progress,
                StageProgress {
                    stage: "invert",
                    step: j + 1,
                    total: ts.len(),
                },
            )?;
        }
        guard.finish()?;
        Ok(out)
    }
}

/// What one guided UNet pass is: its step, timestep, kind, batch layout and guidance scale.
#[derive(Debug, Clone)]
pub struct GuidedPass {
    /// The sampling step `k`.
    pub step: usize,
    /// The timestep `t_k`.
    pub timestep: f64,
    /// Sample, invert or reference.
    pub kind: Pass,
    /// The batch layout (its `cfg` decides whether the pass is guided).
    pub layout: BatchLayout,
    /// The guidance scale `w`.
    pub guidance: f64,
}

/// The text of every row of a batch: cond rows and, for CFG, uncond rows.
#[derive(Debug, Clone)]
pub struct BatchText {
    cond: Tensor<3>,
    uncond: Option<Tensor<3>>,
}

impl BatchText {
    /// Encode one prompt and one negative prompt per row.
    pub fn encode(model: &Denoiser, prompts: &[&str], negatives: &[&str]) -> Result<Self> {
        if prompts.len() != negatives.len() || prompts.is_empty() {
            return Err(Error::invalid(
                "batch text",
                format!(
                    "{} prompts and {} negative prompts; give one of each per row",
                    prompts.len(),
                    negatives.len()
                ),
            ));
        }
        Ok(Self {
            cond: model.encode(prompts)?,
            uncond: Some(model.encode(negatives)?),
        })
    }

    /// `cond` and `uncond` (`[1, 77, D]` each, or one row per row) repeated to `rows` rows.
    pub fn repeated(cond: Tensor<3>, uncond: Tensor<3>, rows: usize) -> Self {
        let rep = |t: Tensor<3>| {
            if t.dims()[0] == 1 && rows > 1 {
                t.repeat_dim(0, rows)
            } else {
                t
            }
        };
        Self {
            cond: rep(cond),
            uncond: Some(rep(uncond)),
        }
    }

    /// Text without unconditional rows (passes without CFG), repeated to `rows` rows.
    pub fn unguided(cond: Tensor<3>, rows: usize) -> Self {
        let cond = if cond.dims()[0] == 1 && rows > 1 {
            cond.repeat_dim(0, rows)
        } else {
            cond
        };
        Self { cond, uncond: None }
    }

    /// These rows followed by `other`'s (both with or both without uncond rows).
    pub fn concat(self, other: BatchText) -> Result<Self> {
        let uncond = match (self.uncond, other.uncond) {
            (Some(a), Some(b)) => Some(Tensor::cat(vec![a, b], 0)),
            (None, None) => None,
            _ => {
                return Err(Error::invalid(
                    "batch text",
                    "cannot join text with and without unconditional rows",
                ));
            }
        };
        Ok(Self {
            cond: Tensor::cat(vec![self.cond, other.cond], 0),
            uncond,
        })
    }

    /// Rows (per half).
    pub fn rows(&self) -> usize {
        self.cond.dims()[0]
    }

    /// The cond rows `[R, 77, D]`.
    pub fn cond(&self) -> &Tensor<3> {
        &self.cond
    }

    /// The uncond rows `[R, 77, D]`, if any.
    pub fn uncond(&self) -> Option<&Tensor<3>> {
        self.uncond.as_ref()
    }
}

/// Per-step noise of stochastic samplers (DDIM with η > 0): step `k` draws layret's seeded
/// noise with seed `base + 1 + k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepNoise {
    /// The base seed.
    pub base: u64,
}

/// A batch to sample: its text, layout, guidance and per-step noise.
#[derive(Debug, Clone)]
pub struct SampleBatch {
    text: BatchText,
    layout: BatchLayout,
    guidance: f64,
    noise: StepNoise,
}

impl SampleBatch {
    /// `text` for the rows of `layout`, guided with `guidance` when the layout has CFG
    /// halves; per-step noise from seed 0 (see [`with_step_noise`](Self::with_step_noise)).
    pub fn new(text: BatchText, layout: BatchLayout, guidance: f64) -> Self {
        Self {
            text,
            layout,
            guidance,
            noise: StepNoise { base: 0 },
        }
    }

    /// Per-step noise from `base` (stochastic samplers only).
    pub fn with_step_noise(mut self, base: u64) -> Self {
        self.noise = StepNoise { base };
        self
    }

    /// The batch layout.
    pub fn layout(&self) -> &BatchLayout {
        &self.layout
    }

    /// The text.
    pub fn text(&self) -> &BatchText {
        &self.text
    }
}

/// Run `scheduler`'s sampling loop on `latents` (already scaled by its initial sigma) for
/// `batch`, every attention call going to `processor`; returns the final latents. The
/// scheduler is [reset](Scheduler::reset) first. Reports `"denoise"` progress per step; a
/// [`ControlFlow::Break`] from `progress` stops at the next step with [`Error::Cancelled`].
/// A stochastic sampler's noise for step `k` is `seeded_noise(batch.noise.base + 1 + k)`.
///
/// # Shapes
/// `latents` `[R, C, h, w]`, `R = batch.layout().rows_per_half()` → `[R, C, h, w]`.
pub fn sample(
    model: &Denoiser,
    batch: &SampleBatch,
    scheduler: &mut dyn Scheduler,
    latents: Tensor<4>,
    processor: &mut dyn AttentionProcessor,
    progress: &mut dyn FnMut(StageProgress) -> ControlFlow<()>,
) -> Result<Tensor<4>> {
    sample_with(
        model,
        batch,
        scheduler,
        latents,
        processor,
        &mut |_, _, z| Ok(z),
        progress,
    )
}

/// [`sample`], with `before_step(k, t_k, z)` replacing the latents before each step (e.g. to
/// pin source rows to their noised images, as multi-reference methods do).
pub fn sample_with(
    model: &Denoiser,
    batch: &SampleBatch,
    scheduler: &mut dyn Scheduler,
    latents: Tensor<4>,
    processor: &mut dyn AttentionProcessor,
    before_step: &mut dyn FnMut(usize, f64, Tensor<4>) -> Result<Tensor<4>>,
    progress: &mut dyn FnMut(StageProgress) -> ControlFlow<()>,
) -> Result<Tensor<4>> {
    if !batch.guidance.is_finite() {
        return Err(Error::invalid(
            "guidance",
            format!("{}; must be finite", batch.guidance),
        ));
    }
    let device = latents.device();
    scheduler.reset();
    let total = scheduler.num_steps();
    let mut z = latents;
    let mut guard = FiniteGuard::new("latents", &device);
    for k in 0..total {
        let t = scheduler.timestep(k);
        z = before_step(k, t, z)?;
        let pass = GuidedPass {
            step: k,
            timestep: t,
            kind: Pass::Sample,
            layout: batch.layout.clone(),
            guidance: batch.guidance,
        };
        let input = scheduler.scale_model_input(z.clone(), k);
        let eps = model.guided_eps(&pass, input, &batch.text, processor)?;
        let noise = scheduler.needs_noise().then(|| {
            seeded_noise(
                batch.noise.base.wrapping_add(1 + k as u64),
                z.dims(),
                &device,
            )
        });
        z = scheduler.step(eps, k, z, noise)?;
        guard.check(&z, k)?;
        report(
            progress,
            StageProgress {
                stage: "denoise",
                step: k + 1,
                total,
            },
        )?;
    }
    guard.finish()?;
    Ok(z)
}

/// [`Error::NonFinite`] if `t` holds NaN or Inf (one device→host read: see [`FiniteGuard`]
/// for loops).
pub fn check_finite<const D: usize>(t: &Tensor<D>, what: &str, step: usize) -> Result<()> {
    let finite = crate::host::to_bool_vec(t.clone().is_finite().all(), what)?;
    if finite.first().copied().unwrap_or(true) {
        Ok(())
    } else {
        Err(non_finite(what, step))
    }
}

fn non_finite(what: &str, step: usize) -> Error {
    Error::NonFinite {
        what: what.into(),
        step,
        suggestion: "with f16 weights, try f32 or bf16 (`--dtype f32`); keep the VAE in f32".into(),
    }
}

/// The NaN/Inf guard of a loop of steps.
///
/// On the flex CPU (tensors in host memory) each [`check`](Self::check) reads its flag at
/// once, so a run stops at the first bad step. On other devices the per-step flags stay on
/// the device and [`finish`](Self::finish) reads them all at once — one device→host read per
/// pass instead of a queue synchronization per step; the error names the same first bad step.
#[derive(Debug)]
pub struct FiniteGuard {
    what: String,
    eager: bool,
    pending: Vec<(usize, Tensor<1, burn::tensor::Bool>)>,
}

impl FiniteGuard {
    /// A guard for the values named `what` (in the error) on `device`.
    pub fn new(what: &str, device: &burn::tensor::Device) -> Self {
        Self {
            what: what.into(),
            eager: crate::host::is_host_resident(device),
            pending: Vec::new(),
        }
    }

    /// Check `t` after step `step` (now on flex, at [`finish`](Self::finish) elsewhere).
    pub fn check<const D: usize>(&mut self, t: &Tensor<D>, step: usize) -> Result<()> {
        if self.eager {
            return check_finite(t, &self.what, step);
        }
        self.pending.push((step, t.clone().is_finite().all()));
        Ok(())
    }

    /// [`Error::NonFinite`] naming the first step whose values were not finite.
    pub fn finish(self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let steps: Vec<usize> = self.pending.iter().map(|(k, _)| *k).collect();
        let flags = Tensor::cat(self.pending.into_iter().map(|(_, f)| f).collect(), 0);
        let flags = crate::host::to_bool_vec(flags, &self.what)?;
        match steps.iter().zip(flags).find(|(_, ok)| !ok) {
            Some((&k, _)) => Err(non_finite(&self.what, k)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(v: f32) -> Tensor<2> {
        Tensor::from_data(TensorData::new(vec![1.0, v], [1, 2]), &Device::flex())
    }

    fn step_of(e: Error) -> usize {
        match e {
            Error::NonFinite { step, .. } => step,
            other => panic!("not NonFinite: {other}"),
        }
    }

    #[test]
    fn the_deferred_guard_names_the_first_bad_step_with_one_read() {
        // What a GPU device gets: flags kept, read once by `finish`.
        let mut guard = FiniteGuard {
            what: "latents".into(),
            eager: false,
            pending: Vec::new(),
        };
        let before = crate::host::device_reads();
        for (k, v) in [0.5, f32::NAN, f32::INFINITY, 2.0].into_iter().enumerate() {
            guard.check(&t(v), k).unwrap();
        }
        assert_eq!(step_of(guard.finish().unwrap_err()), 1);
        // (Other tests in this binary may read too; this one made at least its one read.)
        assert!(crate::host::device_reads() > before);
        let mut fine = FiniteGuard::new("latents", &Device::flex());
        fine.eager = false;
        for k in 0..3 {
            fine.check(&t(1.0), k).unwrap();
        }
        fine.finish().unwrap();
    }

    #[test]
    fn the_eager_guard_stops_at_the_bad_step() {
        let mut guard = FiniteGuard::new("latents", &Device::flex());
        guard.check(&t(1.0), 0).unwrap();
        assert_eq!(
            step_of(guard.check(&t(f32::NEG_INFINITY), 1).unwrap_err()),
            1
        );
    }
}
