"""Peak memory per stage of the full Karlo v1 alpha configuration, computed without its weights.

Each stage is built with its parameters on the meta device, then materialised as fake tensors
(``torch._subclasses.FakeTensorMode``: CPU tensors without storage) and one denoising forward
runs under ``torch.distributed._tools.MemTracker``, which counts every live storage: the stage's
weights plus the peak of its activations for one call (classifier-free guidance doubles the
prior's and the decoder's batch; the super-resolution stage has none). Kernels take their
branch-free path (as under torch.compile and on a GPU), since fake tensors hold no values. Sampling holds no more
than one call's activations at a time (no gradients), so this is the stage's peak up to the
allocator's slack and the sampler's few x-sized buffers.

The configuration is Karlo v1 alpha's, as published in diffusers' conversion script
(``scripts/convert_kakao_brain_unclip_to_diffusers.py``: PriorTransformer defaults, 32 heads x
64 = 2048 wide, 20 layers, CLIP dim 768, 77 tokens; decoder UNet2DConditionModel 64 px,
block_out_channels (320, 640, 960, 1280), 3 layers per block, attention at 32/16/8 px with 64
channels per head, cross-attention width 1536, 4 CLIP context tokens; two super-resolution
UNet2DModels 64 -> 256 px with the same channels and no attention) and OpenAI CLIP ViT-L/14's
text tower (12 layers, width 768, 77 tokens, vocabulary 49408).

    python -m dalle2_fast.bench.stage_memory [--batch 1]
"""
from __future__ import annotations

import argparse

import torch

from dalle2_fast.diffusion import DiffusionConfig


def karlo_stages():
    """(name, build(), inputs(batch) -> (args, kwargs), rows per image) of the full Karlo stages."""
    from dalle2_fast.models.decoder import DecoderConfig, UnCLIPDecoder
    from dalle2_fast.models.prior import DiffusionPrior, DiffusionPriorConfig
    from dalle2_fast.models.unet import UNetConfig
    from dalle2_fast.models.upsampler import UnCLIPUpsampler, UpsamplerConfig

    x0 = DiffusionConfig(mean_type="x0", var_type="fixed_small")
    prior = DiffusionPriorConfig(clip_dim=768, text_width=768, text_len=77, width=2048, layers=20, heads=32,
                                 cond_drop_prob=0.0, n_candidates=1, diffusion=x0, embed_norm="mean_std",
                                 raw_embeddings=True, uncond="empty_prompt", x0_clamp=5.0)
    dec_unet = UNetConfig(image_size=64, in_channels=3, model_channels=320, channel_mult=(1, 2, 3, 4),
                          num_res_blocks=3, attention_resolutions=(32, 16, 8), num_head_channels=64, learn_sigma=True,
                          use_scale_shift_norm=True, resblock_updown=True, cond_dim=768, context_dim=1536,
                          cond_tokens=4)
    dec = DecoderConfig(unet=dec_unet, diffusion=DiffusionConfig(mean_type="eps", var_type="learned_range",
                                                                 loss="hybrid"),
                        clip_dim=768, text_width=768, text_len=77, text_drop_prob=0.0, text_proj_order="linear_norm",
                        text_embed_to_time=True, null_image_embed="learned", uncond="empty_prompt",
                        raw_embeddings=True)
    sr_unet = UNetConfig(image_size=256, in_channels=3, low_res_channels=3, model_channels=320,
                         channel_mult=(1, 2, 3, 4), num_res_blocks=3, attention_resolutions=(), resblock_updown=True)
    sr = UpsamplerConfig(unet=sr_unet, low_res=64, high_res=256, low_res_upsample="bicubic_antialias",
                         last_step_unet=True)

    def prior_in(b):
        return (torch.randn(b, 768), torch.full((b,), 500), torch.randn(b, 77, 768), torch.ones(b, 77, dtype=torch.bool),
                torch.randn(b, 768)), {}

    def dec_in(b):
        return (torch.randn(b, 3, 64, 64), torch.full((b,), 500), torch.randn(b, 768), torch.randn(b, 77, 768),
                torch.ones(b, 77, dtype=torch.bool), torch.randn(b, 768)), {}

    def sr_in(b):
        return (torch.randn(b, 3, 256, 256), torch.full((b,), 500), torch.randn(b, 3, 256, 256)), {}

    return [("prior", lambda: DiffusionPrior(prior), prior_in, 2),
            ("decoder", lambda: UnCLIPDecoder(dec), dec_in, 2),
            ("super-resolution (both networks held)", lambda: UnCLIPUpsampler(sr), sr_in, 1)]


