//! Stage 1: step-blended inference.

use layret_attention::{KvStore, Router};
use layret_core::Result;
use layret_core::processor::{Branch, ModelRole, Pass};
use layret_core::progress::{StageProgress, report};
use layret_core::sampling::FiniteGuard;

use crate::models::{BranchPass, Conditioning, ModelPair, recording_pass};
use crate::stage::{ContextStep, LayoutRequest, LayoutResult, LayoutStage, ProgressFn, StepSink};

/// docs/method.md stage 1: the first `λ1` steps run the vanilla model on `y_c`, the rest the
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
        Conditioning::new(models, ModelRole::Vanilla, &p.class, neg, &p.class_phrase)?,
        Conditioning::new(models, ModelRole::Personalized, &p.personal, neg, &p.phrase)?,
    ))
}

impl LayoutStage for StepBlendedLayout {
    fn layout(
        &mut self,
        models: &ModelPair,
        request: &LayoutRequest,
        hooks: &mut Router,
        progress: &mut ProgressFn,
    ) -> Result<LayoutResult> {
        let mut all = request
            .settings
            .replays()
            .then(|| KvStore::new(request.settings.kv_policy));
        let mut result = self.layout_steps(
            models,
            request,
            hooks,
            &mut |step, _| {
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
        hooks: &mut Router,
        sink: &mut StepSink,
        progress: &mut ProgressFn,
    ) -> Result<LayoutResult> {
        let s = &request.settings;
        s.validate()?;
        let (_, mask) = geometry(request)?;
        let mut branch = crate::sampler::branch_sampler(models, s)?;
        let lambda1 = s.lambda1();
        let (vanilla, personal) = context_conditioning(models, request)?;
        let mut z = request.noise.clone() * branch.sampler.init_noise_sigma();
        let mut guard = FiniteGuard::new("context latents", &z.device());
        let mut trajectory = vec![z.clone()];
        let mut maps = Vec::with_capacity(s.steps);
        let total = branch.ddim.timesteps().len();
        branch.sampler.reset();
        for (k, &t) in branch.ddim.timesteps().to_vec().iter().enumerate() {
            let pass = BranchPass {
                branch: Branch::Context,
                kind: Pass::Sample,
                step: k,
                timestep: t as f64,
                guidance: s.guidance,
                conditioning: if k < lambda1 { &vanilla } else { &personal },
                mask,
                swap_divisor: s.swap_divisor,
            };
            let kv = s.replays().then_some(s.kv_policy);
            let input = branch.sampler.scale_model_input(z.clone(), k);
            let rec = recording_pass(models, &pass, input, kv, None, hooks)?;
            let latent = z.clone();
            z = branch.sampler.step(rec.eps, k, z, None)?;
            guard.check(&z, k)?;
            maps.push(rec.map.clone());
            trajectory.push(z.clone());
            report(
                progress,
                StageProgress {
                    stage: "layout",
                    step: k + 1,
                    total,
                },
            )?;
            sink(
                ContextStep {
                    k,
                    latent,
                    next: z.clone(),
                    map: Some(rec.map),
                    kv: rec.kv,
                },
                hooks,
            )?;
        }
        guard.finish()?;
        Ok(LayoutResult {
            request: request.clone(),
            trajectory,
            maps,
            kv: None,
            lambda1,
        })
    }
}
