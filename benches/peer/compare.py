#!/usr/bin/env python3
"""Peer comparison of one SD 1.5 UNet step (64x64 latents, batch 2, CPU):
layret (flex) vs PyTorch diffusers (2 threads) vs candle-transformers 0.11 (CPU), on the same
random weights file, one after the other in one run.

    cargo build --release -p layret-benches --bins
    (cd benches/peer/candle && cargo build --release)   # bench-only package, its own workspace
    ./target/release/sd15_weights /tmp/sd15_unet_f32.safetensors f32
    python3 benches/peer/compare.py /tmp/sd15_unet_f32.safetensors [RUNS]
    python3 benches/peer/compare.py /tmp/sd15_unet_f32.safetensors [RUNS] --dtype bf16

f32 (the default) prints the median time per step of each implementation, the ratios, and the
max abs difference of each Rust output from PyTorch's. candle is skipped (with a line saying
so) when its binary has not been built.

`--dtype bf16` times layret in bf16 against PyTorch in bf16 two ways, in the same run: the
weights cast (`unet.to(torch.bfloat16)`, inputs cast, output widened) and
`torch.autocast("cpu", torch.bfloat16)` on the f32 weights. `ratio_layret_over_pytorch` is
against the faster of the two; each output's max abs error is measured against PyTorch's f32
output of the same inputs (`max_abs_error_vs_f32_*`). candle is not run (its CPU UNet is f32).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]


def main():
    args = sys.argv[1:]
    dtype = "f32"
    if "--dtype" in args:
        i = args.index("--dtype")
        dtype = args[i + 1]
        del args[i:i + 2]
    if dtype not in ("f32", "bf16"):
        sys.exit(f"--dtype {dtype}: expected f32 or bf16")
    weights = args[0]
    runs = int(args[1]) if len(args) > 1 else 3
    torch.set_num_threads(2)
    from diffusers import UNet2DConditionModel

    cfg = dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32,
    )
    unet = UNet2DConditionModel(**cfg).eval()
    missing, unexpected = unet.load_state_dict(load_file(weights), strict=True), None
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 64, 64, generator=g)
    ctx = torch.randn(2, 77, 768, generator=g)
    t = torch.tensor([500.0])
    tmp = Path(tempfile.mkdtemp())
    save_file({"sample": sample, "encoder_hidden_states": ctx, "timestep": t}, str(tmp / "in.safetensors"))

    def timed(step):
        times, out = [], None
        with torch.no_grad():
            for _ in range(runs):
                t0 = time.perf_counter()
                out = step()
                times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2], out

    if dtype == "bf16":
        return main_bf16(weights, runs, unet, sample, ctx, tmp, timed)

    torch_med, eps = timed(lambda: unet(sample, 500, encoder_hidden_states=ctx).sample)

    def run_rust(exe, name):
        out_file = tmp / f"out_{name}.safetensors"
        out = subprocess.run([str(exe), weights, str(tmp / "in.safetensors"), str(out_file), str(runs)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{exe} failed:\n{out.stderr}")
        med = float(out.stdout.split()[2])
        diff = (load_file(str(out_file))["eps"] - eps).abs().max().item()
        return med, diff

    report = {
        "machine": os.uname().machine, "cpus": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "runs": runs,
        "pytorch_median_s": round(torch_med, 3),
    }
    layret_med, layret_diff = run_rust(ROOT / "target" / "release" / "peer_layret", "layret")
    report["layret_median_s"] = round(layret_med, 3)
    candle_exe = ROOT / "benches" / "peer" / "candle" / "target" / "release" / "layret-peer-candle"
    if candle_exe.exists():
        candle_med, candle_diff = run_rust(candle_exe, "candle")
        report["candle_median_s"] = round(candle_med, 3)
    else:
        print(f"candle skipped: {candle_exe} not built (see the docstring)", file=sys.stderr)
    report["ratio_layret_over_pytorch"] = round(layret_med / torch_med, 2)
    if candle_exe.exists():
        report["ratio_layret_over_candle"] = round(layret_med / candle_med, 2)
        report["ratio_candle_over_pytorch"] = round(candle_med / torch_med, 2)
    report["max_abs_diff_layret_vs_pytorch"] = layret_diff
    if candle_exe.exists():
        report["max_abs_diff_candle_vs_pytorch"] = candle_diff
    report["max_abs_output"] = eps.abs().max().item()
    print(json.dumps(report, indent=1))


def main_bf16(weights, runs, unet, sample, ctx, tmp, timed):
    """layret bf16 vs PyTorch bf16 (weights cast; autocast), errors against PyTorch f32."""
    import copy

    with torch.no_grad():
        eps_f32 = unet(sample, 500, encoder_hidden_states=ctx).sample
    bf = torch.bfloat16

    def autocast_step():
        with torch.autocast("cpu", dtype=bf):
            return unet(sample, 500, encoder_hidden_states=ctx).sample.float()

    autocast_med, autocast_out = timed(autocast_step)
    unet_bf = copy.deepcopy(unet).to(bf)
    sample_bf, ctx_bf = sample.to(bf), ctx.to(bf)
    cast_med, cast_out = timed(lambda: unet_bf(sample_bf, 500, encoder_hidden_states=ctx_bf).sample.float())
    del unet_bf

    exe = ROOT / "target" / "release" / "peer_layret"
    out_file = tmp / "out_layret_bf16.safetensors"
    out = subprocess.run([str(exe), weights, str(tmp / "in.safetensors"), str(out_file), str(runs), "bf16"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{exe} failed:\n{out.stderr}")
    layret_med = float(out.stdout.split()[2])
    layret_out = load_file(str(out_file))["eps"]

    def err(x):
        return (x.float() - eps_f32).abs().max().item()

    torch_med = min(cast_med, autocast_med)
    report = {
        "machine": os.uname().machine, "cpus": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "runs": runs, "dtype": "bf16",
        "pytorch_bf16_weights_median_s": round(cast_med, 3),
        "pytorch_autocast_median_s": round(autocast_med, 3),
        "pytorch_median_s": round(torch_med, 3),
        "pytorch_faster_mode": "weights" if cast_med <= autocast_med else "autocast",
        "layret_median_s": round(layret_med, 3),
        "ratio_layret_over_pytorch": round(layret_med / torch_med, 2),
        "max_abs_error_vs_f32_layret": err(layret_out),
        "max_abs_error_vs_f32_pytorch_bf16_weights": err(cast_out),
        "max_abs_error_vs_f32_pytorch_autocast": err(autocast_out),
        "max_abs_output_f32": eps_f32.abs().max().item(),
    }
    report["error_ratio_layret_over_pytorch_bf16_weights"] = round(
        report["max_abs_error_vs_f32_layret"] / report["max_abs_error_vs_f32_pytorch_bf16_weights"], 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