def clip_text_weights_bytes(dtype_bytes: int = 4) -> int:
    """OpenAI CLIP ViT-L/14's text tower + projection: parameters x bytes (from its published sizes)."""
    w, layers, ctx, vocab = 768, 12, 77, 49408
    per_layer = 4 * w * w + 4 * w + 8 * w * w + 5 * w + 4 * w  # attention, MLP (4x), two LayerNorms
    return (vocab * w + ctx * w + layers * per_layer + 2 * w + w * 768) * dtype_bytes


def measure(build, inputs, rows: int, batch: int = 1, dtype: torch.dtype = torch.float32) -> dict:
    """{'weights': bytes, 'peak': bytes} of one forward of ``build()`` on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from dalle2_fast.interop._io import empty_model

    model = empty_model(build).eval()
    if dtype != torch.float32:
        for p in model.parameters():  # still on the meta device: no memory
            p.data = p.data.to(dtype)
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        model = model.to_empty(device="cpu")
        args, kwargs = inputs(batch * rows)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    tracker = MemTracker()
    tracker.track_external(model, *[a for a in args if isinstance(a, torch.Tensor)])
    amp = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)
    from unittest import mock

    # fake tensors hold no values: kernels take the branch-free path they take under torch.compile / on GPU
    with fake, tracker, torch.no_grad(), amp, mock.patch.object(torch.compiler, "is_compiling", lambda: True):
        model(*args, **kwargs)
    peak = sum(v for snap in tracker.get_tracker_snapshot("peak").values() for k, v in snap.items()
               if k == "Total")
    return {"weights": weights, "peak": peak}


def table(batch: int = 1) -> str:
    mib = 2**20
    rows = ["| stage | weights fp32 | peak fp32 (weights + one call) | weights bf16 | peak bf16 (autocast) |",
            "|---|---|---|---|---|"]
    peaks32, peaks16, all32, all16 = [], [], [], []
    for name, build, inputs, r in karlo_stages():
        a = measure(build, inputs, r, batch)
        b = measure(build, inputs, r, batch, torch.bfloat16)
        peaks32.append(a["peak"])
        peaks16.append(b["peak"])
        all32.append(a)
        all16.append(b)
        rows.append(f"| {name} | {a['weights'] / mib:,.0f} MiB | {a['peak'] / mib:,.0f} MiB | "
                    f"{b['weights'] / mib:,.0f} MiB | {b['peak'] / mib:,.0f} MiB |")
    t32, t16 = clip_text_weights_bytes(4), clip_text_weights_bytes(2)
    rows.append(f"| CLIP ViT-L/14 text (weights, computed) | {t32 / mib:,.0f} MiB | - | {t16 / mib:,.0f} MiB | - |")
    whole = [sum(m["weights"] for m in ms) + t + max(m["peak"] - m["weights"] for m in ms)
             for ms, t in ((all32, t32), (all16, t16))]
    rows += ["", f"Batch {batch} image(s). Stage-by-stage offload (``UnCLIPPipeline.enable_offload``) needs "
             f"max(stage peak) on the accelerator: {max(peaks32) / mib:,.0f} MiB in float32, "
             f"{max(peaks16) / mib:,.0f} MiB in bfloat16; without offload, every stage's weights plus the "
             f"largest call's activations: {whole[0] / mib:,.0f} MiB and {whole[1] / mib:,.0f} MiB."]
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args(argv)
    print(table(a.batch))


if __name__ == "__main__":
    main()
