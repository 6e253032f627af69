#!/usr/bin/env python3
"""Write layret's test fixtures: tiny random-weight models in the diffusers folder layout and
golden tensors computed with PyTorch diffusers/transformers on those weights.

Deterministic: every component is built from its own fixed seed, so adding a component never
changes the others. Rerun from the repository root:

    python3 tools/reference/make_fixtures.py            # writes tests/fixtures/

See tools/reference/README.md for the Python packages (pinned in requirements.txt).
"""

import gzip
import io
import json
import os
import shutil
import sys
import zipfile
from functools import lru_cache
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
GOLDEN = FIX / "golden"

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def check_environment():
    if not transformers.__version__.startswith("5."):
        sys.exit(
            f"transformers {transformers.__version__}: the fixtures are made with transformers 5 "
            "(its CLIPTokenizer is the tokenizers-backed one); see requirements.txt"
        )


# ---------------------------------------------------------------------------------------------
# The real CLIP BPE vocabulary, from open_clip_torch's bpe_simple_vocab_16e6.txt.gz
# ---------------------------------------------------------------------------------------------


@lru_cache()
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def find_bpe_vocab_gz() -> bytes:
    """Read bpe_simple_vocab_16e6.txt.gz from the installed open_clip package or its wheel."""
    try:
        import open_clip  # noqa: F401

        p = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
        return p.read_bytes()
    except ImportError:
        pass
    wheel_dir = Path(os.environ.get("OPEN_CLIP_WHEEL_DIR", ROOT / "tools" / "reference" / ".cache"))
    for whl in sorted(wheel_dir.glob("open_clip_torch-*.whl")):
        with zipfile.ZipFile(whl) as z:
            return z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    sys.exit(
        "open_clip's bpe_simple_vocab_16e6.txt.gz not found: `pip download --no-deps "
        "open_clip_torch==3.3.0 -d tools/reference/.cache` (see README.md)"
    )


def write_clip_vocab(out_dir: Path):
    """vocab.json + merges.txt exactly as CLIP builds its 49408-token vocabulary."""
    lines = gzip.open(io.BytesIO(find_bpe_vocab_gz())).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408, len(vocab)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = {v: i for i, v in enumerate(vocab)}
    (out_dir / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    with open(out_dir / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(" ".join(m) + "\n")


def write_tokenizer(folder: Path, pad_token: str, with_tokenizer_json: bool):
    """A model folder's tokenizer/: vocab.json, merges.txt, configs (and tokenizer.json)."""
    from transformers import CLIPTokenizer

    tmp = folder / "_vocab"
    write_clip_vocab(tmp)
    tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), pad_token=pad_token)
    tok.model_max_length = 77
    out = folder / "tokenizer"
    if out.exists():
        shutil.rmtree(out)
    tok.save_pretrained(str(out))
    # transformers 5 saves only tokenizer.json; SD folders on the Hub carry vocab.json and
    # merges.txt (and often no tokenizer.json): write both layouts.
    if with_tokenizer_json:
        # Only tokenizer.json (keeps the fixtures small; sd1-tiny has the other layout).
        for f in ["vocab.json", "merges.txt"]:
            (out / f).unlink(missing_ok=True)
    else:
        shutil.copy(tmp / "vocab.json", out / "vocab.json")
        shutil.copy(tmp / "merges.txt", out / "merges.txt")
        (out / "tokenizer.json").unlink()
    shutil.rmtree(tmp)
    return CLIPTokenizer.from_pretrained(str(out))


PROMPTS = [
    "a photo of a dog",
    "A Photo Of A DOG",
    "a sks dog surfing a wave",
    "  a   dog\twith \n  weird    spacing  ",
    "",
    "dog",
    "a cat, sitting on a mat; with a hat!",
    "what's the dog's name? it's rex, isn't it",
    "I've been there, you'll see, we'd go, they're here, I'm fine",
    "there are 3 dogs and 12 cats, 3.14159 and 1,000,000",
    "the year 2024 in 4k, 8K UHD, 1080p",
    "café crème brûlée naïve",
    "Ünïcödé ÀÉÎÕÜ ß ﬁ",
    "東京の犬 and 北京的猫",
    "a photo of a 🐶 with 🎉 emoji 👍🏽",
    "a <cat-toy> on the beach",
    "<new1> dog in a bucket",
    "a photo of a sks backpack in the grand canyon",
    "hyper-realistic, ultra-detailed, trending on artstation",
    "C++ and C# & Rust == fun?!",
    "email@example.com http://example.com/path?x=1",
    "((masterpiece)), [best quality], {detailed}",
    "a dog -- running -- fast...",
    "\"quoted\" and 'single quoted' text",
    "tab\tseparated\tvalues",
    "newline\nseparated\nlines",
    "mixedCASE WordsWithCaps camelCase",
    "α β γ δ ε greek letters",
    "привет мир собака",
    "a photo of a cat<|endoftext|>ignored tail",
    "the quick brown fox jumps over the lazy dog " * 5,
    "word " * 60,
    "a red cube on top of a blue sphere, studio lighting, 85mm, f/1.8",
    "a " + "very " * 80 + "long prompt",
    "a " * 75,  # exactly 77 tokens with BOS/EOS: fits
    "a " * 76,  # 78 tokens: too long by one
]


