//! Stage 2: multi-source attention swapping with adaptive latent blending.

use burn::tensor::Tensor;
use layret_attention::{
    AttentionStore, KvPolicy, KvRecorder, KvSource, KvStore, MultiSourceSwap, Router, SwapMasks,
    masks,
};
use layret_core::scheduler::Scheduler;
use layret_core::stable_diffusion::{Progress, check_finite};
use layret_core::{Error, Result};

use crate::layout::{context_conditioning, geometry};
use crate::models::{ModelPair, cfg_pass, mask_sites, subject_map, swapped_sites};
use crate::reference::{ReferenceCache, ReferenceKey, compute_reference};
use crate::settings::Blend;
use crate::stage::{LayoutResult, RetouchResult, RetouchStage, StepMasks};

/// METHOD.md stage 2. The reference branch (inversion, keys/values, maps) comes from the
/// [`ReferenceCache`]; the context branch is replayed from stage 1 when it recorded its
/// keys/values, else recomputed step by step (identical results).
#[derive(Debug, Default)]
pub struct MultiSourceRetouch {
    /// References computed so far (per model, image, `y_r`, N).
    pub cache: ReferenceCache,
    /// When `Some`, the masks of every step are appended here as `(step, masks)` (for
    /// debugging and tests); `None` keeps only the last step's in the result.
    pub mask_log: Option<Vec<(usize, StepMasks)>>,
}

impl MultiSourceRetouch {
    /// A stage with an empty cache.
    pub fn new() -> Self {
        Self::default()
    }
}

/// `[n, L]` 0/1 masks → `[n, 1, hm, wm]`.
fn spatial(m: &Tensor<2>, hm: usize, wm: usize) -> Tensor<4> {
    masks::to_spatial(m.clone(), hm, wm)
}

impl RetouchStage for MultiSourceRetouch {
    fn retouch(
        &mut self,
        models: &ModelPair,
        layout: &LayoutResult,
        reference: &Tensor<4>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RetouchResult> {
        let req = &layout.request;
        let s = &req.settings;
        s.validate()?;
        let ((h, w), mask) = geometry(req)?;
        let (hm, wm) = mask;
        let n = req.noise.dims()[0];
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
        let [_, _, rh, rw] = reference.dims();
        let f = models.base.vae_factor();
        if (rh, rw) != (h * f, w * f) {
            return Err(Error::Shape {
                what: "reference image".into(),
                expected: format!("[1, 3, {}, {}] (the generation size)", h * f, w * f),
                got: reference.dims().to_vec(),
            });
        }
        let sched = models.base.ddim(s.steps, 0.0)?;
        let key = ReferenceKey::new(models, reference, &req.prompts.reference, s)?;
        let refd = self.cache.get_or_insert(key, &models.base.device, || {
            compute_reference(models, reference, &req.prompts, s, mask, progress)
        })?;
        // The target runs ε* on y_p: the same conditioning as the context after λ1.
        let (vanilla_c, target) = context_conditioning(models, req)?;
        let replay = layout.kv.is_some() && s.replays();
        let tau = s.mask_threshold;
        let blend_start = s.blend_start();

        let mut z = layout.trajectory[0].clone();
        let mut prev_target_map: Option<Tensor<2>> = None;
        let mut prev_context_map: Option<Tensor<2>> = None;
        let mut last_masks = None;
        let total = sched.timesteps().len();
        for (k, &t) in sched.timesteps().iter().enumerate() {
            // The context branch at step k: replayed, or recomputed on z^c_k.
            let recomputed;
            let (context_kv, context_map): (&KvStore, Tensor<2>) = if replay {
                let kv = layout
                    .kv
                    .as_ref()
                    .ok_or_else(|| Error::invalid("layout", "no recorded keys/values"))?;
                let map = layout.maps.get(k).cloned().ok_or_else(|| {
                    Error::invalid("layout", format!("no context map at step {k}"))
                })?;
                (kv, map)
            } else {
                let c = if k < layout.lambda1 {
                    &vanilla_c
                } else {
                    &target
                };
                let mut kv = KvStore::new(KvPolicy::KeepF32);
                let mut store = AttentionStore::new(true);
                {
                    let mut recorder = KvRecorder::new(&mut kv);
                    let mut router = Router::new();
                    router.route(swapped_sites(s.swap_divisor), &mut recorder);
                    router.route(mask_sites(hm, wm), &mut store);
                    cfg_pass(
                        models,
                        c,
                        layout.trajectory[k].clone(),
                        t as f64,
                        k,
                        s.guidance,
                        "context",
                        &mut router,
                    )?;
                }
                let map = subject_map(&store, k, mask, &c.tokens)?;
                recomputed = kv;
                (&recomputed, map)
            };

            // Masks from step k−1's maps (none at step 0).
            let step_masks = match (k, &prev_target_map, &prev_context_map) {
                (0, _, _) => None,
                (_, Some(tm), Some(cm)) => {
                    let rm = refd
                        .maps
                        .get(k - 1)
                        .cloned()
                        .ok_or_else(|| Error::invalid("reference", "missing map"))?;
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
                "target",
                KvSource::Replay {
                    context: context_kv,
                    reference: &refd.kv,
                },
                s.swap_start,
                s.mode,
            );
            swap.set_masks(step_masks.clone());
            let mut store = AttentionStore::new(true);
            let eps = {
                let mut router = Router::new();
                router.route(swapped_sites(s.swap_divisor), &mut swap);
                router.route(mask_sites(hm, wm), &mut store);
                cfg_pass(
                    models,
                    &target,
                    z.clone(),
                    t as f64,
                    k,
                    s.guidance,
                    "target",
                    &mut router,
                )?
            };
            if let Some(site) = swap.missing().first() {
                return Err(Error::invalid(
                    "retouch",
                    format!(
                        "no recorded keys/values for {site}; record them in stage 1 or recompute"
                    ),
                ));
            }
            z = sched.step(eps, k, z, None)?;
            let target_map = subject_map(&store, k, mask, &target.tokens)?;
            let mut blend_mask = None;
            if k >= blend_start {
                let binary = match s.blend {
                    Blend::Off => None,
                    Blend::Otsu => Some(masks::otsu(target_map.clone())?),
                    Blend::Fixed(tb) => Some(masks::threshold(target_map.clone(), tb)),
                };
                if let Some(b) = binary {
                    let m = masks::resize_nearest(masks::dilate3x3(spatial(&b, hm, wm)), h, w);
                    z = z * m.clone()
                        + layout.trajectory[k + 1].clone() * m.clone().neg().add_scalar(1.0);
                    blend_mask = Some(m);
                }
            }
            check_finite(&z, "target latents", k)?;
            let used = step_masks.map(|m| StepMasks {
                target: spatial(&m.target, hm, wm),
                context: spatial(&m.context, hm, wm),
                reference: spatial(&m.reference, hm, wm),
                blend: blend_mask,
            });
            if let (Some(log), Some(m)) = (self.mask_log.as_mut(), &used) {
                log.push((k, m.clone()));
            }
            if k + 1 == total {
                last_masks = used;
            }
            prev_target_map = Some(target_map);
            prev_context_map = Some(context_map);
            progress(Progress {
                stage: "retouch",
                step: k + 1,
                total,
            });
        }
        Ok(RetouchResult {
            latents: z,
            masks: last_masks,
        })
    }
}
