//! Stage 2: multi-source attention swapping with adaptive latent blending.

use std::sync::Arc;

use crate::sampler::{BranchSampler, branch_sampler};
use burn::tensor::Tensor;
use layret_attention::{KvPolicy, KvSource, MultiSourceSwap, Router, SwapMasks, masks};
use layret_core::processor::{Branch, Pass};
use layret_core::progress::{StageProgress, report};
use layret_core::sampling::FiniteGuard;
use layret_core::{Error, Result};

use crate::hooks::PassHooks;
use crate::layout::{context_conditioning, geometry};
use crate::models::{BranchPass, Conditioning, ModelPair, recording_pass};
use crate::reference::{
    ReferenceCache, ReferenceData, ReferenceKey, ReferenceRequest, compute_reference,
};
use crate::settings::Blend;
use crate::stage::{
    ContextStep, LayoutRequest, LayoutResult, LayoutStage, ProgressFn, RetouchResult, RetouchStage,
    StepMasks,
};

/// docs/method.md stage 2. The reference branch (inversion, keys/values, maps) comes from the
/// [`ReferenceCache`]; the context branch is replayed from stage 1 when it recorded its
/// keys/values, else recomputed step by step (identical results). Run with
/// [`RetouchStage::retouch_with`] it consumes the layout in lockstep: the context's step k
/// is used by the target's step k and dropped, so memory does not grow with the step count.
#[derive(Debug, Default)]
pub struct MultiSourceRetouch {
    /// References computed so far (per model, image, `y_r`, N); shareable between pipelines.
    pub cache: Arc<ReferenceCache>,
    /// When `Some`, the masks of every step are appended here as `(step, masks)` (for
    /// debugging and tests); `None` keeps only the last step's in the result.
    pub mask_log: Option<Vec<(usize, StepMasks)>>,
}

impl MultiSourceRetouch {
    /// A stage with an empty cache (see [`ReferenceCache::new`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A stage using `cache` (shared with other stages, e.g. one per server thread).
    pub fn with_cache(cache: Arc<ReferenceCache>) -> Self {
        Self {
            cache,
            mask_log: None,
        }
    }

    /// The reference of `request` for `reference`: from the cache, or computed (and cached);
    /// computed afresh, outside the cache, when `hooks` touch the reference passes.
    fn reference(
        &mut self,
        models: &ModelPair,
        request: &LayoutRequest,
        reference: &Tensor<4>,
        hooks: &mut PassHooks,
        progress: &mut ProgressFn,
    ) -> Result<Arc<ReferenceData>> {
        let s = &request.settings;
        let ((h, w), _) = geometry(request)?;
        let [_, _, rh, rw] = reference.dims();
        let f = models.base().vae_factor();
        if (rh, rw) != (h * f, w * f) {
            return Err(Error::Shape {
                what: "reference image".into(),
                expected: format!("[1, 3, {}, {}] (the generation size)", h * f, w * f),
                got: reference.dims().to_vec(),
            });
        }
        let rr = ReferenceRequest {
            image: reference,
            prompts: &request.prompts,
            settings: s,
        };
        if hooks.touches_reference() {
            return Ok(Arc::new(compute_reference(
                models, &rr, None, hooks, progress,
            )?));
        }
        let key = ReferenceKey::new(models, reference, &request.prompts.reference, s)?;
        self.cache
            .get_or_compute(key, models.base().device(), |disk| {
                compute_reference(models, &rr, disk, hooks, progress)
            })
    }
}

/// `[n, L]` 0/1 masks → `[n, 1, hm, wm]`.
fn spatial(m: &Tensor<2>, hm: usize, wm: usize) -> Tensor<4> {
    masks::to_spatial(m.clone(), hm, wm)
}

/// The target branch of one request, advanced one step at a time by [`TargetRun::step`].
struct TargetRun<'a> {
    models: &'a ModelPair,
    request: &'a LayoutRequest,
    refd: Arc<ReferenceData>,
    branch: BranchSampler,
    vanilla_c: Conditioning,
    target_c: Conditioning,
    lambda1: usize,
    latent: (usize, usize),
    mask: (usize, usize),
    z: Option<Tensor<4>>,
    prev_target_map: Option<Tensor<2>>,
    prev_context_map: Option<Tensor<2>>,
    last_masks: Option<StepMasks>,
    mask_log: Option<&'a mut Vec<(usize, StepMasks)>>,
    guard: FiniteGuard,
}

