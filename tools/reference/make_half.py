"""Half-precision goldens (bf16 and f16) on the tiny fixtures: the UNet, text-to-image and the
Layout-and-Retouch method, computed by PyTorch with layret's precision policy:

- the UNet and the text encoder hold their weights in the half dtype and compute in it
  (`module.to(dtype)`); PyTorch's CPU kernels accumulate matrix products, normalization
  statistics and attention in f32, as layret's do;
- latents, noise, classifier-free guidance and the DDIM scheduler stay f32: the UNet's input is
  cast to the half dtype and its prediction widened back (diffusers' pipelines would keep the
  latents in the model dtype; layret does not);
- attention scores and softmax are f32 (method_reference.py's processors widen them);
- the VAE stays f32 (layret's `--vae-dtype` default).

Every case is also run in f32 by the same code, so a test can state PyTorch's own f32-vs-half
spread as its tolerance; the f32 runs double as a check of this script against the f32 goldens
(make_fixtures.py), which they must reproduce.

    python3 tools/reference/make_half.py      # writes tests/fixtures/golden/half_*.safetensors
"""

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
import make_fixtures as mf  # noqa: E402
import method_reference  # noqa: E402

FIX, GOLDEN = mf.FIX, mf.GOLDEN
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


class Cast:
    """A diffusers UNet in `dtype`: the input cast in, the prediction widened to f32 out; every
    other attribute is the wrapped UNet's (processors, config, blocks)."""

    def __init__(self, unet, dtype):
        self.unet = copy.deepcopy(unet).to(dtype)
        self.dtype = dtype

    def __call__(self, sample, t, encoder_hidden_states):
        out = self.unet(sample.to(self.dtype), t,
                        encoder_hidden_states=encoder_hidden_states.to(self.dtype)).sample
        return SimpleNamespace(sample=out.float())

    def __getattr__(self, name):
        return getattr(self.unet, name)


def unet_goldens(out):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(FIX / "sd1-tiny" / "unet"),
                                                torch_dtype=torch.float32).eval()
    g = load_file(str(GOLDEN / "unet_sd1-tiny.safetensors"))
    for name, dt in DTYPES.items():
        u = Cast(unet, dt)
        for t in [981, 1]:
            with torch.no_grad():
                eps = u(g["sample"], t, g["encoder_hidden_states"]).sample
            out[f"unet/{name}/eps_t{t}"] = eps
            if name == "f32":
                d = (eps - g[f"eps_t{t}"]).abs().max().item()
                assert d == 0.0, f"f32 UNet t={t} differs from the f32 golden by {d}"
            else:
                d = (eps - out[f"unet/f32/eps_t{t}"]).abs().max().item()
                print(f"unet {name} t={t}: PyTorch f32-vs-{name} spread {d:.3e} "
                      f"(|eps| ≤ {out['unet/f32/eps_t981'].abs().max().item():.2f})")


def txt2img_goldens(out):
    """layret's txt2img request of golden/pipeline_sd1-tiny (5 DDIM steps, CFG 7.5, 128², two
    images, negative prompt "blurry") as a loop over diffusers' parts."""
    from diffusers import DDIMScheduler

    tok, te, unet = mf.method_parts("sd1-tiny")
    g = load_file(str(GOLDEN / "pipeline_sd1-tiny.safetensors"))
    noise = g["noise"]
    for name, dt in DTYPES.items():
        sched = DDIMScheduler.from_pretrained(str(FIX / "sd1-tiny" / "scheduler"))
        te_h = copy.deepcopy(te).to(dt)
        u = Cast(unet, dt)
        cond = method_reference.encode(tok, te_h, "a photo of a sks dog surfing")
        uncond = method_reference.encode(tok, te_h, "blurry")
        sched.set_timesteps(5)
        z = noise.clone()
        traj = []
        for t in sched.timesteps:
            eps = method_reference.cfg_eps(u, z, t, cond, uncond, 7.5)
            z = sched.step(eps, t, z, eta=0.0).prev_sample
            traj.append(z.clone())
        out[f"txt2img/{name}/latents"] = z
        out[f"txt2img/{name}/trajectory"] = torch.stack(traj)
        if name == "f32":
            d = (z - g["latents"]).abs().max().item()
            assert d < 1e-5, f"the f32 loop is {d} from diffusers' pipeline golden"
            print(f"txt2img f32 loop vs StableDiffusionPipeline golden: {d:.1e}")
        else:
            d = (z - out["txt2img/f32/latents"]).abs().max().item()
            print(f"txt2img {name}: PyTorch f32-vs-{name} spread {d:.3e} "
                  f"(|latents| ≤ {z.abs().max().item():.2f})")


