"""Gated PixelCNN over code maps (van den Oord et al. 2016, "Conditional Image Generation with
PixelCNN Decoders"), the autoregressive prior of VQ-VAE-2.

Blind-spot-free vertical + horizontal stacks built with shifts instead of masks: the vertical
stack reads a down-shifted input (rows < i), the horizontal stack a right-shifted one (row i,
columns < j) plus the vertical stack's features at row i. Gated units
y = tanh(W_f x + V_f h) * sigmoid(W_g x + V_g h) (Eq. 2/4), conditioned on a class or caption
label (a vector h) and optionally on a code map (e.g. the top codes, for the bottom prior).
Optional causal self-attention on the horizontal stack (the top prior in VQ-VAE-2).

Fast sampling (no attention): per row, the vertical stack runs once on a band of rows as tall
as its receptive field; per pixel, the horizontal stack runs on that one row only; the label
and code-map conditioning is computed once per batch. Logits equal the full forward's.

Sampling is per-sample seeded: with ``seeds``, map i's uniforms (one per position) are drawn up
front from its own generator and each code is drawn from its categorical by inverse CDF, so map
i depends only on ``seeds[i]``, not on the batch it is drawn in.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.models.blocks import ConvDecoder
from dalle2_fast.models.categorical import sample_categorical
from dalle2_fast.nn.attention import Attention
from dalle2_fast.seeding import check_seeds, per_sample_rand


@dataclass(frozen=True)
class PixelCNNConfig:
    num_codes: int = 512
    height: int = 8
    width: int = 8
    channels: int = 64
    n_layers: int = 8
    kernel: int = 3  # odd; vertical kernel (kernel//2 + 1, kernel), horizontal (1, kernel//2 + 1)
    label: str = "class"  # 'none', 'class' (class ids (B,)) or 'caption' (token ids (B, L), 0 = padding)
    num_classes: int = 0  # label='class': the number of classes (must be given)
    vocab_size: int = 0  # label='caption': the token vocabulary size (must be given)
    cond_codes: int = 0  # > 0: conditioned on a code map with this many codes
    cond_up: int = 0  # ... of size (height, width) / 2^cond_up
    attention_every: int = 0  # > 0: causal self-attention after every k-th gated layer
    heads: int = 4


def _gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(self, C: int, k: int):
        super().__init__()
        self.k, self.kh = k, k // 2 + 1
        self.vconv = nn.Conv2d(C, 2 * C, (self.kh, k))
        self.hconv = nn.Conv2d(C, 2 * C, (1, self.kh))
        self.v2h = nn.Conv2d(2 * C, 2 * C, 1)
        self.hout = nn.Conv2d(C, C, 1)

    def v_step(self, v: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """v (B, C, h, W) -> (pre-activation (B, 2C, h, W), output (B, C, h, W)); row r sees rows <= r."""
        vp = self.vconv(F.pad(v, (self.k // 2, self.k // 2, self.kh - 1, 0)))
        return vp, _gate(vp + cond)

    def h_step(self, h: torch.Tensor, vp: torch.Tensor, cond) -> torch.Tensor:
        """h (B, C, h, W), vp from v_step at the same rows -> (B, C, h, W); column c sees <= c."""
        hp = self.hconv(F.pad(h, (self.kh - 1, 0, 0, 0))) + self.v2h(vp)
        return h + self.hout(_gate(hp + cond))


class CausalSelfAttention(nn.Module):
    """h + causal self-attention over the positions of a (B, C, H, W) map in raster order."""

    def __init__(self, C: int, heads: int):
        super().__init__()
        if C % heads:
            raise ValueError(f"PixelCNNConfig: channels {C} must be divisible by heads {heads}")
        self.norm = nn.LayerNorm(C)  # per position: a norm over positions would leak the future
        self.attn = Attention(C, heads=heads, causal=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, C, H, W = h.shape
        tokens = self.norm(h.permute(0, 2, 3, 1).reshape(B, H * W, C))  # (B, HW, C), raster order
        o = self.attn(tokens)  # position t sees positions <= t
        return h + o.reshape(B, H, W, C).permute(0, 3, 1, 2)


_V1_ATTN_KEY = re.compile(r"^(.*attn\.\d+\.)(qkv|proj)\.(weight|bias)$")


def convert_v1_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PixelCNN state dict written before the redesign -> the current layout: the attention's
    1x1 convs ``attn.N.qkv`` (3C, C, 1, 1) and ``attn.N.proj`` become ``nn.Attention``'s Linear
    ``attn.N.attn.to_qkv`` (3C, C) and ``attn.N.attn.to_out`` (the qkv channel order,
    [q|k|v][head][c], is the same). Works on any prefix (e.g. ``top_prior.``); current keys pass."""
    out = {}
    for k, v in state.items():
        m = _V1_ATTN_KEY.match(k)
        if m is None:
            out[k] = v
            continue
        name = "attn.to_qkv" if m[2] == "qkv" else "attn.to_out"
        out[f"{m[1]}{name}.{m[3]}"] = v.reshape(v.shape[0], v.shape[1]) if m[3] == "weight" else v
    return out