impl<'a> TargetRun<'a> {
    fn new(
        models: &'a ModelPair,
        request: &'a LayoutRequest,
        refd: Arc<ReferenceData>,
        mask_log: Option<&'a mut Vec<(usize, StepMasks)>>,
    ) -> Result<Self> {
        let s = &request.settings;
        s.validate()?;
        let (latent, mask) = geometry(request)?;
        let (vanilla_c, target_c) = context_conditioning(models, request)?;
        if refd.latents.len() != s.steps || refd.maps.len() != s.steps {
            return Err(Error::invalid(
                "reference",
                format!("{} reference steps for N = {}", refd.latents.len(), s.steps),
            ));
        }
        Ok(Self {
            models,
            request,
            refd,
            branch: {
                let mut b = branch_sampler(models, s)?;
                b.sampler.reset();
                b
            },
            vanilla_c,
            target_c,
            lambda1: s.lambda1(),
            latent,
            mask,
            z: None,
            prev_target_map: None,
            prev_context_map: None,
            last_masks: None,
            mask_log,
            guard: FiniteGuard::new("target latents", &request.noise.device()),
        })
    }

    /// The target's step `cs.k`, given the context's (replayed from its keys/values, or
    /// recomputed on its latent with the layout's hooks), with the target's hooks.
    fn step(
        &mut self,
        cs: &ContextStep,
        layout_hooks: &mut Router,
        target_hooks: &mut Router,
        progress: &mut ProgressFn,
    ) -> Result<()> {
        let s = &self.request.settings;
        let (h, w) = self.latent;
        let (hm, wm) = self.mask;
        let n = self.request.noise.dims()[0];
        let k = cs.k;
        let t = self
            .branch
            .timestep(k)
            .ok_or_else(|| Error::invalid("layout", format!("step {k} is past N = {}", s.steps)))?;
        // The target starts where the context does: z^t_0 = z^c_0.
        let z = match self.z.take() {
            Some(z) => z,
            None if k == 0 => cs.latent.clone(),
            None => {
                return Err(Error::invalid(
                    "layout",
                    "the context's steps arrived out of order",
                ));
            }
        };
        // The context branch at step k: replayed, or recomputed on z^c_k.
        let (context_kv, context_map) = match (&cs.kv, &cs.map, s.replays()) {
            (Some(kv), Some(map), true) => (kv.clone(), map.clone()),
            _ => {
                let pass = BranchPass {
                    branch: Branch::Context,
                    kind: Pass::Sample,
                    step: k,
                    timestep: t as f64,
                    guidance: s.guidance,
                    conditioning: if k < self.lambda1 {
                        &self.vanilla_c
                    } else {
                        &self.target_c
                    },
                    mask: self.mask,
                    swap_divisor: s.swap_divisor,
                };
                let rec = recording_pass(
                    self.models,
                    &pass,
                    self.branch.sampler.scale_model_input(cs.latent.clone(), k),
                    Some(KvPolicy::KeepF32),
                    None,
                    layout_hooks,
                )?;
                (rec.kv.unwrap_or_default(), rec.map)
            }
        };
        let reference_kv = self.refd.kv_at(k)?;

        // Masks from step k−1's maps (none at step 0).
        let step_masks = match (k, &self.prev_target_map, &self.prev_context_map) {
            (0, _, _) => None,
            (_, Some(tm), Some(cm)) => {
                let rm = self
                    .refd
                    .maps
                    .get(k - 1)
                    .cloned()
                    .ok_or_else(|| Error::invalid("reference", "missing map"))?;
                let tau = s.mask_threshold;
                Some(SwapMasks {
                    height: hm,
                    width: wm,
                    reference: masks::threshold(rm, tau).repeat_dim(0, n),
                    context: masks::threshold(cm.clone(), tau),
                    target: masks::threshold(tm.clone(), tau),
                })
            }
            _ => {
                return Err(Error::invalid(
                    "retouch",
                    format!("missing maps before step {k}"),
                ));
            }
        };

        let mut swap = MultiSourceSwap::new(
            Branch::Target,
            KvSource::Replay {
                context: &context_kv,
                reference: &reference_kv,
            },
            s.swap_start,
            s.mode,
        );
        swap.set_masks(step_masks.clone());
        let pass = BranchPass {
            branch: Branch::Target,
            kind: Pass::Sample,
            step: k,
            timestep: t as f64,
            guidance: s.guidance,
            conditioning: &self.target_c,
            mask: self.mask,
            swap_divisor: s.swap_divisor,
        };
        let rec = recording_pass(
            self.models,
            &pass,
            self.branch.sampler.scale_model_input(z.clone(), k),
            None,
            Some(&mut swap),
            target_hooks,
        )?;
        let (eps, target_map) = (rec.eps, rec.map);
        let mut z = self.branch.sampler.step(eps, k, z, None)?;
        let mut blend_mask = None;
        if k >= s.blend_start() {
            let binary = match s.blend {
                Blend::Off => None,
                Blend::Otsu => Some(masks::otsu(target_map.clone())?),
                Blend::Fixed(tb) => Some(masks::threshold(target_map.clone(), tb)),
            };
            if let Some(b) = binary {
                let m = masks::resize_nearest(masks::dilate3x3(spatial(&b, hm, wm)), h, w);
                z = z * m.clone() + cs.next.clone() * m.clone().neg().add_scalar(1.0);
                blend_mask = Some(m);
            }
        }
        self.guard.check(&z, k)?;
        let used = step_masks.map(|m| StepMasks {
            target: spatial(&m.target, hm, wm),
            context: spatial(&m.context, hm, wm),
            reference: spatial(&m.reference, hm, wm),
            blend: blend_mask,
        });
        if let (Some(log), Some(m)) = (self.mask_log.as_mut(), &used) {
            log.push((k, m.clone()));
        }
        if k + 1 == s.steps {
            self.last_masks = used;
        }
        self.prev_target_map = Some(target_map);
        self.prev_context_map = Some(context_map);
        self.z = Some(z);
        report(
            progress,
            StageProgress {
                stage: "retouch",
                step: k + 1,
                total: s.steps,
            },
        )
    }