# The method case: METHOD_BASE (TI <cat-toy>, split, Otsu blending, 6 steps, 128², 2 samples)
# with the first seed from 4301 on whose f32 mask decisions all survive a change of the maps
# by HALF_DELTA: f16 maps of two implementations differ by ~1e-3, so a decision closer to its
# threshold than that flips between them, and the latents that follow differ by far more than
# f16 rounding (bf16 maps differ by ~1e-2: some decisions flip whatever the seed; the tests
# bound how many).
HALF_CASE = dict(tag="half", seed=4301)
HALF_DELTA = 5e-4


def method_goldens(out):
    from diffusers import AutoencoderKL, DDIMScheduler

    spec = dict(mf.METHOD_BASE)
    spec.update(HALF_CASE)
    base = mf.method_parts(spec["model"])
    vae = AutoencoderKL.from_pretrained(str(FIX / spec["model"] / "vae")).eval()
    cfg = {k: spec[k] for k in ["N", "guidance", "S", "tau", "mf", "layout_fraction", "mode", "div",
                                "blend", "blend_start", "negative_prompt", "reference_prefix"]}
    pers = spec["personalization"]
    # The seed: every f32 decision at least HALF_DELTA from flipping.
    method_reference.ROBUST_DELTA = HALF_DELTA
    while True:
        noise, refs = mf.method_case_inputs(spec)
        sched = DDIMScheduler.from_pretrained(str(FIX / spec["model"] / "scheduler"))
        method_reference.FRAGILE.clear()
        method_reference.run_method(base, mf.with_ti(base, [pers["file"]], pers["token"]), vae, sched,
                                    noise, refs[0], spec["phrase"], spec["class_"], spec["prompt"], cfg)
        if not method_reference.FRAGILE:
            break
        print(f"method seed {spec['seed']}: decisions within {HALF_DELTA} of flipping: "
              f"{method_reference.FRAGILE}")
        spec["seed"] += 1
    print(f"method seed {spec['seed']}: every f32 decision survives {HALF_DELTA}")
    out["method/seed"] = torch.tensor([float(spec["seed"])])
    out["method/noise"] = noise
    out["method/reference_image"] = refs[0]
    for name, dt in DTYPES.items():
        sched = DDIMScheduler.from_pretrained(str(FIX / spec["model"] / "scheduler"))
        vanilla = (base[0], copy.deepcopy(base[1]).to(dt), Cast(base[2], dt))
        personal = mf.with_ti(vanilla, [pers["file"]], pers["token"])
        method_reference.FRAGILE.clear()
        res, info = method_reference.run_method(vanilla, personal, vae, sched, noise, refs[0],
                                                spec["phrase"], spec["class_"], spec["prompt"], cfg)
        if name == "f32":
            assert not method_reference.FRAGILE, method_reference.FRAGILE
        for key in ("context_latents", "latents"):
            out[f"method/{name}/{key}"] = res[key]
        for key, v in res.items():
            if key.startswith(("mask_", "blend_step")):
                out[f"method/{name}/{key}"] = v
        if name != "f32":
            d = {k: (res[k] - out[f"method/f32/{k}"]).abs().max().item()
                 for k in ("context_latents", "latents")}
            flips = sum(int((res[k] != out[f"method/f32/{k}"]).sum()) for k in res
                        if k.startswith(("mask_", "blend_step")))
            print(f"method {name}: PyTorch f32-vs-{name} spread context {d['context_latents']:.3e}, "
                  f"target {d['latents']:.3e}; mask elements that differ from f32: {flips}; "
                  f"near-threshold decisions: {len(method_reference.FRAGILE)}")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = {}
    unet_goldens(out)
    txt2img_goldens(out)
    method_goldens(out)
    save_file({k: v.float().contiguous() for k, v in out.items()},
              str(GOLDEN / "half_sd1-tiny.safetensors"))
    print(f"wrote {GOLDEN / 'half_sd1-tiny.safetensors'} ({len(out)} tensors)")


if __name__ == "__main__":
    main()
