#!/usr/bin/env python3
"""Reference photos as people have them, for layret's loader tests, and the README's reference
image. Writes tests/fixtures/images/ and golden/images.safetensors: each file, and the 8-bit RGB
array diffusers' load_image (PIL: ImageOps.exif_transpose, then convert("RGB")) makes of it.

    python3 tools/reference/make_images.py        # from the repository root

Deterministic (numpy from fixed seeds, PIL's encoders); the images are synthetic, not photos.
"""

from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "images"
GOLDEN = ROOT / "tests" / "fixtures" / "golden"


def scene(w, h, seed):
    """A smooth synthetic scene: a gradient background and a colored disc."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 9.0 + y / 13.0)], -1)
    cx, cy, r = w * (0.4 + 0.2 * rng.random()), h * (0.45 + 0.1 * rng.random()), min(w, h) / 3.2
    disc = ((x - cx) ** 2 + (y - cy) ** 2) < r * r
    base[disc] = [0.85, 0.45, 0.12]
    return np.clip(np.rint(base * 255), 0, 255).astype(np.uint8)


def load_image(path):
    """diffusers.utils.load_image for a local file."""
    img = Image.open(path)
    img = ImageOps.exif_transpose(img)
    return np.asarray(img.convert("RGB"))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    files = {}
    rgb = scene(96, 80, 1)
    Image.fromarray(rgb).save(OUT / "rgb.png")
    files["rgb.png"] = "8-bit RGB PNG"
    rgba = np.concatenate([scene(80, 72, 2), np.full((72, 80, 1), 0, np.uint8)], -1)
    rgba[10:40, 10:40, 3] = 255
    Image.fromarray(rgba, "RGBA").save(OUT / "rgba.png")
    files["rgba.png"] = "RGBA PNG, mostly transparent (alpha is dropped, not composited)"
    Image.fromarray(scene(72, 88, 3)).convert("L").save(OUT / "gray.png")
    files["gray.png"] = "8-bit grayscale PNG"
    Image.fromarray(scene(64, 64, 4)).quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(OUT / "palette.png")
    files["palette.png"] = "16-color palette PNG"
    g16 = (scene(70, 66, 5)[..., 0].astype(np.uint16) * 257 + 128).astype(np.uint16)
    Image.fromarray(g16).save(OUT / "gray16.png")
    files["gray16.png"] = "16-bit grayscale PNG (PIL's convert clips I;16 to 255; see notes)"
    Image.fromarray(scene(96, 64, 6)).convert("CMYK").save(OUT / "cmyk.jpg", quality=95)
    files["cmyk.jpg"] = "CMYK JPEG"
    im = Image.fromarray(scene(96, 64, 7))
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    im.save(OUT / "exif_rotated.jpg", quality=95, exif=exif)
    files["exif_rotated.jpg"] = "JPEG with EXIF orientation 6 (stored 96x64, shown 64x96)"
    Image.fromarray(scene(96, 64, 8)).save(OUT / "plain.jpg", quality=95)
    files["plain.jpg"] = "8-bit RGB JPEG"
    # The README's reference: a 256x256 synthetic "toy" on a table (not a photo).
    Image.fromarray(scene(256, 256, 9)).save(ROOT / "tests" / "fixtures" / "reference.png")

    golden = {}
    for name in sorted(files):
        golden[name] = np.ascontiguousarray(load_image(OUT / name))
    save_file(golden, str(GOLDEN / "images.safetensors"), metadata={
        "pillow": PIL.__version__,
        "what": "diffusers load_image: ImageOps.exif_transpose then convert('RGB')",
        **{f"file.{k}": v for k, v in files.items()},
    })
    # PIL's convert("RGB") of a 16-bit grayscale image clips each value at 255 instead of
    # scaling it (a long-standing PIL quirk): layret scales 16 bits to 8 (round(v / 257)),
    # as image viewers do; this is the expected result for it.
    g16 = np.asarray(Image.open(OUT / "gray16.png")).astype(np.float64)
    golden["gray16.png.scaled"] = np.ascontiguousarray(
        np.repeat(np.rint(g16 / 257.0).astype(np.uint8)[..., None], 3, -1))
    save_file(golden, str(GOLDEN / "images.safetensors"), metadata={
        "pillow": PIL.__version__,
        "what": "diffusers load_image: ImageOps.exif_transpose then convert('RGB')",
        **{f"file.{k}": v for k, v in files.items()},
    })
    for k, v in golden.items():
        print(k, v.shape)


if __name__ == "__main__":
    main()