def tokenizer_goldens(name: str, tok):
    ids = []
    lengths = []
    for p in PROMPTS:
        enc = tok(p, padding="max_length", max_length=77, truncation=True)
        ids.append(enc["input_ids"])
        lengths.append(len(tok(p)["input_ids"]))  # untruncated length incl. BOS/EOS
    doc = {
        "tokenizer": f"transformers {transformers.__version__} CLIPTokenizer",
        "pad_token_id": tok.pad_token_id,
        "cases": [
            {"prompt": p, "ids": i, "untruncated_len": n} for p, i, n in zip(PROMPTS, ids, lengths)
        ],
        "phrases": [
            {"phrase": ph, "ids": tok(ph, add_special_tokens=False)["input_ids"]}
            for ph in ["sks dog", "dog", "cat toy", "a photo of", "<cat-toy>", "grand canyon"]
        ],
    }
    GOLDEN.mkdir(parents=True, exist_ok=True)
    (GOLDEN / f"tokenizer_{name}.json").write_text(
        json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    return ids


# ---------------------------------------------------------------------------------------------
# CLIP text encoders
# ---------------------------------------------------------------------------------------------


def perturb_(model, seed: int):
    """Random biases and norm scales (default init leaves them 0/1, which hides bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g))


def make_text_encoder(
    name: str, seed: int, hidden_act: str, pad_token_id: int, dtype, legacy_keys: bool
):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=16,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
        projection_dim=16,
    )
    model = CLIPTextModel(cfg).eval()
    perturb_(model, seed + 1)
    out = FIX / name / "text_encoder"
    if out.exists():
        shutil.rmtree(out)
    model.to(dtype).save_pretrained(str(out), safe_serialization=True)
    if legacy_keys:
        # The layout of SD 1.x/2.x checkpoints saved by transformers 4: a `text_model.` prefix
        # and the `position_ids` buffer. layret must load both layouts.
        f = out / "model.safetensors"
        sd = load_file(str(f))
        sd = {"text_model." + k: v for k, v in sd.items()}
        sd["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
        save_file(sd, str(f), metadata={"format": "pt"})
    # Goldens are computed in fp32 from exactly the stored (possibly fp16-rounded) weights.
    loaded = CLIPTextModel.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    ref = model.to(dtype).to(torch.float32)
    for (k, a), (_, b) in zip(ref.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), f"{name}: {k} did not round-trip through the saved file"
    return loaded


def text_encoder_goldens(name: str, model, ids):
    sel = [0, 2, 5, 12, 15, 30]
    input_ids = torch.tensor([ids[i] for i in sel], dtype=torch.int64)
    with torch.no_grad():
        out = model(input_ids=input_ids, output_hidden_states=True)
        last = out.last_hidden_state
        # diffusers' clip_skip=1: the penultimate layer's hidden states through final_layer_norm
        skip1 = model.final_layer_norm(out.hidden_states[-2])
    save_file(
        {
            "input_ids": input_ids.contiguous(),
            "last_hidden_state": last.contiguous(),
            "clip_skip_1": skip1.contiguous(),
        },
        str(GOLDEN / f"clip_{name}.safetensors"),
    )


def write_model_index(name: str, components: dict):
    idx = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.36.0"}
    idx.update(components)
    (FIX / name / "model_index.json").write_text(json.dumps(idx, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# UNet, VAE, scheduler
# ---------------------------------------------------------------------------------------------

SCHED_SD = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)


def unet_kwargs(sd2: bool):
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        cross_attention_dim=16,
        # SD 1.x: one int that diffusers reads as the head *count*; SD 2.x: a per-block list.
        attention_head_dim=[2, 4, 4] if sd2 else 2,
        use_linear_projection=sd2,
        upcast_attention=sd2,
        norm_num_groups=8,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def make_unet(name: str, seed: int, sd2: bool, dtype):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_kwargs(sd2)).eval()
    perturb_(unet, seed + 1)
    out = FIX / name / "unet"
    if out.exists():
        shutil.rmtree(out)
    unet.to(dtype).save_pretrained(str(out), safe_serialization=True)
    # Goldens in fp32 from exactly the stored (possibly fp16-rounded) weights.
    return UNet2DConditionModel.from_pretrained(str(out), torch_dtype=torch.float32).eval()


def make_vae(name: str, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=128,
        scaling_factor=0.18215,
    ).eval()
    perturb_(vae, seed + 1)
    out = FIX / name / "vae"
    if out.exists():
        shutil.rmtree(out)
    vae.save_pretrained(str(out), safe_serialization=True)
    return AutoencoderKL.from_pretrained(str(out)).eval()


def make_scheduler(name: str, prediction_type: str):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**SCHED_SD, prediction_type=prediction_type)
    out = FIX / name / "scheduler"
    if out.exists():
        shutil.rmtree(out)
    sched.save_pretrained(str(out))
    return DDIMScheduler.from_pretrained(str(out))


def unet_goldens(name: str, unet, seed: int):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    ctx = torch.randn(2, 77, 16, generator=g)
    out = {"sample": sample, "encoder_hidden_states": ctx}
    with torch.no_grad():
        for t in [981, 1]:
            out[f"eps_t{t}"] = unet(sample, t, encoder_hidden_states=ctx).sample
    save_file({k: v.contiguous() for k, v in out.items()}, str(GOLDEN / f"unet_{name}.safetensors"))


def vae_goldens(name: str, vae, seed: int):
    g = torch.Generator().manual_seed(seed)
    # A smooth image in [-1, 1] (a random field upsampled) and random latents.
    image = torch.nn.functional.interpolate(
        torch.rand(1, 3, 16, 16, generator=g) * 2 - 1, size=(128, 128), mode="bilinear"
    )
    latents = torch.randn(1, 4, 16, 16, generator=g)
    noise = torch.randn(1, 4, 16, 16, generator=g)
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        decoded = vae.decode(latents).sample
    save_file(
        {
            "image": image.contiguous(),
            "latent_mean": dist.mean.contiguous(),
            "latent_std": dist.std.contiguous(),
            "sample_noise": noise,
            "latent_sample": (dist.mean + dist.std * noise).contiguous(),
            "latents": latents,
            "decoded": decoded.contiguous(),
        },
        str(GOLDEN / f"vae_{name}.safetensors"),
    )


SCHED_CASES = {
    "sd1_leading": dict(SCHED_SD, prediction_type="epsilon"),
    "sd2_vpred": dict(SCHED_SD, prediction_type="v_prediction"),
    "trailing_alpha_one": dict(
        SCHED_SD, timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True
    ),
    "linspace": dict(SCHED_SD, timestep_spacing="linspace", steps_offset=0),
    "linear_betas_clip": dict(
        SCHED_SD, beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=True
    ),
}


def scheduler_goldens():
    """DDIM alone: timesteps and 5 steps on random samples/model outputs, eta 0 and 0.5."""
    from diffusers import DDIMScheduler

    out, cases = {}, {}
    for i, (case, cfg) in enumerate(SCHED_CASES.items()):
        cases[case] = cfg
        sched = DDIMScheduler(**cfg)
        sched.set_timesteps(50)
        out[f"{case}.timesteps50"] = sched.timesteps.clone()
        out[f"{case}.alphas_cumprod"] = sched.alphas_cumprod.clone()
        for eta in [0.0, 0.5]:
            g = torch.Generator().manual_seed(100 + i)
            sched = DDIMScheduler(**cfg)
            sched.set_timesteps(5)
            out[f"{case}.timesteps5"] = sched.timesteps.clone()
            x = torch.randn(1, 4, 8, 8, generator=g)
            out[f"{case}.eta{eta}.x0"] = x.clone()
            for k, t in enumerate(sched.timesteps):
                eps = torch.randn(1, 4, 8, 8, generator=g)
                vn = torch.randn(1, 4, 8, 8, generator=g)
                out[f"{case}.eta{eta}.model_output{k}"] = eps
                out[f"{case}.eta{eta}.variance_noise{k}"] = vn
                x = sched.step(eps, t, x, eta=eta, variance_noise=vn).prev_sample
                out[f"{case}.eta{eta}.x{k + 1}"] = x.clone()
    save_file({k: v.contiguous() for k, v in out.items()}, str(GOLDEN / "ddim.safetensors"))
    (GOLDEN / "ddim_cases.json").write_text(json.dumps(cases, indent=1) + "\n")


def encode_prompts(tok, te, prompts):
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return te(ids.input_ids).last_hidden_state


def inversion_goldens(name: str, tok, te, unet, sched, vae):
    """DDIM inversion exactly as METHOD.md defines it (N = 5, no CFG, prompt y_r)."""
    g = torch.Generator().manual_seed(31)
    image = torch.nn.functional.interpolate(
        torch.rand(1, 3, 16, 16, generator=g) * 2 - 1, size=(128, 128), mode="bilinear"
    )
    s = vae.config.scaling_factor
    with torch.no_grad():
        x = vae.encode(image).latent_dist.mean * s
    cond = encode_prompts(tok, te, ["a photo of a sks dog"])
    n = 5
    sched.set_timesteps(n)
    step = sched.config.num_train_timesteps // n
    ac = sched.alphas_cumprod
    final = torch.tensor(1.0) if sched.config.set_alpha_to_one else ac[0]
    out = {"image": image.contiguous(), "x_start": x.clone()}
    for j, t in enumerate(reversed(sched.timesteps.tolist())):
        tm = t - step
        a_tm = ac[tm] if tm >= 0 else final
        a_t = ac[t]
        with torch.no_grad():
            model_out = unet(x, t, encoder_hidden_states=cond).sample
        if sched.config.prediction_type == "v_prediction":
            # v -> eps at the current latent's noise level (that of t^-)
            eps = a_tm.sqrt() * model_out + (1 - a_tm).sqrt() * x
        else:
            eps = model_out
        x0 = (x - (1 - a_tm).sqrt() * eps) / a_tm.sqrt()
        x = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
        out[f"z_t{t}"] = x.clone()
    save_file(out, str(GOLDEN / f"inversion_{name}.safetensors"))


def pipeline_goldens(name: str, tok, te, unet, sched, vae):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(2, 4, 16, 16, generator=g)
    traj = []

    def on_step(p, i, t, kw):
        traj.append(kw["latents"].clone())
        return kw

    kwargs = dict(
        prompt="a photo of a sks dog surfing",
        negative_prompt="blurry",
        num_inference_steps=5,
        guidance_scale=7.5,
        height=128,
        width=128,
        num_images_per_prompt=2,
        latents=noise.clone(),
    )
    with torch.no_grad():
        lat = pipe(**kwargs, output_type="latent", callback_on_step_end=on_step).images
        img = pipe(**kwargs, output_type="np").images
    image_u8 = torch.from_numpy((img * 255).round().astype("uint8"))
    save_file(
        {
            "noise": noise,
            "trajectory": torch.stack(traj).contiguous(),
            "latents": lat.contiguous(),
            "image_u8": image_u8.contiguous(),
        },
        str(GOLDEN / f"pipeline_{name}.safetensors"),
    )


# ---------------------------------------------------------------------------------------------
# Attention processors: MasaCtrl-style mutual self-attention and cross-attention map capture
# ---------------------------------------------------------------------------------------------


class MutualSelfAttentionProcessor:
    """diffusers AttnProcessor API. Batch rows are [src_u, tgt_u, src_c, tgt_c]. From step
    `start` on, at up-block self-attention, the target rows attend to the source rows' keys and
    values (MasaCtrl). At the cross-attention sites in `record`, the cond half's attention
    probabilities, averaged over heads, are saved per (site, step)."""

    def __init__(self, name, state, start, record):
        self.name, self.state, self.start, self.record = name, state, start, record

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        is_cross = encoder_hidden_states is not None
        ctx = encoder_hidden_states if is_cross else hidden_states
        b, lq, _ = hidden_states.shape
        h = attn.heads
        q = attn.to_q(hidden_states)
        k = attn.to_k(ctx)
        v = attn.to_v(ctx)
        d = q.shape[-1] // h

        def split(t):
            return t.reshape(b, -1, h, d).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        step = self.state["step"]
        if not is_cross and self.name.startswith("up_blocks") and step >= self.start:
            # rows: 0 src_u, 1 tgt_u, 2 src_c, 3 tgt_c
            k = k[[0, 0, 2, 2]]
            v = v[[0, 0, 2, 2]]
        if is_cross and self.name in self.record:
            probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)
            self.state["maps"][f"{self.name}.step{step}"] = probs[b // 2:].mean(1).clone()
            o = probs @ v
        else:
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(b, lq, h * d)
        o = attn.to_out[0](o)
        return attn.to_out[1](o)


def attention_goldens(name: str, tok, te, unet, sched):
    from diffusers.models.attention_processor import AttnProcessor

    record = [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2",
    ]
    state = {"step": 0, "maps": {}}
    procs = {}
    for key in unet.attn_processors.keys():
        site = key[: -len(".processor")]
        procs[key] = MutualSelfAttentionProcessor(site, state, 2, record)
    unet.set_attn_processor(procs)
    g = torch.Generator().manual_seed(77)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    init = latents.clone()
    cond = encode_prompts(tok, te, ["a photo of a dog", "a photo of a dog running"])
    uncond = encode_prompts(tok, te, ["", ""])
    context = torch.cat([uncond, cond])
    sched.set_timesteps(5)
    for k, t in enumerate(sched.timesteps):
        state["step"] = k
        with torch.no_grad():
            eps = unet(torch.cat([latents, latents]), t, encoder_hidden_states=context).sample
        eu, ec = eps.chunk(2)
        eps = eu + 7.5 * (ec - eu)
        latents = sched.step(eps, t, latents).prev_sample
    unet.set_attn_processor(AttnProcessor())
    out = {"noise": init, "latents": latents}
    out.update({f"map.{k}": v.contiguous() for k, v in state["maps"].items()})
    save_file(out, str(GOLDEN / f"mutual_{name}.safetensors"))


# ---------------------------------------------------------------------------------------------
# Personalization: textual inversion, DreamBooth, Custom Diffusion, LoRA
# ---------------------------------------------------------------------------------------------

PERS = FIX / "personalization"


def make_ti_files(seed: int):
    g = torch.Generator().manual_seed(seed)
    PERS.mkdir(parents=True, exist_ok=True)
    # diffusers' textual_inversion output: {token: [dim]}
    save_file({"<cat-toy>": torch.randn(16, generator=g)}, str(PERS / "ti_cat_toy.safetensors"))
    # A1111 embedding: emb_params [n, dim], no token name (the user gives one)
    save_file({"emb_params": torch.randn(2, 16, generator=g)}, str(PERS / "ti_a1111_2vec.safetensors"))
    # Custom Diffusion's modifier token, diffusers format, beside the CD weights
    (PERS / "custom_diffusion").mkdir(exist_ok=True)
    save_file({"<new1>": torch.randn(16, generator=g)}, str(PERS / "custom_diffusion" / "new1.safetensors"))


TI_PROMPTS = [
    "a <cat-toy> on the beach",
    "a photo of <sks2> and a <cat-toy>",
    "<sks2> <sks2>",
    "a photo of a cat toy",
]


def ti_goldens(tok_dir: Path, te_dir: Path):
    from transformers import CLIPTextModel, CLIPTokenizer
    from diffusers import StableDiffusionPipeline  # noqa: F401  (loader mixin lives there)
    from diffusers.loaders import TextualInversionLoaderMixin

    class Loader(TextualInversionLoaderMixin):
        def __init__(self, tokenizer, text_encoder):
            self.tokenizer, self.text_encoder = tokenizer, text_encoder
            self.hf_device_map = None
            self.components = {"tokenizer": tokenizer, "text_encoder": text_encoder}

    tok = CLIPTokenizer.from_pretrained(str(tok_dir))
    te = CLIPTextModel.from_pretrained(str(te_dir), torch_dtype=torch.float32).eval()
    ld = Loader(tok, te)
    ld.load_textual_inversion(str(PERS / "ti_cat_toy.safetensors"))
    ld.load_textual_inversion(str(PERS / "ti_a1111_2vec.safetensors"), token="<sks2>")
    out = {}
    cases = []
    for i, p in enumerate(TI_PROMPTS):
        conv = ld.maybe_convert_prompt(p, tok)
        ids = tok(conv, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            out[f"hidden{i}"] = te(ids).last_hidden_state.contiguous()
        out[f"ids{i}"] = ids.contiguous()
        cases.append({"prompt": p, "converted": conv})
    save_file(out, str(GOLDEN / "ti_sd1-tiny.safetensors"))
    (GOLDEN / "ti_sd1-tiny.json").write_text(json.dumps(cases, indent=1) + "\n")


def make_dreambooth(base: str, name: str, seed: int):
    """A DreamBooth-style folder: the base with its UNet and text encoder fine-tuned (here:
    perturbed); VAE, tokenizer and scheduler are byte-identical copies (git stores them once)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    src, dst = FIX / base, FIX / name
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for sub in ["vae", "tokenizer", "scheduler"]:
        shutil.copytree(src / sub, dst / sub)
    shutil.copy(src / "model_index.json", dst / "model_index.json")
    g = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(src / "unet")).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    unet.to(torch.float16).save_pretrained(str(dst / "unet"), safe_serialization=True)
    te = CLIPTextModel.from_pretrained(str(src / "text_encoder"), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        for p in te.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    te.to(torch.float16).save_pretrained(str(dst / "text_encoder"), safe_serialization=True)


def make_unet_copy(name: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(FIX / name / "unet")).eval()


def cd_goldens(unet, seed: int):
    """Custom Diffusion: attn2 to_k/to_v replaced (and to_q/to_out on one layer)."""
    from diffusers.models.attention_processor import AttnProcessor, CustomDiffusionAttnProcessor

    g = torch.Generator().manual_seed(seed)
    procs = {}
    for key in unet.attn_processors.keys():
        site = key[: -len(".processor")]
        if not site.endswith("attn2"):
            procs[key] = CustomDiffusionAttnProcessor(train_kv=False, train_q_out=False)
            continue
        attn = unet.get_submodule(site)
        qo = site.startswith("mid_block")
        p = CustomDiffusionAttnProcessor(
            train_kv=True,
            train_q_out=qo,
            hidden_size=attn.to_q.out_features,
            cross_attention_dim=attn.to_k.in_features,
        )
        with torch.no_grad():
            for name, param in p.named_parameters():
                base = {
                    "to_k_custom_diffusion.weight": attn.to_k.weight,
                    "to_v_custom_diffusion.weight": attn.to_v.weight,
                    "to_q_custom_diffusion.weight": attn.to_q.weight,
                    "to_out_custom_diffusion.0.weight": attn.to_out[0].weight,
                    "to_out_custom_diffusion.0.bias": attn.to_out[0].bias,
                }[name]
                param.copy_(base + 0.05 * torch.randn(base.shape, generator=g))
        procs[key] = p
    unet.set_attn_processor(procs)
    state = {}
    for key, p in unet.attn_processors.items():
        for name, param in p.named_parameters():
            state[f"{key}.{name}"] = param.detach().clone().contiguous()
    save_file(state, str(PERS / "custom_diffusion" / "pytorch_custom_diffusion_weights.safetensors"))
    d = load_file(str(GOLDEN / "unet_sd1-tiny.safetensors"))
    with torch.no_grad():
        eps = unet(d["sample"], 981, encoder_hidden_states=d["encoder_hidden_states"]).sample
    unet.set_attn_processor(AttnProcessor())
    save_file({"eps_t981": eps.contiguous()}, str(GOLDEN / "cd_sd1-tiny.safetensors"))


def lora_goldens(seed: int):
    """LoRA on the UNet (attention projections, via diffusers/PEFT) and on the text encoder
    (q/k/v/out_proj), in PEFT/diffusers and kohya files.

    The UNet goldens come from diffusers' own loaders (`load_lora_adapter`, `fuse_lora`). The
    text-encoder goldens are computed by the LoRA formula W + scale·(alpha/r)·B·A directly:
    transformers 5's PEFT integration needs peft >= 0.22, which PyPI does not offer yet."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    unet = UNet2DConditionModel.from_pretrained(str(FIX / "sd1-tiny" / "unet")).eval()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    unet_sd = {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}
    te_r, te_alpha = 2, 3.0
    te_sd = {}
    for i in range(3):
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            base = f"text_model.encoder.layers.{i}.self_attn.{proj}"
            te_sd[f"{base}.lora_A.weight"] = 0.2 * torch.randn(te_r, 16, generator=g)
            te_sd[f"{base}.lora_B.weight"] = 0.2 * torch.randn(16, te_r, generator=g)
    out_dir = PERS / "lora_peft"
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_file = {f"unet.{k}": v.contiguous() for k, v in unet_sd.items()}
    peft_file.update({f"text_encoder.{k}": v.contiguous() for k, v in te_sd.items()})
    save_file(peft_file, str(out_dir / "pytorch_lora_weights.safetensors"))
    # kohya naming; UNet alpha 8 (scale alpha/r = 2), text encoder alpha 3 (1.5).
    kohya = {}
    for sd_, prefix, alpha in [(unet_sd, "lora_unet_", 8.0), (te_sd, "lora_te_", te_alpha)]:
        for k, v in sd_.items():
            mod, ab = k.rsplit(".lora_", 1)
            kk = prefix + mod.replace(".", "_")
            kohya[f"{kk}.lora_{'down' if ab.startswith('A') else 'up'}.weight"] = v.contiguous()
            kohya[f"{kk}.alpha"] = torch.tensor(alpha)
    save_file(kohya, str(PERS / "lora_kohya.safetensors"))

    d = load_file(str(GOLDEN / "unet_sd1-tiny.safetensors"))
    ids = load_file(str(GOLDEN / "clip_sd1-tiny.safetensors"))["input_ids"]
    scale = 0.7
    out = {}
    for tag, path in [("peft", out_dir / "pytorch_lora_weights.safetensors"),
                      ("kohya", PERS / "lora_kohya.safetensors")]:
        state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
        u = UNet2DConditionModel.from_pretrained(str(FIX / "sd1-tiny" / "unet")).eval()
        u.load_lora_adapter(state, prefix="unet", network_alphas=alphas, adapter_name="x")
        u.fuse_lora(lora_scale=scale)
        with torch.no_grad():
            out[f"{tag}.eps_t981"] = u(d["sample"], 981, encoder_hidden_states=d["encoder_hidden_states"]).sample.contiguous()
        te = CLIPTextModel.from_pretrained(str(FIX / "sd1-tiny" / "text_encoder"), torch_dtype=torch.float32).eval()
        te_scale = te_alpha / te_r if tag == "kohya" else 1.0  # PEFT files carry no alpha: alpha = r
        with torch.no_grad():
            for k, a_ in te_sd.items():
                if not k.endswith("lora_A.weight"):
                    continue
                mod = k[: -len(".lora_A.weight")]
                b_ = te_sd[f"{mod}.lora_B.weight"]
                lin = te.get_submodule(mod.removeprefix("text_model."))
                lin.weight.add_(scale * te_scale * (b_ @ a_))
            out[f"{tag}.hidden"] = te(ids).last_hidden_state.contiguous()
    save_file(out, str(GOLDEN / "lora_sd1-tiny.safetensors"))


# ---------------------------------------------------------------------------------------------
# The method (METHOD.md) on the tiny personalized fixtures
# ---------------------------------------------------------------------------------------------

METHOD_CFG = dict(N=6, guidance=7.5, S=2, tau=0.1, mf=2, layout_fraction=0.2, blend="otsu")

# The newer cases: every setting explicit (the Rust test reads them all, no defaults).
# personalization paths are relative to tests/fixtures; blend is "otsu", "off" or a number tau_b.
TI_CAT = {"kind": "ti", "file": "personalization/ti_cat_toy.safetensors", "token": None}
METHOD_BASE = dict(
    model="sd1-tiny", personalization=TI_CAT, phrase="<cat-toy>", class_="cat toy",
    prompt="a <cat-toy> on the beach", negative_prompt="", reference_prefix="a photo of ",
    N=6, guidance=7.5, S=2, tau=0.1, mf=2, layout_fraction=0.2, mode="split", div=2,
    blend="otsu", blend_start=1, width=128, height=128, samples=2, references=1, noise="white",
)
DREAMBOOTH = {"kind": "dreambooth", "file": "sd1-tiny-dreambooth", "token": None}
METHOD_NEW_CASES = [
    # (a) Otsu blend masks that split the latent: 256x256 (32x32 latent), 16x16 maps, a smooth
    # initial noise (see method_case_inputs) and tau 0.5 (the swap masks split too).
    # Latents reach |31| here (smooth noise, 32x32): PyTorch's own f32 run of this case is 5.5e-5
    # from its f64 run, layret's f32 1.1e-4 (tools/reference/README.md), so two f32
    # implementations agree to ~1.2e-4, not 1e-4: the case states its tolerance.
    dict(tag="blend_split", width=256, height=256, mf=2, tau=0.5, noise="smooth2", seed=11151,
         tolerance=2e-4),
    # (b) a non-square latent: 128 wide x 96 high -> H x W = 12 x 16 latent, levels 12x16, 6x8,
    # 3x4, maps 6x8.
    dict(tag="non_square", width=128, height=96, seed=4102),
    # (b') odd levels: 128 wide x 80 high -> 10 x 16, levels 10x16, 5x8, 3x4 (ceil-halved), maps 5x8.
    dict(tag="non_square_odd", width=128, height=80, seed=4112),
    # (c) v-prediction, linear projections, its own VAE/tokenizer; TI on sd2-tiny's encoder.
    dict(tag="sd2_vpred", model="sd2-tiny", seed=4103),
    # (d) Custom Diffusion (+ the <new1> modifier token).
    dict(tag="custom_diffusion",
         personalization={"kind": "custom-diffusion",
                          "file": "personalization/custom_diffusion/pytorch_custom_diffusion_weights.safetensors",
                          "token": None,
                          "token_files": ["personalization/custom_diffusion/new1.safetensors"]},
         phrase="<new1> dog", class_="dog", prompt="<new1> dog in a bucket", tau=0.5, seed=4104),
    # (e) LoRA (PEFT file, UNet and text encoder) fused at scale 1.
    dict(tag="lora",
         personalization={"kind": "lora", "file": "personalization/lora_peft/pytorch_lora_weights.safetensors",
                          "token": None, "scale": 1.0},
         phrase="sks dog", class_="dog", prompt="a sks dog surfing a wave", tau=0.5, seed=5105),
    # (f) two reference images: sample i uses reference i mod 2.
    dict(tag="two_references", references=2, samples=2, seed=4106),
    # (g) blending off, and a fixed threshold from step 1 (same inputs: see the check below).
    dict(tag="blend_off", blend="off", seed=4107),
    dict(tag="blend_fixed", blend=0.5, blend_start=1, seed=4107),
    # (g') blending from step 0 (the target map of step 0's own pass).
    dict(tag="blend_start_0", blend_start=0, seed=4113),
    # (h) a negative prompt, on DreamBooth so that the two branches' encoders differ.
    dict(tag="negative_prompt", personalization=DREAMBOOTH, phrase="sks dog", class_="dog",
         prompt="a sks dog surfing a wave", tau=0.5, negative_prompt="blurry, low quality", seed=5108),
    # (i) swap divisor 1: only the decoder level at the full latent size swaps.
    dict(tag="swap_divisor_1", div=1, seed=4109),
    # (j) a 2-vector A1111 embedding under the token <sks2>.
    dict(tag="ti_multivector",
         personalization={"kind": "ti", "file": "personalization/ti_a1111_2vec.safetensors", "token": "<sks2>"},
         phrase="<sks2>", class_="toy", prompt="a photo of <sks2> on a table", seed=4110),
]


def ti_loader(tokenizer, text_encoder):
    """diffusers' TextualInversionLoaderMixin on a bare tokenizer/text encoder pair."""
    from diffusers.loaders import TextualInversionLoaderMixin

    class Loader(TextualInversionLoaderMixin):
        def __init__(self, tokenizer, text_encoder):
            self.tokenizer, self.text_encoder = tokenizer, text_encoder
            self.hf_device_map = None
            self.components = {"tokenizer": tokenizer, "text_encoder": text_encoder}

    return Loader(tokenizer, text_encoder)


def method_parts(name):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    d = FIX / name
    return (
        CLIPTokenizer.from_pretrained(str(d / "tokenizer")),
        CLIPTextModel.from_pretrained(str(d / "text_encoder"), torch_dtype=torch.float32).eval(),
        UNet2DConditionModel.from_pretrained(str(d / "unet"), torch_dtype=torch.float32).eval(),
    )


def with_ti(base, files, token=None):
    """A TI personal branch: copies of the tokenizer/encoder with the file(s) loaded, the same
    UNet, and maybe_convert_prompt (multi-vector tokens)."""
    import copy

    tok, te = copy.deepcopy(base[0]), copy.deepcopy(base[1])
    ld = ti_loader(tok, te)
    for f in files:
        if token is None:
            ld.load_textual_inversion(str(FIX / f))
        else:
            ld.load_textual_inversion(str(FIX / f), token=token)
    return (tok, te, base[2], lambda s: ld.maybe_convert_prompt(s, tok))


def custom_diffusion_unet(model, weights):
    """A copy of the UNet with Custom Diffusion's attn2 weights merged: to_k/to_v replaced, and
    to_q/to_out.0 where the file has them."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(FIX / model / "unet"), torch_dtype=torch.float32).eval()
    sd = load_file(str(FIX / weights))
    names = {"to_k_custom_diffusion.weight": "to_k.weight", "to_v_custom_diffusion.weight": "to_v.weight",
             "to_q_custom_diffusion.weight": "to_q.weight",
             "to_out_custom_diffusion.0.weight": "to_out.0.weight",
             "to_out_custom_diffusion.0.bias": "to_out.0.bias"}
    with torch.no_grad():
        for k, v in sd.items():
            site, _, pname = k.partition(".processor.")
            attn = unet.get_submodule(site)
            dst = attn.get_parameter(names[pname])
            assert dst.shape == v.shape, k
            dst.copy_(v)
    return unet


def check_custom_diffusion_unet(unet):
    """The merged UNet reproduces diffusers' CustomDiffusionAttnProcessor (golden/cd_sd1-tiny)."""
    d = load_file(str(GOLDEN / "unet_sd1-tiny.safetensors"))
    want = load_file(str(GOLDEN / "cd_sd1-tiny.safetensors"))["eps_t981"]
    with torch.no_grad():
        got = unet(d["sample"], 981, encoder_hidden_states=d["encoder_hidden_states"]).sample
    err = float((got - want).abs().max())
    assert err < 1e-5, f"merged Custom Diffusion UNet vs diffusers' processor: {err}"
    return err


def lora_branch(model, file, scale):
    """UNet: diffusers' load_lora_adapter + fuse_lora (as lora_goldens()); text encoder: the
    formula W + scale*(alpha/r)*B@A with alpha = r (a PEFT file carries no alpha)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    state, alphas = StableDiffusionPipeline.lora_state_dict(str(FIX / file))
    u = UNet2DConditionModel.from_pretrained(str(FIX / model / "unet"), torch_dtype=torch.float32).eval()
    u.load_lora_adapter(state, prefix="unet", network_alphas=alphas, adapter_name="x")
    u.fuse_lora(lora_scale=scale)
    te = CLIPTextModel.from_pretrained(str(FIX / model / "text_encoder"), torch_dtype=torch.float32).eval()
    raw = load_file(str(FIX / file))
    n_te = 0
    with torch.no_grad():
        for k, a_ in raw.items():
            if not (k.startswith("text_encoder.") and k.endswith(".lora_A.weight")):
                continue
            mod = k[len("text_encoder."): -len(".lora_A.weight")]
            b_ = raw[f"text_encoder.{mod}.lora_B.weight"]
            lin = te.get_submodule(mod.removeprefix("text_model."))
            lin.weight.add_(scale * 1.0 * (b_ @ a_))  # alpha / r = 1
            n_te += 1
    assert n_te == 12, n_te
    tok = CLIPTokenizer.from_pretrained(str(FIX / model / "tokenizer"))
    return (tok, te, u)


def check_lora_unet():
    """The fused UNet path reproduces lora_sd1-tiny's scale-0.7 golden and, at scale 1, equals
    the formula W + (B@A) on every targeted projection."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    file = "personalization/lora_peft/pytorch_lora_weights.safetensors"
    d = load_file(str(GOLDEN / "unet_sd1-tiny.safetensors"))
    state, alphas = StableDiffusionPipeline.lora_state_dict(str(FIX / file))
    u = UNet2DConditionModel.from_pretrained(str(FIX / "sd1-tiny" / "unet")).eval()
    u.load_lora_adapter(state, prefix="unet", network_alphas=alphas, adapter_name="x")
    u.fuse_lora(lora_scale=0.7)
    with torch.no_grad():
        got = u(d["sample"], 981, encoder_hidden_states=d["encoder_hidden_states"]).sample
    want = load_file(str(GOLDEN / "lora_sd1-tiny.safetensors"))["peft.eps_t981"]
    assert torch.equal(got, want)
    u1 = lora_branch("sd1-tiny", file, 1.0)[2]
    base = UNet2DConditionModel.from_pretrained(str(FIX / "sd1-tiny" / "unet")).eval()
    raw = load_file(str(FIX / file))
    fused = {k.replace(".base_layer", ""): v for k, v in u1.state_dict().items() if "lora_" not in k}
    err = 0.0
    for k, a_ in raw.items():
        if not (k.startswith("unet.") and k.endswith(".lora_A.weight")):
            continue
        mod = k[len("unet."): -len(".lora_A.weight")]
        w_ = base.get_submodule(mod).weight.detach() + raw[f"unet.{mod}.lora_B.weight"] @ a_
        err = max(err, float((fused[f"{mod}.weight"] - w_).abs().max()))
    assert err < 1e-6, err


def method_case_models(spec):
    """(vanilla, personal, vae, scheduler) for a METHOD_NEW_CASES entry."""
    from diffusers import AutoencoderKL, DDIMScheduler

    model = spec["model"]
    vanilla = method_parts(model)
    pers = spec["personalization"]
    kind = pers["kind"]
    if kind == "ti":
        personal = with_ti(vanilla, [pers["file"]], pers["token"])
    elif kind == "dreambooth":
        personal = method_parts(pers["file"])
    elif kind == "custom-diffusion":
        unet = custom_diffusion_unet(model, pers["file"])
        check_custom_diffusion_unet(unet)
        personal = with_ti((vanilla[0], vanilla[1], unet), pers["token_files"])
    elif kind == "lora":
        personal = lora_branch(model, pers["file"], pers["scale"])
    else:
        raise ValueError(kind)
    vae = AutoencoderKL.from_pretrained(str(FIX / model / "vae")).eval()
    sched = DDIMScheduler.from_pretrained(str(FIX / model / "scheduler"))
    return vanilla, personal, vae, sched


def method_case_inputs(spec):
    """Noise [samples, 4, H, W] and R smooth reference images [1, 3, height, width]."""
    H, W = spec["height"] // 8, spec["width"] // 8
    g = torch.Generator().manual_seed(spec["seed"])
    if spec["noise"] == "white":
        noise = torch.randn(spec["samples"], 4, H, W, generator=g)
    else:
        # "smoothK": a KxK field of standard normals upsampled bicubically to the latent size, unit std.
        # The tiny random UNet's attention maps of white noise are speckle, which the 3x3 dilation
        # of the blend mask fills almost entirely; a smooth field gives maps with regions.
        lo = int(spec["noise"][len("smooth"):])
        noise = torch.nn.functional.interpolate(
            torch.randn(spec["samples"], 4, lo, lo, generator=g), size=(H, W), mode="bicubic"
        )
        noise = noise / noise.std()
    refs = [
        torch.nn.functional.interpolate(
            torch.rand(1, 3, H, W, generator=g) * 2 - 1, size=(spec["height"], spec["width"]), mode="bilinear"
        )
        for _ in range(spec["references"])
    ]
    return noise, refs


def method_new_case(case):
    import method_reference
    from method_reference import run_method

    spec = dict(METHOD_BASE)
    spec.update(case)
    vanilla, personal, vae, sched = method_case_models(spec)
    noise, refs = method_case_inputs(spec)
    cfg = {k: spec[k] for k in ["N", "guidance", "S", "tau", "mf", "layout_fraction", "mode", "div", "blend",
                                "blend_start", "negative_prompt", "reference_prefix"]}
    method_reference.FRAGILE.clear()
    out, info = run_method(vanilla, personal, vae, sched, noise, refs if len(refs) > 1 else refs[0],
                           spec["phrase"], spec["class_"], spec["prompt"], cfg)
    # A mask decision that a 2e-5 change of a map would flip cannot be reproduced by another
    # f32 implementation: such a case needs another seed (see check_robust).
    assert not method_reference.FRAGILE, (spec["tag"], method_reference.FRAGILE)
    out["noise"] = noise
    if len(refs) == 1:
        out["reference_image"] = refs[0]
    else:
        for i, r in enumerate(refs):
            out[f"reference_image{i}"] = r
    save_file({k: v.contiguous() for k, v in out.items()}, str(GOLDEN / f"method_{spec['tag']}.safetensors"))
    fr = [round(float(f.mean()), 6) for f in info["blend_fraction"]]
    fr_s = [[round(float(x), 6) for x in f] for f in info["blend_fraction"]]
    print(f"method {spec['tag']}: blend fraction of ones per blended step {fr}; "
          f"{len(info['swap_sites'])} swapped layers; mask sites {len(info['mask_sites'])}")
    entry = {
        "tag": spec["tag"], "model": spec["model"], "personalization": spec["personalization"],
        "phrase": spec["phrase"], "class": spec["class_"], "prompt": spec["prompt"],
        "negative_prompt": spec["negative_prompt"], "reference_prefix": spec["reference_prefix"],
        "N": spec["N"], "guidance": spec["guidance"], "S": spec["S"], "tau": spec["tau"], "mf": spec["mf"],
        "layout_fraction": spec["layout_fraction"], "mode": spec["mode"], "div": spec["div"],
        "blend": spec["blend"], "blend_start": spec["blend_start"],
        "width": spec["width"], "height": spec["height"], "samples": spec["samples"],
        "references": spec["references"], "noise": spec["noise"],
        "tolerance": spec.get("tolerance", 1e-4),
        "lambda1": int(out["lambda1"]),
        "levels": [list(s) for s in info["levels"]], "mask_size": list(info["mask_size"]),
        "subject_tokens": info["subject_tokens"],
        "swapped_layers": info["swap_sites"], "mask_layers": info["mask_sites"],
        "blend_steps": [int(k[len("blend_step"):]) for k in out if k.startswith("blend_step")],
        "blend_fraction": fr,
        "blend_fraction_per_sample": fr_s,
    }
    return entry, info, out


def method_goldens():
    import copy

    from diffusers import AutoencoderKL, DDIMScheduler

    sys.path.insert(0, str(Path(__file__).parent))
    from method_reference import run_method

    parts = method_parts

    vae = AutoencoderKL.from_pretrained(str(FIX / "sd1-tiny" / "vae")).eval()
    g = torch.Generator().manual_seed(4000)
    noise = torch.randn(2, 4, 16, 16, generator=g)
    ref = torch.nn.functional.interpolate(
        torch.rand(1, 3, 16, 16, generator=g) * 2 - 1, size=(128, 128), mode="bilinear"
    )

    runs = []
    vanilla = parts("sd1-tiny")
    tok_p, te_p = copy.deepcopy(vanilla[0]), copy.deepcopy(vanilla[1])
    ti_loader(tok_p, te_p).load_textual_inversion(str(PERS / "ti_cat_toy.safetensors"))
    ti_personal = (tok_p, te_p, vanilla[2])
    runs.append(("ti", vanilla, ti_personal, "<cat-toy>", "cat toy", "a <cat-toy> on the beach", {}))
    runs.append(("ti_concat", vanilla, ti_personal, "<cat-toy>", "cat toy", "a <cat-toy> on the beach",
                 {"mode": "concat", "tau": 0.5}))
    runs.append(("dreambooth", vanilla, parts("sd1-tiny-dreambooth"), "sks dog", "dog", "a sks dog surfing a wave",
                 {"tau": 0.5}))
    for tag, van, per, P, C, prompt, over in runs:
        cfg = dict(METHOD_CFG, mode="split")
        cfg.update(over)
        sched = DDIMScheduler.from_pretrained(str(FIX / "sd1-tiny" / "scheduler"))
        out, _ = run_method(van, per, vae, sched, noise, ref, P, C, prompt, cfg)
        out.update(noise=noise, reference_image=ref)
        save_file({k: v.contiguous() for k, v in out.items()}, str(GOLDEN / f"method_{tag}.safetensors"))
    check_lora_unet()
    entries, outs = [], {}
    for c in METHOD_NEW_CASES:
        entry, _, out = method_new_case(c)
        entries.append(entry)
        outs[c["tag"]] = out
    # blend_off and blend_fixed share their inputs: the context is the same, the target not.
    assert torch.equal(outs["blend_off"]["context_latents"], outs["blend_fixed"]["context_latents"])
    assert not torch.allclose(outs["blend_off"]["latents"], outs["blend_fixed"]["latents"])
    (GOLDEN / "method_cases.json").write_text(json.dumps({
        "settings": METHOD_CFG,
        "cases": [{"tag": r[0], "phrase": r[3], "class": r[4], "prompt": r[5], **r[6]} for r in runs] + entries,
    }, indent=1) + "\n")


def main():
    check_environment()
    FIX.mkdir(parents=True, exist_ok=True)
    GOLDEN.mkdir(parents=True, exist_ok=True)

    # SD 1.x-style tiny model: pads with <|endoftext|>, quick_gelu, fp16 weights on disk.
    tok1 = write_tokenizer(FIX / "sd1-tiny", pad_token="<|endoftext|>", with_tokenizer_json=False)
    ids1 = tokenizer_goldens("sd1-tiny", tok1)
    te1 = make_text_encoder(
        "sd1-tiny", 1000, "quick_gelu", tok1.pad_token_id, torch.float16, legacy_keys=True
    )
    text_encoder_goldens("sd1-tiny", te1, ids1)

    # SD 2.x-style tiny model: pads with "!", gelu, tokenizer.json present, fp16 weights.
    tok2 = write_tokenizer(FIX / "sd2-tiny", pad_token="!", with_tokenizer_json=True)
    ids2 = tokenizer_goldens("sd2-tiny", tok2)
    te2 = make_text_encoder(
        "sd2-tiny", 2000, "gelu", tok2.pad_token_id, torch.float16, legacy_keys=False
    )
    text_encoder_goldens("sd2-tiny", te2, ids2)

    unet1 = make_unet("sd1-tiny", 1100, sd2=False, dtype=torch.float32)
    unet2 = make_unet("sd2-tiny", 2100, sd2=True, dtype=torch.float16)
    unet_goldens("sd1-tiny", unet1, 1200)
    unet_goldens("sd2-tiny", unet2, 2200)
    vae1 = make_vae("sd1-tiny", 1300)
    vae2 = make_vae("sd2-tiny", 2300)
    vae_goldens("sd1-tiny", vae1, 1400)
    vae_goldens("sd2-tiny", vae2, 2400)
    sched1 = make_scheduler("sd1-tiny", "epsilon")
    sched2 = make_scheduler("sd2-tiny", "v_prediction")
    scheduler_goldens()
    for name, tok, te, unet, sched, vae in [
        ("sd1-tiny", tok1, te1, unet1, sched1, vae1),
        ("sd2-tiny", tok2, te2, unet2, sched2, vae2),
    ]:
        inversion_goldens(name, tok, te, unet, sched, vae)
        pipeline_goldens(name, tok, te, unet, sched, vae)
    attention_goldens("sd1-tiny", tok1, te1, unet1, sched1)

    make_ti_files(3000)
    ti_goldens(FIX / "sd1-tiny" / "tokenizer", FIX / "sd1-tiny" / "text_encoder")
    make_dreambooth("sd1-tiny", "sd1-tiny-dreambooth", 3100)
    cd_goldens(make_unet_copy("sd1-tiny"), 3200)
    lora_goldens(3300)
    method_goldens()

    for name in ["sd1-tiny", "sd2-tiny"]:
        write_model_index(
            name,
            {
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
                "safety_checker": [None, None],
                "scheduler": ["diffusers", "DDIMScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            },
        )
    print("fixtures written to", FIX)


if __name__ == "__main__":
    main()
