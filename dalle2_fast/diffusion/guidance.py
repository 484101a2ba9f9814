"""Guidance as denoiser wrappers: each takes a denoiser ``model(x_t, t, **kw)`` and is one.

- ``ClassifierFreeGuidance``: out_u + s (out_c - out_u) from ONE batched forward of
  (cond; uncond) (Ho & Salimans 2021; GLIDE Eq. 4). Its ``forward_pair`` lets the samplers fuse
  the combine into the step kernel. A learned variance is taken from the conditional half.
- ``SplitGuidance``: two conditions with a scale each, from ONE batched forward of three
  branches (both; the first only; neither): out_u + s_a (out_a - out_u) + s_b (out_ab - out_a)
  (GLIDE / unCLIP's separate image-embedding and text scales; Brooks et al. 2023, Eq. 3).
- ``ClassifierGuidance``: grad_x log p(y | x_t) of a noisy classifier (Dhariwal & Nichol 2021).
- ``CLIPGuidance``: grad of a generic image-text similarity on the predicted x0 (or on x_t
  for a noised CLIP) — ``similarity(images, **kw) -> (B,)``.
- ``ImageGuidance``: minus a Gram-matrix style loss on features of a reference image (Gatys
  et al. 2016) plus a pixel reconstruction loss, on the predicted x0.

Gradient guidance shifts either the mean, mu' = mu + s Sigma g (``mode='mean'``, Dhariwal &
Nichol Alg. 1; for ancestral sampling over consecutive steps of ``diffusion``), or the score,
eps' = eps - sqrt(1 - abar_t) s g (``mode='score'``, their Alg. 2; any sampler). Either way the
wrapper returns a model output in the process's parameterisation, so samplers need no flags.
"""
from __future__ import annotations

from typing import Callable

import torch

from dalle2_fast.diffusion.gaussian import GaussianDiffusion


class ClassifierFreeGuidance:
    """Args: model; scale: float or (B,) tensor (s = 1 is the conditional model); null_kwargs:
    the unconditional model kwargs (a dict of tensors with batch 1 or B, or a callable
    cond_kwargs -> uncond_kwargs). Keys absent from null_kwargs are passed unchanged to both.

    A kwarg may also be a batched object that is not a tensor, e.g. a key/value cache
    (:class:`dalle2_fast.nn.KVCache`): anything with ``cat_batch(other)`` and ``expand(B)`` is
    paired by those. The kwargs of a sampling loop are the same objects at every step, so the
    (cond; uncond) pairs are built once and reused while the call's kwargs are identical (the
    same objects: the samplers never modify them in place); not while a CUDA graph is captured,
    where the concatenation must be part of the graph."""

    def __init__(self, model, scale, null_kwargs: dict | Callable[[dict], dict]):
        self.model, self.scale, self.null_kwargs = model, scale, null_kwargs
        self._memo: tuple | None = None  # (B, the call's kwargs, their pairs)

    def _pair_kwargs(self, B: int, kw: dict) -> dict:
        memo = not callable(self.null_kwargs) and not _capturing()
        m = self._memo
        if memo and m is not None and m[0] == B and m[1].keys() == kw.keys() and all(
                m[1][k] is v for k, v in kw.items()):
            return m[2]
        null = self.null_kwargs(kw) if callable(self.null_kwargs) else self.null_kwargs
        unknown = set(null) - set(kw)
        if unknown:
            raise ValueError(f"null_kwargs has keys {sorted(unknown)} that the call did not pass")
        out = {}
        for k, v in kw.items():
            u = null.get(k, v)
            if isinstance(v, torch.Tensor):
                u = u.expand(B, *u.shape[1:]) if (isinstance(u, torch.Tensor) and u.shape[0] == 1 and B > 1) else u
                out[k] = torch.cat([v, u.to(device=v.device, dtype=v.dtype)], dim=0)
            elif hasattr(v, "cat_batch"):  # a batched object (a KV cache): [cond rows; uncond rows]
                out[k] = v.cat_batch(u.expand(B))
            else:
                out[k] = v
        self._memo = (B, dict(kw), out) if memo else None
        return out

    def scales(self, B: int, device) -> torch.Tensor:
        if isinstance(self.scale, torch.Tensor):
            s = self.scale.to(device=device, dtype=torch.float32)
            s = s.expand(B) if s.dim() == 0 else s
        else:  # a fill kernel, not a host-to-device copy: safe inside a CUDA-graph capture
            s = torch.full((B,), float(self.scale), dtype=torch.float32, device=device)
        if s.shape != (B,):
            raise ValueError(f"guidance scale must be a float or a ({B},) tensor, got shape {tuple(s.shape)}")
        return s

    def forward_pair(self, x: torch.Tensor, t: torch.Tensor, **kw):
        """(model output (2B, ...) — cond rows then uncond rows —, scale (B,))."""
        B = x.shape[0]
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), **self._pair_kwargs(B, kw))
        return out, self.scales(B, x.device)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
        out, s = self.forward_pair(x, t, **kw)
        B, C = x.shape[:2]
        cond, uncond = out[:B], out[B:]
        s = s.to(out.dtype).reshape(B, *([1] * (x.dim() - 1)))
        mixed = uncond[:, :C] + s * (cond[:, :C] - uncond[:, :C])
        return torch.cat([mixed, cond[:, C:]], dim=1) if out.shape[1] > C else mixed


