"""U-Net benchmark cases (issue: model suite II): forward and forward+backward of an
ADM-64-like U-Net (the ``adm-64`` preset: channel_mult 1,2,3,4, 3 res blocks, attention at
32/16/8, AdaGN, BigGAN up/down) at reduced width, CPU float32 (GPU: bfloat16 autocast).

Variants, timed in the same run:
- ``auto``: our UNet with the default kernel dispatch (every norm is an ``nn.AdaGN`` on
  ``ops.adagn``, every attention an ``nn.Attention`` on ``ops.attention``: the fastest available
  backends);
- ``torch-backend`` (baseline): the same model with ``DALLE2_FAST_BACKEND=torch`` forced;
- ``channels-last``: ``auto`` with the model and input in channels-last memory format;
- ``guided-diffusion`` (peer, when ``guided-diffusion-sdk`` is installed): OpenAI's reference
  UNetModel with the very same weights (exported through ``to_guided_diffusion_state_dict``).
FLOPs are counted once per case with ``torch.utils.flop_counter`` (convs, matmuls, attention).
"""
from __future__ import annotations

import contextlib
import importlib.util

import torch
from torch.utils.flop_counter import FlopCounterMode

from dalle2_fast.bench.core import Case, Variant, forced_backend
from dalle2_fast.models.unet import UNet
from dalle2_fast.models.unet_configs import unet_preset

FAMILY = "unet"



def _settings(device: str, quick: bool) -> list[tuple[int, int, int]]:
    """(batch, model_channels, head_channels) per case; image 64x64."""
    if device == "cuda":
        return [(8, 64, 64)] if quick else [(16, 64, 64), (16, 128, 64)]
    return [(1, 32, 32)] if quick else [(2, 64, 64)]


def _name(mc: int, b: int, mode: str, device: str) -> str:
    return f"adm64-w{mc}-B{b}-{mode}-{'bf16' if device == 'cuda' else 'fp32'}"


def specs(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Name and params of every case, without building models (for the roofline)."""
    return [dict(name=_name(mc, b, mode, device), params=dict(batch=b, model_channels=mc, image=64, mode=mode),
                 head_channels=hc)
            for b, mc, hc in _settings(device, quick) for mode in ("fwd", "fwd+bwd")]


def _guided_peer(model: UNet, hc: int):
    """OpenAI's UNetModel with our weights, or None when guided-diffusion-sdk is absent."""
    if importlib.util.find_spec("guided_diffusion") is None:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from guided_diffusion.unet import UNetModel
    c = model.config
    peer = UNetModel(image_size=c.image_size, in_channels=c.in_channels, model_channels=c.model_channels,
                     out_channels=c.final_out_channels, num_res_blocks=c.num_res_blocks,
                     attention_resolutions=tuple(c.image_size // r for r in c.attention_resolutions),
                     dropout=c.dropout, channel_mult=c.channel_mult, num_head_channels=hc,
                     use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True)
    peer.load_state_dict(model.to_guided_diffusion_state_dict(use_new_attention_order=True))
    return peer


def _step(model, x, t, backward: bool):
    if not backward:
        with torch.no_grad():
            return model(x, t)
    model.zero_grad(set_to_none=True)
    out = model(x, t)
    out.float().square().mean().backward()
    return out


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    out = []
    g = torch.Generator().manual_seed(0)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    for b, mc, hc in _settings(device, quick):
        cfg = unet_preset("adm-64", model_channels=mc, num_head_channels=hc, dropout=0.0)
        model = UNet(cfg).to(device).train()
        model_cl = UNet(cfg).to(device).train()
        model_cl.load_state_dict(model.state_dict())
        model_cl = model_cl.to(memory_format=torch.channels_last)
        peer = _guided_peer(model, hc) if device == "cpu" else None
        x = torch.randn(b, 3, 64, 64, generator=g).to(device)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        t = torch.randint(0, 1000, (b,), generator=g).to(device)
        for backward in (False, True):

            def run(m=model, xx=x, bw=backward, forced=None):
                with amp, (forced_backend(forced) if forced else contextlib.nullcontext()):
                    return _step(m, xx, t, bw)

            variants = [
                Variant("auto", run, "ours"),
                Variant("torch-backend", lambda run=run: run(forced="torch"), "baseline"),
                Variant("channels-last", lambda run=run: run(m=model_cl, xx=x_cl), "ours"),
            ]
            missing = {}
            if peer is not None:
                variants.append(Variant("guided-diffusion", lambda run=run: run(m=peer), "peer"))
            else:
                missing["guided-diffusion"] = "guided-diffusion-sdk not installed" if device == "cpu" else "CPU only"
            with FlopCounterMode(display=False) as fc:
                run()
            mode = "fwd+bwd" if backward else "fwd"
            name = _name(mc, b, mode, device)
            out.append(Case(FAMILY, name, dict(batch=b, model_channels=mc, image=64, mode=mode), variants,
                            "torch-backend", flops=float(fc.get_total_flops()), missing=missing, device=device))
    return out
