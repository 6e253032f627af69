#!/usr/bin/env python3
"""Golden tensors for layret's samplers, from diffusers' scheduler classes:

    DPMSolverMultistepScheduler   DPM-Solver++ 2M (algorithm_type dpmsolver++, solver_order 2),
                                  with and without use_karras_sigmas
    EulerDiscreteScheduler        with and without use_karras_sigmas
    EulerAncestralDiscreteScheduler
    UniPCMultistepScheduler       its defaults (bh2, solver_order 2, predict_x0), also Karras
    PNDMScheduler                 skip_prk_steps true (SD's config) and false (the PRK warm-up)

Writes tests/fixtures/golden/schedulers.safetensors and schedulers.json:

1. `sched.<case>.*`: each scheduler alone on the SD scheduler config (the tiny fixtures'
   scheduler_config.json) plus overrides, random samples and model outputs;
2. `pipe.<case>.*`: full StableDiffusionPipeline runs on tests/fixtures/sd1-tiny (epsilon) and
   sd2-tiny (v_prediction) with `Class.from_config(pipe.scheduler.config, **overrides)`.

Noise drawn inside a scheduler (Euler ancestral) is injected: the module-level `randn_tensor`
that the scheduler calls is replaced by a function that hands out tensors drawn from our own
generator, and they are stored. Deterministic (fixed seeds from the case names, one thread,
deterministic algorithms): rerunning reproduces the files byte for byte. Run from the
repository root:

    python3 tools/reference/make_schedulers.py

See tools/reference/README.md ("Samplers") and samplers.md (what each class computes).
"""

import contextlib
import functools
import inspect
import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
GOLDEN = FIX / "golden"

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from diffusers.schedulers import (  # noqa: E402
    scheduling_dpmsolver_multistep,
    scheduling_euler_ancestral_discrete,
    scheduling_euler_discrete,
    scheduling_pndm,
    scheduling_unipc_multistep,
)

# The SD scheduler config (a DDIMScheduler config: scaled_linear 0.00085..0.012, 1000 train
# steps, steps_offset 1, set_alpha_to_one false, timestep_spacing leading, epsilon).
SD_CONFIG = json.loads((FIX / "sd1-tiny" / "scheduler" / "scheduler_config.json").read_text())

# variant -> (class, overrides passed to from_config besides prediction_type/timestep_spacing)
VARIANTS = {
    "dpmpp_2m": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2)),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        dict(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True),
    ),
    "euler": (EulerDiscreteScheduler, dict()),
    "euler_karras": (EulerDiscreteScheduler, dict(use_karras_sigmas=True)),
    "euler_a": (EulerAncestralDiscreteScheduler, dict()),
    "unipc": (UniPCMultistepScheduler, dict(solver_type="bh2", solver_order=2, predict_x0=True)),
    "unipc_karras": (
        UniPCMultistepScheduler,
        dict(solver_type="bh2", solver_order=2, predict_x0=True, use_karras_sigmas=True),
    ),
    # SD checkpoints ship PNDMScheduler with skip_prk_steps true; the class default is false
    # (and a DDIM config has no such key), so both are explicit here.
    "pndm": (PNDMScheduler, dict(skip_prk_steps=True)),
    "pndm_prk": (PNDMScheduler, dict(skip_prk_steps=False)),
}
EULER_FAMILY = {EulerDiscreteScheduler, EulerAncestralDiscreteScheduler}
PRED_TAG = {"epsilon": "eps", "v_prediction": "v"}

SCHED_SHAPE = (1, 2, 4, 4)  # schedulers are elementwise: a small sample is enough
PIPE_SETTINGS = dict(
    prompt="a photo of a sks dog surfing",
    negative_prompt="blurry",
    guidance_scale=7.5,
    height=128,
    width=128,
    num_images_per_prompt=2,
)
PIPE_FIXTURES = {"sd1-tiny": "epsilon", "sd2-tiny": "v_prediction"}


def seed_of(name: str) -> int:
    """A fixed seed per case (adding a case never changes the others)."""
    return zlib.crc32(name.encode("utf-8"))


