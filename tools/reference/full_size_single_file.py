#!/usr/bin/env python3
"""Random-weight Stable Diffusion 1.5 and 2.1 at the real layer plan, as diffusers folders and as
original-LDM single files (written with make_formats.py's converter), with goldens. NOT run by CI:
it needs ~10-15 GB of RAM and ~5-9 GB of disk per model (fp16 files; twice that with --dtype fp32).

    python3 tools/reference/full_size_single_file.py OUT_DIR [--models sd15 sd21] [--dtype fp16|fp32]
                                                             [--no-verify]

No downloads: every config is written here (diffusers' default UNet/VAE configs for these models;
CLIP ViT-L/14 text tower for 1.5, OpenCLIP ViT-H/14 text tower for 2.1, 23 + 1 layers). The
tokenizer folders are copied from tests/fixtures (the real CLIP vocabulary).

For each model M in OUT_DIR:
    M/                      diffusers folder (model_index.json, unet, vae, text_encoder, tokenizer, scheduler)
    M.safetensors           the same weights in the LDM layout (make_formats.unet_to_ldm, vae_to_ldm,
                            clip_to_ldm / openclip_text_to_ldm, DDPM buffers)
    golden_M.safetensors    sample [1,4,8,8], encoder_hidden_states [1,77,d], eps_t981, eps_t1;
                            latents [1,4,8,8], decoded [1,3,64,64]; input_ids [1,77], last_hidden_state
    M.json                  sizes, timings, hashes
Goldens are computed in fp32 from exactly the stored weights. --verify (default) also loads the
single file with diffusers' from_single_file(config=M/) and checks every tensor equals the folder's.
"""

import argparse
import gc
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
import make_formats as fm  # noqa: E402


MODELS = {
    "sd15": dict(
        unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        vae_sample_size=512,
        te=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                hidden_act="quick_gelu", projection_dim=768, pad_token_id=49407),
        tokenizer=mf.FIX / "sd1-tiny" / "tokenizer",
        prediction_type="epsilon",
        sd2=False,
    ),
    "sd21": dict(
        unet=dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                  use_linear_projection=True, upcast_attention=True),
        vae_sample_size=768,
        te=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                hidden_act="gelu", projection_dim=512, pad_token_id=0),
        tokenizer=mf.FIX / "sd2-tiny" / "tokenizer",
        prediction_type="v_prediction",
        sd2=True,
    ),
}


def log(*a):
    print("[full_size]", *a, flush=True)


def rss_gb():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return float("nan")


def build(name: str, spec: dict, out: Path, dtype, seed: int) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t0 = time.time()

    # UNet: diffusers' UNet2DConditionModel defaults are the SD 1.x/2.x plan (320/640/1280/1280,
    # 2 layers per block, cross-attention in the first three down / last three up blocks).
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**spec["unet"]).eval()
    mf.perturb_(unet, seed + 1)
    unet.to(dtype).save_pretrained(str(folder / "unet"))
    del unet
    gc.collect()
    log(name, "unet written", f"{time.time() - t0:.0f}s")

    # VAE: the SD VAE (128/256/512/512, 2 layers, 4 latent channels).
    torch.manual_seed(seed + 10)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=spec["vae_sample_size"],
        scaling_factor=0.18215).eval()
    mf.perturb_(vae, seed + 11)
    vae.to(dtype).save_pretrained(str(folder / "vae"))
    del vae
    gc.collect()

    torch.manual_seed(seed + 20)
    cfg = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5,
                         bos_token_id=49406, eos_token_id=49407, **spec["te"])
    te = CLIPTextModel(cfg).eval()
    mf.perturb_(te, seed + 21)
    te.to(dtype).save_pretrained(str(folder / "text_encoder"))
    del te
    gc.collect()

    shutil.copytree(spec["tokenizer"], folder / "tokenizer")
    DDIMScheduler(**mf.SCHED_SD, prediction_type=spec["prediction_type"]).save_pretrained(str(folder / "scheduler"))
    idx = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.36.0",
           "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
           "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
           "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
           "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(idx, indent=2) + "\n")
    return {"build_s": round(time.time() - t0, 1)}


