#!/usr/bin/env python3
"""An independent, diffusers-free implementation of the samplers in make_schedulers.py, written
from the algorithm summary in tools/reference/samplers.md, for the SD config.

It exists to check that summary: run it (from the repository root, after make_schedulers.py)
and it replays every `sched.*` case of tests/fixtures/golden/schedulers.safetensors and reports
how far it lands from diffusers (the goal, reached for all 81 cases with diffusers 0.42.1 and
torch 2.15 CPU, is bit-exact). Scalars are 0-d float32 torch tensors and samples float32
tensors, as in diffusers; the schedule construction (interpolation, Karras, sigma->t) is
float64 numpy where diffusers' is.

    python3 tools/reference/scheduler_reference.py
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
F32 = torch.float32


# ------------------------------------------------------------------------------- the schedule


def train_schedule(cfg):
    """alphas_cumprod and the VE sigmas of the 1000 training steps, float32."""
    assert cfg["beta_schedule"] == "scaled_linear"
    T = cfg["num_train_timesteps"]
    betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, T, dtype=F32) ** 2
    ac = torch.cumprod(1.0 - betas, dim=0)
    sigmas = ((1 - ac) / ac) ** 0.5  # float32: sqrt((1 - a) / a)
    return ac, sigmas


def karras(sigma_max: float, sigma_min: float, n: int):
    """float64: (max^(1/7) + ramp (min^(1/7) - max^(1/7)))^7, ramp = linspace(0, 1, n)."""
    rho = 7.0
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigma: float, log_sigmas_f32: np.ndarray) -> float:
    """Piecewise-linear inverse of log sigma(t) (float64 arithmetic on float32 log sigmas)."""
    log_sigma = np.log(max(float(sigma), 1e-10))
    # low = the last index with log_sigmas[low] <= log_sigma, clipped to [0, T-2]
    ge = log_sigma - log_sigmas_f32.astype(np.float64) >= 0
    low = int(np.cumsum(ge).argmax())
    low = min(low, len(log_sigmas_f32) - 2)
    lo, hi = float(log_sigmas_f32[low]), float(log_sigmas_f32[low + 1])
    w = min(max((lo - log_sigma) / (lo - hi), 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


def schedule(cls, cfg, n):
    """(timesteps, sigmas or None) exactly as the class's set_timesteps(n) builds them."""
    T, off, spacing = cfg["num_train_timesteps"], cfg["steps_offset"], cfg["timestep_spacing"]
    _, train_sig = train_schedule(cfg)
    sig_np = train_sig.numpy()  # float32
    log_sig = np.log(sig_np)  # float32
    if cls in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"):
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
        elif spacing == "leading":
            ts = (np.arange(n) * (T // n))[::-1].astype(np.float32) + off
        else:
            ts = np.round(np.arange(T, 0, -T / n)).astype(np.float32) - 1
        sig = np.interp(ts, np.arange(T), sig_np)  # float64
        if cfg.get("use_karras_sigmas"):
            sig = karras(sig[0], sig[-1], n)  # the *interpolated* range
            ts = np.array([sigma_to_t(s, log_sig) for s in sig])  # fractional, not rounded
        sig = np.concatenate([sig, [0.0]]).astype(np.float32)
        return torch.from_numpy(ts.astype(np.float32)), torch.from_numpy(sig)
    if cls in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
        if spacing == "linspace":
            ts = np.round(np.linspace(0, T - 1, n + 1))[::-1][:-1].astype(np.int64)
        elif spacing == "leading":
            ts = (np.arange(n + 1) * (T // (n + 1)))[::-1][:-1].astype(np.int64) + off
        else:
            ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
        if cfg.get("use_karras_sigmas"):
            sig = karras(float(sig_np[-1]), float(sig_np[0]), n)  # the full training range
            ts = np.round([sigma_to_t(s, log_sig) for s in sig]).astype(np.int64)
        else:
            sig = sig_np[ts].astype(np.float64)  # interp at integer t is exact
        sig = np.concatenate([sig, [0.0]]).astype(np.float32)
        return torch.from_numpy(ts), torch.from_numpy(sig)
    if cls == "PNDMScheduler":
        if spacing == "linspace":
            base = np.round(np.linspace(0, T - 1, n)).astype(np.int64)
        elif spacing == "leading":
            base = np.arange(n) * (T // n) + off
        else:
            base = np.round(np.arange(T, 0, -T / n))[::-1].astype(np.int64) - 1
        if cfg["skip_prk_steps"]:
            ts = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1]
        else:
            prk = np.repeat(base[-4:], 2) + np.tile([0, T // n // 2], 4)
            prk = np.repeat(prk[:-1], 2)[1:-1][::-1]
            ts = np.concatenate([prk, base[:-3][::-1]])
        return torch.from_numpy(ts.astype(np.int64).copy()), None
    raise ValueError(cls)


def init_noise_sigma(cls, cfg, sigmas):
    if cls in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"):
        m = sigmas.max()
        return m if cfg["timestep_spacing"] in ("linspace", "trailing") else (m * m + 1) ** 0.5
    return 1.0


# ------------------------------------------------------------------------------- the steps


def vp(sigma):
    """VE sigma -> (alpha_t, sigma_t) of the VP process: 1/sqrt(s^2+1), s * alpha_t."""
    a = 1 / (sigma**2 + 1) ** 0.5
    return a, sigma * a


def lam(sigma):
    a, s = vp(sigma)
    return torch.log(a) - torch.log(s)  # +inf at sigma = 0


def x0_vp(pred, x, m, sigma):
    a, s = vp(sigma)
    return (x - s * m) / a if pred == "epsilon" else a * x - s * m


def solve2(r, b1, b2):
    """torch.linalg.solve([[1, 1], [r, 1]], [b1, b2]) in float32 as torch's CPU build (MKL
    getrf/getrs) does it, bit for bit: LU with partial pivoting, then the triangular solves
    multiplying by the reciprocal of each diagonal entry."""
    one = torch.ones((), dtype=F32)
    if r.abs() > 1:  # pivot: rows swapped, [[r, 1], [1, 1]] [rho0, rho1] = [b2, b1]
        l = one / r
        u22 = one - l
        y2 = b1 - l * b2
        rho1 = y2 * (one / u22)
        rho0 = (b2 - rho1) * (one / r)
    else:
        u22 = one - r
        y2 = b2 - r * b1
        rho1 = y2 * (one / u22)
        rho0 = b1 - rho1
    return rho0, rho1


def run(case, noise, model_outputs, step_noise=None):
    """Replay one scheduler case; returns (samples [S+1], extras dict)."""
    cls, cfg = case["class"], case["config"]
    pred = cfg["prediction_type"]
    ts, sig = schedule(cls, cfg, case["num_inference_steps"])
    n = len(ts)
    x = noise * init_noise_sigma(cls, cfg, sig)
    out, extras = [x], {"timesteps": ts, "sigmas": sig, "x0_pred": [], "scaled": []}
    ac, _ = train_schedule(cfg)

    if cls in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"):
        for i in range(n):
            s, s_next = sig[i], sig[i + 1]
            extras["scaled"].append(x / (s**2 + 1) ** 0.5)
            m = model_outputs[i]
            if pred == "epsilon":
                x0 = x - s * m
            else:
                x0 = m * (-s / (s**2 + 1) ** 0.5) + x / (s**2 + 1)
            d = (x - x0) / s
            if cls == "EulerDiscreteScheduler":
                x = x + d * (s_next - s)
            else:
                up = (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5
                down = (s_next**2 - up**2) ** 0.5
                x = x + d * (down - s)
                x = x + step_noise[i] * up
            extras["x0_pred"].append(x0)
            out.append(x)

    elif cls == "DPMSolverMultistepScheduler":
        prev_x0 = None
        for i in range(n):
            x0 = x0_vp(pred, x, model_outputs[i], sig[i])
            a_t, s_t = vp(sig[i + 1])
            _, s_s0 = vp(sig[i])
            h = lam(sig[i + 1]) - lam(sig[i])
            if i == 0 or i == n - 1:  # first order: warm-up and the final step (to sigma 0)
                x = s_t / s_s0 * x - a_t * (torch.exp(-h) - 1.0) * x0
            else:
                r0 = (lam(sig[i]) - lam(sig[i - 1])) / h
                d1 = 1.0 / r0 * (x0 - prev_x0)
                x = s_t / s_s0 * x - a_t * (torch.exp(-h) - 1.0) * x0 - 0.5 * (a_t * (torch.exp(-h) - 1.0)) * d1
            prev_x0 = x0
            extras["x0_pred"].append(x0)
            out.append(x)

    elif cls == "UniPCMultistepScheduler":
        ms = []  # converted outputs (x0 predictions), oldest first
        last_x, last_order = None, None
        extras["corrected"] = []
        for i in range(n):
            m_t = x0_vp(pred, x, model_outputs[i], sig[i])  # from the *uncorrected* sample
            if i > 0:  # corrector UniC, order = the previous predictor's
                a_t, s_t = vp(sig[i])
                _, s_s0 = vp(sig[i - 1])
                h = lam(sig[i]) - lam(sig[i - 1])
                hh = -h
                h_phi_1 = torch.expm1(hh)
                B_h = torch.expm1(hh)
                m0 = ms[-1]
                x_t_ = s_t / s_s0 * last_x - a_t * h_phi_1 * m0
                if last_order == 1:
                    x = x_t_ - a_t * B_h * (0 + 0.5 * (m_t - m0))
                else:
                    rk = (lam(sig[i - 2]) - lam(sig[i - 1])) / h
                    d1 = (ms[-2] - m0) / rk
                    b1 = (h_phi_1 / hh - 1) / B_h
                    b2 = ((h_phi_1 / hh - 1) / hh - 0.5) * 2 / B_h
                    rho0, rho1 = solve2(rk, b1, b2)
                    x = x_t_ - a_t * B_h * (rho0 * d1 + rho1 * (m_t - m0))
            extras["corrected"].append(x)
            ms.append(m_t)
            order = 1 if i == 0 or i == n - 1 else 2
            a_t, s_t = vp(sig[i + 1])
            _, s_s0 = vp(sig[i])
            h = lam(sig[i + 1]) - lam(sig[i])
            hh = -h
            h_phi_1 = torch.expm1(hh)
            B_h = torch.expm1(hh)
            x_t_ = s_t / s_s0 * x - a_t * h_phi_1 * m_t
            last_x, last_order = x, order
            if order == 1:
                x = x_t_ - a_t * B_h * 0
            else:
                rk = (lam(sig[i - 1]) - lam(sig[i])) / h
                d1 = (ms[-2] - m_t) / rk
                x = x_t_ - a_t * B_h * (0.5 * d1)
            extras["x0_pred"].append(m_t)
            out.append(x)

    elif cls == "PNDMScheduler":
        T = cfg["num_train_timesteps"]
        N = case["num_inference_steps"]
        ratio = T // N
        final = ac[0]  # set_alpha_to_one false

        def prev_sample(x, t, tp, e):
            a_t = ac[t]
            a_p = ac[tp] if tp >= 0 else final
            b_t, b_p = 1 - a_t, 1 - a_p
            if pred == "v_prediction":
                e = a_t**0.5 * e + b_t**0.5 * x
            denom = a_t * b_p**0.5 + (a_t * b_t * a_p) ** 0.5
            return (a_p / a_t) ** 0.5 * x - (a_p - a_t) * e / denom

        ets, cur_x, acc = [], None, 0
        n_prk = 0 if cfg["skip_prk_steps"] else 12
        extras["eps_used"] = []
        for c in range(n):
            t = int(ts[c])
            e = model_outputs[c]
            if c < n_prk:  # RK4 warm-up: 3 blocks of 4 evaluations
                tp = t - (0 if c % 2 else ratio // 2)
                t0 = int(ts[c // 4 * 4])
                if c % 4 == 0:
                    acc = acc + 1 / 6 * e
                    ets.append(e)
                    cur_x = x
                elif c % 4 in (1, 2):
                    acc = acc + 1 / 3 * e
                else:
                    e = acc + 1 / 6 * e
                    acc = 0
                x = prev_sample(cur_x, t0, tp, e)
            else:  # PLMS
                tp = t - ratio
                if c != 1:
                    ets = ets[-3:] + [e]
                else:  # the repeated timestep: redo the first step with the mean eps
                    tp, t = t, t + ratio
                if len(ets) == 1 and c == 0:
                    cur_x = x
                elif len(ets) == 1 and c == 1:
                    e = (e + ets[-1]) / 2
                    x = cur_x
                elif len(ets) == 2:
                    e = (3 * ets[-1] - ets[-2]) / 2
                elif len(ets) == 3:
                    e = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
                else:
                    e = 1 / 24 * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
                x = prev_sample(x, t, tp, e)
            extras["eps_used"].append(e)
            out.append(x)
    else:
        raise ValueError(cls)
    return torch.stack(out), extras


def compare(a, b):
    a, b = a.to(torch.float64), b.to(torch.float64)
    d = (a - b).abs().max().item()
    rel = d / max(b.abs().max().item(), 1e-30)
    return d, rel


def main(quiet=False):
    doc = json.loads((GOLDEN / "schedulers.json").read_text())
    g = load_file(str(GOLDEN / "schedulers.safetensors"))
    worst, exact = 0.0, 0
    for case in doc["scheduler_cases"]:
        p = f"sched.{case['name']}."
        samples, ex = run(case, g[p + "noise"], g[p + "model_output"], g.get(p + "step_noise"))
        assert torch.equal(ex["timesteps"], g[p + "timesteps"]), (case["name"], ex["timesteps"])
        if ex["sigmas"] is not None:
            assert torch.equal(ex["sigmas"], g[p + "sigmas"]), (case["name"], ex["sigmas"] - g[p + "sigmas"])
        checks = {"sample": samples}
        for k in ("x0_pred", "scaled", "corrected", "eps_used"):
            if ex.get(k) and p + k in g:
                checks[k] = torch.stack(ex[k])
        msgs = []
        all_exact = True
        for k, v in checks.items():
            d, rel = compare(v, g[p + k])
            all_exact &= d == 0
            if k == "sample":
                worst = max(worst, rel)
            if d:
                msgs.append(f"{k} {d:.2e} (rel {rel:.1e})")
        exact += all_exact
        if not quiet or not all_exact:
            print(f"{case['name']:34s} {'bit-exact' if all_exact else ', '.join(msgs)}")
    print(f"scheduler_reference.py: {exact}/{len(doc['scheduler_cases'])} cases bit-exact; "
          f"worst relative sample error {worst:.2e}")
    if worst > 1e-5:
        sys.exit("the reference drifted from diffusers")


if __name__ == "__main__":
    main()
