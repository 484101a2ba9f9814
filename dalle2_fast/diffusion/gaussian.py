"""The Gaussian diffusion process: forward noising, the reverse model's mean and variance,
training losses and the VLB. The process is an object; the network is passed to each method
(``model(x_t, t, **model_kwargs) -> output``), never owned.

Model outputs (``mean_type``): 'eps' (Ho et al. 2020), 'x0', or 'v' = sqrt(abar) eps -
sqrt(1 - abar) x0 (Salimans & Ho 2022). Variances (``var_type``): 'fixed_small' (the
posterior variance beta~_t), 'fixed_large' (beta_t), or 'learned_range' (Nichol & Dhariwal
Eq. 15: the model's extra C channels v in [-1, 1] interpolate log beta~_t .. log beta_t).
Losses (``loss``): 'simple' (MSE on the output), 'hybrid' (MSE + lambda L_vlb, L_vlb = T x the
sampled VLB term, stop-gradient on the mean; Nichol & Dhariwal Eq. 16), 'kl' (T x the VLB term).

Tables are computed once in float64; ``timestep_map`` maps this process's step indices to the
timesteps the model was trained on (identity unless the process is respaced).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dalle2_fast.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from dalle2_fast.diffusion.schedules import get_betas
from dalle2_fast.ops.sampling import dynamic_threshold_values

MEAN_TYPES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
LOSSES = ("simple", "hybrid", "kl")


@dataclass(frozen=True)
class DiffusionConfig:
    """Everything that defines a process; stored in checkpoints (``GaussianDiffusion.from_config``)."""

    schedule: str = "cosine"  # 'linear' | 'cosine'
    num_timesteps: int = 1000
    mean_type: str = "eps"
    var_type: str = "fixed_small"
    loss: str = "simple"
    vlb_weight: float = 0.001  # lambda of the hybrid loss
    respacing: str | None = None  # e.g. "250", "10,10,3,2,2", "ddim25"

    def __post_init__(self):
        for name, allowed in (("schedule", ("linear", "cosine")), ("mean_type", MEAN_TYPES),
                              ("var_type", VAR_TYPES), ("loss", LOSSES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"DiffusionConfig.{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if isinstance(self.num_timesteps, bool) or not isinstance(self.num_timesteps, int) or self.num_timesteps < 1:
            raise ValueError(f"DiffusionConfig.num_timesteps: expected an int >= 1, got {self.num_timesteps!r}")
        if not (self.vlb_weight >= 0):  # NaN fails too
            raise ValueError(f"DiffusionConfig.vlb_weight: expected a number >= 0, got {self.vlb_weight!r}")
        if self.var_type == "learned_range" and self.loss == "simple":
            raise ValueError("DiffusionConfig: var_type='learned_range' learns the variance from the VLB: use "
                             "loss='hybrid' or 'kl'")
        if self.respacing is not None:
            from dalle2_fast.diffusion.respace import space_timesteps

            space_timesteps(self.num_timesteps, self.respacing)  # raises on a bad spec


class GaussianDiffusion:
    def __init__(self, betas, *, mean_type: str = "eps", var_type: str = "fixed_small", loss: str = "simple",
                 vlb_weight: float = 0.001, timestep_map=None):
        if mean_type not in MEAN_TYPES:
            raise ValueError(f"mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")
        if var_type not in VAR_TYPES:
            raise ValueError(f"var_type must be one of {VAR_TYPES}, got {var_type!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if var_type == "learned_range" and loss == "simple":
            raise ValueError("var_type='learned_range' learns the variance from the VLB: use loss='hybrid' or 'kl'")
        if vlb_weight < 0:
            raise ValueError(f"vlb_weight must be >= 0, got {vlb_weight}")
        self.betas = get_betas(betas)
        self.mean_type, self.var_type, self.loss_type, self.vlb_weight = mean_type, var_type, loss, float(vlb_weight)
        T = self.num_timesteps = self.betas.numel()
        tm = torch.arange(T) if timestep_map is None else torch.as_tensor(timestep_map, dtype=torch.long)
        if tm.shape != (T,):
            raise ValueError(f"timestep_map must have {T} entries, got {tuple(tm.shape)}")
        self.timestep_map = tm.cpu()
        b = self.betas
        ab = torch.cumprod(1.0 - b, 0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        post_var = b * (1.0 - ab_prev) / (1.0 - ab)
        post_lv = torch.log(torch.cat([post_var[1:2], post_var[1:]]) if T > 1 else post_var.clamp_min(1e-20))
        large = torch.cat([post_var[1:2], b[1:]]) if T > 1 else b
        self.tables = {
            "betas": b, "alphas_cumprod": ab, "alphas_cumprod_prev": ab_prev,
            "sqrt_ab": ab.sqrt(), "sqrt_1m_ab": (1.0 - ab).sqrt(), "log_1m_ab": torch.log1p(-ab),
            "post_var": post_var, "post_logvar": post_lv,  # log clipped at t = 0 (beta~_0 = 0)
            "post_c_x0": b * ab_prev.sqrt() / (1.0 - ab),
            "post_c_xt": (1.0 - ab_prev) * (1.0 - b).sqrt() / (1.0 - ab),
            "large_var": large, "large_logvar": torch.log(large), "log_betas": torch.log(b),
        }
        self._dev_cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> "GaussianDiffusion":
        base = cls(get_betas(cfg.schedule, cfg.num_timesteps), mean_type=cfg.mean_type, var_type=cfg.var_type,
                   loss=cfg.loss, vlb_weight=cfg.vlb_weight)
        if cfg.respacing:
            from dalle2_fast.diffusion.respace import respace

            return respace(base, cfg.respacing)
        return base

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.tables["alphas_cumprod"]

    @property
    def learned_var(self) -> bool:
        return self.var_type == "learned_range"

    # --------------------------------------------------------------------------- helpers
    def table(self, name: str, device, dtype=torch.float64) -> torch.Tensor:
        key = (name, str(device), dtype)
        t = self._dev_cache.get(key)
        if t is None:
            t = self._dev_cache[key] = self.tables[name].to(device=device, dtype=dtype)
        return t

    def extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """tables[name][t] shaped (B, 1, ..., 1) to broadcast against ``like``."""
        v = self.table(name, like.device, like.dtype)[t]
        return v.reshape(t.shape[0], *([1] * (like.dim() - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps the model sees for step indices ``t`` of this process."""
        return self.timestep_map.to(t.device)[t]

    def _check_t(self, t: torch.Tensor, x: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32) or t.shape != (x.shape[0],):
            raise ValueError(f"t must be an integer ({x.shape[0]},) tensor of step indices, got "
                             f"{getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))}")

    def call_model(self, model, x: torch.Tensor, t: torch.Tensor, model_kwargs=None) -> torch.Tensor:
        return model(x, self.model_timesteps(t), **(model_kwargs or {}))

    # --------------------------------------------------------------------------- forward process
    def q_mean_variance(self, x0, t):
        """q(x_t | x0): (mean, variance, log_variance), each broadcast to x0."""
        return (self.extract("sqrt_ab", t, x0) * x0, self.extract("sqrt_1m_ab", t, x0) ** 2 + 0 * x0,
                self.extract("log_1m_ab", t, x0) + 0 * x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (Ho et al. Eq. 4). x0: (B, ...), t: (B,)."""
        self._check_t(t, x0)
        noise = torch.randn_like(x0) if noise is None else noise
        return self.extract("sqrt_ab", t, x0) * x0 + self.extract("sqrt_1m_ab", t, x0) * noise

    def q_posterior(self, x0, x_t, t):
        """q(x_{t-1} | x_t, x0) (Ho et al. Eq. 6-7): (mean, variance, log_variance clipped at t=0)."""
        mean = self.extract("post_c_x0", t, x_t) * x0 + self.extract("post_c_xt", t, x_t) * x_t
        return mean, self.extract("post_var", t, x_t) + 0 * x_t, self.extract("post_logvar", t, x_t) + 0 * x_t

    # --------------------------------------------------------------------------- parameterisations
    def x0_from_output(self, x_t, t, out):
        a, s = self.extract("sqrt_ab", t, x_t), self.extract("sqrt_1m_ab", t, x_t)
        if self.mean_type == "eps":
            return (x_t - s * out) / a
        if self.mean_type == "x0":
            return out
        return a * x_t - s * out

    def eps_from_x0(self, x_t, t, x0):
        return (x_t - self.extract("sqrt_ab", t, x_t) * x0) / self.extract("sqrt_1m_ab", t, x_t)

    def output_from_x0(self, x_t, t, x0):
        """The model output (in this process's parameterisation) that predicts ``x0``."""
        if self.mean_type == "x0":
            return x0
        eps = self.eps_from_x0(x_t, t, x0)
        if self.mean_type == "eps":
            return eps
        return self.extract("sqrt_ab", t, x_t) * eps - self.extract("sqrt_1m_ab", t, x_t) * x0

    def split_output(self, out: torch.Tensor, x_t: torch.Tensor):
        """(mean part (B, C, ...), variance values (B, C, ...) or None)."""
        C = x_t.shape[1]
        if self.learned_var:
            if out.shape[1] != 2 * C:
                raise ValueError(f"learned_range model output must have 2C={2 * C} channels, got {tuple(out.shape)}")
            return out[:, :C], out[:, C:]
        if out.shape != x_t.shape:
            raise ValueError(f"model output must have x_t's shape {tuple(x_t.shape)}, got {tuple(out.shape)}")
        return out, None

    def variance(self, x_t, t, var_values=None):
        """(variance, log_variance) of p(x_{t-1} | x_t), broadcast to x_t."""
        if self.var_type == "learned_range":
            lo, hi = self.extract("post_logvar", t, x_t), self.extract("log_betas", t, x_t)
            frac = (var_values + 1.0) / 2.0
            lv = frac * hi + (1.0 - frac) * lo
            return torch.exp(lv), lv
        name = "post" if self.var_type == "fixed_small" else "large"
        return self.extract(f"{name}_var", t, x_t) + 0 * x_t, self.extract(f"{name}_logvar", t, x_t) + 0 * x_t

    # --------------------------------------------------------------------------- reverse process
    def p_mean_variance(self, model, x_t, t, *, clip: str | None = None, dynamic_p: float = 0.995,
                        model_kwargs=None, model_output: torch.Tensor | None = None) -> dict:
        """p(x_{t-1} | x_t): dict(mean, variance, log_variance, pred_x0, model_output). ``clip``:
        None | 'static' | 'dynamic' applied to pred_x0 before the mean. Pass ``model_output`` to
        reuse an output already computed (``model`` is then not called)."""
        self._check_t(t, x_t)
        out = self.call_model(model, x_t, t, model_kwargs) if model_output is None else model_output
        mean_out, var_values = self.split_output(out, x_t)
        var, logvar = self.variance(x_t, t, var_values)
        x0 = clip_x0(self.x0_from_output(x_t, t, mean_out), clip, dynamic_p)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        return {"mean": mean, "variance": var, "log_variance": logvar, "pred_x0": x0, "model_output": out}

    # --------------------------------------------------------------------------- losses
    def vb_terms_bpd(self, model, x0, x_t, t, *, clip=None, model_kwargs=None, model_output=None) -> dict:
        """L_{t-1} in bits/dim: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, the
        discretised decoder NLL -log p(x0|x1) at t = 0 (Ho et al. Eq. 5, 13). (B,) 'output'."""
        true_mean, _, true_lv = self.q_posterior(x0, x_t, t)
        p = self.p_mean_variance(model, x_t, t, clip=clip, model_kwargs=model_kwargs, model_output=model_output)
        kl = mean_flat(normal_kl(true_mean, true_lv, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return {"output": torch.where(t == 0, nll, kl), "pred_x0": p["pred_x0"]}

    def target(self, x0, noise, t):
        if self.mean_type == "eps":
            return noise
        if self.mean_type == "x0":
            return x0
        return self.extract("sqrt_ab", t, x0) * noise - self.extract("sqrt_1m_ab", t, x0) * x0

    def training_losses(self, model, x0, t, *, noise=None, model_kwargs=None) -> dict:
        """Per-sample loss terms at step indices t: 'loss' (B,), plus 'mse' and 'vb' where they
        apply. 'vb' is already scaled: lambda T L_t for 'hybrid', T L_t for 'kl'. The VLB term
        sees the mean output detached, so it trains only the variance (Nichol & Dhariwal Sec. 3.1)."""
        self._check_t(t, x0)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        T = self.num_timesteps
        if self.loss_type == "kl":
            vb = self.vb_terms_bpd(model, x0, x_t, t, model_kwargs=model_kwargs)["output"] * T
            return {"loss": vb, "vb": vb}
        out = self.call_model(model, x_t, t, model_kwargs)
        mean_out, var_values = self.split_output(out, x_t)
        terms = {"mse": mean_flat((self.target(x0, noise, t) - mean_out) ** 2)}
        terms["loss"] = terms["mse"]
        if var_values is not None:
            frozen = torch.cat([mean_out.detach(), var_values], dim=1)
            vb = self.vb_terms_bpd(None, x0, x_t, t, model_output=frozen)["output"]
            terms["vb"] = vb * (self.vlb_weight * T)
            terms["loss"] = terms["mse"] + terms["vb"]
        return terms

    def prior_bpd(self, x0):
        """KL(q(x_T | x0) || N(0, I)) in bits/dim, (B,)."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, dtype=torch.long, device=x0.device)
        mean, _, lv = self.q_mean_variance(x0, t)
        return mean_flat(normal_kl(mean, lv, 0.0, 0.0)) / math.log(2.0)

    @torch.no_grad()
    def calc_bpd_loop(self, model, x0, *, clip=None, model_kwargs=None, generator=None) -> dict:
        """The full VLB in bits/dim (evaluation; T model calls): dict(total_bpd (B,), prior_bpd
        (B,), vb (B, T), x0_mse (B, T), mse (B, T))."""
        vb, x0_mse, mse = [], [], []
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x0.shape[0],), i, dtype=torch.long, device=x0.device)
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            x_t = self.q_sample(x0, t, noise)
            out = self.vb_terms_bpd(model, x0, x_t, t, clip=clip, model_kwargs=model_kwargs)
            vb.append(out["output"])
            x0_mse.append(mean_flat((out["pred_x0"] - x0) ** 2))
            mse.append(mean_flat((self.eps_from_x0(x_t, t, out["pred_x0"]) - noise) ** 2))
        vb_t = torch.stack(vb[::-1], dim=1)  # (B, T), column i is step i
        prior = self.prior_bpd(x0)
        return {"total_bpd": vb_t.sum(1) + prior, "prior_bpd": prior, "vb": vb_t,
                "x0_mse": torch.stack(x0_mse[::-1], 1), "mse": torch.stack(mse[::-1], 1)}


def clip_x0(x0: torch.Tensor, clip: str | None, dynamic_p: float = 0.995) -> torch.Tensor:
    """None: unchanged; 'static': clamp to [-1, 1]; 'dynamic': Imagen's dynamic thresholding
    (s = max(1, percentile_p |x0|) per sample; clamp to [-s, s], divide by s)."""
    if clip is None:
        return x0
    if clip == "static":
        return x0.clamp(-1.0, 1.0)
    if clip == "dynamic":
        s = dynamic_threshold_values(x0, dynamic_p).reshape(-1, *([1] * (x0.dim() - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s
    raise ValueError(f"clip must be None, 'static' or 'dynamic', got {clip!r}")


__all__ = ["GaussianDiffusion", "DiffusionConfig", "clip_x0", "MEAN_TYPES", "VAR_TYPES", "LOSSES"]
