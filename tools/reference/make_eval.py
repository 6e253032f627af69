#!/usr/bin/env python3
"""Write the fixtures of `layret eval` (DreamBooth/ViCo metrics) under tests/fixtures/eval/ and
their goldens tests/fixtures/golden/eval.safetensors + eval.json.

- eval/clip-tiny/: a tiny random-weight transformers CLIPModel (both towers and projections,
  the structure of openai/clip-vit-base-patch32 scaled down) with the real 49408-token CLIP BPE
  vocabulary, the hub's tokenizer files and a preprocessor_config.json in the hub's style;
- eval/dino-tiny/: a tiny random ViTModel without pooler (as facebook/dino-vits16) with its
  preprocessor_config.json in the hub's style;
- eval/run/: a synthetic `layret generate` output folder (manifest.json, p<P>_s<K>.png and
  p<P>_s<K>_mask_*.png), eval/references/: two reference photos, eval/extra/: images that only
  exercise preprocessing (RGBA, grayscale, upsampled, no-resize + odd crop, vertical pass
  first);
- golden/eval.*: pixel_values of both processors, CLIP image/text features, DINO CLS
  embeddings, token ids and every score.

Deterministic (fixed seeds, one thread, no transcendental functions in the synthetic images);
run from the repository root:

    python3 tools/reference/make_eval.py

The image processors are the PIL backends (CLIPImageProcessorPil, ViTImageProcessorPil), named
explicitly, so the goldens do not depend on whether torchvision is installed (with torchvision,
transformers 5's AutoImageProcessor picks the torchvision backend instead; see README.md).
"""

import json
import shutil
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import ROOT, check_environment, perturb_, write_clip_vocab  # noqa: E402

EVAL = ROOT / "tests" / "fixtures" / "eval"
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
REL = "tests/fixtures/eval"  # paths in the manifest are as given on generate's command line

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# ---------------------------------------------------------------------------------------------
# Hub-style files (what openai/clip-vit-base-patch32 and facebook/dino-vits16 carry)
# ---------------------------------------------------------------------------------------------


def clip_preprocessor_config(image_size: int) -> dict:
    """openai/clip-vit-base-patch32's preprocessor_config.json (legacy keys: int size and
    crop_size, feature_extractor_type), with 224 replaced by the model's image size."""
    return {
        "crop_size": image_size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "resample": 3,
        "size": image_size,
    }


def dino_preprocessor_config(image_size: int) -> dict:
    """facebook/dino-vits16's preprocessor_config.json (main since its commit "Fix image mean
    and std"; the first commit had 0.5/0.5): a plain resize to size x size (bilinear), ImageNet
    mean/std, no crop, no do_convert_rgb; legacy keys (int size, feature_extractor_type)."""
    return {
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "resample": 2,
        "size": image_size,
    }


def _added(content: str) -> dict:
    return {"content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": True}


def write_json(path: Path, obj, indent=2):
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def write_clip_tokenizer_files(folder: Path):
    """vocab.json + merges.txt (the real vocabulary) and the tokenizer_config.json /
    special_tokens_map.json that openai/clip-vit-base-patch32 carries (no tokenizer.json)."""
    write_clip_vocab(folder)
    tc = {
        "unk_token": dict(_added("<|endoftext|>"), __type="AddedToken"),
        "bos_token": dict(_added("<|startoftext|>"), __type="AddedToken"),
        "eos_token": dict(_added("<|endoftext|>"), __type="AddedToken"),
        "pad_token": "<|endoftext|>",
        "add_prefix_space": False,
        "errors": "replace",
        "do_lower_case": True,
        "name_or_path": "openai/clip-vit-base-patch32",
        "model_max_length": 77,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
    }
    write_json(folder / "tokenizer_config.json", tc, indent=4)
    stm = {
        "bos_token": _added("<|startoftext|>"),
        "eos_token": _added("<|endoftext|>"),
        "unk_token": _added("<|endoftext|>"),
        "pad_token": "<|endoftext|>",
    }
    write_json(folder / "special_tokens_map.json", stm, indent=4)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def clip_config(text: dict, vision: dict, projection_dim: int):
    from transformers import CLIPConfig

    # As the openai configs: bos 0 / eos 2 / pad 1 in text_config. eos_token_id == 2 selects
    # transformers' legacy pooling rule: the EOS position is argmax(input_ids) (CLIP's EOS
    # 49407 is the largest id in the vocabulary).
    text = dict(
        dict(vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
             layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
             attention_dropout=0.0, dropout=0.0, projection_dim=projection_dim),
        **text,
    )
    vision = dict(
        dict(num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5,
             attention_dropout=0.0, dropout=0.0, projection_dim=projection_dim),
        **vision,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim,
                      logit_scale_init_value=2.6592)