    fn finish(self) -> Result<RetouchResult> {
        self.guard.finish()?;
        Ok(RetouchResult {
            latents: self
                .z
                .ok_or_else(|| Error::invalid("retouch", "no step ran"))?,
            masks: self.last_masks,
        })
    }
}

impl RetouchStage for MultiSourceRetouch {
    fn has_reference(&self, key: &ReferenceKey) -> bool {
        self.cache.contains(key)
    }

    fn retouch(
        &mut self,
        models: &ModelPair,
        layout: &LayoutResult,
        reference: &Tensor<4>,
        hooks: &mut PassHooks,
        progress: &mut ProgressFn,
    ) -> Result<RetouchResult> {
        let req = &layout.request;
        let s = &req.settings;
        s.validate()?;
        if layout.trajectory.len() != s.steps + 1 {
            return Err(Error::invalid(
                "layout",
                format!(
                    "the trajectory has {} latents, expected N + 1 = {}",
                    layout.trajectory.len(),
                    s.steps + 1
                ),
            ));
        }
        let refd = self.reference(models, req, reference, hooks, progress)?;
        let mut run = TargetRun::new(models, req, refd, self.mask_log.as_mut())?;
        for k in 0..s.steps {
            let mut cs = layout.step(k)?;
            if !s.replays() {
                cs.kv = None;
            }
            run.step(&cs, &mut hooks.layout, &mut hooks.target, progress)?;
        }
        run.finish()
    }

    fn retouch_with(
        &mut self,
        models: &ModelPair,
        request: &LayoutRequest,
        layout: &mut dyn LayoutStage,
        reference: &Tensor<4>,
        hooks: &mut PassHooks,
        progress: &mut ProgressFn,
    ) -> Result<(LayoutResult, RetouchResult)> {
        request.settings.validate()?;
        let refd = self.reference(models, request, reference, hooks, progress)?;
        let mut run = TargetRun::new(models, request, refd, self.mask_log.as_mut())?;
        // The layout and the target share the progress callback, one step each in turn.
        let progress = std::cell::RefCell::new(progress);
        let mut layout_progress = |p: StageProgress| (progress.borrow_mut())(p);
        let target_hooks = &mut hooks.target;
        let result = layout.layout_steps(
            models,
            request,
            &mut hooks.layout,
            &mut |cs, layout_hooks| {
                run.step(
                    &cs,
                    layout_hooks,
                    target_hooks,
                    &mut **progress.borrow_mut(),
                )
            },
            &mut layout_progress,
        )?;
        Ok((result, run.finish()?))
    }
}
