#!/usr/bin/env python3
"""Write layret's *file format* fixtures: the tiny models and personalization files in the layouts
real users download and train (PyTorch pickles, original LDM single-file checkpoints, A1111 and
diffusers textual-inversion files, kohya / old-diffusers / attention-processor / PEFT LoRAs, and
one malicious pickle), each written by the tool that writes that format for real users, plus
goldens computed by diffusers / transformers from those files.

Run from the repository root, after make_fixtures.py (it reads tests/fixtures/sd1-tiny, sd2-tiny
and their goldens, and never modifies them):

    python3 tools/reference/make_formats.py

Writes tests/fixtures/formats/ (rebuilt from scratch), tests/fixtures/golden/formats_*.safetensors
and tests/fixtures/golden/formats.json. Deterministic: fixed seeds, one thread,
torch.use_deterministic_algorithms; rerunning reproduces every file byte for byte.

Every written file is verified by loading it with the tool users load it with (diffusers'
from_pretrained / from_single_file / load_textual_inversion / load_lora_weights) and comparing
against an independent computation (the tiny folders, or a LoRA merge done by hand). Where
diffusers cannot load a layout, or drops layers of it, the golden is computed from the hand merge
and formats.json says so ("golden_source").
"""

import collections
import copy
import hashlib
import json
import math
import os
import pickletools
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (sets one thread + deterministic algorithms)

FIX = mf.FIX
GOLDEN = mf.GOLDEN
FORMATS = FIX / "formats"
SD1 = FIX / "sd1-tiny"
SD2 = FIX / "sd2-tiny"

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

CASES = []  # formats.json entries, appended by each section


def log(*a):
    print("[make_formats]", *a, flush=True)


def quiet_libraries():
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def canonical_metadata_order(path: Path):
    """safetensors keeps __metadata__ in a Rust HashMap, so its key order in the header changes
    from run to run. Rewrite the header with the metadata keys sorted (same JSON text otherwise,
    same length after padding, tensor offsets untouched) so that reruns are byte-identical."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    md = header.pop("__metadata__", None)
    if not md:
        return
    new = {"__metadata__": dict(sorted(md.items())), **header}
    text = json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert len(text) <= n, (path, len(text), n)
    Path(path).write_bytes(raw[:8] + text + b" " * (n - len(text)) + raw[8 + n :])
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == md


def rel(path: Path) -> str:
    return str(Path(path).relative_to(FIX))


def folder_state_dict(folder: Path, sub: str) -> dict:
    """The tensors of one component of a tiny diffusers folder, exactly as stored."""
    (f,) = sorted((folder / sub).glob("*.safetensors"))
    return load_file(str(f))


def pickle_globals(path: Path) -> list:
    """The GLOBAL / STACK_GLOBAL references in a torch.save zip (data.pkl) or a raw pickle."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            (name,) = [n for n in z.namelist() if n.endswith("/data.pkl")]
            data = z.read(name)
    else:
        data = Path(path).read_bytes()
    found, strings = [], []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.append(f"{strings[-2]}.{strings[-1]}")
        if op.name not in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "MEMOIZE",
                           "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET", "STACK_GLOBAL"):
            strings = strings[-2:]
    return sorted(set(found))


def storage_locations(path: Path) -> list:
    """The device strings in a torch.save zip's persistent ids ('cpu', 'cuda:0', ...)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        (name,) = [n for n in z.namelist() if n.endswith("/data.pkl")]
        data = z.read(name)
    locs = set()
    ops = list(pickletools.genops(data))
    for i, (op, arg, _) in enumerate(ops):
        # persistent id tuple: ('storage', <Storage class>, key, location, numel)
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE") and arg == "storage":
            strs = [a for o, a, _ in ops[i + 1 : i + 12] if o.name in ("SHORT_BINUNICODE", "BINUNICODE")]
            if len(strs) >= 2:
                locs.add(strs[1])
    return sorted(locs)


# =============================================================================================
# 1. The sd1-tiny folder with PyTorch pickle weights (*.bin)
# =============================================================================================


class _TransformersV4Layout(torch.nn.Module):
    """transformers 4 nested CLIPTextModel's weights under `text_model.`; transformers 5 flattened
    the model. Wrapping the v5 model reproduces the v4 state-dict names (and `_metadata`)."""

    def __init__(self, te):
        super().__init__()
        self.text_model = te


def make_bin_folder():
    """formats/sd1-tiny-bin: UNet and VAE written by diffusers' save_pretrained(
    safe_serialization=False); the text encoder as transformers 4's save_pretrained(
    safe_serialization=False) wrote it (transformers 5 can only write safetensors):
    torch.save(model.state_dict()) -> an OrderedDict with `_metadata`, keys `text_model.*` and the
    persistent `position_ids` buffer of transformers < 4.31. Dtypes as sd1-tiny stores them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    out = FORMATS / "sd1-tiny-bin"
    out.mkdir(parents=True)
    for sub in ["tokenizer", "scheduler"]:
        shutil.copytree(SD1 / sub, out / sub)
    shutil.copy(SD1 / "model_index.json", out / "model_index.json")

    for sub, cls in [("unet", UNet2DConditionModel), ("vae", AutoencoderKL)]:
        src = folder_state_dict(SD1, sub)
        dtype = next(iter(src.values())).dtype
        # from_config + load_state_dict, not from_pretrained: from_pretrained records the
        # absolute source path as _name_or_path, which save_pretrained would write to config.json
        m = cls.from_config(cls.load_config(str(SD1 / sub))).eval()
        m.load_state_dict(src)
        m.to(dtype).save_pretrained(str(out / sub), safe_serialization=False)
        assert (out / sub / "config.json").read_bytes() == (SD1 / sub / "config.json").read_bytes(), sub
        # diffusers' config.json differs from the committed one only if diffusers changed.
        saved = torch.load(out / sub / "diffusion_pytorch_model.bin", map_location="cpu", weights_only=True)
        assert saved.keys() == src.keys(), sub
        for k, v in src.items():
            assert saved[k].dtype == v.dtype and torch.equal(saved[k], v), (sub, k)

    src = folder_state_dict(SD1, "text_encoder")  # fp16, text_model.* + position_ids
    te = CLIPTextModel.from_pretrained(str(SD1 / "text_encoder"), torch_dtype=torch.float16).eval()
    emb = te.embeddings
    pos = emb.position_ids.clone()
    del emb.position_ids
    emb.register_buffer("position_ids", pos, persistent=True)  # transformers < 4.31
    (out / "text_encoder").mkdir()
    sd = _TransformersV4Layout(te).state_dict()
    assert isinstance(sd, collections.OrderedDict) and hasattr(sd, "_metadata")
    assert sd.keys() == src.keys(), sorted(set(sd) ^ set(src))
    for k, v in src.items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    torch.save(sd, out / "text_encoder" / "pytorch_model.bin")
    shutil.copy(SD1 / "text_encoder" / "config.json", out / "text_encoder" / "config.json")
    verify_bin_folder(out)
    CASES.append({
        "case": "sd1-tiny-bin",
        "file": rel(out),
        "kind": "diffusers_folder_pickle",
        "same_weights_as": "sd1-tiny",
        "golden": ["golden/unet_sd1-tiny.safetensors:eps_t981", "golden/clip_sd1-tiny.safetensors:last_hidden_state",
                   "golden/pipeline_sd1-tiny.safetensors:latents"],
        "pickle_globals": {
            sub: pickle_globals(next((out / sub).glob("*.bin"))) for sub in ["unet", "vae", "text_encoder"]
        },
        "notes": "unet/vae: diffusers save_pretrained(safe_serialization=False), a plain dict; text_encoder: "
                 "torch.save of transformers-4 CLIPTextModel.state_dict() (OrderedDict with _metadata, "
                 "text_model.* keys, int64 position_ids), fp16. Every tensor equals sd1-tiny's.",
    })