def jsonable(v):
    """JSON without NaN/Infinity (serde_json rejects them): non-finite floats as strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return jsonable(v.item())
    return v


def effective_config(sched) -> dict:
    """Every __init__ parameter of the class with the value the instance was built with (keys of
    the DDIM config the class does not take, e.g. clip_sample, are left out)."""
    params = [p for p in inspect.signature(type(sched).__init__).parameters if p != "self"]
    return jsonable({p: sched.config[p] for p in params if p in sched.config})


def f32_list(t: torch.Tensor):
    """Exact float32 values as JSON numbers (a double holds a float32 exactly)."""
    return [float(x) for x in t.to(torch.float32).flatten().tolist()]


# ---------------------------------------------------------------------------------------------
# Noise injection
# ---------------------------------------------------------------------------------------------

NOISE_MODULES = [
    scheduling_euler_ancestral_discrete,
    scheduling_euler_discrete,
    scheduling_dpmsolver_multistep,
    scheduling_unipc_multistep,
    scheduling_pndm,
]


class NoiseInjector:
    """Replaces `randn_tensor` in the scheduler modules. Euler ancestral's calls get tensors
    drawn from `generator` (recorded in `drawn`); any other module drawing noise is an error
    (none of the configurations here should)."""

    def __init__(self, generator):
        self.generator = generator
        self.drawn = []

    def _inject(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert generator is None, "the pipeline/scheduler passed its own generator"
        dtype = dtype or torch.float32
        assert dtype == torch.float32, dtype
        n = torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32)
        self.drawn.append(n.clone())
        return n

    @staticmethod
    def _refuse(*args, **kwargs):
        raise AssertionError("unexpected noise draw in a scheduler")

    @contextlib.contextmanager
    def active(self):
        saved = {}
        for mod in NOISE_MODULES:
            if hasattr(mod, "randn_tensor"):
                saved[mod] = mod.randn_tensor
                mod.randn_tensor = (
                    self._inject if mod is scheduling_euler_ancestral_discrete else self._refuse
                )
        try:
            yield self
        finally:
            for mod, fn in saved.items():
                mod.randn_tensor = fn


# ---------------------------------------------------------------------------------------------
# Per-step instrumentation (which update each multistep scheduler used)
# ---------------------------------------------------------------------------------------------


def instrument(sched, log):
    """Wrap the instance's update methods so each step logs what ran (orders, PNDM's
    (timestep, prev_timestep) pairs and the combined eps it used). Signatures are kept
    (functools.wraps), so the pipeline's inspect.signature(step) checks are unaffected."""

    def wrap(name, record):
        orig = getattr(sched, name)

        @functools.wraps(orig)
        def inner(*args, **kwargs):
            out = orig(*args, **kwargs)
            record(args, kwargs, out)
            return out

        setattr(sched, name, inner)

    if isinstance(sched, DPMSolverMultistepScheduler):
        wrap("dpm_solver_first_order_update", lambda a, k, o: log["order"].append(1))
        wrap("multistep_dpm_solver_second_order_update", lambda a, k, o: log["order"].append(2))
        wrap("multistep_dpm_solver_third_order_update", lambda a, k, o: log["order"].append(3))
    elif isinstance(sched, UniPCMultistepScheduler):
        wrap("multistep_uni_p_bh_update", lambda a, k, o: log["order"].append(k["order"]))
        wrap("multistep_uni_c_bh_update", lambda a, k, o: log["corrector_order"].append(k["order"]))
    elif isinstance(sched, PNDMScheduler):

        def rec(a, k, o):
            sample, timestep, prev_timestep, model_output = a
            log["pairs"].append([int(timestep), int(prev_timestep)])
            log["eps_used"].append(model_output.clone())

        wrap("_get_prev_sample", rec)


def new_log():
    return {"order": [], "corrector_order": [], "pairs": [], "eps_used": []}


# ---------------------------------------------------------------------------------------------
# 1. Schedulers alone
# ---------------------------------------------------------------------------------------------


def scheduler_cases():
    cases = []
    for variant in VARIANTS:
        for pred in ["epsilon", "v_prediction"]:
            for steps in [5, 20]:
                cases.append((variant, pred, "leading", steps))
        for spacing in ["linspace", "trailing"]:
            cases.append((variant, "epsilon", spacing, 20))
        for spacing in ["leading", "linspace", "trailing"]:
            cases.append((variant, "epsilon", spacing, 7))
    return cases


def make_scheduler(variant, base_config, **extra):
    cls, over = VARIANTS[variant]
    overrides = dict(over, **extra)
    return cls.from_config(base_config, **overrides), overrides


