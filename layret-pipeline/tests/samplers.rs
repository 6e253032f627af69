//! The experimental branch sampler (`MethodSettings::sampler`): DDIM stays the default bit
//! for bit; another sampler steps the context and target branches on its own timesteps, and
//! the reference is inverted onto the same ones, so at step k every branch sees one timestep.

mod common;

use std::collections::BTreeSet;

use common::{models, subject};
use layret_attention::{AttentionCall, AttentionObserver, SiteSelector};
use layret_core::processor::{AttentionSite, Pass, StepContext};
use layret_core::scheduler::{SamplerKind, SamplerOptions};
use layret_core::{Error, Result};
use layret_pipeline::*;
use layret_test_support::{bits, to_f64};

const N: usize = 6;

fn settings() -> MethodSettings {
    MethodSettings::default().with_steps(N).with_mask_factor(2)
}

fn request(settings: MethodSettings) -> GenerateRequest {
    GenerateRequest::new(["a <cat-toy> on the beach"], 128, 128)
        .with_seed(3)
        .with_settings(settings)
}

/// (pass, step, timestep) of every pass it hears.
#[derive(Default)]
struct Timesteps(BTreeSet<(String, usize, u64)>);

impl AttentionObserver for Timesteps {
    fn begin_pass(&mut self, ctx: &StepContext) -> Result<()> {
        self.0
            .insert((ctx.pass.to_string(), ctx.step, ctx.timestep.to_bits()));
        Ok(())
    }
    fn observe(&mut self, _: &AttentionSite, _: &StepContext, _: AttentionCall) -> Result<()> {
        Ok(())
    }
}

fn run(
    models: &ModelPair,
    settings: MethodSettings,
    hooks: &mut PassHooks,
) -> Result<Vec<Generated>> {
    let mut pipe = LayoutAndRetouch::default();
    let mut out = Vec::new();
    pipe.generate_with(
        models,
        &subject(),
        &request(settings),
        hooks,
        &mut layret_core::ignore_progress,
        &mut |g| {
            out.push(g);
            Ok(())
        },
    )?;
    Ok(out)
}

fn latent_bits(out: &[Generated]) -> Vec<u32> {
    out.iter().flat_map(|g| bits(g.latents.clone())).collect()
}

#[test]
fn ddim_named_or_auto_is_the_default_bit_for_bit() {
    let models = models();
    let plain = run(&models, settings(), &mut PassHooks::none()).unwrap();
    for kind in [SamplerKind::Ddim, SamplerKind::Auto] {
        let s = settings().with_sampler(kind, false);
        let out = run(&models, s, &mut PassHooks::none()).unwrap();
        assert_eq!(latent_bits(&out), latent_bits(&plain), "{kind}");
    }
}

#[test]
fn every_branch_sees_the_samplers_timesteps() {
    let models = models();
    let plain = run(&models, settings(), &mut PassHooks::none()).unwrap();
    for (kind, karras) in [
        (SamplerKind::DpmPp2m, false),
        (SamplerKind::DpmPp2m, true),
        (SamplerKind::UniPc, false),
        (SamplerKind::Euler, false),
    ] {
        let s = settings().with_sampler(kind, karras);
        let sampler = kind
            .build(
                models.base().scheduler_config(),
                N,
                SamplerOptions { karras, eta: 0.0 },
            )
            .unwrap();
        let want: Vec<f64> = (0..N).map(|k| sampler.timestep(k)).collect();
        let (mut lt, mut it, mut rt, mut tt) = Default::default();
        let out = {
            let mut hooks = PassHooks::default();
            hooks.layout.observe(SiteSelector::new(), &mut lt);
            hooks.invert.observe(SiteSelector::new(), &mut it);
            hooks.reference.observe(SiteSelector::new(), &mut rt);
            hooks.target.observe(SiteSelector::new(), &mut tt);
            run(&models, s, &mut hooks).unwrap()
        };
        let (lt, it, rt, tt): (Timesteps, Timesteps, Timesteps, Timesteps) = (lt, it, rt, tt);
        let sample = Pass::Sample.to_string();
        for (name, seen, pass) in [
            ("context", &lt, sample.clone()),
            ("target", &tt, sample.clone()),
            ("reference", &rt, Pass::Reference.to_string()),
            ("inversion", &it, Pass::Invert.to_string()),
        ] {
            let got: BTreeSet<_> = seen.0.iter().cloned().collect();
            let expected: BTreeSet<_> = want
                .iter()
                .enumerate()
                .map(|(k, t)| (pass.clone(), k, t.to_bits()))
                .collect();
            assert_eq!(got, expected, "{kind} karras={karras}: {name} passes");
        }
        // A real, different image: finite, and not DDIM's.
        let v = to_f64(out[0].latents.clone());
        assert!(v.iter().all(|x| x.is_finite()), "{kind}");
        assert_ne!(latent_bits(&out), latent_bits(&plain), "{kind}");
    }
}

#[test]
fn samplers_the_method_cannot_take_are_refused() {
    let models = models();
    for (kind, karras) in [
        (SamplerKind::Pndm, false),
        (SamplerKind::EulerAncestral, false),
        (SamplerKind::Euler, true),
    ] {
        let s = settings().with_sampler(kind, karras);
        match run(&models, s, &mut PassHooks::none()) {
            Err(Error::InvalidArgument { name, message }) => {
                assert_eq!(name, "sampler", "{kind}: {message}");
                assert!(message.contains(kind.name()), "{message}");
            }
            other => panic!(
                "{kind}: expected a refusal, got {:?}",
                other.map(|o| o.len())
            ),
        }
    }
}