class SplitGuidance:
    """Classifier-free guidance over two conditions a (e.g. the CLIP image embedding) and b (the
    caption), each with its own scale: out_u + s_a (out_a - out_u) + s_b (out_ab - out_a), where
    out_ab is the model with the call's kwargs, out_a with ``first_kwargs`` over them (b dropped)
    and out_u with ``null_kwargs`` (both dropped). One forward of the 3B rows. With s_a = s_b = s
    it is ``ClassifierFreeGuidance(s)`` up to rounding (use that one then: 2B rows, fused combine).
    A learned variance is taken from the out_ab rows. Kwargs pair as in ``ClassifierFreeGuidance``
    (tensors with batch 1 or B, or batched objects with ``cat_batch`` / ``expand``)."""

    def __init__(self, model, scale_a: float, scale_b: float, first_kwargs: dict, null_kwargs: dict):
        for name, v in (("scale_a", scale_a), ("scale_b", scale_b)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"SplitGuidance: {name} must be a number, got {v!r}")
        self.model, self.scale_a, self.scale_b = model, float(scale_a), float(scale_b)
        self.first_kwargs, self.null_kwargs = first_kwargs, null_kwargs

    def _kwargs(self, B: int, kw: dict) -> dict:
        unknown = (set(self.first_kwargs) | set(self.null_kwargs)) - set(kw)
        if unknown:
            raise ValueError(f"SplitGuidance: branch kwargs have keys {sorted(unknown)} that the call did not pass")
        out = {}
        for k, v in kw.items():
            rows = [v, self.first_kwargs.get(k, v), self.null_kwargs.get(k, v)]
            if isinstance(v, torch.Tensor):
                rows = [u.expand(B, *u.shape[1:]) if u.shape[0] == 1 and B > 1 else u for u in rows]
                out[k] = torch.cat([u.to(device=v.device, dtype=v.dtype) for u in rows], dim=0)
            elif hasattr(v, "cat_batch"):
                out[k] = v.cat_batch(rows[1].expand(B)).cat_batch(rows[2].expand(B))
            else:
                out[k] = v
        return out

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
        B, C = x.shape[:2]
        out = self.model(torch.cat([x, x, x]), torch.cat([t, t, t]), **self._kwargs(B, kw))
        both, first, none = out[:B], out[B:2 * B], out[2 * B:]
        mixed = none[:, :C] + self.scale_a * (first[:, :C] - none[:, :C]) + self.scale_b * (both[:, :C] - first[:, :C])
        return torch.cat([mixed, both[:, C:]], dim=1) if out.shape[1] > C else mixed


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class GradientGuidance:
    """Base of the gradient guidances: subclasses define ``grad(x, t, idx, x0, kw) -> (B, C, ...)``,
    the gradient of the log-density (or objective) to ascend, w.r.t. x_t."""

    def __init__(self, model, diffusion: GaussianDiffusion, scale: float, mode: str = "score"):
        if mode not in ("mean", "score"):
            raise ValueError(f"mode must be 'mean' or 'score', got {mode!r}")
        self.model, self.diffusion, self.scale, self.mode = model, diffusion, float(scale), mode
        tm = diffusion.timestep_map
        self._index = torch.full((int(tm.max()) + 1,), -1, dtype=torch.long)
        self._index[tm] = torch.arange(tm.numel())

    def step_index(self, t: torch.Tensor) -> torch.Tensor:
        """This process's step index of each model timestep t (B,)."""
        idx = self._index.to(t.device)[t.long().clamp(0, self._index.numel() - 1)]
        if bool((idx < 0).any()) or bool((t.long() >= self._index.numel()).any()):
            raise ValueError("guidance: a timestep is not a step of the guidance's diffusion process "
                             "(pass the same (respaced) process the sampler uses)")
        return idx

    def grad(self, x, t, idx, x0, kw) -> torch.Tensor:
        raise NotImplementedError

    def check_kwargs(self, kw: dict) -> None:
        """Raise early (before the model runs) when a model kwarg the guidance needs is missing."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
        d = self.diffusion
        self.check_kwargs(kw)
        idx = self.step_index(t)
        with torch.no_grad():
            out = self.model(x, t, **kw)
            mean_out, var_values = d.split_output(out, x)
            x0 = d.x0_from_output(x, idx, mean_out)
        with torch.enable_grad():
            g = self.grad(x.detach(), t, idx, x0, kw).detach() * self.scale
        if self.mode == "score":
            eps = d.eps_from_x0(x, idx, x0) - d.extract("sqrt_1m_ab", idx, x) * g
            x0_new = (x - d.extract("sqrt_1m_ab", idx, x) * eps) / d.extract("sqrt_ab", idx, x)
        else:
            var, _ = d.variance(x, idx, var_values)
            x0_new = x0 + var * g / d.extract("post_c_x0", idx, x)  # moves the posterior mean by Sigma g
        new = d.output_from_x0(x, idx, x0_new)
        return torch.cat([new, var_values], dim=1) if var_values is not None else new


class ClassifierGuidance(GradientGuidance):
    """grad_x log p(y | x_t, t) of ``classifier(x_t, t) -> logits (B, K)``; the labels are the
    model kwarg named ``label_key`` (also passed on to the model)."""

    def __init__(self, model, classifier, diffusion: GaussianDiffusion, scale: float, mode: str = "mean",
                 label_key: str = "y"):
        super().__init__(model, diffusion, scale, mode)
        self.classifier, self.label_key = classifier, label_key

    def check_kwargs(self, kw):
        if self.label_key not in kw:
            raise ValueError(f"ClassifierGuidance needs the labels as model kwarg {self.label_key!r}")

    def grad(self, x, t, idx, x0, kw):
        x = x.requires_grad_(True)
        logp = torch.log_softmax(self.classifier(x, t), dim=-1)
        y = kw[self.label_key]
        sel = logp[torch.arange(x.shape[0], device=x.device), y]
        return torch.autograd.grad(sel.sum(), x)[0]


class _X0Objective(GradientGuidance):
    """Ascends ``objective(x0) -> (B,)`` on the predicted x0. With ``through_model`` autograd
    carries the gradient to x_t through the network (exact, one backward per step). Without it,
    d x0 / d x_t is taken as sqrt(abar_t) I — the Jacobian of E[x0 | x_t] for unit-variance data —
    so the score shift moves x0 by (1 - abar_t) g. (Holding eps fixed instead would give
    1/sqrt(abar_t), which is ~1e4 at the noisy end of a cosine schedule and diverges.)"""

    def __init__(self, model, diffusion, scale, mode="score", through_model=False):
        super().__init__(model, diffusion, scale, mode)
        self.through_model = through_model

    def objective(self, x0, t, kw) -> torch.Tensor:
        raise NotImplementedError

    def grad(self, x, t, idx, x0, kw):
        d = self.diffusion
        if self.through_model:
            x = x.requires_grad_(True)
            mean_out, _ = d.split_output(self.model(x, t, **kw), x)
            x0g = d.x0_from_output(x, idx, mean_out)
            return torch.autograd.grad(self.objective(x0g, t, kw).sum(), x)[0]
        x0 = x0.detach().requires_grad_(True)
        g = torch.autograd.grad(self.objective(x0, t, kw).sum(), x0)[0]
        return g * d.extract("sqrt_ab", idx, x)


class CLIPGuidance(_X0Objective):
    """Ascends ``similarity(images (B, C, H, W), **kw) -> (B,)`` (e.g. CLIP cosine similarity to a
    prompt's embedding) on the predicted x0 (``on='x0'``), or on x_t itself (``on='xt'``; a
    noised CLIP that also takes the timestep: ``similarity(x_t, t=t, **kw)``)."""

    def __init__(self, model, diffusion, similarity: Callable, scale: float, on: str = "x0", mode: str = "score",
                 through_model: bool = False, similarity_kwargs: tuple[str, ...] = ()):
        super().__init__(model, diffusion, scale, mode, through_model)
        if on not in ("x0", "xt"):
            raise ValueError(f"on must be 'x0' or 'xt', got {on!r}")
        self.similarity, self.on, self.sim_keys = similarity, on, tuple(similarity_kwargs)

    def objective(self, x0, t, kw):
        return self.similarity(x0, **{k: kw[k] for k in self.sim_keys})

    def grad(self, x, t, idx, x0, kw):
        if self.on == "x0":
            return super().grad(x, t, idx, x0, kw)
        x = x.requires_grad_(True)
        sim = self.similarity(x, t=t, **{k: kw[k] for k in self.sim_keys})
        return torch.autograd.grad(sim.sum(), x)[0]


def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) features -> (B, C, C) Gram matrices normalised by C * prod(S)."""
    B, C = f.shape[:2]
    f = f.reshape(B, C, -1)
    return f @ f.transpose(1, 2) / (C * f.shape[2])