def verify_bin_folder(folder: Path):
    """diffusers' StableDiffusionPipeline.from_pretrained on the pickle folder reproduces
    golden/unet_sd1-tiny eps_t981, the CLIP golden and the pipeline golden exactly."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), torch_dtype=torch.float32,
                                                   safety_checker=None, requires_safety_checker=False)
    assert_components_equal(pipe, SD1, "sd1-tiny-bin")
    d = load_file(str(GOLDEN / "unet_sd1-tiny.safetensors"))
    with torch.no_grad():
        eps = pipe.unet(d["sample"], 981, encoder_hidden_states=d["encoder_hidden_states"]).sample
    assert torch.equal(eps, d["eps_t981"]), "sd1-tiny-bin: eps_t981 differs from the golden"
    c = load_file(str(GOLDEN / "clip_sd1-tiny.safetensors"))
    with torch.no_grad():
        h = pipe.text_encoder(c["input_ids"]).last_hidden_state
    assert torch.equal(h, c["last_hidden_state"]), "sd1-tiny-bin: CLIP golden differs"
    lat = run_pipeline(pipe)
    assert torch.equal(lat, load_file(str(GOLDEN / "pipeline_sd1-tiny.safetensors"))["latents"])
    log("sd1-tiny-bin: from_pretrained reproduces eps_t981, CLIP and pipeline goldens exactly")


def assert_components_equal(pipe, folder: Path, what: str):
    """Every UNet / VAE / text-encoder tensor of `pipe` equals the folder's (fp32 upcast)."""
    for sub, model in [("unet", pipe.unet), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder)]:
        ref = {k.removeprefix("text_model."): v for k, v in folder_state_dict(folder, sub).items()}
        ref.pop("embeddings.position_ids", None)
        got = model.state_dict()
        got.pop("embeddings.position_ids", None)
        missing = sorted(set(ref) - set(got))
        extra = sorted(set(got) - set(ref))
        assert not missing and not extra, f"{what}/{sub}: missing {missing[:5]} extra {extra[:5]}"
        for k, v in ref.items():
            g = got[k]
            assert g.device.type == "cpu", f"{what}/{sub}: {k} was never loaded ({g.device})"
            assert torch.equal(g, v.to(torch.float32)), f"{what}/{sub}: {k} differs"


PIPELINE_KW = dict(  # exactly make_fixtures.pipeline_goldens' run
    prompt="a photo of a sks dog surfing",
    negative_prompt="blurry",
    num_inference_steps=5,
    guidance_scale=7.5,
    height=128,
    width=128,
    num_images_per_prompt=2,
)


def run_pipeline(pipe):
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(2, 4, 16, 16, generator=g)
    with torch.no_grad():
        return pipe(**PIPELINE_KW, latents=noise.clone(), output_type="latent").images


# =============================================================================================
# 2. Original LDM (CompVis / Stability) single-file checkpoints: our own diffusers -> LDM writer
# =============================================================================================
#
# The layout (read off diffusers' single_file_utils.convert_ldm_* and its
# scripts/convert_diffusers_to_original_stable_diffusion.py, mapping written here from scratch):
#
#   UNet  model.diffusion_model.*
#     time_embedding.linear_1/2         -> time_embed.0 / time_embed.2
#     conv_in                           -> input_blocks.0.0
#     down_blocks.i.resnets.j           -> input_blocks.n.0      (n counts 1, 2, ... over all down
#     down_blocks.i.attentions.j        -> input_blocks.n.1       layers; a downsampler takes its own n)
#     down_blocks.i.downsamplers.0.conv -> input_blocks.n.0.op
#     mid_block.resnets.0 / attentions.0 / resnets.1 -> middle_block.0 / .1 / .2
#     up_blocks.i.resnets.j             -> output_blocks.m.0     (m counts 0, 1, ... over all up layers)
#     up_blocks.i.attentions.j          -> output_blocks.m.1
#     up_blocks.i.upsamplers.0.conv     -> output_blocks.m.1.conv (m = the block's last layer), or
#                                          output_blocks.m.2.conv when that layer has an attention
#     conv_norm_out / conv_out          -> out.0 / out.2
#     inside a resnet: norm1 in_layers.0, conv1 in_layers.2, time_emb_proj emb_layers.1,
#                      norm2 out_layers.0, conv2 out_layers.3, conv_shortcut skip_connection
#     inside an attention (SpatialTransformer): names unchanged (norm, proj_in, transformer_blocks.*,
#                      proj_out); SD 1.x proj_in/out are 1x1 convs, SD 2.x linears, in both layouts.
#   VAE   first_stage_model.*
#     encoder.down_blocks.i.resnets.j   -> encoder.down.i.block.j
#     encoder.down_blocks.i.downsamplers.0 -> encoder.down.i.downsample
#     decoder.up_blocks.i.resnets.j     -> decoder.up.(N-1-i).block.j   (LDM numbers up blocks from
#     decoder.up_blocks.i.upsamplers.0  -> decoder.up.(N-1-i).upsample   the lowest resolution)
#     *.mid_block.resnets.0/1           -> *.mid.block_1 / block_2
#     *.mid_block.attentions.0          -> *.mid.attn_1 with group_norm->norm, to_q/to_k/to_v->q/k/v,
#                                          to_out.0->proj_out; q/k/v/proj_out weights as 1x1 convs [c,c,1,1]
#     conv_norm_out -> norm_out; resnet conv_shortcut -> nin_shortcut; conv_in, conv_out,
#     quant_conv, post_quant_conv unchanged
#   SD 1.x text encoder  cond_stage_model.transformer.text_model.*  (transformers-4 CLIPTextModel keys,
#     with the int64 position_ids buffer)
#   SD 2.x text encoder  cond_stage_model.model.* (OpenCLIP): see openclip_text_to_ldm.


