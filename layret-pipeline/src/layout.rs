//! Stage 1: step-blended inference.

use layret_attention::{AttentionStore, KvRecorder, KvStore, Router};
use layret_core::Result;
use layret_core::scheduler::Scheduler;
use layret_core::stable_diffusion::{Progress, check_finite, report};

use crate::models::{
    Conditioning, ModelPair, Which, cfg_pass, mask_sites, subject_map, swapped_sites,
};
use crate::stage::{ContextStep, LayoutRequest, LayoutResult, LayoutStage, ProgressFn};

/// METHOD.md stage 1: the first `λ1` steps run the vanilla model on `y_c`, the rest the
/// personalized model on `y_p`. Records the trajectory, the context maps at the mask level and
/// (under the K/V policy) the swapped sites' keys/values, so stage 2 can replay the context
/// branch instead of recomputing it. Run step by step ([`LayoutStage::layout_steps`]) it hands
/// each step's keys/values over instead of keeping them.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepBlendedLayout;

/// The latent size and mask level of a request, checked.
pub(crate) fn geometry(request: &LayoutRequest) -> Result<((usize, usize), (usize, usize))> {
    let [_, _, h, w] = request.noise.dims();
    Ok(((h, w), request.settings.mask_level(h, w)?))
}

/// The context branch's conditioning at step k (vanilla on `y_c` before `λ1`).
pub(crate) fn context_conditioning(
    models: &ModelPair,
    request: &LayoutRequest,
) -> Result<(Conditioning, Conditioning)> {
    let p = &request.prompts;
    let neg = &request.settings.negative_prompt;
    Ok((
        Conditioning::new(models, Which::Vanilla, &p.class, neg, &p.class_phrase)?,
        Conditioning::new(models, Which::Personal, &p.personal, neg, &p.phrase)?,
    ))
}

impl LayoutStage for StepBlendedLayout {
    fn layout(
        &mut self,
        models: &ModelPair,
        request: &LayoutRequest,
        progress: &mut ProgressFn,
    ) -> Result<LayoutResult> {
        let mut all = request
            .settings
            .replays()
            .then(|| KvStore::new(request.settings.kv_policy));
        let mut result = self.layout_steps(
            models,
            request,
            &mut |step| {
                if let (Some(all), Some(kv)) = (all.as_mut(), step.kv) {
                    all.extend(kv);
                }
                Ok(())
            },
            progress,
        )?;
        result.kv = all;
        Ok(result)
    }

    fn layout_steps(
        &mut self,
        models: &ModelPair,
        request: &LayoutRequest,
        sink: &mut dyn FnMut(ContextStep) -> Result<()>,
        progress: &mut ProgressFn,
    ) -> Result<LayoutResult> {
        let s = &request.settings;
        s.validate()?;
        let (_, mask) = geometry(request)?;
        let sched = models.base.ddim(s.steps, 0.0)?;
        let lambda1 = s.lambda1();
        let (vanilla, personal) = context_conditioning(models, request)?;
        let mut z = request.noise.clone();
        let mut trajectory = vec![z.clone()];
        let mut maps = Vec::with_capacity(s.steps);
        let total = sched.timesteps().len();
        for (k, &t) in sched.timesteps().iter().enumerate() {
            let c = if k < lambda1 { &vanilla } else { &personal };
            let mut store = AttentionStore::new(true);
            let mut kv = s.replays().then(|| KvStore::new(s.kv_policy));
            let eps = {
                let mut recorder = kv.as_mut().map(KvRecorder::new);
                let mut router = Router::new();
                if let Some(r) = recorder.as_mut() {
                    router.route(swapped_sites(s.swap_divisor), r);
                }
                router.route(mask_sites(mask.0, mask.1), &mut store);
                cfg_pass(
                    models,
                    c,
                    z.clone(),
                    t as f64,
                    k,
                    s.guidance,
                    "context",
                    &mut router,
                )?
            };
            let latent = z.clone();
            z = sched.step(eps, k, z, None)?;
            check_finite(&z, "context latents", k)?;
            let map = subject_map(&store, k, mask, &c.tokens)?;
            maps.push(map.clone());
            trajectory.push(z.clone());
            report(
                progress,
                Progress {
                    stage: "layout",
                    step: k + 1,
                    total,
                },
            )?;
            sink(ContextStep {
                k,
                latent,
                next: z.clone(),
                map: Some(map),
                kv,
            })?;
        }
        Ok(LayoutResult {
            request: request.clone(),
            trajectory,
            maps,
            kv: None,
            lambda1,
        })
    }
}
