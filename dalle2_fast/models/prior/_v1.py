"""Checkpoints of the priors written before the redesign (issue 14), converted on load.

v1 priors had their own transformer block: ``transformer.blocks.N.qkv`` (Linear, 3 * width
output channels ordered [q|k|v][head][c]) and ``transformer.blocks.N.proj``. They are now
``nn.TransformerBlock``'s ``attn.to_qkv`` (the same 'new' channel order) and ``attn.to_out``:
a rename, no tensor changes. The diffusion prior's v1 config had ``timesteps`` (its own cosine
schedule) and ``embed_scale`` (the fitted scale, also held by the ``embed_scale`` buffer).
"""
from __future__ import annotations

import re

import torch

_V1_BLOCK_KEY = re.compile(r"^(transformer\.blocks\.\d+\.)(qkv|proj)\.(weight|bias)$")
_NEW_NAME = {"qkv": "attn.to_qkv", "proj": "attn.to_out"}


def convert_v1_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """v1 prior state dict -> the current layout (keys already current pass unchanged)."""
    out = {}
    for k, v in state.items():
        m = _V1_BLOCK_KEY.match(k)
        out[f"{m[1]}{_NEW_NAME[m[2]]}.{m[3]}" if m else k] = v
    return out


def convert_v1_diffusion_prior_config(d: dict) -> dict:
    """v1 ``DiffusionPriorConfig`` dict -> the current one: ``timesteps`` T becomes
    ``diffusion`` = the cosine, T-step, x0-predicting, fixed-small, L_simple process it ran;
    ``embed_scale`` is dropped (the saved buffer holds the same number)."""
    d = dict(d)
    if "timesteps" in d:
        if "diffusion" in d:
            raise ValueError("DiffusionPriorConfig: a config has both the v1 'timesteps' and 'diffusion'")
        d["diffusion"] = {"schedule": "cosine", "num_timesteps": int(d.pop("timesteps")), "mean_type": "x0",
                          "var_type": "fixed_small", "loss": "simple"}
    d.pop("embed_scale", None)
    return d


__all__ = ["convert_v1_state_dict", "convert_v1_diffusion_prior_config"]