class ImageGuidance(_X0Objective):
    """Pulls the predicted x0 toward a reference image: minus (style_scale * sum over layers of
    ||Gram(F_l(x0)) - Gram(F_l(ref))||^2 + pixel_scale * mean (x0 - ref)^2) per sample.
    ``features(images) -> list of (B, C_l, *S_l)``; ``reference``: (1 or B, C, H, W)."""

    def __init__(self, model, diffusion, reference: torch.Tensor, *, features: Callable | None = None,
                 style_scale: float = 1.0, pixel_scale: float = 0.0, scale: float = 1.0, mode: str = "score",
                 through_model: bool = False):
        super().__init__(model, diffusion, scale, mode, through_model)
        if style_scale and features is None:
            raise ValueError("style_scale > 0 needs a features callable")
        self.reference, self.features = reference, features
        self.style_scale, self.pixel_scale = float(style_scale), float(pixel_scale)
        self._ref_grams = None

    def objective(self, x0, t, kw):
        ref = self.reference.to(x0.device, x0.dtype)
        loss = x0.new_zeros(x0.shape[0])
        if self.pixel_scale:
            loss = loss + self.pixel_scale * ((x0 - ref) ** 2).reshape(x0.shape[0], -1).mean(1)
        if self.style_scale:
            if self._ref_grams is None:
                with torch.no_grad():
                    self._ref_grams = [gram_matrix(f) for f in self.features(ref)]
            for f, gr in zip(self.features(x0), self._ref_grams):
                loss = loss + self.style_scale * ((gram_matrix(f) - gr) ** 2).reshape(f.shape[0], -1).sum(1)
        return -loss


__all__ = ["ClassifierFreeGuidance", "SplitGuidance", "GradientGuidance", "ClassifierGuidance", "CLIPGuidance", "ImageGuidance",
           "gram_matrix"]
