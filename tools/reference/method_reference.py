"""A PyTorch reference of METHOD.md (Layout-and-Retouch), written from the spec with diffusers
attention processors. make_fixtures.py runs it on the tiny personalized fixtures and saves
its outputs as goldens for layret's pipeline tests."""

import torch
import torch.nn.functional as F


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def resize_mask(m, hm, wm, h, w):
    """[n, hm*wm] -> [n, h*w], nearest with src = floor(dst*in/out)."""
    ys = (torch.arange(h) * hm) // h
    xs = (torch.arange(w) * wm) // w
    idx = (ys[:, None] * wm + xs[None, :]).reshape(-1)
    return m[:, idx]


def masked_softmax_attend(q, k, v, allowed, scale):
    logits = q @ k.transpose(-1, -2) * scale
    logits = logits.masked_fill(~allowed[:, None, None, :], float("-inf"))
    return logits.softmax(-1) @ v


def swap(step, S, mode, q, kt, vt, kc, vc, kr, vr, masks, hw, scale):
    if step < S:
        return sdpa(q, kc, vc)
    n, lq = q.shape[0], q.shape[2]
    if masks is None:
        mr = torch.ones(n, kr.shape[2])
        mc = torch.zeros(n, kc.shape[2])
        mt = torch.ones(n, lq)
    else:
        (hm, wm), (h, w) = masks["size"], hw
        mr = resize_mask(masks["r"], hm, wm, h, w)
        mc = resize_mask(masks["c"], hm, wm, h, w)
        mt = resize_mask(masks["t"], hm, wm, h, w)
    if mode == "split":
        def allow_unless_empty(a):
            empty = a.sum(1) == 0
            return a | empty[:, None]
        fg = masked_softmax_attend(q, kr, vr, allow_unless_empty(mr > 0.5), scale)
        bg = masked_softmax_attend(q, kc, vc, allow_unless_empty(mc < 0.5), scale)
        m = mt[:, None, :, None]
        return m * fg + (1 - m) * bg
    k = torch.cat([kt, kc, kr], 2)
    v = torch.cat([vt, vc, vr], 2)
    allowed = torch.cat([torch.ones(n, kt.shape[2], dtype=torch.bool), mc < 0.5, mr > 0.5], 1)
    return masked_softmax_attend(q, k, v, allowed, scale)


class MethodProcessor:
    """One per attention layer; `state` is shared and says what the current pass does."""

    def __init__(self, name, state):
        self.name, self.state = name, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        st = self.state
        is_cross = encoder_hidden_states is not None
        ctx = encoder_hidden_states if is_cross else hidden_states
        b, L, _ = hidden_states.shape
        heads = attn.heads

        def split(t):
            return t.reshape(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(ctx)), split(attn.to_v(ctx))
        side = int(round(L ** 0.5))
        H = st["H"]
        swapped = (not is_cross) and self.name.startswith("up_blocks") and 2 * side >= H
        mask_site = is_cross and side == H // st["mf"]
        if mask_site:
            probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)
            st["probs"].append(probs[b // 2:].mean(1))
            o = probs @ v
        elif swapped and st["role"] == "record":
            st["kv"][(self.name, st["step"])] = (k.clone(), v.clone())
            o = sdpa(q, k, v)
        elif swapped and st["role"] == "target":
            n = b // 2
            outs = []
            for half in range(2):
                sl = slice(half * n, (half + 1) * n)
                kc, vc = st["ctx_kv"][(self.name, st["step"])]
                kr, vr = st["ref_kv"][(self.name, st["step"])]
                m = kr.shape[0] // 2
                kr_h = kr[half * m:(half + 1) * m].expand(n, -1, -1, -1)
                vr_h = vr[half * m:(half + 1) * m].expand(n, -1, -1, -1)
                outs.append(swap(st["step"], st["S"], st["mode"], q[sl], k[sl], v[sl],
                                 kc[sl], vc[sl], kr_h, vr_h, st["masks"], (side, side), attn.scale))
            o = torch.cat(outs)
        else:
            o = sdpa(q, k, v)
        o = o.transpose(1, 2).reshape(b, L, -1)
        return attn.to_out[1](attn.to_out[0](o))


def install(unet, state):
    unet.set_attn_processor({k: MethodProcessor(k[: -len(".processor")], state)
                             for k in unet.attn_processors.keys()})


def subject_tokens(tok, prompt, phrase):
    ids = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    p = tok(phrase, add_special_tokens=False).input_ids
    body = ids[1:]
    for i in range(len(body) - len(p) + 1):
        if body[i:i + len(p)] == p:
            return [i + 1 + j for j in range(len(p))]
    raise ValueError(f"{phrase!r} not in {prompt!r}")


def encode(tok, te, prompt):
    ids = tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return te(ids).last_hidden_state


def subject_map(state, tokens):
    avg = torch.stack(state["probs"]).mean(0)  # layers -> [n, L, 77]
    m = avg[:, :, tokens].sum(-1)
    lo, hi = m.min(1, keepdim=True).values, m.max(1, keepdim=True).values
    rng = hi - lo
    out = (m - lo) / torch.where(rng == 0, torch.ones_like(rng), rng)
    return torch.where(rng == 0, torch.zeros_like(out), out)


def otsu_binary(m):
    out = []
    for row in m:
        bins = torch.clamp(torch.floor(256.0 * row.double()), 0, 255).long()
        hist = torch.bincount(bins, minlength=256).double()
        total = hist.sum()
        idx = torch.arange(256).double()
        best_b, best = 1, -1.0
        for b in range(1, 256):
            n0, n1 = hist[:b].sum(), hist[b:].sum()
            if n0 == 0 or n1 == 0:
                score = 0.0
            else:
                mu0 = (hist[:b] * idx[:b]).sum() / n0
                mu1 = (hist[b:] * idx[b:]).sum() / n1
                score = float((n0 / total) * (n1 / total) * (mu0 - mu1) ** 2)
            if score > best:
                best, best_b = score, b
        out.append((bins >= best_b).float())
    return torch.stack(out)


def cfg_eps(unet, z, t, cond, uncond, w):
    n = z.shape[0]
    context = torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)])
    with torch.no_grad():
        eps = unet(torch.cat([z, z]), t, encoder_hidden_states=context).sample
    eu, ec = eps.chunk(2)
    return eu + w * (ec - eu)