def run_scheduler(variant, pred, spacing, steps, noise_seed_offset=0):
    name = f"{variant}.{PRED_TAG[pred]}.{spacing}.{steps}"
    sched, overrides = make_scheduler(variant, SD_CONFIG, prediction_type=pred, timestep_spacing=spacing)
    cls = type(sched)
    log = new_log()
    instrument(sched, log)
    sched.set_timesteps(steps)
    timesteps = sched.timesteps.clone()
    n = len(timesteps)
    g = torch.Generator().manual_seed(seed_of(name))
    noise = torch.randn(SCHED_SHAPE, generator=g)
    model_outputs = torch.randn((n,) + SCHED_SHAPE, generator=g)
    injector = NoiseInjector(torch.Generator().manual_seed(seed_of(name) + 1 + noise_seed_offset))
    init_sigma = sched.init_noise_sigma
    sample = noise * init_sigma
    samples, scaled, x0, corrected = [sample.clone()], [], [], []
    with injector.active():
        for k, t in enumerate(timesteps):
            s_in = sched.scale_model_input(sample, t)
            scaled.append(s_in.clone())
            out = sched.step(model_outputs[k], t, sample)
            if cls in EULER_FAMILY:
                x0.append(out.pred_original_sample.clone())
            elif cls in (DPMSolverMultistepScheduler, UniPCMultistepScheduler):
                x0.append(sched.model_outputs[-1].clone())  # the converted output: x0 prediction
            if cls is UniPCMultistepScheduler:
                corrected.append(sched.last_sample.clone())  # the sample after the corrector
            sample = out.prev_sample
            samples.append(sample.clone())
    p = f"sched.{name}."
    tensors = {
        p + "timesteps": timesteps,
        p + "noise": noise,
        p + "init_noise_sigma": torch.tensor([float(init_sigma)], dtype=torch.float32),
        p + "model_output": model_outputs,
        p + "sample": torch.stack(samples),
    }
    if hasattr(sched, "sigmas") and cls is not PNDMScheduler:
        tensors[p + "sigmas"] = sched.sigmas.clone().to(torch.float32)
    if cls in EULER_FAMILY:
        tensors[p + "scaled"] = torch.stack(scaled)
    if x0:
        tensors[p + "x0_pred"] = torch.stack(x0)
    if corrected:
        tensors[p + "corrected"] = torch.stack(corrected)
    if injector.drawn:
        assert len(injector.drawn) == n, (name, len(injector.drawn), n)
        tensors[p + "step_noise"] = torch.stack(injector.drawn)
    if cls is PNDMScheduler:
        tensors[p + "eps_used"] = torch.stack(log["eps_used"])
    entry = {
        "name": name,
        "variant": variant,
        "class": cls.__name__,
        "prediction_type": pred,
        "timestep_spacing": spacing,
        "num_inference_steps": steps,
        "num_steps": n,
        "overrides": jsonable(overrides),
        "config": effective_config(sched),
        "shape": list(SCHED_SHAPE),
        "init_noise_sigma": float(init_sigma),
        "timesteps": [float(x) if cls in EULER_FAMILY else int(x) for x in timesteps.tolist()],
        "tensors": sorted(k[len(p):] for k in tensors),
    }
    if "sigmas" in entry["tensors"]:
        entry["sigmas"] = f32_list(sched.sigmas)
    if log["order"]:
        entry["order"] = log["order"]
    if cls is UniPCMultistepScheduler:
        # corrector_order[k] is the order of the corrector run at step k+1 (none at step 0)
        entry["corrector_order"] = log["corrector_order"]
    if log["pairs"]:
        entry["pndm_pairs"] = log["pairs"]
    return entry, tensors


def check_injection():
    """Different injected noise must change Euler ancestral's result (the patch is really used);
    the same noise must reproduce it."""
    a = run_scheduler("euler_a", "epsilon", "leading", 5)[1]
    b = run_scheduler("euler_a", "epsilon", "leading", 5, noise_seed_offset=1000)[1]
    c = run_scheduler("euler_a", "epsilon", "leading", 5)[1]
    key = "sched.euler_a.eps.leading.5.sample"
    assert not torch.equal(a[key][1], b[key][1]), "injected noise had no effect"
    assert torch.equal(a[key], c[key])
    # and by hand: step 0 = sample + d*(sigma_down - sigma) + noise*sigma_up
    sig = a["sched.euler_a.eps.leading.5.sigmas"]
    s0, s1 = sig[0], sig[1]
    up = (s1**2 * (s0**2 - s1**2) / s0**2) ** 0.5
    down = (s1**2 - up**2) ** 0.5
    x = a[key][0]
    eps = a["sched.euler_a.eps.leading.5.model_output"][0]
    pred = x - s0 * eps
    want = x + (x - pred) / s0 * (down - s0) + a["sched.euler_a.eps.leading.5.step_noise"][0] * up
    assert torch.equal(want, a[key][1])