def dino_config(**kw):
    from transformers import ViTConfig

    base = dict(hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                layer_norm_eps=1e-12, num_channels=3, qkv_bias=True, initializer_range=0.02)
    base.update(kw)
    return ViTConfig(**base)


def build_clip(cfg, seed: int, out: Path):
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    perturb_(model, seed + 1)
    # Stored in fp16 (the 49408-token embedding would be 6 MB in fp32; fixtures stay small),
    # run in fp32 on exactly those values: the goldens are of the fp16-rounded weights.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    if out.exists():
        shutil.rmtree(out)
    model.half().save_pretrained(str(out), safe_serialization=True)
    model.float()
    loaded = CLIPModel.from_pretrained(str(out), dtype=torch.float32).eval()
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), f"{out.name}: {k} did not round-trip"
    return loaded


def build_dino(cfg, seed: int, out: Path):
    from transformers import ViTModel

    torch.manual_seed(seed)
    model = ViTModel(cfg, add_pooling_layer=False).eval()  # as facebook/dino-vits16: no pooler
    perturb_(model, seed + 1)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out), safe_serialization=True)
    loaded = ViTModel.from_pretrained(str(out), add_pooling_layer=False).eval()
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), f"{out.name}: {k} did not round-trip"
    return loaded


def load_processors(clip_dir: Path, dino_dir: Path):
    """The PIL backends, from the hub-style preprocessor_config.json files."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return (CLIPImageProcessorPil.from_pretrained(str(clip_dir)),
            ViTImageProcessorPil.from_pretrained(str(dino_dir)))


# ---------------------------------------------------------------------------------------------
# Synthetic images: numpy only, exact arithmetic (+, *, comparisons, rint), fixed seeds
# ---------------------------------------------------------------------------------------------


def synth_rgb(rng, w: int, h: int, ellipse=None, stripes=True):
    """A smooth polynomial background, optional stripes (high frequencies for the resize
    filters), an optional shaded ellipse (the "subject") and integer noise; uint8 [h, w, 3]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (xx + 0.5) / w
    v = (yy + 0.5) / h
    img = np.empty((h, w, 3), dtype=np.float64)
    for c in range(3):
        b0, a, b, d, e = rng.uniform(40.0, 200.0), *rng.uniform(-70.0, 70.0, 4)
        img[..., c] = b0 + a * u + b * v + d * u * v + e * (u - 0.5) * (u - 0.5)
    if stripes:
        period = int(rng.integers(3, 7))
        amp = rng.uniform(10.0, 30.0)
        img += (((xx + 2 * yy) // period) % 2)[..., None] * amp
    if ellipse is not None:
        cx, cy, rx, ry, color = ellipse
        inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0
        shade = 1.0 - 0.4 * (yy - (cy - ry)) / (2 * ry)
        for c in range(3):
            ch = img[..., c]
            ch[inside] = (color[c] * shade)[inside]
    img = np.rint(img) + rng.integers(-8, 9, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def random_ellipse(rng, w: int, h: int):
    rx = rng.uniform(0.15, 0.35) * w
    ry = rng.uniform(0.15, 0.35) * h
    cx = rng.uniform(rx, w - rx)
    cy = rng.uniform(ry, h - ry)
    color = rng.uniform(20.0, 235.0, 3)
    return (cx, cy, rx, ry, color)


def latent_mask(ellipse, w: int, h: int, factor: int = 8):
    """A mask as generate writes it: decided per latent cell (cell centre in the ellipse), then
    upsampled by nearest neighbour to the image size, 0 or 255 (8-bit grayscale)."""
    gw, gh = w // factor, h // factor
    small = np.zeros((gh, gw), dtype=np.uint8)
    if ellipse is not None:
        cx, cy, rx, ry, _ = ellipse
        jj, ii = np.meshgrid(np.arange(gw), np.arange(gh))
        px = (jj + 0.5) * factor
        py = (ii + 0.5) * factor
        small[((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2 <= 1.0] = 255
    return np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)


def save_png(arr: np.ndarray, path: Path, mode: str, text=None):
    info = None
    if text:
        info = PngInfo()
        for k, v in text:
            info.add_text(k, v)
    Image.fromarray(arr, mode=mode).save(str(path), pnginfo=info)


# ---------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------

PHRASE = "sks dog"
CLASS = "dog"
PROMPTS = ["a sks dog in the jungle", "a sks dog wearing a red hat, oil painting"]
NUM_SAMPLES = 3
WIDTH, HEIGHT = 96, 80  # generate's --width/--height: every generated image has this size
REFERENCES = [("ref0.png", 120, 90), ("ref1.png", 56, 72)]  # name, width, height
EXTRA = [  # preprocessing-only cases: name, width, height, PIL mode
    ("rgba.png", 70, 50, "RGBA"),   # read as RGB: alpha dropped (PIL convert("RGB"))
    ("gray.png", 40, 64, "L"),      # channel replicated
    ("small.png", 20, 13, "RGB"),   # upsampled by both processors
    ("wide.png", 101, 64, "RGB"),   # CLIP: shortest edge already 64 (no resize), odd crop
    ("tall.png", 70, 150, "RGB"),   # both processors: Pillow 13 runs the vertical pass first
]
# prompt 1 has two empty target masks: IoU(empty, empty) := 1, IoU(empty, non-empty) = 0
EMPTY_MASKS = {(1, 1), (1, 2)}


def make_run(seed: int):
    rng = np.random.default_rng(seed)
    run = EVAL / "run"
    refs = EVAL / "references"
    extra = EVAL / "extra"
    for d in (run, refs, extra):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    ref_paths = []
    for name, w, h in REFERENCES:
        save_png(synth_rgb(rng, w, h, random_ellipse(rng, w, h)), refs / name, "RGB")
        ref_paths.append(f"{REL}/references/{name}")
    for name, w, h, mode in EXTRA:
        rgb = synth_rgb(rng, w, h, random_ellipse(rng, w, h))
        if mode == "RGBA":
            yy, xx = np.mgrid[0:h, 0:w]
            alpha = np.clip((xx * 255) // (w - 1) + rng.integers(-20, 21, size=(h, w)), 0, 255)
            alpha[:, :3] = 0
            alpha[:, -3:] = 255
            arr = np.concatenate([rgb, alpha.astype(np.uint8)[..., None]], axis=2)
        elif mode == "L":
            arr = rgb[..., 1].copy()
        else:
            arr = rgb
        save_png(arr, extra / name, mode)

    def chunks(prompt, reference, sample):
        # the tEXt chunks generate writes, in its order
        return [
            ("prompt", prompt), ("phrase", PHRASE), ("class", CLASS), ("reference", reference),
            ("personalization", "dreambooth:tests/fixtures/sd1-tiny-dreambooth"),
            ("seed", "42"), ("sample", str(sample)), ("steps", "50"), ("guidance", "7.5"),
            ("method", "layout-and-retouch layout_fraction=0.2 swap_start=4 mask_threshold=0.1 "
                       "mask_factor=4 blend=otsu mode=split"),
            ("model", "tests/fixtures/sd1-tiny"),
            ("software", "layret 0.1.0 (synthetic eval fixture: tools/reference/make_eval.py)"),
        ]

    images = []
    for p, prompt in enumerate(PROMPTS):
        for s in range(NUM_SAMPLES):
            r = s % len(REFERENCES)
            ell = random_ellipse(rng, WIDTH, HEIGHT)
            if (p, s) in EMPTY_MASKS:
                ell_mask = None
            else:
                ell_mask = ell
            name = f"p{p}_s{s}"
            save_png(synth_rgb(rng, WIDTH, HEIGHT, ell), run / f"{name}.png", "RGB",
                     chunks(prompt, ref_paths[r], s))
            entry = {"prompt_index": p, "prompt": prompt, "sample": s,
                     "reference": ref_paths[r], "image": f"{name}.png"}
            # target = the subject's layout; context/reference masks as --save-masks writes
            masks = {
                "target": latent_mask(ell_mask, WIDTH, HEIGHT),
                "context": latent_mask(random_ellipse(rng, WIDTH, HEIGHT), WIDTH, HEIGHT),
                "reference": latent_mask(random_ellipse(rng, WIDTH, HEIGHT), WIDTH, HEIGHT),
            }
            for kind, m in masks.items():
                f = f"{name}_mask_{kind}.png"
                save_png(m, run / f, "L")
                entry[f"mask_{kind}"] = f
            images.append(entry)
    manifest = {
        "software": "layret 0.1.0",
        "model": "tests/fixtures/sd1-tiny",
        "personalization": "dreambooth:tests/fixtures/sd1-tiny-dreambooth",
        "phrase": PHRASE,
        "class": CLASS,
        "references": ref_paths,
        "prompts": PROMPTS,
        "num_samples": NUM_SAMPLES,
        "seed": "42",
        "width": WIDTH,
        "height": HEIGHT,
        "settings": {
            "steps": 50, "guidance": 7.5, "negative_prompt": "", "layout_fraction": 0.2,
            "lambda1": 10, "swap_start": 4, "mask_threshold": 0.1, "mask_factor": 4,
            "blend": "otsu", "blend_start": 10, "mode": "split", "kv": "f32",
        },
        "reference_cache": {"hits": 1, "disk_hits": 0, "misses": 2},
        "seconds": 12.5,
        "images": images,
    }
    # serde_json without preserve_order: keys sorted, two-space indent, no final newline
    (run / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------------------------


def class_prompt(prompt: str, phrase: str, class_phrase: str) -> str:
    """DreamBooth's CLIP-T text: every occurrence of the personal phrase replaced by the class
    phrase (plain substring replacement, no other change)."""
    return prompt.replace(phrase, class_phrase)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(a @ b / (np.sqrt(a @ a) * np.sqrt(b @ b)))


def iou(m1: np.ndarray, m2: np.ndarray) -> float:
    inter = int(np.logical_and(m1, m2).sum())
    union = int(np.logical_or(m1, m2).sum())
    return 1.0 if union == 0 else inter / union


def read_mask(path: Path) -> np.ndarray:
    m = np.array(Image.open(path))
    assert m.ndim == 2, path
    return m >= 128


def resize_geometry(w: int, h: int, shortest_edge: int, crop: int):
    """transformers' get_resize_output_image_size(default_to_square=False) + center_crop."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(shortest_edge * long / short)
    nh, nw = (new_long, shortest_edge) if w <= h else (shortest_edge, new_long)
    return (nh, nw), ((nh - crop) // 2, (nw - crop) // 2)


def pil_coeffs(in_size: int, out_size: int, support: float, kernel):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc (libImaging/Resample.c): per output
    index the first input index and the int32 fixed-point weights (22 fraction bits)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ss = 1.0 / filterscale  # C multiplies by the reciprocal (dividing can round differently)
    out = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)       # C (int): truncation toward zero
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [kernel((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = sum(w)
        w = [v / ww for v in w] if ww != 0.0 else w
        k = [int(-0.5 + v * (1 << 22)) if v < 0 else int(0.5 + v * (1 << 22)) for v in w]
        out.append((xmin, np.array(k, dtype=np.int64)))
    return out


def pil_bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def pil_bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def pil_vertical_first(w: int, h: int, out_w: int, out_h: int) -> bool:
    """Pillow 13: "If height is being scaled down more than twice the amount the width is, run
    the vertical pass first" (amounts in pixels, not ratios)."""
    return (h - out_h) > 0 and (h - out_h) > 2 * (w - out_w)


def pil_resize_reference(rgb: np.ndarray, out_w: int, out_h: int, bicubic: bool) -> np.ndarray:
    """An independent re-implementation of Pillow 13's 8-bit resize (the algorithm a Rust port
    must follow): two separable passes, each into a uint8 image, each output
    clamp((2^21 + sum(in * k)) >> 22, 0, 255); a pass runs only if its size changes. Order
    (Pillow 13's ImagingResampleInner; Pillow <= 12 always ran the horizontal pass first):
    vertical first iff (H - out_h) > 0 and (H - out_h) > 2 * (W - out_w), else horizontal."""
    kernel, support = (pil_bicubic, 2.0) if bicubic else (pil_bilinear, 1.0)
    img = rgb.astype(np.int64)
    h, w, _ = img.shape

    def horizontal(img):
        tmp = np.empty((img.shape[0], out_w, 3), dtype=np.int64)
        for xx, (xmin, k) in enumerate(pil_coeffs(w, out_w, support, kernel)):
            ss = (1 << 21) + np.tensordot(img[:, xmin:xmin + len(k)], k, axes=([1], [0]))
            tmp[:, xx] = np.clip(ss >> 22, 0, 255)
        return tmp

    def vertical(img):
        tmp = np.empty((out_h, img.shape[1], 3), dtype=np.int64)
        for yy, (ymin, k) in enumerate(pil_coeffs(h, out_h, support, kernel)):
            ss = (1 << 21) + np.tensordot(img[ymin:ymin + len(k)], k, axes=([0], [0]))
            tmp[yy] = np.clip(ss >> 22, 0, 255)
        return tmp

    vertical_first = pil_vertical_first(w, h, out_w, out_h)
    passes = [(out_h != h, vertical), (out_w != w, horizontal)]
    if not vertical_first:
        passes.reverse()
    for needed, f in passes:
        if needed:
            img = f(img)
    return img.astype(np.uint8)


def process(clip_proc, dino_proc, pil_image, prefix, out, geometry):
    """pixel_values of both processors, the uint8 resize result before crop/rescale, and the
    geometry, recomputed from the formulas and checked against the processors' output.

    The eval loads every file as 8-bit RGB first, as DreamBooth-style scripts do
    (`Image.open(p).convert("RGB")`: alpha dropped, gray replicated): ViTImageProcessor has no
    do_convert_rgb (RGBA or L input would fail in its normalize), and for RGB input CLIP's
    do_convert_rgb (which would composite alpha onto white) is a no-op."""
    mode = pil_image.mode
    pil_image = pil_image.convert("RGB")
    cp = clip_proc(images=pil_image, return_tensors="pt")["pixel_values"][0]
    dp = dino_proc(images=pil_image, return_tensors="pt")["pixel_values"][0]
    rgb = np.array(pil_image)
    w, h = pil_image.size
    s = clip_proc.size["shortest_edge"]
    c = clip_proc.crop_size["height"]
    (nh, nw), (top, left) = resize_geometry(w, h, s, c)
    rs = Image.fromarray(rgb).resize((nw, nh), resample=Image.Resampling.BICUBIC)
    clip_resized = np.array(rs)
    dsz = (dino_proc.size["height"], dino_proc.size["width"])
    dino_resized = np.array(Image.fromarray(rgb).resize((dsz[1], dsz[0]),
                                                        resample=Image.Resampling.BILINEAR))
    # Pillow's resize is exactly the integer algorithm of pil_resize_reference
    assert np.array_equal(pil_resize_reference(rgb, nw, nh, True), clip_resized), prefix
    assert np.array_equal(pil_resize_reference(rgb, dsz[1], dsz[0], False), dino_resized), prefix
    # the processor's output must be exactly crop -> rescale -> normalize of these uint8s
    mean = np.array(clip_proc.image_mean, dtype=np.float32)
    std = np.array(clip_proc.image_std, dtype=np.float32)
    crop = clip_resized[top:top + c, left:left + c].astype(np.float64) * (1 / 255)
    mine = ((crop.astype(np.float32) - mean) / std).transpose(2, 0, 1)
    assert np.array_equal(mine, cp.numpy()), prefix
    dmean = np.array(dino_proc.image_mean, dtype=np.float32)
    dstd = np.array(dino_proc.image_std, dtype=np.float32)
    dmine = (((dino_resized.astype(np.float64) * (1 / 255)).astype(np.float32) - dmean) / dstd)
    assert np.array_equal(dmine.transpose(2, 0, 1), dp.numpy()), prefix
    out[f"{prefix}.rgb"] = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    out[f"{prefix}.clip_resized"] = torch.from_numpy(
        np.ascontiguousarray(clip_resized.transpose(2, 0, 1)))
    out[f"{prefix}.dino_resized"] = torch.from_numpy(
        np.ascontiguousarray(dino_resized.transpose(2, 0, 1)))
    geometry[prefix] = {
        "size_wh": [w, h],
        "file_mode": mode,
        "clip_resized_hw": [nh, nw],
        "clip_crop_top_left": [top, left],
        "clip_resize_vertical_pass_first": pil_vertical_first(w, h, nw, nh),
        "dino_resized_hw": list(dsz),
        "dino_resize_vertical_pass_first": pil_vertical_first(w, h, dsz[1], dsz[0]),
    }
    return cp, dp


@torch.no_grad()
def embed(clip, dino, tok, clip_pv, dino_pv, texts):
    img = clip.get_image_features(pixel_values=clip_pv)
    vis = clip.vision_model(pixel_values=clip_pv)
    enc = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    txt = clip.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    txt_noattn = clip.get_text_features(input_ids=enc.input_ids)
    assert torch.equal(txt.pooler_output, txt_noattn.pooler_output)  # causal: padding is inert
    tm = clip.text_model(input_ids=enc.input_ids)
    d = dino(pixel_values=dino_pv)
    return {
        "clip_image_embeds": img.pooler_output,           # visual_projection(post_layernorm(CLS))
        "clip_vision_pooled": vis.pooler_output,          # post_layernorm(CLS), before projection
        "clip_vision_last_hidden_state": vis.last_hidden_state,  # no post_layernorm
        "input_ids": enc.input_ids,
        "clip_text_embeds": txt.pooler_output,            # text_projection(final_ln(h)[eos])
        "clip_text_pooled": tm.pooler_output,
        "clip_text_last_hidden_state": tm.last_hidden_state,  # after final_layer_norm
        "dino_last_hidden_state": d.last_hidden_state,    # after the final layernorm
        "dino_cls": d.last_hidden_state[:, 0],
    }


def scores(manifest, run_dir, img_clip, img_dino, ref_clip, ref_dino, txt_clip):
    n_refs = ref_clip.shape[0]
    per_image = []
    for i, e in enumerate(manifest["images"]):
        p = e["prompt_index"]
        per_image.append({
            "image": e["image"],
            "prompt_index": p,
            "sample": e["sample"],
            "clip_t": cos(img_clip[i], txt_clip[p]),
            "clip_i": float(np.mean([cos(img_clip[i], ref_clip[r]) for r in range(n_refs)])),
            "dino": float(np.mean([cos(img_dino[i], ref_dino[r]) for r in range(n_refs)])),
        })
    per_prompt = []
    for p, prompt in enumerate(manifest["prompts"]):
        idx = [i for i, e in enumerate(manifest["images"]) if e["prompt_index"] == p]
        masks = [read_mask(run_dir / manifest["images"][i]["mask_target"]) for i in idx]
        pairs = list(combinations(range(len(idx)), 2))
        div = [1.0 - cos(img_dino[idx[a]], img_dino[idx[b]]) for a, b in pairs]
        lay = [1.0 - iou(masks[a], masks[b]) for a, b in pairs]
        per_prompt.append({
            "prompt_index": p,
            "prompt": prompt,
            "clip_prompt": class_prompt(prompt, manifest["phrase"], manifest["class"]),
            "images": [manifest["images"][i]["image"] for i in idx],
            "clip_t": float(np.mean([per_image[i]["clip_t"] for i in idx])),
            "clip_i": float(np.mean([per_image[i]["clip_i"] for i in idx])),
            "dino": float(np.mean([per_image[i]["dino"] for i in idx])),
            "diversity": float(np.mean(div)) if div else None,
            "layout_diversity": float(np.mean(lay)) if lay else None,
            "pairs": [[idx[a], idx[b]] for a, b in pairs],
            "pair_one_minus_cos_dino": div,
            "pair_iou": [1.0 - x for x in lay],
            "mask_pixels": [int(m.sum()) for m in masks],
        })
    overall = {k: float(np.mean([x[k] for x in per_image])) for k in ("clip_t", "clip_i", "dino")}
    for k in ("diversity", "layout_diversity"):
        vals = [x[k] for x in per_prompt if x[k] is not None]
        overall[k] = float(np.mean(vals)) if vals else None
    # Every prompt has num_samples images, so the mean over images equals the mean of the
    # per-prompt means (checked here):
    for k in ("clip_t", "clip_i", "dino"):
        assert abs(overall[k] - np.mean([x[k] for x in per_prompt])) < 1e-12
    return per_image, per_prompt, overall


def tensor_to_list(t):
    return [float(x) for x in t.reshape(-1).tolist()]


def main():
    check_environment()
    from transformers import CLIPTokenizer

    EVAL.mkdir(parents=True, exist_ok=True)
    GOLDEN.mkdir(parents=True, exist_ok=True)

    # --- models -------------------------------------------------------------------------
    clip_dir, dino_dir = EVAL / "clip-tiny", EVAL / "dino-tiny"
    clip_cfg = clip_config(
        text=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4),
        vision=dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2,
                    num_attention_heads=4, image_size=64, patch_size=16),
        projection_dim=16,
    )
    clip = build_clip(clip_cfg, 5000, clip_dir)
    write_json(clip_dir / "preprocessor_config.json", clip_preprocessor_config(64))
    write_clip_tokenizer_files(clip_dir)
    dino = build_dino(dino_config(hidden_size=36, intermediate_size=144, num_hidden_layers=2,
                                  num_attention_heads=6, image_size=48, patch_size=16),
                      5100, dino_dir)
    write_json(dino_dir / "preprocessor_config.json", dino_preprocessor_config(48))
    tok = CLIPTokenizer.from_pretrained(str(clip_dir))
    assert tok.pad_token_id == 49407 and tok.model_max_length == 77
    clip_proc, dino_proc = load_processors(clip_dir, dino_dir)
    assert clip_proc.size == {"shortest_edge": 64}, clip_proc.size
    assert clip_proc.crop_size == {"height": 64, "width": 64}, clip_proc.crop_size
    assert dino_proc.size == {"height": 48, "width": 48}, dino_proc.size
    assert not getattr(dino_proc, "do_center_crop", False)

    # --- images ---------------------------------------------------------------------------
    manifest = make_run(5300)
    run_dir = EVAL / "run"
    out, geometry = {}, {}
    groups = {
        "images": [run_dir / e["image"] for e in manifest["images"]],
        "references": [ROOT / r for r in manifest["references"]],
        "extra": [EVAL / "extra" / name for name, *_ in EXTRA],
    }
    pv = {}
    for g, paths in groups.items():
        cps, dps = [], []
        for k, path in enumerate(paths):
            with Image.open(path) as im:
                im.load()
                cp, dp = process(clip_proc, dino_proc, im, f"{g}.{k}", out, geometry)
            cps.append(cp)
            dps.append(dp)
        pv[g] = (torch.stack(cps), torch.stack(dps))
        out[f"{g}.clip_pixel_values"] = pv[g][0]
        out[f"{g}.dino_pixel_values"] = pv[g][1]

    clip_texts = [class_prompt(p, PHRASE, CLASS) for p in PROMPTS]
    emb = {}
    for g in groups:
        e = embed(clip, dino, tok, pv[g][0], pv[g][1], clip_texts)
        emb[g] = e
        for k in ("clip_image_embeds", "clip_vision_pooled", "clip_vision_last_hidden_state",
                  "dino_last_hidden_state", "dino_cls"):
            out[f"{g}.{k}"] = e[k]
    e = emb["images"]
    for k in ("input_ids", "clip_text_embeds", "clip_text_pooled", "clip_text_last_hidden_state"):
        out[f"prompts.{k}"] = e[k]
    # the same text batched with images of another batch: the features do not depend on it
    assert torch.equal(emb["references"]["clip_text_embeds"], e["clip_text_embeds"])
    eos_pos = e["input_ids"].to(torch.int).argmax(dim=-1)
    first_eos = (e["input_ids"] == 49407).int().argmax(dim=-1)
    assert torch.equal(eos_pos, first_eos)  # both pooling rules agree on the real vocabulary
    out["prompts.eos_position"] = eos_pos.to(torch.int64)

    per_image, per_prompt, overall = scores(
        manifest, run_dir,
        emb["images"]["clip_image_embeds"].numpy(), emb["images"]["dino_cls"].numpy(),
        emb["references"]["clip_image_embeds"].numpy(), emb["references"]["dino_cls"].numpy(),
        e["clip_text_embeds"].numpy(),
    )
    # the same scores with torch's own cosine, in f32: agree to 1e-6
    tc = torch.nn.functional.cosine_similarity
    for i, x in enumerate(per_image):
        t = tc(emb["images"]["clip_image_embeds"][i], e["clip_text_embeds"][x["prompt_index"]], dim=0)
        assert abs(float(t) - x["clip_t"]) < 1e-6
    out["scores.per_image"] = torch.tensor(
        [[x["clip_t"], x["clip_i"], x["dino"]] for x in per_image], dtype=torch.float64)
    out["scores.per_prompt"] = torch.tensor(
        [[x["clip_t"], x["clip_i"], x["dino"],
          float("nan") if x["diversity"] is None else x["diversity"],
          float("nan") if x["layout_diversity"] is None else x["layout_diversity"]]
         for x in per_prompt], dtype=torch.float64)
    out["scores.overall"] = torch.tensor(
        [overall[k] for k in ("clip_t", "clip_i", "dino", "diversity", "layout_diversity")],
        dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in sorted(out.items())},
              str(GOLDEN / "eval.safetensors"))

    doc = {
        "made_by": "tools/reference/make_eval.py",
        "versions": {"transformers": __import__("transformers").__version__,
                     "torch": torch.__version__.split("+")[0],
                     "pillow": Image.__version__, "numpy": np.__version__},
        "run": f"{REL}/run",
        "clip_model": f"{REL}/clip-tiny",
        "dino_model": f"{REL}/dino-tiny",
        "protocol": {
            "clip_t": "cosine(CLIPModel.get_image_features(image), CLIPModel.get_text_features("
                      "text)) where text = the manifest prompt with every occurrence of the "
                      "manifest's phrase replaced by its class (str.replace), tokenized with "
                      "padding='max_length', max_length=77, truncation=True",
            "clip_i": "per image: mean over ALL manifest references of cosine(CLIP image "
                      "features of the image, of the reference)",
            "dino": "per image: mean over ALL references of cosine(DINO CLS, DINO CLS); DINO "
                    "CLS = ViTModel last_hidden_state[:, 0] (after the final layernorm; no pooler)",
            "diversity": "per prompt: mean over the unordered pairs i<j of its images of "
                         "1 - cosine(DINO CLS_i, DINO CLS_j); null with fewer than 2 images",
            "layout_diversity": "per prompt: mean over the unordered pairs i<j of 1 - IoU of the "
                                "images' mask_target PNGs (pixel >= 128 is subject); "
                                "IoU(empty, empty) = 1 (identical layouts: diversity 0), "
                                "IoU(empty, non-empty) = 0",
            "cosine": "a.b / (|a| |b|) of the float32 embeddings, evaluated in float64",
            "per_prompt": "clip_t, clip_i, dino: mean of the per-image scores of the prompt's "
                          "images",
            "overall": "clip_t, clip_i, dino: mean over all images (DreamBooth's 'average over "
                       "all generated images'; every prompt has num_samples images, so this "
                       "equals the mean of the per-prompt means); diversity, layout_diversity: "
                       "mean over prompts of the per-prompt values (prompts with fewer than 2 "
                       "images left out)",
            "score_scale": "plain cosines in [-1, 1]; no x100, no clamp at 0 (CLIPScore-style "
                           "100*max(cos, 0) is NOT used)",
        },
        "clip_prompts": clip_texts,
        "processors": {
            "clip": clip_proc.to_dict(),
            "dino": dino_proc.to_dict(),
            "backend": "pil (CLIPImageProcessorPil / ViTImageProcessorPil)",
        },
        "resize_algorithm": "Pillow 13 8-bit resample (see pil_resize_reference in "
                            "make_eval.py): bicubic a=-0.5, support 2 (CLIP) / triangle, "
                            "support 1 (DINO), support scaled by max(in/out, 1); int32 weights "
                            "with 22 fraction bits; two uint8 passes, vertical first iff "
                            "(H-h) > 0 and (H-h) > 2 (W-w)",
        "geometry": geometry,
        "per_image": per_image,
        "per_prompt": per_prompt,
        "overall": overall,
        "tensors": {
            "<group>.<k>.rgb": "uint8 [3, H, W]: the file as PIL convert('RGB') reads it "
                               "(RGBA: alpha dropped, L: replicated)",
            "<group>.<k>.clip_resized": "uint8 [3, h, w]: PIL bicubic resize to the shortest "
                                        "edge, before the center crop",
            "<group>.<k>.dino_resized": "uint8 [3, 48, 48]: PIL bilinear resize",
            "<group>.clip_pixel_values": "f32 [N, 3, 64, 64]",
            "<group>.dino_pixel_values": "f32 [N, 3, 48, 48]",
            "<group>.clip_image_embeds": "f32 [N, 16] (get_image_features)",
            "<group>.clip_vision_pooled": "f32 [N, 48] post_layernorm(last_hidden_state[:, 0])",
            "<group>.clip_vision_last_hidden_state": "f32 [N, 17, 48]",
            "<group>.dino_cls": "f32 [N, 36]",
            "<group>.dino_last_hidden_state": "f32 [N, 10, 36]",
            "prompts.input_ids": "i64 [2, 77] of clip_prompts",
            "prompts.eos_position": "i64 [2]: argmax(input_ids) (= first 49407)",
            "prompts.clip_text_embeds": "f32 [2, 16] (get_text_features)",
            "prompts.clip_text_pooled": "f32 [2, 32] final_layer_norm(h)[eos_position]",
            "prompts.clip_text_last_hidden_state": "f32 [2, 77, 32]",
            "scores.per_image": "f64 [6, 3]: clip_t, clip_i, dino in manifest order",
            "scores.per_prompt": "f64 [2, 5]: clip_t, clip_i, dino, diversity, layout_diversity",
            "scores.overall": "f64 [5]: same columns",
            "groups": {g: [str(p.relative_to(ROOT)) for p in paths] for g, paths in groups.items()},
        },
    }
    (GOLDEN / "eval.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    # the goldens read back
    back = load_file(str(GOLDEN / "eval.safetensors"))
    assert torch.equal(back["images.clip_pixel_values"], pv["images"][0])
    print("eval fixtures written to", EVAL, "and", GOLDEN / "eval.*")
    print(json.dumps(overall, indent=1))


if __name__ == "__main__":
    main()