def run_method(vanilla, personal, vae, sched, noise, ref_image, P, C, prompt, cfg):
    """vanilla/personal = (tokenizer, text_encoder, unet). Returns a dict of tensors."""
    N, w, S, tau, mf = cfg["N"], cfg["guidance"], cfg["S"], cfg["tau"], cfg["mf"]
    H = noise.shape[2]
    hm = H // mf
    lam1 = int(round(cfg["layout_fraction"] * N + 1e-9))
    blend_start = int(round(0.2 * N + 1e-9))
    y_c = prompt.replace(P, C, 1)
    y_r = "a photo of " + P
    state = {"H": H, "mf": mf, "probs": [], "kv": {}, "role": "record", "step": 0,
             "S": S, "mode": cfg["mode"], "masks": None}
    for m in (vanilla[2], personal[2]):
        install(m, state)
    sched.set_timesteps(N)
    ts = sched.timesteps.tolist()
    ac = sched.alphas_cumprod
    final = torch.tensor(1.0) if sched.config.set_alpha_to_one else ac[0]
    step_ratio = sched.config.num_train_timesteps // N

    # Stage 1.
    van_c, van_u = encode(vanilla[0], vanilla[1], y_c), encode(vanilla[0], vanilla[1], "")
    per_c, per_u = encode(personal[0], personal[1], prompt), encode(personal[0], personal[1], "")
    tok_c = subject_tokens(vanilla[0], y_c, C)
    tok_p = subject_tokens(personal[0], prompt, P)
    z = noise.clone()
    traj, ctx_maps = [z.clone()], []
    state["kv"] = {}
    for k, t in enumerate(ts):
        state.update(step=k, role="record", probs=[])
        if k < lam1:
            eps = cfg_eps(vanilla[2], z, t, van_c, van_u, w)
            ctx_maps.append(subject_map(state, tok_c))
        else:
            eps = cfg_eps(personal[2], z, t, per_c, per_u, w)
            ctx_maps.append(subject_map(state, tok_p))
        z = sched.step(eps, t, z).prev_sample
        traj.append(z.clone())
    ctx_kv = state["kv"]

    # Reference: inversion (no CFG), then per-step CFG passes recording K/V and maps.
    ref_c, ref_u = encode(personal[0], personal[1], y_r), encode(personal[0], personal[1], "")
    tok_r = subject_tokens(personal[0], y_r, P)
    with torch.no_grad():
        x = vae.encode(ref_image).latent_dist.mean * vae.config.scaling_factor
    zr = {}
    state.update(role="plain")
    for t in reversed(ts):
        tm = t - step_ratio
        a_tm = ac[tm] if tm >= 0 else final
        a_t = ac[t]
        state["probs"] = []
        with torch.no_grad():
            out = personal[2](x, t, encoder_hidden_states=ref_c).sample
        if sched.config.prediction_type == "v_prediction":
            eps = a_tm.sqrt() * out + (1 - a_tm).sqrt() * x
        else:
            eps = out
        x0 = (x - (1 - a_tm).sqrt() * eps) / a_tm.sqrt()
        x = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
        zr[t] = x.clone()
    state["kv"] = {}
    ref_maps = []
    for k, t in enumerate(ts):
        state.update(step=k, role="record", probs=[])
        cfg_eps(personal[2], zr[t], t, ref_c, ref_u, w)
        ref_maps.append(subject_map(state, tok_r))
    ref_kv = state["kv"]

    # Stage 2: the target.
    state.update(ctx_kv=ctx_kv, ref_kv=ref_kv)
    out = {"context_latents": traj[-1]}
    zt = traj[0].clone()
    tgt_prev = None
    n = noise.shape[0]
    for k, t in enumerate(ts):
        if k == 0:
            masks = None
        else:
            masks = {
                "size": (hm, hm),
                "r": (ref_maps[k - 1] >= tau).float().expand(n, -1),
                "c": (ctx_maps[k - 1] >= tau).float(),
                "t": (tgt_prev >= tau).float(),
            }
            for key in ("r", "c", "t"):
                out[f"mask_{key}_step{k}"] = masks[key].contiguous()
        state.update(step=k, role="target", probs=[], masks=masks)
        eps = cfg_eps(personal[2], zt, t, per_c, per_u, w)
        zt = sched.step(eps, t, zt).prev_sample
        tmap = subject_map(state, tok_p)
        if k >= blend_start and cfg["blend"] == "otsu":
            mb = otsu_binary(tmap).reshape(n, 1, hm, hm)
            mb = F.max_pool2d(mb, 3, stride=1, padding=1)
            mb = resize_mask(mb.reshape(n, -1), hm, hm, H, H).reshape(n, 1, H, H)
            zt = mb * zt + (1 - mb) * traj[k + 1]
            out[f"blend_step{k}"] = mb.contiguous()
        tgt_prev = tmap
    out["latents"] = zt
    out["lambda1"] = torch.tensor(lam1)
    for m in (vanilla[2], personal[2]):
        from diffusers.models.attention_processor import AttnProcessor
        m.set_attn_processor(AttnProcessor())
    return out
