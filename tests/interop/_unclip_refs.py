"""Tiny reference unCLIP components (diffusers / transformers, the implementations the importers
are proven against), every weight random and non-zero, saved in their own folder layouts."""
from __future__ import annotations

import json
from pathlib import Path

import torch

L, D, HIDDEN = 16, 32, 32  # context length, CLIP embedding dim, text width (Karlo: 77, 768, 768)
PROMPTS = ["a red cube on a wooden table", "an astronaut riding a horse in a photorealistic style",
           "two cats"]


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and floating buffer random (diffusers zero-initialises several: prd_embedding,
    positional_embedding, clip_mean/clip_std, the learned null embedding), norm gains near 1,
    matrices scaled by 1/sqrt(fan_in) so activations stay O(1); ``clip_std`` positive."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point() or "causal_attention_mask" in name or "position_ids" in name:
                continue
            r = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if name.endswith("clip_std"):
                p.copy_(0.5 + r.abs())
            elif name.endswith("clip_mean"):
                p.copy_(0.3 * r)
            elif p.dim() == 1 and name.endswith("weight"):  # norm gains
                p.copy_(1 + 0.2 * r)
            elif p.dim() == 1 or name.endswith(("embedding", "embeddings", "prd_embedding")):
                p.copy_(0.3 * r)
            else:
                p.copy_(r / max(1, p[0].numel()) ** 0.5)
    return module.eval()


def write_tokenizer(folder: Path, max_length: int = L, pad_token: str = "!"):
    """transformers' CLIPTokenizer over OpenAI CLIP's BPE (the vocabulary open_clip ships), padded
    with '!' as Karlo's conversion does; saved to ``folder``."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    st = SimpleTokenizer()
    enc = dict(st.encoder)
    enc["<|startoftext|>"], enc["<|endoftext|>"] = enc.pop("<start_of_text>"), enc.pop("<end_of_text>")
    src = folder.parent / (folder.name + "_src")
    src.mkdir(parents=True, exist_ok=True)
    (src / "vocab.json").write_text(json.dumps(enc))
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.get)
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer.from_pretrained(str(src), pad_token=pad_token, model_max_length=max_length)
    tok.save_pretrained(str(folder))
    return tok


def text_encoder(seed: int = 0, act: str = "quick_gelu", layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=layers,
                         num_attention_heads=2, max_position_embeddings=L, hidden_act=act, projection_dim=D)
    return randomize(CLIPTextModelWithProjection(cfg), seed)


def prior(seed: int = 1, **kw):
    from diffusers import PriorTransformer

    args = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, embedding_dim=D, num_embeddings=L,
                additional_embeddings=4)
    args.update(kw)
    return randomize(PriorTransformer(**args), seed)


def text_proj(seed: int = 2, model_channels: int = 32, ctx: int = 48):
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    return randomize(UnCLIPTextProjModel(clip_extra_context_tokens=4, clip_embeddings_dim=D,
                                         time_embed_dim=4 * model_channels, cross_attention_dim=ctx), seed)


def decoder(seed: int = 3, size: int = 16, ctx: int = 48):
    from diffusers import UNet2DConditionModel

    return randomize(UNet2DConditionModel(
        sample_size=size, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=ctx, attention_head_dim=16,
        resnet_time_scale_shift="scale_shift", class_embed_type="identity", norm_num_groups=32), seed)


def super_res(seed: int, size: int = 32, shift: str = "default"):
    from diffusers import UNet2DModel

    return randomize(UNet2DModel(
        sample_size=size, in_channels=6, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D",) * 2, up_block_types=("ResnetUpsampleBlock2D",) * 2,
        add_attention=False, resnet_time_scale_shift=shift, norm_num_groups=32), seed)


def schedulers():
    """Karlo's three schedulers (diffusers' conversion script values)."""
    from diffusers import UnCLIPScheduler

    return (UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                            clip_sample_range=5.0),
            UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon", num_train_timesteps=1000),
            UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon", num_train_timesteps=1000))


def karlo_pipeline(folder: Path):
    """A tiny diffusers UnCLIPPipeline in Karlo's layout, saved to ``folder``; returns it."""
    from diffusers import UnCLIPPipeline

    tok = write_tokenizer(folder / "_tok")
    ps, ds, ss = schedulers()
    pipe = UnCLIPPipeline(prior=prior(), decoder=decoder(), text_encoder=text_encoder(), tokenizer=tok,
                          text_proj=text_proj(), super_res_first=super_res(4), super_res_last=super_res(5),
                          prior_scheduler=ps, decoder_scheduler=ds, super_res_scheduler=ss)
    pipe.save_pretrained(str(folder))
    return pipe


def text_inputs(b: int, seed: int = 7, width: int = HIDDEN, dim: int = D):
    """Token features (B, L, W), a mask with varied padding (1 real token .. none padded), and text
    embeddings whose norms are far from 1."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.randn(b, L, width, generator=g)
    lengths = torch.linspace(2, L, b).round().long()
    mask = torch.arange(L)[None] < lengths[:, None]
    emb = torch.randn(b, dim, generator=g) * torch.linspace(0.3, 4.0, b)[:, None]
    return tok, mask, emb


def close(ours: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5) -> float:
    """Max abs error, asserted within ``tol`` x max(1, output scale)."""
    err = (ours.double() - ref.double()).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= tol * scale, f"max abs err {err:.3g} vs output scale {scale:.3g} (tol {tol})"
    return err


class Recorder:
    """Records our samplers' noise draws (``NoiseSource.draw``: x_T first, then one per step) and x
    after every step (``_check_finite`` sees each), in call order over stages."""

    def __enter__(self):
        from dalle2_fast.diffusion import plan, samplers

        self.draws, self.xs, self._plan, self._samplers = [], [], plan, samplers
        self._draw, self._check = plan.NoiseSource.draw, samplers._check_finite

        def draw(src):
            z = self._draw(src)
            self.draws.append(z)
            return z

        def check(x, k, t):
            self.xs.append(x.clone())
            return self._check(x, k, t)

        plan.NoiseSource.draw = draw
        samplers._check_finite = check
        return self

    def __exit__(self, *exc):
        self._plan.NoiseSource.draw = self._draw
        self._samplers._check_finite = self._check


def double_tables(sched) -> None:
    """The scheduler's tables recomputed in float64 (its own are float32: near t = 0, 1 - abar in
    float32 is off by ~1e-3 relative, more than the comparison tolerates). The float64 betas are the
    same cosine formula (Nichol & Dhariwal Eq. 17, capped at 0.999), checked against theirs."""
    from dalle2_fast.diffusion import cosine_betas

    betas = cosine_betas(sched.config.num_train_timesteps)
    torch.testing.assert_close(betas, sched.betas.double(), rtol=1e-5, atol=1e-7)
    sched.betas, sched.alphas = betas, 1.0 - betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, 0)
    sched.one = torch.tensor(1.0, dtype=torch.float64)


def scheduler_step(sched, model_out, t, x, prev, noise):
    """``sched.step`` with ``noise`` as its variance noise."""
    import diffusers.schedulers.scheduling_unclip as su

    saved = su.randn_tensor
    su.randn_tensor = lambda shape, **kw: noise.reshape(shape).to(kw.get("dtype") or noise.dtype)
    try:
        return sched.step(model_out, t, x, prev_timestep=prev).prev_sample
    finally:
        su.randn_tensor = saved