def write_single_file(name: str, spec: dict, out: Path, seed: int) -> dict:
    t0 = time.time()
    ckpt = fm.build_ldm_checkpoint(out / name, sd2=spec["sd2"], seed=seed)
    path = out / f"{name}.safetensors"
    save_file(ckpt, str(path))
    n = len(ckpt)
    del ckpt
    gc.collect()
    return {"single_file_s": round(time.time() - t0, 1), "single_file_tensors": n}


def goldens(name: str, spec: dict, out: Path, seed: int) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    t0 = time.time()
    folder = out / name
    g = torch.Generator().manual_seed(seed)
    d = spec["unet"]["cross_attention_dim"]
    res = {"sample": torch.randn(1, 4, 8, 8, generator=g), "encoder_hidden_states": torch.randn(1, 77, d, generator=g),
           "latents": torch.randn(1, 4, 8, 8, generator=g)}
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        for t in [981, 1]:
            res[f"eps_t{t}"] = unet(res["sample"], t, encoder_hidden_states=res["encoder_hidden_states"]).sample
    del unet
    gc.collect()
    vae = AutoencoderKL.from_pretrained(str(folder / "vae"), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        res["decoded"] = vae.decode(res["latents"]).sample
    del vae
    gc.collect()
    tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    te = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), torch_dtype=torch.float32).eval()
    ids = tok("a photo of a sks dog surfing a wave", padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        res["last_hidden_state"] = te(ids).last_hidden_state
    res["input_ids"] = ids
    del te
    for k, v in res.items():
        assert torch.isfinite(v.float()).all(), (name, k)
    save_file({k: v.contiguous() for k, v in res.items()}, str(out / f"golden_{name}.safetensors"))
    return {"goldens_s": round(time.time() - t0, 1)}


def verify(name: str, out: Path) -> dict:
    """diffusers' from_single_file on our LDM file == the diffusers folder, tensor for tensor."""
    from diffusers import StableDiffusionPipeline

    t0 = time.time()
    pipe = StableDiffusionPipeline.from_single_file(str(out / f"{name}.safetensors"), config=str(out / name),
                                                    local_files_only=True, torch_dtype=torch.float32)
    for sub, model in [("unet", pipe.unet), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder)]:
        ref = fm.folder_state_dict(out / name, sub)
        got = model.state_dict()
        got.pop("embeddings.position_ids", None)
        assert got.keys() == ref.keys(), (sub, sorted(set(got) ^ set(ref))[:5])
        for k, v in ref.items():
            assert torch.equal(got[k], v.float()), (sub, k)
        del ref
    del pipe
    gc.collect()
    return {"verify_s": round(time.time() - t0, 1), "verified": "from_single_file == folder, every tensor"}


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--models", nargs="+", default=["sd15", "sd21"], choices=sorted(MODELS))
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args()
    mf.check_environment()
    fm.quiet_libraries()
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    args.out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(args.models):
        spec = MODELS[name]
        t0 = time.time()
        info = {"model": name, "dtype": args.dtype}
        info.update(build(name, spec, args.out, dtype, 9000 + 100 * i))
        info.update(write_single_file(name, spec, args.out, 9050 + 100 * i))
        info.update(goldens(name, spec, args.out, 9070 + 100 * i))
        if not args.no_verify:
            info.update(verify(name, args.out))
        info["total_s"] = round(time.time() - t0, 1)
        info["peak_rss_gb"] = round(rss_gb(), 2)
        info["sizes_bytes"] = {
            "folder": dir_size(args.out / name),
            "single_file": (args.out / f"{name}.safetensors").stat().st_size,
            "golden": (args.out / f"golden_{name}.safetensors").stat().st_size,
        }
        info["single_file_sha256"] = hashlib.sha256((args.out / f"{name}.safetensors").read_bytes()).hexdigest()
        (args.out / f"{name}.json").write_text(json.dumps(info, indent=1) + "\n")
        log(json.dumps(info))


if __name__ == "__main__":
    main()
