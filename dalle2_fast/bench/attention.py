"""Flash-attention benchmark cases (issue 4).

FLOPs: 4 * B * H * Sq * Sk * D for the forward (two GEMMs), 2.5x that for the backward (so a
forward + backward step counts 3.5x), half of each for causal Sq = Sk. The baseline is
``F.scaled_dot_product_attention`` measured in the same run.

CPU: (4, 8, 1024, 64) float32 forward, plus a smaller forward + backward step, cross-attention
to 81 tokens, and two decoding shapes (3 and 1 queries per head against a cache). Variants: the
``cpu`` dispatch backend (SDPA-backed, see ops.attention.CPU_BACKEND_REASON), our C++ flash
kernel (``cpp-flash``: the custom op the CUDA kernel mirrors — measured to justify the CPU
choice), the ``torch`` explicit-math reference, and SDPA (baseline).
GPU: bfloat16, head dims 64 and 128, sequence 512..8192 at 16k tokens per batch (the
FlashAttention papers' sweep), the diffusion U-Net shapes (16, 8, 1024, 64) and
(16, 8, 4096, 64), and cross-attention to 81 text + CLIP tokens; forward and forward + backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dalle2_fast import _ext
from dalle2_fast.bench.core import Case, Variant
from dalle2_fast.ops import attention
from dalle2_fast.ops.attention import _attention_ext, attention_family

FAMILY = "attention"


def _flops(B, H, Sq, Sk, D, causal, mode):
    f = 4.0 * B * H * Sq * Sk * D * (0.5 if causal else 1.0)
    return f * (3.5 if mode == "fwdbwd" else 1.0)


def _step(fn, q, k, v, go, mode):
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(q, k, v)
        return run

    def run_bwd():
        out = fn(q, k, v)
        return torch.autograd.grad(out, (q, k, v), go)
    return run_bwd


def _shapes(device: str, quick: bool):
    """(B, H, Sq, Sk, D, causal, dtype, mode)"""
    if device == "cpu":
        f32 = torch.float32
        if quick:
            return [(4, 8, 1024, 1024, 64, False, f32, "fwd"), (2, 4, 512, 512, 64, False, f32, "fwdbwd")]
        return [(4, 8, 1024, 1024, 64, False, f32, "fwd"), (4, 8, 1024, 1024, 64, True, f32, "fwd"),
                (2, 8, 1024, 1024, 64, False, f32, "fwdbwd"), (16, 8, 1024, 81, 64, False, f32, "fwd"),
                # a few queries against a cache (the few-rows path): a prior step's 3 trailing
                # tokens of 8 rows (CFG), the AR prior's one new code of 32 rows; padded keys as in
                # a compacted prefix cache (cases(): half the rows an 8-token prompt)
                (8, 4, 3, 81, 64, False, f32, "fwd"), (32, 4, 1, 110, 64, False, f32, "fwd")]
    bf = torch.bfloat16
    out = []
    seqs = (1024, 4096) if quick else (512, 1024, 2048, 4096, 8192)
    for D in (64, 128):
        for S in seqs:
            for causal in (False, True):
                for mode in ("fwd", "fwdbwd"):
                    out.append((max(1, 16384 // S), 2048 // D, S, S, D, causal, bf, mode))
    for mode in ("fwd", "fwdbwd"):
        out += [(16, 8, 1024, 1024, 64, False, bf, mode), (16, 8, 4096, 4096, 64, False, bf, mode),
                (16, 8, 4096, 81, 64, False, bf, mode)]
    return out


def _name(B, H, Sq, Sk, D, causal, dt, mode) -> str:
    return f"{mode}-B{B}-H{H}-Sq{Sq}-Sk{Sk}-D{D}{'-causal' if causal else ''}-{str(dt).replace('torch.', '')}"


def specs(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Name and params of every case, without building tensors (for the roofline)."""
    return [dict(name=_name(*s), params=dict(B=s[0], H=s[1], Sq=s[2], Sk=s[3], D=s[4], causal=s[5], mode=s[7],
                                             dtype=str(s[6]))) for s in _shapes(device, quick)]


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    out = []
    g = torch.Generator(device="cpu").manual_seed(0)
    for B, H, Sq, Sk, D, causal, dt, mode in _shapes(device, quick):
        need_grad = mode == "fwdbwd"
        q = torch.randn(B, H, Sq, D, generator=g).to(device=device, dtype=dt).requires_grad_(need_grad)
        k = torch.randn(B, H, Sk, D, generator=g).to(device=device, dtype=dt).requires_grad_(need_grad)
        v = torch.randn(B, H, Sk, D, generator=g).to(device=device, dtype=dt).requires_grad_(need_grad)
        go = torch.randn_like(q)
        mask = keep = None
        if device == "cpu" and Sq <= 16:  # a decoding cache: half the rows a short prompt, the rest spread
            lens = torch.cat([torch.linspace(Sk // 4, Sk, B - B // 2).round().long(), torch.full((B // 2,), 8)])
            mask = torch.arange(Sk)[None] >= lens[:, None]  # True = padding
            keep = ~mask[:, None, None, :]
        variants, missing = [], {}
        for b in attention_family.available(device, dt):
            if b == "triton" and device == "cpu":
                continue  # the interpreter is a test tool, not a CPU backend
            if b == "torch" and B * H * Sq * Sk > (1 << 28):
                missing["torch"] = "explicit (B, H, Sq, Sk) scores too large for this shape"
                continue
            # every loop value bound now (a closure reads the loop's last values when it runs)
            fn = (lambda q, k, v, b=b, c=causal, m=mask: attention(q, k, v, causal=c, key_padding_mask=m, backend=b))
            variants.append(Variant(b, _step(fn, q, k, v, go, mode), "ours"))
        if device == "cpu":
            if _ext.loaded():
                fn = (lambda q, k, v, c=causal, m=mask, s=D**-0.5: _attention_ext(q, k, v, m, c, s))
                variants.append(Variant("cpp-flash", _step(fn, q, k, v, go, mode), "ours"))
            else:
                missing["cpp-flash"] = "C++ extension not built"
        # The baseline: SDPA with top-left is_causal equals our bottom-right causal when Sq = Sk.
        assert not causal or Sq == Sk
        sdpa = (lambda q, k, v, c=causal, m=keep: F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=c))
        variants.append(Variant("sdpa", _step(sdpa, q, k, v, go, mode), "baseline"))
        name = _name(B, H, Sq, Sk, D, causal, dt, mode)
        params = dict(B=B, H=H, Sq=Sq, Sk=Sk, D=D, causal=causal, mode=mode, dtype=str(dt))
        if mask is not None:
            params["real_keys"] = (~mask).sum(1).tolist()
        out.append(Case(FAMILY, name, params,
                        variants, "sdpa", flops=_flops(B, H, Sq, Sk, D, causal, mode), missing=missing,
                        device=device))
    return out