def _unet_module_map(cfg: dict) -> dict:
    """diffusers module prefix -> LDM module prefix, for a UNet2DConditionModel config."""
    m = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    n_layers = cfg["layers_per_block"]
    down, up = cfg["down_block_types"], cfg["up_block_types"]
    n = 1
    for i, kind in enumerate(down):
        for j in range(n_layers):
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{n}.0"
            if kind.startswith("CrossAttn"):
                m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{n}.1"
            n += 1
        if i != len(down) - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
            n += 1
    k = 0
    for i, kind in enumerate(up):
        attn = kind.startswith("CrossAttn")
        for j in range(n_layers + 1):
            m[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{k}.0"
            if attn:
                m[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{k}.1"
            if j == n_layers and i != len(up) - 1:
                m[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{k}.{2 if attn else 1}.conv"
            k += 1
    return m


_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _rename(key: str, module_map: dict):
    """Split `key` at the longest module prefix in `module_map`; return (ldm prefix, rest, prefix)."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in module_map:
            return module_map[prefix], ".".join(parts[cut:]), prefix
    raise KeyError(f"no LDM name for {key}")


def unet_to_ldm(sd: dict, cfg: dict) -> dict:
    """diffusers UNet2DConditionModel state dict -> LDM `model.diffusion_model.*`."""
    mm = _unet_module_map(cfg)
    out = {}
    for key, v in sd.items():
        ldm, rest, prefix = _rename(key, mm)
        if ".resnets." in prefix:
            head, _, tail = rest.partition(".")
            rest = f"{_UNET_RESNET[head]}.{tail}"
        name = f"model.diffusion_model.{ldm}.{rest}"
        assert name not in out, name
        out[name] = v
    return out


def _vae_module_map(n_blocks: int) -> dict:
    m = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for side in ["encoder", "decoder"]:
        m[f"{side}.mid_block.resnets.0"] = f"{side}.mid.block_1"
        m[f"{side}.mid_block.resnets.1"] = f"{side}.mid.block_2"
        m[f"{side}.mid_block.attentions.0"] = f"{side}.mid.attn_1"
    for i in range(n_blocks):
        m[f"encoder.down_blocks.{i}.resnets"] = f"encoder.down.{i}.block"
        m[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
        m[f"decoder.up_blocks.{i}.resnets"] = f"decoder.up.{n_blocks - 1 - i}.block"
        m[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{n_blocks - 1 - i}.upsample"
    return m


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(sd: dict, n_blocks: int) -> dict:
    """diffusers AutoencoderKL state dict -> LDM `first_stage_model.*`."""
    mm = _vae_module_map(n_blocks)
    out = {}
    for key, v in sd.items():
        try:
            ldm, rest, prefix = _rename(key, mm)
        except KeyError:  # conv_in, conv_out, quant_conv, post_quant_conv: same names
            ldm, rest, prefix = key.rsplit(".", 1)[0], key.rsplit(".", 1)[1], ""
        if prefix.endswith("mid_block.attentions.0"):
            module, _, param = rest.rpartition(".")
            rest = f"{_VAE_ATTN[module]}.{param}"
            if param == "weight" and module != "group_norm":
                v = v.reshape(*v.shape, 1, 1)  # linear [c, c] -> 1x1 conv [c, c, 1, 1]
        rest = rest.replace("conv_shortcut", "nin_shortcut")
        name = f"first_stage_model.{ldm}.{rest}"
        assert name not in out, name
        out[name] = v
    return out


def clip_to_ldm(sd: dict) -> dict:
    """SD 1.x: the transformers-4 CLIPTextModel keys under cond_stage_model.transformer."""
    out = {}
    for k, v in sd.items():
        k = k if k.startswith("text_model.") else "text_model." + k
        out["cond_stage_model.transformer." + k] = v
    key = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    out.setdefault(key, torch.arange(77, dtype=torch.int64)[None])
    return out


def openclip_text_to_ldm(sd: dict, n_layers: int, extra_block: dict, text_projection, logit_scale) -> dict:
    """SD 2.x: a CLIPTextModel state dict in OpenCLIP's layout under cond_stage_model.model.

    token_embedding.weight, positional_embedding ([77, d], a plain parameter, no `.weight`),
    transformer.resblocks.i.{ln_1, attn.in_proj_weight [3d, d] = cat(q, k, v), attn.in_proj_bias,
    attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_final, text_projection [d, proj] (used as
    x @ text_projection: the transpose of a Linear weight), logit_scale (scalar).
    `extra_block` is resblock n_layers: OpenCLIP ViT-H has 24 blocks, SD 2.x conditions on the
    penultimate one and diffusers' text encoder keeps only 23."""
    sd = {k.removeprefix("text_model."): v for k, v in sd.items() if not k.endswith("position_ids")}
    p = "cond_stage_model.model."
    out = {
        p + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        p + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        p + "ln_final.weight": sd.pop("final_layer_norm.weight"),
        p + "ln_final.bias": sd.pop("final_layer_norm.bias"),
        p + "text_projection": text_projection,
        p + "logit_scale": logit_scale,
    }
    blocks = {i: {k.split(".", 3)[3]: sd.pop(k) for k in list(sd) if k.startswith(f"encoder.layers.{i}.")}
              for i in range(n_layers)}
    assert not sd, f"unmapped text-encoder keys {sorted(sd)}"
    blocks[n_layers] = extra_block
    for i, b in blocks.items():
        r = f"{p}transformer.resblocks.{i}."
        out[r + "ln_1.weight"] = b["layer_norm1.weight"]
        out[r + "ln_1.bias"] = b["layer_norm1.bias"]
        out[r + "attn.in_proj_weight"] = torch.cat([b[f"self_attn.{x}_proj.weight"] for x in "qkv"], 0)
        out[r + "attn.in_proj_bias"] = torch.cat([b[f"self_attn.{x}_proj.bias"] for x in "qkv"], 0)
        out[r + "attn.out_proj.weight"] = b["self_attn.out_proj.weight"]
        out[r + "attn.out_proj.bias"] = b["self_attn.out_proj.bias"]
        out[r + "ln_2.weight"] = b["layer_norm2.weight"]
        out[r + "ln_2.bias"] = b["layer_norm2.bias"]
        out[r + "mlp.c_fc.weight"] = b["mlp.fc1.weight"]
        out[r + "mlp.c_fc.bias"] = b["mlp.fc1.bias"]
        out[r + "mlp.c_proj.weight"] = b["mlp.fc2.weight"]
        out[r + "mlp.c_proj.bias"] = b["mlp.fc2.bias"]
    return out


def ddpm_buffers(sched: dict) -> dict:
    """The DDPM schedule buffers LatentDiffusion.register_schedule stores in every SD checkpoint
    (1000 entries each, computed in float64, stored float32). diffusers' scaled_linear betas are
    LDM's "linear" schedule (linear in sqrt(beta))."""
    assert sched["beta_schedule"] == "scaled_linear"
    n = sched["num_train_timesteps"]
    betas = np.linspace(sched["beta_start"] ** 0.5, sched["beta_end"] ** 0.5, n, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in bufs.items()}


def lit_ema_name(ldm_unet_key: str) -> str:
    """LitEma tracks LatentDiffusion.model (a DiffusionWrapper) and stores each parameter under its
    name with the dots removed: model.diffusion_model.input_blocks.0.0.weight ->
    model_ema.diffusion_modelinput_blocks00weight."""
    return "model_ema." + ldm_unet_key.removeprefix("model.").replace(".", "")


def build_ldm_checkpoint(folder: Path, sd2: bool, seed: int) -> dict:
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    te_cfg = json.loads((folder / "text_encoder" / "config.json").read_text())
    ckpt = {}
    unet = unet_to_ldm(folder_state_dict(folder, "unet"), unet_cfg)
    ckpt.update(unet)
    ckpt.update(vae_to_ldm(folder_state_dict(folder, "vae"), len(vae_cfg["block_out_channels"])))
    te = folder_state_dict(folder, "text_encoder")
    g = torch.Generator().manual_seed(seed)
    if sd2:
        d, n = te_cfg["hidden_size"], te_cfg["num_hidden_layers"]
        dt = next(iter(te.values())).dtype
        ref = {k.removeprefix("text_model.").split(".", 3)[3]: v for k, v in te.items()
               if k.removeprefix("text_model.").startswith("encoder.layers.0.")}
        # the extra (24th in real files) block: random, same shapes / scale as block 0
        extra = {k: (v.float() + 0.05 * torch.randn(v.shape, generator=g)).to(dt) for k, v in ref.items()}
        # [width, embed_dim]; OpenCLIP ViT-H/14: [1024, 1024] (diffusers reads only its shape[0])
        proj = (torch.randn(d, d, generator=g) * d ** -0.5).to(dt)
        logit_scale = torch.tensor(math.log(100.0), dtype=dt)
        ckpt.update(openclip_text_to_ldm(te, n, extra, proj, logit_scale))
    else:
        ckpt.update(clip_to_ldm(te))
        # EMA copies as LitEma names them (a full SD 1.x EMA checkpoint has one per UNet
        # parameter; a few suffice for a loader that must skip them). Values differ from the
        # model's so that loading them by mistake shows.
        for k in list(unet)[:3] + list(unet)[-3:]:
            v = unet[k]
            ckpt[lit_ema_name(k)] = (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype)
        ckpt["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
        ckpt["model_ema.num_updates"] = torch.tensor(470000, dtype=torch.int32)
    ckpt.update(ddpm_buffers(sched))
    # the schedule buffers agree with diffusers' own (float32) computation of it
    from diffusers import DDIMScheduler

    ac = DDIMScheduler.from_pretrained(str(folder / "scheduler")).alphas_cumprod
    assert torch.allclose(ckpt["alphas_cumprod"], ac, atol=1e-6)
    return {k: v.contiguous() for k, v in ckpt.items()}


def make_ldm_files():
    sd1 = build_ldm_checkpoint(SD1, sd2=False, seed=5000)
    p1 = FORMATS / "sd1-tiny-ldm.safetensors"
    save_file(sd1, str(p1))
    # The shape of a (PyTorch Lightning based) DreamBooth trainer's model.ckpt: a zip written by
    # modern torch.save, the state dict (an OrderedDict, as Module.state_dict() returns) under
    # "state_dict" beside training counters.
    p1c = FORMATS / "sd1-tiny-ldm.ckpt"
    torch.save({"state_dict": collections.OrderedDict(sorted(sd1.items())), "global_step": 470000, "epoch": 6}, p1c)
    sd2 = build_ldm_checkpoint(SD2, sd2=True, seed=5100)
    p2 = FORMATS / "sd2-tiny-ldm.safetensors"
    save_file(sd2, str(p2))

    notes = {}
    for path, folder, golden in [(p1, SD1, "sd1-tiny"), (p1c, SD1, "sd1-tiny"), (p2, SD2, "sd2-tiny")]:
        notes[path.name] = verify_single_file(path, folder, golden)
    check_single_file_check_can_fail(p1, SD1, "sd1-tiny")

    # keys a loader must skip: everything outside the three models, plus the SD 1.x position_ids
    # buffer; in SD 2.x the OpenCLIP block diffusers drops, text_projection and logit_scale
    def outside(sd):
        return sorted(k for k in sd if not k.startswith(("model.diffusion_model.", "first_stage_model.",
                                                         "cond_stage_model.")))

    skip1 = outside(sd1) + ["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    n2 = json.loads((SD2 / "text_encoder" / "config.json").read_text())["num_hidden_layers"]
    skip2 = outside(sd2) + [f"cond_stage_model.model.transformer.resblocks.{n2}.*",
                            "cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale"]
    for path, folder, sd, skip, layout in [
        (p1, SD1, sd1, skip1, "ldm_sd1"), (p1c, SD1, sd1, skip1, "ldm_sd1"), (p2, SD2, sd2, skip2, "ldm_sd2")]:
        golden = "sd1-tiny" if folder == SD1 else "sd2-tiny"
        CASES.append({
            "case": path.name,
            "file": rel(path),
            "kind": "ldm_single_file_ckpt" if path.suffix == ".ckpt" else "ldm_single_file",
            "layout": layout,
            "same_weights_as": golden,
            "container": ({"top_level": {"state_dict": "OrderedDict", "global_step": 470000, "epoch": 6},
                           "pickle_globals": pickle_globals(path)} if path.suffix == ".ckpt" else "safetensors"),
            "n_tensors": len(sd),
            "keys_to_skip": skip,
            "golden": [f"golden/unet_{golden}.safetensors:eps_t981", f"golden/clip_{golden}.safetensors:last_hidden_state",
                       f"golden/vae_{golden}.safetensors:decoded", f"golden/pipeline_{golden}.safetensors:latents"],
            "notes": notes[path.name],
        })


def _from_single_file(path: Path, folder: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_single_file(
        str(path), config=str(folder), local_files_only=True, torch_dtype=torch.float32,
        safety_checker=None, requires_safety_checker=False)


def verify_single_file(path: Path, folder: Path, golden: str) -> str:
    """diffusers' from_single_file loads our file: (a) every UNet / VAE / text-encoder tensor
    equals the tiny folder's, (b) the 5-step pipeline run gives the folder's latents bit for bit."""
    from diffusers import StableDiffusionPipeline

    pipe = _from_single_file(path, folder)
    assert_components_equal(pipe, folder, path.name)
    lat = run_pipeline(pipe)
    ref = StableDiffusionPipeline.from_pretrained(str(folder), torch_dtype=torch.float32, safety_checker=None,
                                                  requires_safety_checker=False)
    lat_ref = run_pipeline(ref)
    assert torch.equal(lat_ref, load_file(str(GOLDEN / f"pipeline_{golden}.safetensors"))["latents"])
    assert torch.equal(lat, lat_ref), f"{path.name}: pipeline latents differ from the folder's"
    log(f"{path.name}: from_single_file == folder (all tensors, pipeline latents bit-exact)")
    return ("verified: diffusers StableDiffusionPipeline.from_single_file(path, config=<tiny folder>, "
            "local_files_only=True, torch_dtype=float32, safety_checker=None, requires_safety_checker=False) "
            "loads every UNet/VAE/text-encoder tensor equal to the folder's, and the 5-step DDIM pipeline "
            "run gives the folder's latents bit for bit")


def check_single_file_check_can_fail(path: Path, folder: Path, golden: str):
    """The check above is not vacuous: perturb one UNet tensor in a scratch copy and both the
    tensor comparison and the pipeline comparison fail."""
    sd = load_file(str(path))
    key = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_v.weight"
    sd[key] = sd[key] + 1e-3
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.safetensors"
        save_file(sd, str(bad))
        pipe = _from_single_file(bad, folder)
    try:
        assert_components_equal(pipe, folder, "perturbed")
    except AssertionError as e:
        assert "to_v.weight differs" in str(e), e
    else:
        raise AssertionError("the tensor check did not notice a perturbed tensor")
    lat = run_pipeline(pipe)
    ref = load_file(str(GOLDEN / f"pipeline_{golden}.safetensors"))["latents"]
    assert not torch.equal(lat, ref), "the pipeline check did not notice a perturbed tensor"
    log(f"negative check: a 1e-3 change of one tensor changes the latents by {(lat - ref).abs().max():.2e}")


# =============================================================================================
# 3. Textual inversion files as users have them
# =============================================================================================


class _CudaLocation:
    """torch.save records each storage's device ('cpu', 'cuda:0') in the pickle. A1111 trains the
    embedding on the GPU, so its files say 'cuda:0'. Tag our CPU storages that way while saving
    (torch.serialization.register_package is torch's own hook for custom locations); every loader
    users use passes map_location."""

    active = False
    registered = False

    @classmethod
    def tagger(cls, obj):
        return "cuda:0" if cls.active else None

    @classmethod
    def deserializer(cls, obj, location):
        return None

    def __enter__(self):
        if not _CudaLocation.registered:
            torch.serialization.register_package(0, _CudaLocation.tagger, _CudaLocation.deserializer)
            _CudaLocation.registered = True
        _CudaLocation.active = True

    def __exit__(self, *a):
        _CudaLocation.active = False


TI_PROMPTS = [
    "a <cat-toy> on the beach",
    "a photo of a1111-2vec next to a <cat-toy>",
    "a1111-2vec, oil painting",
    "a photo of a cat toy",
]


def make_ti_files():
    g = torch.Generator().manual_seed(6000)
    # diffusers' textual_inversion.py (and the sd-concepts-library learned_embeds.bin files):
    # torch.save({placeholder_token: embedding.detach().cpu()})
    p_bin = FORMATS / "learned_embeds.bin"
    torch.save({"<cat-toy>": torch.randn(16, generator=g)}, p_bin)

    # AUTOMATIC1111 (modules/textual_inversion/textual_inversion.py, Embedding.save):
    #   torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": self.vec},
    #               "name": ..., "step": ..., "sd_checkpoint": ..., "sd_checkpoint_name": ...})
    # A plain dict; vec is a [n_vectors, dim] float32 tensor with requires_grad=True (the trained
    # leaf, on the GPU). Files from the original textual_inversion repo instead held an
    # nn.ParameterDict, which A1111's loader unwraps via `_parameters`; A1111 itself never writes one.
    vec = torch.randn(2, 16, generator=g).requires_grad_(True)
    p_pt = FORMATS / "a1111-2vec.pt"
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vec},
        "name": "a1111-2vec",
        "step": 1499,
        "sd_checkpoint": sha256(FORMATS / "sd1-tiny-ldm.safetensors")[:10],  # A1111's short hash
        "sd_checkpoint_name": "sd1-tiny-ldm",
    }
    with _CudaLocation():
        torch.save(data, p_pt)
    assert storage_locations(p_pt) == ["cuda:0"], storage_locations(p_pt)
    back = torch.load(p_pt, map_location="cpu", weights_only=True)
    assert back["string_to_param"]["*"].requires_grad and torch.equal(back["string_to_param"]["*"], vec)
    ti_goldens(p_bin, p_pt)


def ti_goldens(p_bin: Path, p_pt: Path):
    from diffusers import StableDiffusionPipeline  # noqa: F401  (the loader mixin lives there)
    from diffusers.loaders import TextualInversionLoaderMixin
    from transformers import CLIPTextModel, CLIPTokenizer

    class Loader(TextualInversionLoaderMixin):
        def __init__(self, tokenizer, text_encoder):
            self.tokenizer, self.text_encoder = tokenizer, text_encoder
            self.hf_device_map = None
            self.components = {"tokenizer": tokenizer, "text_encoder": text_encoder}

    tok = CLIPTokenizer.from_pretrained(str(SD1 / "tokenizer"))
    te = CLIPTextModel.from_pretrained(str(SD1 / "text_encoder"), torch_dtype=torch.float32).eval()
    n_vocab = len(tok)
    ld = Loader(tok, te)
    ld.load_textual_inversion(str(p_bin))
    ld.load_textual_inversion(str(p_pt), token=p_pt.stem)  # A1111 names an embedding by its file stem
    # the rows diffusers appended are exactly the files' vectors
    emb = te.get_input_embeddings().weight
    raw_bin = torch.load(p_bin, map_location="cpu", weights_only=True)["<cat-toy>"]
    raw_pt = torch.load(p_pt, map_location="cpu", weights_only=True)["string_to_param"]["*"].detach()
    ids = tok.convert_tokens_to_ids(["<cat-toy>", "a1111-2vec", "a1111-2vec_1"])
    assert ids == [n_vocab, n_vocab + 1, n_vocab + 2], ids
    assert torch.equal(emb[ids[0]], raw_bin) and torch.equal(emb[ids[1:]], raw_pt)
    out, cases = {}, []
    for i, p in enumerate(TI_PROMPTS):
        conv = ld.maybe_convert_prompt(p, tok)
        x = tok(conv, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            out[f"hidden{i}"] = te(x).last_hidden_state.contiguous()
        out[f"ids{i}"] = x.contiguous()
        cases.append({"prompt": p, "converted": conv})
    save_file(out, str(GOLDEN / "formats_ti.safetensors"))
    common = {"base": "sd1-tiny", "golden_file": "golden/formats_ti.safetensors", "prompts": cases,
              "golden_keys": [f"ids{i}" for i in range(len(cases))] + [f"hidden{i}" for i in range(len(cases))],
              "added_token_ids": {"<cat-toy>": ids[0], "a1111-2vec": ids[1], "a1111-2vec_1": ids[2]},
              "load_order": ["learned_embeds.bin", "a1111-2vec.pt"]}
    CASES.append({"case": "learned_embeds.bin", "file": rel(p_bin), "kind": "ti_diffusers_pickle",
                  "token": "<cat-toy>", "n_vectors": 1, "pickle_globals": pickle_globals(p_bin), **common,
                  "notes": "torch.save({'<cat-toy>': tensor[16]}); token = the dict key"})
    CASES.append({"case": "a1111-2vec.pt", "file": rel(p_pt), "kind": "ti_a1111_pickle",
                  "token": "a1111-2vec", "n_vectors": 2, "pickle_globals": pickle_globals(p_pt),
                  "storage_locations": storage_locations(p_pt), **common,
                  "notes": "A1111 Embedding.save dict; vectors = string_to_param['*'] [2,16] (requires_grad=True, "
                           "storage location 'cuda:0'); token = file stem; diffusers adds it as "
                           "'a1111-2vec' + 'a1111-2vec_1' and expands the prompt"})
    log("TI: diffusers load_textual_inversion appended exactly the files' vectors")


# =============================================================================================
# 4. LoRA files
# =============================================================================================

LORA_SCALE = 0.7


def _linears_and_convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def _lora_pair(g, module, rank: int, conv_kernel: bool):
    """Random trained-looking down/up weights for `module` (kohya shapes): linear down [r, in],
    up [out, r]; 1x1 conv down [r, in, 1, 1], up [out, r, 1, 1]; LoCon 3x3 conv down [r, in, 3, 3],
    up [out, r, 1, 1]. The merged delta is ~0.3x the module's own weight scale."""
    if isinstance(module, torch.nn.Conv2d):
        cin, cout = module.in_channels, module.out_channels
        kh, kw = module.kernel_size if conv_kernel else (1, 1)
        fan_in = cin * kh * kw
        down = torch.randn(rank, cin, kh, kw, generator=g) / math.sqrt(fan_in)
        up = 0.3 * torch.randn(cout, rank, 1, 1, generator=g) / math.sqrt(rank)
    else:
        cin, cout = module.in_features, module.out_features
        down = torch.randn(rank, cin, generator=g) / math.sqrt(cin)
        up = 0.3 * torch.randn(cout, rank, generator=g) / math.sqrt(rank)
    return down, up


def lora_delta(down, up) -> torch.Tensor:
    """up @ down for linears; for convs up [out, r, 1, 1] x down [r, in, kh, kw] -> [out, in, kh, kw]."""
    down, up = down.float(), up.float()
    if down.ndim == 2:
        return up @ down
    return torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)


class LoraSpec:
    """One LoRA file's content in neutral form: {(component, module path): (down, up, alpha|None)}.
    Module paths are the diffusers UNet's and the transformers-4 text encoder's (text_model.*)."""

    def __init__(self):
        self.layers = {}

    def add(self, comp, path, down, up, alpha):
        self.layers[(comp, path)] = (down, up, alpha)

    def merged(self, comp, model, scale):
        """The model with every layer merged by hand: W + scale * (alpha / r) * up @ down."""
        model = copy.deepcopy(model)
        for (c, path), (down, up, alpha) in self.layers.items():
            if c != comp:
                continue
            mod = model.get_submodule(path.removeprefix("text_model.") if comp == "text_encoder" else path)
            r = down.shape[0]
            a = r if alpha is None else float(alpha)
            with torch.no_grad():
                mod.weight.add_(scale * (a / r) * lora_delta(down, up).to(mod.weight.dtype))
        return model


def effective_state_dict(model) -> dict:
    """A model's weights after diffusers' fuse_lora, with PEFT's wrappers looked through."""
    sd = {}
    for k, v in model.state_dict().items():
        if ".lora_A." in k or ".lora_B." in k or ".lora_magnitude_vector" in k:
            continue
        sd[k.replace(".base_layer.", ".")] = v
    return sd


def compare_layers(name, comp, got_model, want_model, spec):
    """Every weight of diffusers' fused model vs the hand merge. Returns (n layers in the file,
    names of LoRA layers diffusers did not apply (or applied wrongly), other weights that changed)."""
    got, want = effective_state_dict(got_model), dict(want_model.state_dict())
    assert got.keys() == want.keys(), (name, comp, sorted(set(got) ^ set(want))[:5])
    lora_weights = {(p.removeprefix("text_model.") if comp == "text_encoder" else p) + ".weight"
                    for (c, p) in spec.layers if c == comp}
    bad_lora, bad_other = [], []
    for k in want:
        ok = torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
        if not ok:
            (bad_lora if k in lora_weights else bad_other).append(k)
    return len(lora_weights), bad_lora, bad_other


def make_kohya_spec(unet, te, seed: int, sd2: bool) -> LoraSpec:
    """kohya-ss sd-scripts networks/lora.py: every Linear / Conv2d inside Transformer2DModel
    (attention q/k/v/out, ff, proj_in/proj_out), with LoCon (conv_dim) also inside ResnetBlock2D
    (conv1/conv2 3x3, time_emb_proj, conv_shortcut), Downsample2D and Upsample2D (conv 3x3);
    text encoder CLIPAttention (q/k/v/out_proj) and CLIPMLP (fc1/fc2). Ranks and alphas vary per
    layer, as in files made by block_dims / conv_block_dims or resize_lora.py --dynamic_method."""
    g = torch.Generator().manual_seed(seed)
    spec = LoraSpec()
    alphas = [1.0, 2.0, 4.0, 8.0, 0.5, 3.0, 16.0]
    i = 0
    for path, mod in _linears_and_convs(unet).items():
        parts = path.split(".")
        in_transformer = ".attentions." in path or path.startswith("mid_block.attentions.")
        in_resnet = ".resnets." in path
        in_sampler = ".downsamplers." in path or ".upsamplers." in path
        if not (in_transformer or in_resnet or in_sampler):
            continue  # conv_in, conv_out, time_embedding: not targeted by networks.lora
        is_3x3 = isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3)
        if is_3x3:
            rank = 2 if parts[0] != "mid_block" else 1  # conv_dim
        else:
            rank = {"down_blocks": 4, "mid_block": 8, "up_blocks": 2}[parts[0]]  # block_dims
            if path.endswith("ff.net.2"):
                rank = 3
        alpha = alphas[i % len(alphas)]
        i += 1
        down, up = _lora_pair(g, mod, rank, conv_kernel=True)
        spec.add("unet", path, down, up, alpha)
    for path, mod in _linears_and_convs(te).items():
        if ".self_attn." in path or ".mlp." in path:
            rank = 4 if ".self_attn." in path else 2
            down, up = _lora_pair(g, mod, rank, conv_kernel=True)
            spec.add("text_encoder", "text_model." + path, down, up, alphas[i % len(alphas)])
            i += 1
    return spec


def kohya_metadata(sd2: bool, spec: LoraSpec, name: str) -> dict:
    """The safetensors metadata kohya's train_network.py writes (values stringified), plus the
    modelspec.* entries of library/sai_model_spec.py. Hashes and dates are fixed fakes."""
    n_unet = sum(1 for c, _ in spec.layers if c == "unet")
    n_te = sum(1 for c, _ in spec.layers if c == "text_encoder")
    md = {
        "ss_session_id": "1234567890",
        "ss_training_started_at": "1700000000.0",
        "ss_output_name": name,
        "ss_learning_rate": "0.0001",
        "ss_text_encoder_lr": "5e-05",
        "ss_unet_lr": "0.0001",
        "ss_num_train_images": "40",
        "ss_num_reg_images": "0",
        "ss_num_batches_per_epoch": "40",
        "ss_num_epochs": "10",
        "ss_batch_size_per_device": "1",
        "ss_total_batch_size": "1",
        "ss_gradient_checkpointing": "False",
        "ss_gradient_accumulation_steps": "1",
        "ss_max_train_steps": "400",
        "ss_lr_warmup_steps": "0",
        "ss_lr_scheduler": "cosine",
        "ss_network_module": "networks.lora",
        "ss_network_dim": "4",
        "ss_network_alpha": "1.0",
        "ss_network_dropout": "None",
        "ss_network_args": json.dumps({"conv_dim": "2", "conv_alpha": "1.0"}),
        "ss_mixed_precision": "fp16",
        "ss_full_fp16": "False",
        "ss_v2": str(sd2),
        "ss_base_model_version": "sd_v2" if sd2 else "sd_v1",
        "ss_v_parameterization": str(sd2),
        "ss_resolution": "(512, 512)",
        "ss_clip_skip": "None",
        "ss_max_token_length": "None",
        "ss_cache_latents": "True",
        "ss_seed": "42",
        "ss_noise_offset": "None",
        "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit",
        "ss_sd_model_name": "sd2-tiny-ldm.safetensors" if sd2 else "sd1-tiny-ldm.safetensors",
        "ss_training_comment": f"layret fixture; {n_unet} unet + {n_te} text encoder modules",
        "ss_tag_frequency": json.dumps({"10_sks dog": {"sks dog": 40}}),
        "ss_dataset_dirs": json.dumps({"10_sks dog": {"n_repeats": 10, "img_count": 4}}),
        "sshs_model_hash": "0" * 64,
        "sshs_legacy_hash": "00000000",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v2-768-v/lora" if sd2 else "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": name,
        "modelspec.resolution": "768x768" if sd2 else "512x512",
        "modelspec.prediction_type": "v" if sd2 else "epsilon",
        "modelspec.date": "2024-01-01T00:00:00",
    }
    return md


def write_kohya(spec: LoraSpec, path: Path, dtype, metadata: dict):
    """kohya key names: lora_unet_<diffusers module path, . -> _> and lora_te_<transformers-4 text
    encoder module path, . -> _> (lora_te_text_model_encoder_layers_0_self_attn_q_proj), each with
    .lora_down.weight, .lora_up.weight and .alpha (a 0-dim tensor). save_precision casts every
    tensor, alpha included."""
    sd = {}
    for (comp, p), (down, up, alpha) in spec.layers.items():
        name = ("lora_unet_" if comp == "unet" else "lora_te_") + p.replace(".", "_")
        sd[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        sd[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        sd[f"{name}.alpha"] = torch.tensor(alpha).to(dtype)
    save_file(sd, str(path), metadata=metadata)
    canonical_metadata_order(path)
    # the spec from now on holds exactly what the file holds
    for key, (down, up, alpha) in list(spec.layers.items()):
        spec.layers[key] = (down.to(dtype).float(), up.to(dtype).float(), float(torch.tensor(alpha).to(dtype)))


def write_kohya_ldm_names(spec: LoraSpec, path: Path, dtype, metadata: dict, unet_cfg: dict):
    """The same kohya LoRA with the UNet modules named as in the original LDM checkpoint
    (lora_unet_input_blocks_1_0_in_layers_2, ..., as LoRAs trained on single-file checkpoints
    by kohya's older scripts and other trainers name them), via this script's own diffusers->LDM
    module map (unet_to_ldm's); text-encoder names unchanged."""
    mm = _unet_module_map(unet_cfg)
    sd = {}
    for (comp, p), (down, up, alpha) in spec.layers.items():
        if comp == "unet":
            ldm, rest, prefix = _rename(p + ".weight", mm)
            rest = rest[: -len(".weight")] if rest.endswith(".weight") else ""
            if ".resnets." in prefix and rest:
                head, _, tail = rest.partition(".")
                rest = _UNET_RESNET[head] + (f".{tail}" if tail else "")
            module = f"{ldm}.{rest}" if rest else ldm
            name = "lora_unet_" + module.replace(".", "_")
        else:
            name = "lora_te_" + p.replace(".", "_")
        assert f"{name}.lora_down.weight" not in sd, name
        sd[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        sd[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        sd[f"{name}.alpha"] = torch.tensor(alpha).to(dtype)
    save_file(sd, str(path), metadata=metadata)
    canonical_metadata_order(path)


def make_old_diffusers_spec(unet, te, seed: int) -> LoraSpec:
    """diffusers ~0.19-0.24 (LoRACompatibleLinear/Conv, PatchedLoraProjection) save_lora_weights:
    attention projections, ff.net.0.proj and proj_in; text-encoder q/k/v/out_proj. No alphas
    (scale 1)."""
    g = torch.Generator().manual_seed(seed)
    spec = LoraSpec()
    for path, mod in _linears_and_convs(unet).items():
        if path.endswith((".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".proj_in")):
            down, up = _lora_pair(g, mod, 4, conv_kernel=True)
            spec.add("unet", path, down, up, None)
    for path, mod in _linears_and_convs(te).items():
        if path.endswith(("q_proj", "k_proj", "v_proj", "out_proj")):
            down, up = _lora_pair(g, mod, 2, conv_kernel=True)
            spec.add("text_encoder", "text_model." + path, down, up, None)
    return spec


def write_old_diffusers(spec: LoraSpec, path: Path):
    """unet.<module>.lora.down.weight / .lora.up.weight;
    text_encoder.<module>.lora_linear_layer.down.weight / .up.weight."""
    sd = {}
    for (comp, p), (down, up, _) in spec.layers.items():
        mid = "lora" if comp == "unet" else "lora_linear_layer"
        sd[f"{comp}.{p}.{mid}.down.weight"] = down.contiguous()
        sd[f"{comp}.{p}.{mid}.up.weight"] = up.contiguous()
    save_file(sd, str(path), metadata={"format": "pt"})


def make_attn_procs_spec(unet, seed: int) -> LoraSpec:
    """diffusers <= 0.18 LoRAAttnProcessor (to_q_lora / to_k_lora / to_v_lora / to_out_lora, each a
    LoRALinearLayer with down/up Linear) on every attention of the UNet, rank 4, no alpha."""
    g = torch.Generator().manual_seed(seed)
    spec = LoraSpec()
    for path, mod in _linears_and_convs(unet).items():
        if path.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
            down, up = _lora_pair(g, mod, 4, conv_kernel=True)
            spec.add("unet", path, down, up, None)
    return spec


def write_attn_procs(spec: LoraSpec, path: Path):
    """unet.save_attn_procs(): torch.save of AttnProcsLayers.state_dict() (an OrderedDict) with
    keys <attention module>.processor.to_{q,k,v,out}_lora.{down,up}.weight, as
    pytorch_lora_weights.bin."""
    sd = collections.OrderedDict()
    names = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
    for (comp, p), (down, up, _) in spec.layers.items():
        attn, _, proj = p.rpartition(".attn")
        site = f"{attn}.attn{proj.split('.')[0]}"
        proj = proj.split(".", 1)[1]
        sd[f"{site}.processor.{names[proj]}.down.weight"] = down.contiguous()
        sd[f"{site}.processor.{names[proj]}.up.weight"] = up.contiguous()
    torch.save(sd, path)


def write_peft_alpha(unet, te, seed: int, path: Path) -> LoraSpec:
    """PEFT keys (diffusers >= 0.25 save_lora_weights): unet.<module>.lora_A.weight / lora_B.weight,
    text_encoder.text_model.<module>.lora_A/B.weight; lora_alpha != r, with a rank_pattern and an
    alpha_pattern, stored by diffusers' own save_lora_weights as JSON under the safetensors
    metadata key "lora_adapter_metadata" ({"unet.r": .., "unet.lora_alpha": .., ...})."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    g = torch.Generator().manual_seed(seed)
    spec = LoraSpec()
    special = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
    # short target names, as diffusers' training scripts pass them
    unet_names = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"]
    te_names = ["q_proj", "k_proj", "v_proj", "out_proj"]
    targets = [p for p in _linears_and_convs(unet) if p.endswith(tuple("." + n for n in unet_names))]
    unet_cfg = LoraConfig(r=4, lora_alpha=8, target_modules=unet_names, rank_pattern={special: 2},
                          alpha_pattern={special: 6}, init_lora_weights=False)
    te_targets = [p for p in _linears_and_convs(te) if p.endswith(tuple("." + n for n in te_names))]
    te_cfg = LoraConfig(r=2, lora_alpha=6, target_modules=te_names, init_lora_weights=False)
    unet_sd, te_sd = {}, {}
    mods = _linears_and_convs(unet)
    for p in targets:
        r = 2 if p == special else 4
        down, up = _lora_pair(g, mods[p], r, conv_kernel=True)
        unet_sd[f"{p}.lora_A.weight"], unet_sd[f"{p}.lora_B.weight"] = down.contiguous(), up.contiguous()
        spec.add("unet", p, down, up, 6.0 if p == special else 8.0)
    mods = _linears_and_convs(te)
    for p in te_targets:
        down, up = _lora_pair(g, mods[p], 2, conv_kernel=True)
        te_sd[f"text_model.{p}.lora_A.weight"], te_sd[f"text_model.{p}.lora_B.weight"] = down, up
        spec.add("text_encoder", "text_model." + p, down, up, 6.0)

    def meta(cfg):
        d = cfg.to_dict()
        # sets become lists in diffusers' writer, in set order: sort them for a deterministic file
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}

    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd,
            unet_lora_adapter_metadata=meta(unet_cfg), text_encoder_lora_adapter_metadata=meta(te_cfg),
            weight_name=path.name, safe_serialization=True)
        shutil.copy(Path(tmp) / path.name, path)
    canonical_metadata_order(path)
    return spec


def _diffusers_load(path: Path, base: Path, loader: str):
    """A fresh float32 pipeline with the LoRA file loaded by diffusers and fused at LORA_SCALE.
    loader "pipeline": pipe.load_lora_weights (what users call); "unet_prefix_none": the only
    diffusers 0.42 route for the attention-processor layout (no `unet.` prefix), which
    load_lora_weights silently skips: lora_state_dict + unet.load_lora_adapter(prefix=None)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(base), torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    try:
        if loader == "pipeline":
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="x")
            pipe.fuse_lora(lora_scale=LORA_SCALE, components=["unet", "text_encoder"])
        else:
            sd, alphas = StableDiffusionPipeline.lora_state_dict(str(path.parent), weight_name=path.name)
            pipe.unet.load_lora_adapter(sd, prefix=None, network_alphas=alphas, adapter_name="x")
            pipe.unet.fuse_lora(lora_scale=LORA_SCALE)
        return pipe, None
    except Exception as e:  # noqa: BLE001  (recorded in formats.json)
        return pipe, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"


def _check_against_hand_merge(case, pipe, error, spec, hand):
    report = {}
    for comp, got in [("unet", pipe.unet), ("text_encoder", pipe.text_encoder)]:
        n = sum(1 for c, _ in spec.layers if c == comp)
        if n == 0:
            continue
        if error:
            report[comp] = {"layers": n, "applied_by_diffusers": 0, "error": error}
            continue
        n, bad_lora, bad_other = compare_layers(case, comp, got, hand[comp], spec)
        kinds = sorted({".".join(k.split(".")[-3:-1]) if k.split(".")[-2].isdigit() else k.split(".")[-2]
                        for k in bad_lora})
        report[comp] = {"layers": n, "applied_by_diffusers": n - len(bad_lora),
                        "not_applied_or_wrong_kinds": kinds,
                        "not_applied_or_wrong": bad_lora[:6] + (["..."] if len(bad_lora) > 6 else []),
                        "other_weights_changed": bad_other[:6]}
    ok = {c: not r.get("error") and not r["not_applied_or_wrong"] and not r["other_weights_changed"]
          for c, r in report.items()}
    return report, ok


def _fold_alphas(spec: LoraSpec, path: Path, tmp: Path, dtype) -> Path:
    """The same LoRA as a kohya file with one alpha for every layer, each layer's alpha/rank moved
    into its up weight: up' = up * alpha / 1.0. Mathematically the same merge; it sidesteps
    diffusers' per-layer-alpha handling, so it tests its naming and conv handling alone."""
    folded = LoraSpec()
    for key, (down, up, alpha) in spec.layers.items():
        folded.layers[key] = (down, up * float(alpha), 1.0)
    out = tmp / path.name
    write_kohya(folded, out, torch.float32, {})
    return out


def lora_goldens_for(case: str, path: Path, spec: LoraSpec, base: Path, golden_unet: str, golden_clip: str,
                     out: dict, kind: str, layout_notes: str, loader: str = "pipeline",
                     fold_check: bool = False):
    """diffusers loads the file and fuses it at scale 0.7 on a fresh pipeline; every weight is
    compared with the hand merge; the golden comes from diffusers when it applied every layer
    exactly, else from the hand merge (formats.json: golden_source)."""
    from diffusers import StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_pretrained(str(base), torch_dtype=torch.float32, safety_checker=None,
                                                  requires_safety_checker=False)
    d = load_file(str(GOLDEN / golden_unet))
    ids = load_file(str(GOLDEN / golden_clip))["input_ids"]
    hand = {"unet": spec.merged("unet", ref.unet, LORA_SCALE),
            "text_encoder": spec.merged("text_encoder", ref.text_encoder, LORA_SCALE)}
    has_te = any(c == "text_encoder" for c, _ in spec.layers)
    with torch.no_grad():
        hand_eps = hand["unet"](d["sample"], 981, encoder_hidden_states=d["encoder_hidden_states"]).sample
        hand_hidden = hand["text_encoder"](ids).last_hidden_state

    pipe, error = _diffusers_load(path, base, loader)
    report, ok = _check_against_hand_merge(case, pipe, error, spec, hand)
    with torch.no_grad():
        eps = pipe.unet(d["sample"], 981, encoder_hidden_states=d["encoder_hidden_states"]).sample
        hidden = pipe.text_encoder(ids).last_hidden_state
    if ok["unet"]:
        assert torch.allclose(eps, hand_eps, rtol=1e-4, atol=1e-5), (case, (eps - hand_eps).abs().max())
    if has_te and ok["text_encoder"]:
        assert torch.allclose(hidden, hand_hidden, rtol=1e-4, atol=1e-5), (case, (hidden - hand_hidden).abs().max())
    src = {c: ("diffusers" if ok[c] else "hand_merge") for c in report}
    out[f"{case}.eps_t981"] = (eps if ok["unet"] else hand_eps).contiguous()
    keys = [f"{case}.eps_t981"]
    if has_te:
        out[f"{case}.hidden"] = (hidden if ok["text_encoder"] else hand_hidden).contiguous()
        keys.append(f"{case}.hidden")
    entry_checks = {"diffusers_check": report}
    log(f"LoRA {case}: diffusers applied " + ", ".join(
        f"{c} {r['applied_by_diffusers']}/{r['layers']}" for c, r in report.items()) + f"; golden from {src}")

    if fold_check and not all(ok.values()):
        # cross-check the hand merge against diffusers on the alpha-folded twin of the file
        with tempfile.TemporaryDirectory() as tmp:
            twin = _fold_alphas(spec, path, Path(tmp), torch.float32)
            pipe2, error2 = _diffusers_load(twin, base, loader)
        report2, ok2 = _check_against_hand_merge(case + "_folded", pipe2, error2, spec, hand)
        assert all(ok2.values()), (case, report2)
        with torch.no_grad():
            eps2 = pipe2.unet(d["sample"], 981, encoder_hidden_states=d["encoder_hidden_states"]).sample
            hidden2 = pipe2.text_encoder(ids).last_hidden_state
        assert torch.allclose(eps2, hand_eps, rtol=1e-4, atol=1e-5), (case, (eps2 - hand_eps).abs().max())
        if has_te:
            assert torch.allclose(hidden2, hand_hidden, rtol=1e-4, atol=1e-5)
        entry_checks["diffusers_check_alphas_folded_into_up"] = {
            c: f"{r['applied_by_diffusers']}/{r['layers']} layers equal the hand merge" for c, r in report2.items()}
        log(f"LoRA {case}: alpha-folded twin: diffusers applies every layer exactly as the hand merge")

    ranks = sorted({int(dn.shape[0]) for dn, _, _ in spec.layers.values()})
    alphas_ = sorted({a for _, _, a in spec.layers.values() if a is not None})
    kinds_present = sorted({("conv3x3" if dn.ndim == 4 and dn.shape[-1] == 3 else
                             "conv1x1" if dn.ndim == 4 else "linear") for dn, _, _ in spec.layers.values()})
    CASES.append({
        "case": case, "file": rel(path), "kind": kind, "base": base.name, "scale": LORA_SCALE,
        "golden_file": "golden/formats_lora.safetensors", "golden_keys": keys,
        "golden_inputs": {"unet": f"golden/{golden_unet}:sample,encoder_hidden_states (t=981)",
                          **({"text_encoder": f"golden/{golden_clip}:input_ids"} if has_te else {})},
        "golden_source": src,
        "diffusers_loader": ("pipe.load_lora_weights(dir, weight_name=file); pipe.fuse_lora(lora_scale=0.7)"
                             if loader == "pipeline" else
                             "lora_state_dict(dir, weight_name=file); unet.load_lora_adapter(sd, prefix=None, "
                             "network_alphas=alphas); unet.fuse_lora(lora_scale=0.7)  (pipe.load_lora_weights "
                             "silently loads nothing from this layout)"),
        **entry_checks,
        "n_layers": {c: sum(1 for cc, _ in spec.layers if cc == c) for c in ["unet", "text_encoder"]},
        "layer_kinds": kinds_present, "ranks": ranks, "alphas": alphas_ if alphas_ else "none (alpha = rank)",
        "merge": "W += scale * (alpha / rank) * up @ down; conv: up [out,r,1,1] x down [r,in,kh,kw] -> "
                 "einsum('or,rikl->oikl')",
        "notes": layout_notes,
    })
    return src


def make_lora_files():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet1 = UNet2DConditionModel.from_pretrained(str(SD1 / "unet"), torch_dtype=torch.float32).eval()
    te1 = CLIPTextModel.from_pretrained(str(SD1 / "text_encoder"), torch_dtype=torch.float32).eval()
    unet2 = UNet2DConditionModel.from_pretrained(str(SD2 / "unet"), torch_dtype=torch.float32).eval()
    te2 = CLIPTextModel.from_pretrained(str(SD2 / "text_encoder"), torch_dtype=torch.float32).eval()
    out = {}

    spec = make_kohya_spec(unet1, te1, 7000, sd2=False)
    p = FORMATS / "lora_kohya_locon.safetensors"
    write_kohya(spec, p, torch.float16, kohya_metadata(False, spec, p.stem))
    lora_goldens_for("kohya_locon", p, spec, SD1, "unet_sd1-tiny.safetensors", "clip_sd1-tiny.safetensors", out,
                     "lora_kohya",
                     "kohya-ss networks.lora with conv_dim (LoCon), saved fp16 (alpha too); SD 1.x proj_in/out "
                     "are 1x1 convs; per-layer ranks/alphas; kohya metadata (ss_*, modelspec.*)", fold_check=True)
    # The same layers under their LDM module names: the goldens of kohya_locon apply.
    p_ldm = FORMATS / "lora_kohya_ldm_names.safetensors"
    write_kohya_ldm_names(spec, p_ldm, torch.float16, kohya_metadata(False, spec, p_ldm.stem),
                          json.loads((SD1 / "unet" / "config.json").read_text()))
    entry = dict(CASES[-1])
    entry.update(case="kohya_ldm_names", file=rel(p_ldm),
                 notes="lora_kohya_locon's layers with the UNet modules named as in the LDM checkpoint "
                       "(lora_unet_input_blocks_1_0_in_layers_2 ...), by this script's diffusers->LDM module "
                       "map; same weights, so kohya_locon's goldens apply")
    CASES.append(entry)

    spec = make_kohya_spec(unet2, te2, 7100, sd2=True)
    p = FORMATS / "lora_kohya_sd2.safetensors"
    write_kohya(spec, p, torch.bfloat16, kohya_metadata(True, spec, p.stem))
    lora_goldens_for("kohya_sd2", p, spec, SD2, "unet_sd2-tiny.safetensors", "clip_sd2-tiny.safetensors", out,
                     "lora_kohya",
                     "kohya-ss networks.lora with conv_dim on sd2-tiny, saved bf16 (alpha too); proj_in/out are "
                     "linears (down [r,in], up [out,r]); text encoder keys still lora_te_text_model_encoder_*",
                     fold_check=True)

    spec = make_old_diffusers_spec(unet1, te1, 7200)
    p = FORMATS / "lora_diffusers_old.safetensors"
    write_old_diffusers(spec, p)
    lora_goldens_for("diffusers_old", p, spec, SD1, "unet_sd1-tiny.safetensors", "clip_sd1-tiny.safetensors", out,
                     "lora_diffusers_old",
                     "diffusers 0.19-0.24 layout: unet.<module>.lora.{down,up}.weight, "
                     "text_encoder.<module>.lora_linear_layer.{down,up}.weight; no alpha: scale 1")

    spec = make_attn_procs_spec(unet1, 7300)
    p = FORMATS / "lora_attn_procs.bin"
    write_attn_procs(spec, p)
    lora_goldens_for("attn_procs", p, spec, SD1, "unet_sd1-tiny.safetensors", "clip_sd1-tiny.safetensors", out,
                     "lora_attn_procs",
                     "diffusers <= 0.18 unet.save_attn_procs pytorch_lora_weights.bin: torch.save(OrderedDict), keys "
                     "<attn>.processor.to_{q,k,v,out}_lora.{down,up}.weight (no unet. prefix); UNet only; no alpha",
                     loader="unet_prefix_none")
    CASES[-1]["pickle_globals"] = pickle_globals(p)

    p = FORMATS / "lora_peft_alpha.safetensors"
    spec = write_peft_alpha(unet1, te1, 7400, p)
    lora_goldens_for("peft_alpha", p, spec, SD1, "unet_sd1-tiny.safetensors", "clip_sd1-tiny.safetensors", out,
                     "lora_peft",
                     "PEFT keys written by diffusers' StableDiffusionPipeline.save_lora_weights; lora_alpha/r and "
                     "rank_pattern/alpha_pattern only in the JSON under metadata['lora_adapter_metadata'] "
                     "(keys 'unet.r', 'unet.lora_alpha', 'unet.rank_pattern', 'unet.alpha_pattern', "
                     "'text_encoder.r', ...)")
    with safe_open(str(p), "pt") as f:
        CASES[-1]["metadata_lora_adapter_metadata"] = json.loads(f.metadata()["lora_adapter_metadata"])
    save_file(out, str(GOLDEN / "formats_lora.safetensors"))


# =============================================================================================
# 5. A malicious pickle
# =============================================================================================


class _RunsACommand:
    """Unpickling this calls os.system("echo never"). Never loaded by this script."""

    def __reduce__(self):
        return (os.system, ("echo never",))


def make_bad_pickle():
    (FORMATS / "bad").mkdir()
    p = FORMATS / "bad" / "code_global.pt"
    torch.save({"weight": torch.zeros(2, 2), "payload": _RunsACommand()}, p)  # torch.save pickles with `pickle`
    globs = pickle_globals(p)  # read with pickletools (opcodes only), never unpickled
    assert any(g.endswith(".system") for g in globs), globs
    CASES.append({"case": "code_global.pt", "file": rel(p), "kind": "malicious_pickle", "pickle_globals": globs,
                  "notes": "torch.save({'weight': zeros(2,2), 'payload': obj}) where obj.__reduce__ returns "
                           "(os.system, ('echo never',)); the pickle references the global "
                           f"{[g for g in globs if g.endswith('.system')][0]} and a loader must refuse it "
                           "(torch.load(weights_only=True) does)"})


# =============================================================================================


def main():
    mf.check_environment()
    quiet_libraries()
    for need in [SD1, SD2, GOLDEN / "unet_sd1-tiny.safetensors"]:
        if not need.exists():
            sys.exit(f"{need} missing: run tools/reference/make_fixtures.py first")
    before = {p: sha256(p) for d in [SD1, SD2] for p in sorted(d.rglob("*")) if p.is_file()}
    if FORMATS.exists():
        shutil.rmtree(FORMATS)
    FORMATS.mkdir(parents=True)

    make_bin_folder()
    make_ldm_files()
    make_ti_files()
    make_lora_files()
    make_bad_pickle()

    doc = {
        "generator": "tools/reference/make_formats.py",
        "versions": {m.__name__: m.__version__ for m in map(__import__, ["torch", "diffusers", "transformers",
                                                                          "peft", "safetensors"])},
        "paths_relative_to": "tests/fixtures",
        "cases": CASES,
    }
    (GOLDEN / "formats.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    after = {p: sha256(p) for d in [SD1, SD2] for p in sorted(d.rglob("*")) if p.is_file()}
    assert before == after, "the source fixtures changed"
    total = sum(p.stat().st_size for p in FORMATS.rglob("*") if p.is_file())
    log(f"wrote {FORMATS} ({total / 1e6:.1f} MB) and golden/formats*")


if __name__ == "__main__":
    main()