@register_model("pixelcnn")
class PixelCNN(nn.Module, Pretrained):
    config_class = PixelCNNConfig

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        self.config = c = config
        if c.kernel % 2 == 0 or c.kernel < 3:
            raise ValueError(f"PixelCNNConfig.kernel must be odd and >= 3, got {c.kernel}")
        if c.label not in ("none", "class", "caption"):
            raise ValueError(f"PixelCNNConfig.label must be 'none', 'class' or 'caption', got {c.label!r}")
        if c.label == "class" and c.num_classes < 1:
            raise ValueError(f"PixelCNNConfig.num_classes must be given (> 0) when label='class', got {c.num_classes}")
        if c.label == "caption" and c.vocab_size < 2:
            raise ValueError(f"PixelCNNConfig.vocab_size must be given (> 1, id 0 = padding) when label='caption', "
                             f"got {c.vocab_size}")
        if c.cond_codes > 0 and (c.height % (1 << c.cond_up) or c.width % (1 << c.cond_up)):
            raise ValueError(f"PixelCNNConfig: height {c.height} and width {c.width} must be divisible by 2^cond_up={1 << c.cond_up}")
        C = c.channels
        self.embed = nn.Embedding(c.num_codes, C)
        if c.label == "class":
            self.label_embed = nn.Embedding(c.num_classes, C)
        elif c.label == "caption":
            self.label_embed = nn.EmbeddingBag(c.vocab_size, C, mode="mean", padding_idx=0)
        if c.cond_codes > 0:
            self.cond_embed = nn.Embedding(c.cond_codes, C)
            self.cond_net = ConvDecoder(C, C, C, c.cond_up, 1)
        self.layers = nn.ModuleList(GatedLayer(C, c.kernel) for _ in range(c.n_layers))
        self.cond_proj = nn.ModuleList(nn.Conv2d(C, 2 * C, 1) for _ in range(c.n_layers))
        ae = c.attention_every
        self.attn = nn.ModuleDict({str(i): CausalSelfAttention(C, c.heads) for i in range(c.n_layers)
                                   if ae > 0 and (i + 1) % ae == 0})
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 1), nn.ReLU(), nn.Conv2d(C, c.num_codes, 1))

    @classmethod
    def _upgrade_state_dict(cls, state: dict, config: PixelCNNConfig) -> dict:
        return convert_v1_state_dict(state)  # checkpoints written before the redesign

    # ------------------------------------------------------------------ conditioning (cached)
    def conditioning(self, n: int, label=None, cond=None) -> list:
        """Per-layer conditioning terms, each (B, 2C, 1 or H, 1 or W); computed once per batch."""
        c = self.config
        parts = torch.zeros(n, c.channels, 1, 1, device=self.embed.weight.device)
        if c.label != "none":
            if label is None:
                raise ValueError(f"PixelCNN: config.label={c.label!r} needs a label (class ids (B,) or tokens (B, L))")
            parts = parts + self.label_embed(label).view(n, c.channels, 1, 1)
        if c.cond_codes > 0:
            want = (n, c.height >> c.cond_up, c.width >> c.cond_up)
            if cond is None or tuple(cond.shape) != want:
                raise ValueError(f"PixelCNN: cond must be a code map {want}, got {None if cond is None else tuple(cond.shape)}")
            parts = parts + self.cond_net(self.cond_embed(cond).permute(0, 3, 1, 2))  # (B, C, H, W)
        return [p(parts) for p in self.cond_proj]

    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        if x.dim() != 3 or x.shape[1:] != (c.height, c.width) or x.dtype != torch.long:
            raise ValueError(f"PixelCNN: codes must be int64 (B, {c.height}, {c.width}), got {x.dtype} {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, label=None, cond=None, conds=None) -> torch.Tensor:
        """x: codes (B, H, W) int64 -> logits (B, num_codes, H, W); logits at (i, j) see x before (i, j)."""
        self._check(x)
        conds = conds if conds is not None else self.conditioning(x.shape[0], label, cond)
        return self._forward_rows(x, conds)

    def _forward_rows(self, x: torch.Tensor, conds: list) -> torch.Tensor:
        """The network on the first x.shape[1] rows: every layer is causal (down/right shifts,
        top-padded vertical convs, causal attention), so dropping later rows changes nothing."""
        n = x.shape[1]
        e = self.embed(x).permute(0, 3, 1, 2)  # (B, C, n, W), a gather (no one-hot)
        v = F.pad(e, (0, 0, 1, 0))[:, :, :-1]  # down shift: rows < i
        h = F.pad(e, (1, 0, 0, 0))[:, :, :, :-1]  # right shift: columns < j
        for i, layer in enumerate(self.layers):
            cd = self._rows(conds[i], 0, n)
            vp, v = layer.v_step(v, cd)
            h = layer.h_step(h, vp, cd)
            if str(i) in self.attn:
                h = self.attn[str(i)](h)
        return self.head(h)

    def loss(self, x: torch.Tensor, label=None, cond=None) -> torch.Tensor:
        return F.cross_entropy(self.forward(x, label, cond), x)

    # ------------------------------------------------------------------ sampling
    def _rows(self, t, lo: int, hi: int):
        return t if t.shape[2] == 1 else t[:, :, lo:hi]

    def row_logits_fast(self, x: torch.Tensor, i: int, conds: list, vps: list | None = None):
        """Logits (B, K, W) of row i from the band of rows above it (vertical stack, returned as
        ``vps`` for reuse across the row) and row i itself (horizontal stack)."""
        c = self.config
        if vps is None:
            reach = c.n_layers * (self.layers[0].kh - 1) + 1  # rows above i the vertical stack sees
            lo = max(0, i - reach)
            e = self.embed(x[:, lo : i + 1]).permute(0, 3, 1, 2)  # (B, C, band, W)
            v = F.pad(e, (0, 0, 1, 0))[:, :, :-1]
            vps = []
            for li, layer in enumerate(self.layers):
                vp, v = layer.v_step(v, self._rows(conds[li], lo, i + 1))
                vps.append(vp[:, :, -1:])  # (B, 2C, 1, W): row i only
        e = self.embed(x[:, i : i + 1]).permute(0, 3, 1, 2)  # (B, C, 1, W)
        h = F.pad(e, (1, 0, 0, 0))[:, :, :, :-1]
        for li, layer in enumerate(self.layers):
            h = layer.h_step(h, vps[li], self._rows(conds[li], i, i + 1))
        return self.head(h)[:, :, 0], vps

    @torch.no_grad()
    def sample(self, n: int, label=None, cond=None, temperature: float = 1.0, *, seeds: Sequence[int] | None = None,
               generator: torch.Generator | None = None, fast: bool | None = None,
               progress: bool = False) -> torch.Tensor:
        """n code maps (n, H, W) int64, in raster order.

        seeds: one int per map (map i depends only on ``seeds[i]``); or ``generator`` (the
        batch's uniforms from one generator: reproducible for the same call only); neither: the
        global RNG. ``fast`` (default: when there is no attention) uses the cached row-wise path,
        else a forward over rows <= i per position.
        """
        c = self.config
        if temperature <= 0:
            raise ValueError(f"PixelCNN.sample: temperature must be > 0, got {temperature}")
        if seeds is not None and generator is not None:
            raise ValueError("PixelCNN.sample: pass seeds or generator, not both")
        fast = (not self.attn) if fast is None else fast
        if fast and self.attn:
            raise ValueError("PixelCNN.sample: fast=True needs a model without attention")
        dev = self.embed.weight.device
        if seeds is not None:
            u = per_sample_rand(check_seeds(seeds, n), (c.height, c.width), device=dev)  # (n, H, W)
        else:
            u = torch.rand((n, c.height, c.width), generator=generator).to(dev)
        x = torch.zeros(n, c.height, c.width, dtype=torch.long, device=dev)
        conds = self.conditioning(n, label, cond)
        rows = range(c.height)
        if progress:
            from tqdm.auto import tqdm

            rows = tqdm(rows, desc="pixelcnn", leave=False)
        for i in rows:
            vps = None
            for j in range(c.width):
                if fast:
                    logits, vps = self.row_logits_fast(x, i, conds, vps)
                    lj = logits[:, :, j]
                else:
                    lj = self._forward_rows(x[:, : i + 1], conds)[:, :, i, j]
                x[:, i, j] = sample_categorical(lj, u[:, i, j], temperature)
        return x

