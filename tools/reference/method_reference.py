"""A PyTorch reference of METHOD.md (Layout-and-Retouch), written from the spec with diffusers
attention processors. make_fixtures.py runs it on the tiny personalized fixtures and saves
its outputs as goldens for layret's pipeline tests.

Covers: square and non-square latents (each site's map size h x w comes from the UNet's levels:
the latent size, then ceil-halved per downsampler), the swap divisor, the mask factor, split and
concat modes, blending otsu / off / a fixed tau_b with its blend_start, a negative prompt (each
branch encodes it with its own text encoder), R >= 1 reference images (sample i uses reference
i mod R) and epsilon or v-prediction schedulers (DDIM steps by diffusers' DDIMScheduler, CFG on
the raw model output as diffusers does; the inversion converts v to eps)."""

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
    # Scores and softmax in f32 whatever the model's dtype (a no-op in f32; make_half.py runs
    # this reference with half-precision models, as layret computes them).
    logits = (q @ k.transpose(-1, -2)).float() * scale
    logits = logits.masked_fill(~allowed[:, None, None, :], float("-inf"))
    return logits.softmax(-1).to(v.dtype) @ v


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
        m = mt[:, None, :, None].to(fg.dtype)
        return m * fg + (1 - m) * bg
    k = torch.cat([kt, kc, kr], 2)
    v = torch.cat([vt, vc, vr], 2)
    allowed = torch.cat([torch.ones(n, kt.shape[2], dtype=torch.bool), mc < 0.5, mr > 0.5], 1)
    return masked_softmax_attend(q, k, v, allowed, scale)


