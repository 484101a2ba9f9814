"""Prior checkpoints written before the redesign (v1: the priors' own transformer block with
``qkv``/``proj``, the diffusion prior's ``timesteps``/``embed_scale`` config keys) load through
the ``_upgrade_config`` / ``_upgrade_state_dict`` hooks and predict what the v1 network did.

The v1 network is re-implemented here (a frozen copy of its forward, with a float64 masked
softmax for attention) so the comparison does not go through the code under test."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dalle2_fast.checkpoint import CheckpointError, config_from_dict, load_state_strict
from dalle2_fast.models.prior import (ARPriorConfig, AutoregressivePrior, DiffusionPrior, DiffusionPriorConfig,
                                      prior_diffusion_config)
from dalle2_fast.models.prior._v1 import convert_v1_diffusion_prior_config, convert_v1_state_dict
from dalle2_fast.models.prior.conditioning import TextConditioning
from dalle2_fast.nn import Transformer
from dalle2_fast.nn.embeddings import timestep_embedding
from dalle2_fast.pipeline import shipped_weights_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def causal_attention_f64(q, k, v, kpm):
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    n = s.shape[-1]
    allowed = torch.ones(n, n, dtype=torch.bool).tril() & ~kpm[:, None, None, :]
    return (s.masked_fill(~allowed, float("-inf")).softmax(-1) @ v.double()).to(q.dtype)


class OldBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x, kpm):
        b, s, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = causal_attention_f64(q, k, v, kpm)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, w))
        return x + self.mlp(self.ln2(x))


class OldTransformer(nn.Module):
    def __init__(self, width, layers, heads, max_len):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.01)
        self.blocks = nn.ModuleList(OldBlock(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)

    def forward(self, x, kpm):
        x = x + self.pos[: x.shape[1]]
        for blk in self.blocks:
            x = blk(x, kpm)
        return self.ln(x)


class OldDiffusionPrior(nn.Module):
    """The v1 diffusion prior's network (x0 prediction)."""

    def __init__(self, clip_dim, text_width, text_len, width, layers, heads, **_):
        super().__init__()
        self.width = width
        self.text = TextConditioning(text_width, text_len, clip_dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.x_proj = nn.Linear(clip_dim, width)
        self.query = nn.Parameter(torch.randn(width) * 0.02)
        self.transformer = OldTransformer(width, layers, heads, text_len + 4)
        self.out = nn.Linear(width, clip_dim)
        self.register_buffer("embed_scale", torch.tensor(math.sqrt(clip_dim)))

    def forward(self, x_t, t, text_tokens, text_mask, text_embed, drop=None):
        b = x_t.shape[0]
        tok, mask, emb = self.text(text_tokens, text_mask, text_embed * self.embed_scale, drop)
        tim = self.time_mlp(timestep_embedding(t, self.width))[:, None]
        seq = torch.cat([tok, emb, tim, self.x_proj(x_t)[:, None], self.query.expand(b, 1, -1)], dim=1)
        h = self.transformer(seq, ~torch.cat([mask, mask.new_ones(b, 4)], dim=1))
        return self.out(h[:, -1])


def randomise(module, seed):
    """Every parameter random (LayerNorm too), so a swapped or dropped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def inputs(b, d, l, w, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[:, l // 2:] = torch.rand(b, l - l // 2, generator=g) < 0.5
    return (torch.randn(b, d, generator=g) * 2, torch.randint(0, 1000, (b,), generator=g),
            torch.randn(b, l, w, generator=g), mask, F.normalize(torch.randn(b, d, generator=g), dim=-1))


def test_transformer_v1_state_converts_to_the_same_outputs():
    """The shared block (both priors): a fresh v1-layout stack, converted, gives its outputs."""
    old = randomise(OldTransformer(24, 2, 3, 9), 0)
    new = Transformer(24, 2, 3, 9)
    state = convert_v1_state_dict({f"transformer.{k}": v for k, v in old.state_dict().items()})
    assert any(".attn.to_qkv." in k for k in state) and not any(".qkv." in k for k in state if "to_qkv" not in k)
    new.load_state_dict({k[len("transformer."):]: v for k, v in state.items()}, strict=True)
    x = torch.randn(3, 9, 24)
    kpm = torch.rand(3, 9) < 0.3
    kpm[:, 0] = False
    torch.testing.assert_close(new(x, kpm), old(x, kpm), atol=1e-5, rtol=1e-4)


def test_fresh_v1_diffusion_prior_converts_to_the_same_x0():
    dims = dict(clip_dim=12, text_width=10, text_len=5, width=32, layers=2, heads=4)
    old = randomise(OldDiffusionPrior(**dims), 1)
    new = DiffusionPrior(DiffusionPriorConfig(**dims))
    load_state_strict(new, DiffusionPrior._upgrade_state_dict(old.state_dict(), new.config), "v1")
    x, t, tok, mask, emb = inputs(4, 12, 5, 10, 2)
    drop = torch.tensor([False, True, False, True])
    with torch.no_grad():
        torch.testing.assert_close(new(x, t, tok, mask, emb), old(x, t, tok, mask, emb), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(new(x, t, tok, mask, emb, drop), old(x, t, tok, mask, emb, drop),
                                   atol=1e-5, rtol=1e-4)


def test_v1_config_keys_become_the_diffusion_config():
    v1 = {"clip_dim": 64, "text_width": 128, "text_len": 24, "width": 128, "layers": 4, "heads": 2,
          "timesteps": 500, "cond_drop_prob": 0.1, "embed_scale": 8.0}
    cfg = config_from_dict(DiffusionPriorConfig, DiffusionPrior._upgrade_config(dict(v1)))
    assert cfg.diffusion.num_timesteps == 500
    assert cfg.diffusion == config_from_dict(type(cfg.diffusion), {**vars(prior_diffusion_config()),
                                                                   "num_timesteps": 500})
    assert convert_v1_diffusion_prior_config(convert_v1_diffusion_prior_config(v1)) == \
        convert_v1_diffusion_prior_config(v1)  # idempotent: a current config passes unchanged
    with pytest.raises(ValueError, match="both"):
        convert_v1_diffusion_prior_config({**v1, "diffusion": {}})


@pytest.mark.skipif(shipped_weights_dir() is None, reason="this build ships no unCLIP weights")
def _to_v1_keys(state):
    """The inverse of convert_v1_state_dict (a pure rename): the current layout -> v1 keys."""
    old = {"attn.to_qkv": "qkv", "attn.to_out": "proj"}
    out = {}
    for k, v in state.items():
        for new, o in old.items():
            if k.startswith("transformer.blocks.") and f".{new}." in k:
                k = k.replace(f".{new}.", f".{o}.")
        out[k] = v
    return out


def test_shipped_prior_predicts_what_the_v1_network_did(tmp_path):
    """The shipped prior (trained as a v1 checkpoint, converted once to the current layout): its
    v1 form (keys renamed back, v1 config keys) loads through the upgrade hooks, and both it and the
    shipped file predict what the frozen v1 network holding the same tensors computes."""
    path = shipped_weights_dir() / "prior.safetensors"
    new = DiffusionPrior.from_pretrained(path)
    c = new.config
    v1_config = {"clip_dim": c.clip_dim, "text_width": c.text_width, "text_len": c.text_len, "width": c.width,
                 "layers": c.layers, "heads": c.heads, "timesteps": c.diffusion.num_timesteps,
                 "cond_drop_prob": c.cond_drop_prob, "embed_scale": float(new.embed_scale)}
    v1_state = _to_v1_keys(load_file(str(path)))
    old = OldDiffusionPrior(**v1_config)
    old.load_state_dict(v1_state, strict=True)
    v1_file = tmp_path / "prior_v1.safetensors"
    save_file({k: v.contiguous() for k, v in v1_state.items()}, str(v1_file),
              metadata={"dalle2_fast": json.dumps({"model_type": "unclip_diffusion_prior", "format_version": 1,
                                                   "config": v1_config})})
    via_hooks = DiffusionPrior.from_pretrained(v1_file)
    with pytest.raises(CheckpointError, match="missing tensors"):  # the conversion is what makes it load
        load_state_strict(DiffusionPrior(new.config), v1_state, str(v1_file))
    assert via_hooks.config == new.config and float(via_hooks.embed_scale) == pytest.approx(v1_config["embed_scale"])
    x, t, tok, mask, emb = inputs(5, c.clip_dim, c.text_len, c.text_width, 3)
    drop = torch.tensor([False, True, False, False, True])
    with torch.no_grad():
        want, want_drop = old(x, t, tok, mask, emb), old(x, t, tok, mask, emb, drop)
        for model in (new, via_hooks):
            torch.testing.assert_close(model(x, t, tok, mask, emb), want, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(model(x, t, tok, mask, emb, drop), want_drop, atol=1e-5, rtol=1e-4)
    z = new.sample(SimpleNamespace(tokens=tok, mask=mask, embed=emb), range(5), steps=4, guidance=2.0)
    assert z.shape == (5, c.clip_dim) and torch.isfinite(z).all()
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(5))


def test_ar_prior_v1_checkpoint_loads_through_the_hook(tmp_path):
    cfg = ARPriorConfig(clip_dim=8, text_width=6, text_len=4, n_components=3, n_buckets=4, n_dot_buckets=2,
                        width=16, layers=2, heads=2)
    torch.manual_seed(0)
    p = AutoregressivePrior(cfg)
    path = p.save_pretrained(tmp_path / "ar.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    v1 = {k.replace(".attn.to_qkv.", ".qkv.").replace(".attn.to_out.", ".proj."): v
          for k, v in load_file(str(path)).items()}  # the v1 key names
    assert v1.keys() != p.state_dict().keys()
    save_file(v1, str(path), metadata=meta)
    back = AutoregressivePrior.from_pretrained(path)
    for k, v in p.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