# ---------------------------------------------------------------------------------------------
# 2. Full pipeline on the tiny fixtures
# ---------------------------------------------------------------------------------------------


def load_pipe(fixture):
    pipe = StableDiffusionPipeline.from_pretrained(
        str(FIX / fixture), torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_pipe_matches_pipeline_golden(fixture, pipe):
    """The loaded pipeline reproduces make_fixtures.py's DDIM golden exactly."""
    gold = load_file(str(GOLDEN / f"pipeline_{fixture}.safetensors"))
    with torch.no_grad():
        lat = pipe(
            **PIPE_SETTINGS, num_inference_steps=5, latents=gold["noise"].clone(), output_type="latent"
        ).images
    assert torch.equal(lat, gold["latents"]), f"{fixture}: DDIM pipeline golden not reproduced"


PIPE_VARIANTS = ["dpmpp_2m", "dpmpp_2m_karras", "euler", "euler_karras", "euler_a", "unipc", "pndm",
                 "pndm_prk"]


def pipeline_cases():
    cases = []
    for fixture in PIPE_FIXTURES:
        for variant in PIPE_VARIANTS:
            # PRK: 5 steps only (5 steps are already 14 UNet evaluations)
            for steps in [5] if variant == "pndm_prk" else [5, 20]:
                cases.append((fixture, variant, steps))
    return cases


def pipeline_noise(fixture):
    """The initial unit-variance latents, one per fixture (every sampler starts from them)."""
    g = torch.Generator().manual_seed(seed_of(f"pipe.{fixture}.noise"))
    return torch.randn(2, 4, 16, 16, generator=g)


def run_pipeline(pipe, ddim_config, fixture, variant, steps, noise_seed_offset=0):
    name = f"{fixture}.{variant}.{steps}"
    sched, overrides = make_scheduler(variant, ddim_config)
    log = new_log()
    instrument(sched, log)
    pipe.scheduler = sched
    noise = pipeline_noise(fixture)
    injector = NoiseInjector(torch.Generator().manual_seed(seed_of(name) + 1 + noise_seed_offset))
    traj, ts = [], []

    def on_step(p, i, t, kw):
        traj.append(kw["latents"].clone())
        ts.append(t)
        return kw

    with injector.active(), torch.no_grad():
        lat = pipe(
            **PIPE_SETTINGS,
            num_inference_steps=steps,
            latents=noise.clone(),
            output_type="latent",
            callback_on_step_end=on_step,
        ).images
    timesteps = sched.timesteps.clone()
    n = len(timesteps)
    assert len(traj) == n and torch.equal(traj[-1], lat)
    p = f"pipe.{name}."
    tensors = {
        p + "timesteps": timesteps,
        p + "init_noise_sigma": torch.tensor([float(sched.init_noise_sigma)], dtype=torch.float32),
        p + "trajectory": torch.stack(traj),
        p + "latents": lat.contiguous(),
    }
    if not isinstance(sched, PNDMScheduler):
        tensors[p + "sigmas"] = sched.sigmas.clone().to(torch.float32)
    if injector.drawn:
        assert len(injector.drawn) == n
        tensors[p + "step_noise"] = torch.stack(injector.drawn)
    entry = {
        "name": name,
        "fixture": fixture,
        "variant": variant,
        "class": type(sched).__name__,
        "prediction_type": sched.config.prediction_type,
        "num_inference_steps": steps,
        "num_steps": n,
        "noise_key": f"pipe.{fixture}.noise",
        "overrides": jsonable(overrides),
        "config": effective_config(sched),
        "init_noise_sigma": float(sched.init_noise_sigma),
        "timesteps": [float(x) if type(sched) in EULER_FAMILY else int(x) for x in timesteps.tolist()],
        "tensors": sorted(k[len(p):] for k in tensors),
    }
    if log["order"]:
        entry["order"] = log["order"]
    if isinstance(sched, UniPCMultistepScheduler):
        entry["corrector_order"] = log["corrector_order"]
    if log["pairs"]:
        entry["pndm_pairs"] = log["pairs"]
    return entry, tensors


def main():
    if diffusers.__version__ != "0.42.1":
        print(f"warning: diffusers {diffusers.__version__}; the goldens were made with 0.42.1", file=sys.stderr)
    out, sched_table, pipe_table = {}, [], []

    check_injection()
    for variant, pred, spacing, steps in scheduler_cases():
        entry, tensors = run_scheduler(variant, pred, spacing, steps)
        sched_table.append(entry)
        out.update(tensors)
    ref = EulerDiscreteScheduler.from_config(SD_CONFIG)
    out["train.alphas_cumprod"] = ref.alphas_cumprod.clone()
    out["train.sigmas"] = ((1 - ref.alphas_cumprod) / ref.alphas_cumprod) ** 0.5

    pipes = {}
    for fixture, pred in PIPE_FIXTURES.items():
        pipe = load_pipe(fixture)
        assert pipe.scheduler.config.prediction_type == pred
        check_pipe_matches_pipeline_golden(fixture, pipe)
        pipes[fixture] = (pipe, pipe.scheduler.config)
    # the injected noise really reaches the pipeline's Euler ancestral steps
    pipe, cfg = pipes["sd1-tiny"]
    a = run_pipeline(pipe, cfg, "sd1-tiny", "euler_a", 5)[1]["pipe.sd1-tiny.euler_a.5.latents"]
    b = run_pipeline(pipe, cfg, "sd1-tiny", "euler_a", 5, noise_seed_offset=1000)[1][
        "pipe.sd1-tiny.euler_a.5.latents"
    ]
    assert not torch.equal(a, b), "injected noise had no effect in the pipeline"
    for fixture in PIPE_FIXTURES:
        out[f"pipe.{fixture}.noise"] = pipeline_noise(fixture)
    for fixture, variant, steps in pipeline_cases():
        pipe, cfg = pipes[fixture]
        entry, tensors = run_pipeline(pipe, cfg, fixture, variant, steps)
        pipe_table.append(entry)
        out.update(tensors)

    doc = {
        "made_by": "tools/reference/make_schedulers.py",
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__.split("+")[0],
                     "numpy": np.__version__},
        "base_config": SD_CONFIG,
        "key_layout": {
            "scheduler": "sched.<name>.<tensor>, name = <variant>.<eps|v>.<spacing>.<steps>",
            "pipeline": "pipe.<name>.<tensor>, name = <fixture>.<variant>.<steps>; the initial "
                        "noise is pipe.<fixture>.noise (each case's noise_key)",
            "train": "train.alphas_cumprod, train.sigmas ([1000] float32, the SD config)",
        },
        "tensors": {
            "timesteps": "[S] int64 (DPM/UniPC/PNDM) or float32 (Euler family); S = num_steps",
            "sigmas": "[S+1] float32 (not PNDM); the last is the final sigma (0)",
            "init_noise_sigma": "[1] float32",
            "noise": "unit-variance initial noise; the first sample is noise * init_noise_sigma "
                     "(the pipeline's latents= argument, which it multiplies by init_noise_sigma)",
            "model_output": "[S, ...] the (random) model output step k got",
            "sample": "[S+1, ...] sample[0] = noise * init_noise_sigma, sample[k+1] = step k's prev_sample",
            "scaled": "[S, ...] scale_model_input(sample[k], t_k) (Euler family)",
            "x0_pred": "[S, ...] Euler: pred_original_sample; DPM++/UniPC: the converted model "
                       "output (x0 prediction) kept in model_outputs[-1]",
            "corrected": "[S, ...] UniPC: the sample after the corrector at step k (= the sample "
                         "the predictor starts from; sample[0] at step 0)",
            "step_noise": "[S, ...] Euler ancestral: the noise injected into step k",
            "eps_used": "[S, ...] PNDM: the combined eps passed to _get_prev_sample at step k",
            "trajectory": "[S, 2, 4, 16, 16] pipeline latents after each step (callback_on_step_end)",
            "latents": "[2, 4, 16, 16] pipeline output_type='latent' (= trajectory[-1])",
        },
        "scheduler_cases": sched_table,
        "pipeline_settings": PIPE_SETTINGS,
        "pipeline_cases": pipe_table,
    }
    GOLDEN.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(GOLDEN / "schedulers.safetensors"))
    (GOLDEN / "schedulers.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    print(f"{len(sched_table)} scheduler cases, {len(pipe_table)} pipeline cases, {len(out)} tensors")
    # The independent re-implementation (written from the README's algorithm summary) replays
    # every scheduler case.
    sys.path.insert(0, str(Path(__file__).parent))
    import scheduler_reference

    scheduler_reference.main(quiet=True)


if __name__ == "__main__":
    main()
