#!/usr/bin/env python3
"""Random-weight evaluation models at their real sizes, with goldens (not run by CI).

Builds CLIP ViT-B/32 and ViT-L/14 (text + vision towers and projections, the configs of
openai/clip-vit-base-patch32 and openai/clip-vit-large-patch14) and DINO ViT-S/16 (the config
of facebook/dino-vits16, no pooler) from their published config values -- nothing is
downloaded -- and saves each as a Hugging Face folder (config.json, model.safetensors,
preprocessor_config.json in the hub's style; for CLIP the real vocabulary and tokenizer files)
under OUT, with goldens for a few synthetic images and prompts:

    python3 tools/reference/full_size_eval.py /tmp/fullsize_eval [--models clip-vit-base-patch32,...]

OUT/<model>/...                 the model folders
OUT/inputs/*.png                the images (generate-sized 512x512, references 640x480, 300x400)
OUT/golden_<model>.safetensors  pixel_values, embeddings (and input_ids / text features)
OUT/golden.json                 prompts, geometry, scores, timings, sizes

About 2.4 GB of weights in all (fp32); ViT-L/14 alone 1.7 GB. Deterministic like
make_eval.py (same helpers, fixed seeds).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_eval import (  # noqa: E402
    build_clip, build_dino, class_prompt, clip_config, clip_preprocessor_config, cos, dino_config,
    dino_preprocessor_config, random_ellipse, resize_geometry, save_png, synth_rgb,
    write_clip_tokenizer_files, write_json,
)
from make_fixtures import check_environment  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

CLIP_MODELS = {
    # openai/clip-vit-base-patch32
    "clip-vit-base-patch32": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=8),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, image_size=224, patch_size=32),
        projection_dim=512, seed=7000),
    # openai/clip-vit-large-patch14
    "clip-vit-large-patch14": dict(
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, image_size=224, patch_size=14),
        projection_dim=768, seed=7100),
}
# facebook/dino-vits16
DINO_MODELS = {
    "dino-vits16": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12,
                        num_attention_heads=6, image_size=224, patch_size=16, seed=7200),
}
PHRASE, CLASS = "sks dog", "dog"
PROMPTS = ["a sks dog in the jungle", "a photo of sks dog wearing sunglasses on the beach"]


def make_inputs(out: Path):
    rng = np.random.default_rng(7300)
    d = out / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    files = {"images": [], "references": []}
    for k in range(2):
        f = d / f"p{k}_s0.png"
        save_png(synth_rgb(rng, 512, 512, random_ellipse(rng, 512, 512)), f, "RGB")
        files["images"].append(f)
    for k, (w, h) in enumerate([(640, 480), (300, 400)]):
        f = d / f"ref{k}.png"
        save_png(synth_rgb(rng, w, h, random_ellipse(rng, w, h)), f, "RGB")
        files["references"].append(f)
    return files


def folder_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--models", default=",".join([*CLIP_MODELS, *DINO_MODELS]))
    a = ap.parse_args()
    check_environment()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    wanted = a.models.split(",")
    files = make_inputs(out)
    doc = {"made_by": "tools/reference/full_size_eval.py", "phrase": PHRASE, "class": CLASS,
           "prompts": PROMPTS, "clip_prompts": [class_prompt(p, PHRASE, CLASS) for p in PROMPTS],
           "inputs": {g: [str(f.relative_to(out)) for f in fs] for g, fs in files.items()},
           "models": {}}
    # image i was generated from prompt i
    for name in [*CLIP_MODELS, *DINO_MODELS]:
        if name not in wanted:
            continue
        t0 = time.time()
        mdir = out / name
        if name in CLIP_MODELS:
            spec = CLIP_MODELS[name]
            model = build_clip(clip_config(spec["text"], spec["vision"], spec["projection_dim"]),
                               spec["seed"], mdir)
            size = spec["vision"]["image_size"]
            write_json(mdir / "preprocessor_config.json", clip_preprocessor_config(size))
            write_clip_tokenizer_files(mdir)
        else:
            spec = dict(DINO_MODELS[name])
            seed = spec.pop("seed")
            model = build_dino(dino_config(**spec), seed, mdir)
            size = spec["image_size"]
            write_json(mdir / "preprocessor_config.json", dino_preprocessor_config(size))
        t_build = time.time() - t0
        t1 = time.time()
        tensors, geometry, res = {}, {}, {}
        if name in CLIP_MODELS:
            from transformers import CLIPTokenizer
            from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

            tok = CLIPTokenizer.from_pretrained(str(mdir))
            proc = CLIPImageProcessorPil.from_pretrained(str(mdir))
            key = "clip"
        else:
            from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

            proc = ViTImageProcessorPil.from_pretrained(str(mdir))
            key = "dino"
        for g, fs in files.items():
            pvs = []
            for k, f in enumerate(fs):
                with Image.open(f) as im:
                    rgb = im.convert("RGB")  # the eval reads every file as 8-bit RGB
                pvs.append(proc(images=rgb, return_tensors="pt")["pixel_values"][0])
                w, h = rgb.size
                if key == "clip":
                    (nh, nw), (top, left) = resize_geometry(w, h, proc.size["shortest_edge"],
                                                            proc.crop_size["height"])
                    geometry[f"{g}.{k}"] = {"size_wh": [w, h], "clip_resized_hw": [nh, nw],
                                            "clip_crop_top_left": [top, left]}
                else:
                    geometry[f"{g}.{k}"] = {"size_wh": [w, h],
                                            "dino_resized_hw": [proc.size["height"],
                                                                proc.size["width"]]}
            pv = torch.stack(pvs)
            tensors[f"{g}.{key}_pixel_values"] = pv
            with torch.no_grad():
                if key == "clip":
                    res[g] = model.get_image_features(pixel_values=pv).pooler_output
                    tensors[f"{g}.clip_image_embeds"] = res[g]
                else:
                    res[g] = model(pixel_values=pv).last_hidden_state[:, 0]
                    tensors[f"{g}.dino_cls"] = res[g]
        scores = {}
        if name in CLIP_MODELS:
            enc = tok(doc["clip_prompts"], padding="max_length", max_length=77, truncation=True,
                      return_tensors="pt")
            with torch.no_grad():
                txt = model.get_text_features(input_ids=enc.input_ids).pooler_output
            tensors["prompts.input_ids"] = enc.input_ids
            tensors["prompts.clip_text_embeds"] = txt
            scores["clip_t"] = [cos(res["images"][i].numpy(), txt[i].numpy())
                                for i in range(len(files["images"]))]
            scores["clip_i"] = [float(np.mean([cos(res["images"][i].numpy(), r.numpy())
                                               for r in res["references"]]))
                                for i in range(len(files["images"]))]
        else:
            scores["dino"] = [float(np.mean([cos(res["images"][i].numpy(), r.numpy())
                                             for r in res["references"]]))
                              for i in range(len(files["images"]))]
            scores["diversity"] = 1.0 - cos(res["images"][0].numpy(), res["images"][1].numpy())
        save_file({k: v.contiguous() for k, v in sorted(tensors.items())},
                  str(out / f"golden_{name}.safetensors"))
        t_golden = time.time() - t1
        n_params = sum(p.numel() for p in model.parameters())
        doc["models"][name] = {
            "parameters": n_params,
            "folder_bytes": folder_size(mdir),
            "model_safetensors_bytes": (mdir / "model.safetensors").stat().st_size,
            "seconds_build_save_reload": round(t_build, 1),
            "seconds_goldens": round(t_golden, 1),
            "geometry": geometry,
            "scores": scores,
        }
        print(f"{name}: {n_params / 1e6:.1f}M parameters, "
              f"{doc['models'][name]['model_safetensors_bytes'] / 2**20:.0f} MiB, "
              f"build+save+reload {t_build:.0f}s, goldens {t_golden:.0f}s", flush=True)
        del model
    (out / "golden.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print("written to", out)


if __name__ == "__main__":
    main()