class MethodProcessor:
    """One per attention layer; `state` is shared and says what the current pass does."""

    def __init__(self, name, state, level):
        self.name, self.state, self.level = name, state, level

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
        h, w = st["levels"][self.level]
        assert h * w == L, f"{self.name}: {L} tokens, level {h}x{w}"
        H, W, div = st["H"], st["W"], st["div"]
        # Swapped: decoder self-attention whose map has h >= H/div and w >= W/div.
        swapped = (not is_cross) and self.name.startswith("up_blocks") and h * div >= H and w * div >= W
        mask_site = is_cross and (h, w) == (H // st["mf"], W // st["mf"])
        if mask_site:
            probs = ((q @ k.transpose(-1, -2)).float() * attn.scale).softmax(-1)
            st["probs"].append(probs[b // 2:].mean(1))
            st["mask_sites"].add(self.name)
            o = probs.to(v.dtype) @ v
        elif swapped and st["role"] == "record":
            st["kv"][(self.name, st["step"])] = (k.clone(), v.clone())
            st["swap_sites"].add(self.name)
            o = sdpa(q, k, v)
        elif swapped and st["role"] == "target":
            n = b // 2
            outs = []
            for half in range(2):
                sl = slice(half * n, (half + 1) * n)
                kc, vc = st["ctx_kv"][(self.name, st["step"])]
                refs = [r[(self.name, st["step"])] for r in st["ref_kv"]]
                if len(refs) == 1:
                    kr, vr = refs[0]
                    m = kr.shape[0] // 2
                    kr_h = kr[half * m:(half + 1) * m].expand(n, -1, -1, -1)
                    vr_h = vr[half * m:(half + 1) * m].expand(n, -1, -1, -1)
                else:
                    # sample i reads reference i mod R (each reference ran as a batch of 1).
                    R = len(refs)
                    kr_h = torch.cat([refs[i % R][0][half:half + 1] for i in range(n)])
                    vr_h = torch.cat([refs[i % R][1][half:half + 1] for i in range(n)])
                outs.append(swap(st["step"], st["S"], st["mode"], q[sl], k[sl], v[sl],
                                 kc[sl], vc[sl], kr_h, vr_h, st["masks"], (h, w), attn.scale))
            o = torch.cat(outs)
        else:
            o = sdpa(q, k, v)
        o = o.transpose(1, 2).reshape(b, L, -1)
        return attn.to_out[1](attn.to_out[0](o))


def level_sizes(unet, H, W):
    """The UNet's spatial levels: the latent size, then ceil-halved per downsampler
    (a stride-2, padding-1, 3x3 conv)."""
    sizes = [(H, W)]
    for blk in unet.down_blocks[:-1]:
        assert blk.downsamplers is not None
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    assert unet.down_blocks[-1].downsamplers is None
    return sizes


def site_level(unet, name):
    """Which level a site's map lives at: down_blocks.i -> i, mid_block -> last,
    up_blocks.j -> last - j."""
    n = len(unet.down_blocks)
    part, _, rest = name.partition(".")
    if part == "down_blocks":
        return int(rest.split(".")[0])
    if part == "mid_block":
        return n - 1
    if part == "up_blocks":
        return n - 1 - int(rest.split(".")[0])
    raise ValueError(name)


def install(unet, state):
    unet.set_attn_processor({k: MethodProcessor(k[: -len(".processor")], state,
                                                site_level(unet, k[: -len(".processor")]))
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


# Binarization decisions whose result a tiny change of the map (another implementation's f32
# rounding, ~1e-6) could flip: (what, step) pairs, filled by check_robust; make_fixtures.py
# refuses a golden with any, since its masks would not be reproducible.
FRAGILE = []
ROBUST_DELTA = 2e-5


def check_robust(what, step, m, binarize):
    """Record `what` at `step` as fragile if `binarize(m)` changes when m moves by up to
    ROBUST_DELTA (uniformly up and down, and in four fixed random sign patterns)."""
    want = binarize(m)
    g = torch.Generator().manual_seed(12345)
    shifts = [torch.full_like(m, ROBUST_DELTA), torch.full_like(m, -ROBUST_DELTA)]
    shifts += [ROBUST_DELTA * (2 * torch.randint(0, 2, m.shape, generator=g).to(m.dtype) - 1)
               for _ in range(4)]
    for d in shifts:
        if not torch.equal(binarize(m + d), want):
            FRAGILE.append((what, step))
            return


def blend_mask(tmap, blend, hm, wm, H, W):
    """METHOD.md's M~: binarize (Otsu, or a fixed tau_b), 3x3 max-pool dilation, nearest resize
    to the latent size. [n, hm*wm] -> [n, 1, H, W]."""
    n = tmap.shape[0]
    if blend == "otsu":
        mb = otsu_binary(tmap)
    else:
        mb = (tmap >= float(blend)).float()
    mb = F.max_pool2d(mb.reshape(n, 1, hm, wm), 3, stride=1, padding=1)
    return resize_mask(mb.reshape(n, -1), hm, wm, H, W).reshape(n, 1, H, W)


def _branch(model):
    """(tokenizer, text_encoder, unet[, convert]); convert = diffusers' maybe_convert_prompt for
    multi-vector textual-inversion tokens (identity when absent)."""
    tok, te, unet = model[:3]
    conv = model[3] if len(model) > 3 else (lambda s: s)
    return tok, te, unet, conv


def run_method(vanilla, personal, vae, sched, noise, ref_image, P, C, prompt, cfg):
    """vanilla/personal = (tokenizer, text_encoder, unet[, convert]). `ref_image` is one image
    [1, 3, h, w] or a list of R of them (sample i uses reference i mod R). Returns a dict of
    tensors.

    cfg: N, guidance, S, tau, mf, layout_fraction, mode, blend ("otsu" | "off" | a number tau_b);
    optional div (2), blend_start (None: round(0.2 N)), negative_prompt (""), reference_prefix
    ("a photo of ")."""
    N, w, S, tau, mf = cfg["N"], cfg["guidance"], cfg["S"], cfg["tau"], cfg["mf"]
    div = cfg.get("div", 2)
    blend = cfg["blend"]
    neg = cfg.get("negative_prompt", "")
    H, W = noise.shape[2], noise.shape[3]
    if H % mf or W % mf:
        raise ValueError(f"latent {H}x{W} not divisible by the mask factor {mf}")
    hm, wm = H // mf, W // mf
    lam1 = int(round(cfg["layout_fraction"] * N + 1e-9))
    blend_start = cfg.get("blend_start")
    if blend_start is None:
        blend_start = int(round(0.2 * N + 1e-9))
    refs = ref_image if isinstance(ref_image, (list, tuple)) else [ref_image]
    R = len(refs)
    y_c = prompt.replace(P, C, 1)
    y_r = cfg.get("reference_prefix", "a photo of ") + P
    vtok, vte, vunet, vconv = _branch(vanilla)
    ptok, pte, punet, pconv = _branch(personal)
    levels = level_sizes(punet, H, W)
    assert levels == level_sizes(vunet, H, W)
    state = {"H": H, "W": W, "mf": mf, "div": div, "levels": levels, "probs": [], "kv": {},
             "role": "record", "step": 0, "S": S, "mode": cfg["mode"], "masks": None,
             "mask_sites": set(), "swap_sites": set()}
    for m in (vunet, punet):
        install(m, state)
    sched.set_timesteps(N)
    ts = sched.timesteps.tolist()
    ac = sched.alphas_cumprod
    final = torch.tensor(1.0) if sched.config.set_alpha_to_one else ac[0]
    step_ratio = sched.config.num_train_timesteps // N

    def tmap_of(tokens):
        if not state["probs"]:
            raise ValueError(f"no cross-attention layer at the mask level {hm}x{wm} (factor {mf})")
        return subject_map(state, tokens)

    # Stage 1. Each branch encodes the uncond (negative) prompt with its own text encoder.
    van_c, van_u = encode(vtok, vte, vconv(y_c)), encode(vtok, vte, vconv(neg))
    per_c, per_u = encode(ptok, pte, pconv(prompt)), encode(ptok, pte, pconv(neg))
    tok_c = subject_tokens(vtok, vconv(y_c), vconv(C))
    tok_p = subject_tokens(ptok, pconv(prompt), pconv(P))
    z = noise.clone()
    traj, ctx_maps = [z.clone()], []
    state["kv"] = {}
    for k, t in enumerate(ts):
        state.update(step=k, role="record", probs=[])
        if k < lam1:
            eps = cfg_eps(vunet, z, t, van_c, van_u, w)
            ctx_maps.append(tmap_of(tok_c))
        else:
            eps = cfg_eps(punet, z, t, per_c, per_u, w)
            ctx_maps.append(tmap_of(tok_p))
        z = sched.step(eps, t, z).prev_sample
        traj.append(z.clone())
    ctx_kv = state["kv"]

    # References: inversion (no CFG), then per-step CFG passes recording K/V and maps.
    ref_c, ref_u = encode(ptok, pte, pconv(y_r)), encode(ptok, pte, pconv(neg))
    tok_r = subject_tokens(ptok, pconv(y_r), pconv(P))
    ref_kvs, ref_mapss = [], []
    for img in refs:
        with torch.no_grad():
            x = vae.encode(img).latent_dist.mean * vae.config.scaling_factor
        assert tuple(x.shape[2:]) == (H, W), (tuple(x.shape), H, W)
        zr = {}
        state.update(role="plain")
        for t in reversed(ts):
            tm = t - step_ratio
            a_tm = ac[tm] if tm >= 0 else final
            a_t = ac[t]
            state["probs"] = []
            with torch.no_grad():
                out = punet(x, t, encoder_hidden_states=ref_c).sample
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
            cfg_eps(punet, zr[t], t, ref_c, ref_u, w)
            ref_maps.append(tmap_of(tok_r))
        ref_kvs.append(state["kv"])
        ref_mapss.append(ref_maps)

    # Stage 2: the target.
    state.update(ctx_kv=ctx_kv, ref_kv=ref_kvs)
    out = {"context_latents": traj[-1]}
    zt = traj[0].clone()
    tgt_prev = None
    n = noise.shape[0]
    fractions = []
    for k, t in enumerate(ts):
        if k == 0:
            masks = None
        else:
            if R == 1:
                mr = (ref_mapss[0][k - 1] >= tau).float().expand(n, -1)
            else:
                mr = (torch.cat([ref_mapss[i % R][k - 1] for i in range(n)]) >= tau).float()
            masks = {
                "size": (hm, wm),
                "r": mr,
                "c": (ctx_maps[k - 1] >= tau).float(),
                "t": (tgt_prev >= tau).float(),
            }
            for key in ("r", "c", "t"):
                out[f"mask_{key}_step{k}"] = masks[key].contiguous()
            for key, m in (("r", torch.cat([ref_mapss[i % R][k - 1] for i in range(n)])),
                           ("c", ctx_maps[k - 1]), ("t", tgt_prev)):
                check_robust(f"mask_{key}", k, m, lambda x: (x >= tau).float())
        state.update(step=k, role="target", probs=[], masks=masks)
        eps = cfg_eps(punet, zt, t, per_c, per_u, w)
        zt = sched.step(eps, t, zt).prev_sample
        tmap = tmap_of(tok_p)
        if k >= blend_start and blend != "off":
            mb = blend_mask(tmap, blend, hm, wm, H, W)
            check_robust("blend", k, tmap,
                         otsu_binary if blend == "otsu" else (lambda x: (x >= float(blend)).float()))
            zt = mb * zt + (1 - mb) * traj[k + 1]
            out[f"blend_step{k}"] = mb.contiguous()
            fractions.append(mb.mean((1, 2, 3)))
        tgt_prev = tmap
    out["latents"] = zt
    out["lambda1"] = torch.tensor(lam1)
    from diffusers.models.attention_processor import AttnProcessor
    for m in (vunet, punet):
        m.set_attn_processor(AttnProcessor())
    info = {"blend_fraction": fractions, "swap_sites": sorted(state["swap_sites"]),
            "mask_sites": sorted(state["mask_sites"]), "levels": levels,
            "blend_start": blend_start, "mask_size": (hm, wm),
            "subject_tokens": {"prompt": tok_p, "class": tok_c, "reference": tok_r}}
    return out, info
