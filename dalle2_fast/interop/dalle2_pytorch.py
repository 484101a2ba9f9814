"""DALLE2-pytorch diffusion priors (LAION's ``prior/best.pth`` + ``prior_config.json``) into
:class:`dalle2_fast.models.prior.laion.LaionDiffusionPrior`.

Reading: ``torch.load(weights_only=True)`` with an explicit allow-list and nothing else. A
DALLE2-pytorch trainer checkpoint is a dict of tensors, optimizer states and one foreign object,
the ``packaging.version.Version`` of the release that saved it. That class (and the helpers old
``packaging`` releases pickled with it) are allow-listed as *stand-ins* (:class:`PickledVersion`
and friends, registered under the original names with ``torch.serialization.safe_globals``):
they record the pickled state and execute nothing, and ``packaging`` is never imported. Any
other global is refused, naming it (:class:`UnsafeCheckpointError`).

Weights: ``ema_model`` (the EMA weights) when present, else ``model`` (``which=`` chooses), or a
bare state dict. Keys are renamed by the table :data:`RENAMES`; the spellings of older releases
are accepted: LayerNorm ``gamma`` (+ a ``beta`` that must be zero) for ``g``, and
``null_text_embed`` — the learned padding tokens (1, max_text_len, dim), which 1.9.0 renamed
``null_text_encodings`` — for ``null_text_encodings``. Rotary frequencies and noise-schedule
buffers in the file are checked against ours, then dropped; a CLIP stored inside the prior is
ignored (load CLIP separately, :mod:`dalle2_fast.interop.openai_clip`).

The network's semantics changed across releases without a change of keys, so the release
matters (:func:`conventions_for`; from the checkpoint's ``version``, or ``version=``):

=====================  =========================  ===================================
release                attention                  classifier-free guidance
=====================  =========================  ===================================
>= 1.9.0               cosine similarity (x16)    learned null text / z_t / z_i
1.4.3 .. 1.8.x         cosine similarity (x16)    none (the dropout masked nothing)
0.23.3 .. 1.4.2        dot / sqrt(d), bias x128   none
< 0.23.3               refused (text padding masked in attention, other norms)
=====================  =========================  ===================================
"""
from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs a Python global outside the allow-list; ``global_name`` names it."""

    def __init__(self, path, global_name: str, detail: str = ""):
        self.global_name = global_name
        super().__init__(f"{path}: refused to unpickle the global {global_name!r}: only tensors, containers and "
                         f"packaging.version.Version are allowed in a DALLE2-pytorch checkpoint{detail}")


# ----------------------------------------------------------------------------- safe reading
class PickledVersion:
    """Stand-in for ``packaging.version.Version``: keeps the pickled state, runs nothing."""

    def __new__(cls, *args):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __setstate__(self, state):
        self.state = state

    def release(self) -> tuple[int, ...]:
        """The release numbers (e.g. (1, 15, 6)) from either pickled layout: packaging >= 22 pickles
        (epoch, release, dev, pre, post, local); older ones {'_version': _Version(...), '_key': ...}."""
        s = self.state
        if isinstance(s, tuple) and len(s) >= 2 and isinstance(s[1], tuple):
            return tuple(int(x) for x in s[1])
        if isinstance(s, tuple) and len(s) == 2 and isinstance(s[0], dict):  # (dict, slots)
            s = s[0] or s[1]
        if isinstance(s, dict):
            v = s.get("_version")
            if isinstance(v, _PickledTuple) and len(v.args) >= 2:
                return tuple(int(x) for x in v.args[1])
            if "_release" in s:
                return tuple(int(x) for x in s["_release"])
        raise ValueError(f"unrecognised pickled packaging Version state: {s!r}")

    def __str__(self) -> str:
        return ".".join(map(str, self.release()))


class _PickledTuple:
    """Stand-in for ``packaging.version._Version`` (a namedtuple) in old pickles."""

    def __new__(cls, *args):
        obj = object.__new__(cls)
        obj.args = args
        return obj


class _PickledInfinity:
    """Stand-in for ``packaging._structures`` (Negative)Infinity, pickled inside old Versions' keys."""

    def __setstate__(self, state):
        pass


ALLOWED_STAND_INS = [
    (PickledVersion, "packaging.version.Version"),
    (_PickledTuple, "packaging.version._Version"),
    (_PickledInfinity, "packaging._structures.InfinityType"),
    (_PickledInfinity, "packaging._structures.NegativeInfinityType"),
]


def safe_load(path: str | Path):
    """``torch.load(path, weights_only=True)`` with :data:`ALLOWED_STAND_INS` allow-listed;
    any other global raises :class:`UnsafeCheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (weights are never downloaded)")
    try:
        with torch.serialization.safe_globals(ALLOWED_STAND_INS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e)) or re.search(r"got <class '([\w.]+)'>", str(e))
        raise UnsafeCheckpointError(path, m.group(1) if m else "?", "" if m else f" ({e})") from None


# ----------------------------------------------------------------------------- conventions
def conventions_for(version: str | tuple[int, ...]) -> dict:
    """{'attention', 'null_conditioning'} of the network as DALLE2-pytorch ``version`` defined
    it (see the module table); a release before 0.23.3 raises ValueError."""
    v = tuple(int(x) for x in re.findall(r"\d+", version)[:3]) if isinstance(version, str) else tuple(version)
    if v < (0, 23, 3):
        raise ValueError(f"DALLE2-pytorch {'.'.join(map(str, v))} priors are not supported: releases before 0.23.3 "
                         "masked text padding inside attention and normalised differently (supported: >= 0.23.3)")
    return {"attention": "cosine" if v >= (1, 4, 3) else "pb_relax", "null_conditioning": v >= (1, 9, 0)}


# ----------------------------------------------------------------------------- key table
RENAMES: list[tuple[str, str]] = [  # (DALLE2-pytorch network key, ours); applied to keys without 'net.'
    (r"^learned_query$", "learned_query"),
    (r"^null_text_encodings$", "null_text_encodings"),
    (r"^null_text_embed$", "null_text_encodings"),  # < 1.9.0 spelling of the learned padding tokens
    (r"^null_text_embeds$", "null_text_embeds"),
    (r"^null_image_embed$", "null_image_embed"),
    (r"^to_text_embeds\.0\.(weight|bias)$", r"to_text_embeds.\1"),
    (r"^to_image_embeds\.0\.(weight|bias)$", r"to_image_embeds.\1"),
    (r"^to_time_embeds\.0\.weight$", "time_embed.weight"),  # nn.Embedding
    (r"^to_time_embeds\.0\.1\.net\.0\.0\.(weight|bias)$", r"time_embed.0.\1"),  # continuous: MLP
    (r"^to_time_embeds\.0\.1\.net\.1\.0\.(weight|bias)$", r"time_embed.2.\1"),
    (r"^to_time_embeds\.0\.1\.net\.2\.(weight|bias)$", r"time_embed.4.\1"),
    (r"^causal_transformer\.init_norm\.g$", "init_norm.weight"),
    (r"^causal_transformer\.rel_pos_bias\.relative_attention_bias\.weight$", "rel_pos_bias.relative_attention_bias.weight"),
    (r"^causal_transformer\.layers\.(\d+)\.0\.null_kv$", r"blocks.\1.attn.null_kv"),
    (r"^causal_transformer\.layers\.(\d+)\.0\.norm\.g$", r"blocks.\1.attn.norm_in.weight"),
    (r"^causal_transformer\.layers\.(\d+)\.0\.to_q\.weight$", r"blocks.\1.attn.to_q.weight"),
    (r"^causal_transformer\.layers\.(\d+)\.0\.to_kv\.weight$", r"blocks.\1.attn.to_kv.weight"),
    (r"^causal_transformer\.layers\.(\d+)\.0\.to_out\.0\.weight$", r"blocks.\1.attn.proj_out.weight"),
    (r"^causal_transformer\.layers\.(\d+)\.0\.to_out\.1\.g$", r"blocks.\1.attn.norm_out.weight"),
    (r"^causal_transformer\.layers\.(\d+)\.1\.0\.g$", r"blocks.\1.ff.norm.weight"),
    (r"^causal_transformer\.layers\.(\d+)\.1\.1\.weight$", r"blocks.\1.ff.proj_in.weight"),
    (r"^causal_transformer\.layers\.(\d+)\.1\.3\.g$", r"blocks.\1.ff.post_norm.weight"),
    (r"^causal_transformer\.layers\.(\d+)\.1\.5\.weight$", r"blocks.\1.ff.proj_out.weight"),
    (r"^causal_transformer\.norm\.g$", "norm.weight"),
    (r"^causal_transformer\.project_out\.weight$", "project_out.weight"),
]
_ROTARY = re.compile(r"^causal_transformer\.layers\.\d+\.0\.rotary_emb\.freqs$")


def convert_state_dict(net_state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """DALLE2-pytorch ``DiffusionPriorNetwork`` state (keys without ``net.``) -> ours. Unknown
    keys are kept as they are (the strict load then names them); ``gamma``/``beta`` LayerNorms
    become gains (a non-zero ``beta`` raises, naming it); rotary frequencies are checked."""
    from dalle2_fast.nn.positional import rotary_freqs

    out: dict[str, torch.Tensor] = {}
    for key, val in net_state.items():
        if key.endswith(".beta"):
            if bool(val.abs().max() > 0) if val.numel() else False:
                raise ValueError(f"{key}: a non-zero LayerNorm bias; DALLE2-pytorch's prior norms are gain-only")
            continue
        if _ROTARY.match(key):
            want = rotary_freqs(2 * val.numel())
            if val.shape != want.shape or not torch.allclose(val.float(), want, rtol=1e-6, atol=0):
                raise ValueError(f"{key}: rotary frequencies {tuple(val.shape)} differ from theta=10000 ones "
                                 f"for {2 * val.numel()} channels")
            if 2 * val.numel() != min(32, config.dim_head):
                raise ValueError(f"{key}: {2 * val.numel()} rotated channels, expected min(32, dim_head="
                                 f"{config.dim_head})")
            continue
        k = re.sub(r"\.gamma$", ".g", key)
        for pat, rep in RENAMES:
            if re.match(pat, k):
                k = re.sub(pat, rep, k)
                break
        if k in out:
            raise ValueError(f"{key}: a second tensor for {k} (both the old and the new spelling?)")
        out[k] = val
    return out


# ----------------------------------------------------------------------------- the file
def _pick_state(obj, which: str | None, path) -> dict[str, torch.Tensor]:
    def tensors(d):
        return isinstance(d, dict) and d and all(isinstance(v, torch.Tensor) for v in d.values())

    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict (a DALLE2-pytorch checkpoint), got {type(obj).__name__}")
    if tensors(obj) and which is None:
        return obj
    options = {}
    if tensors(obj.get("ema_model")):
        options["ema"] = obj["ema_model"]
    elif tensors(obj.get("ema")):
        ema = {k[len("ema_model."):]: v for k, v in obj["ema"].items() if k.startswith("ema_model.")}
        if ema:
            options["ema"] = ema
    if tensors(obj.get("model")):
        options["model"] = obj["model"]
    if which is None:
        which = "ema" if "ema" in options else "model"
    if which not in options:
        raise ValueError(f"{path}: no {which!r} weights (has: {sorted(options) or 'none'}; keys {sorted(obj)[:12]})")
    return options[which]


def read_prior_config(path: str | Path) -> dict:
    """The prior section of a DALLE2-pytorch ``prior_config.json`` (a full training config with
    'prior', or the prior config itself with 'net')."""
    path = Path(path)
    d = json.loads(path.read_text())
    d = d.get("prior", d) if isinstance(d, dict) else d
    if not isinstance(d, dict) or not isinstance(d.get("net"), dict):
        raise ValueError(f"{path}: expected a DALLE2-pytorch prior config (a 'prior' section with 'net'), "
                         f"got keys {sorted(d) if isinstance(d, dict) else type(d).__name__}")
    return d


_NET_FIELDS = ("depth", "heads", "dim_head", "ff_mult", "max_text_len", "num_timesteps", "num_time_embeds",
               "num_image_embeds", "num_text_embeds", "norm_in", "norm_out", "final_proj", "normformer", "rotary_emb")
_UNSUPPORTED = {"self_cond": False, "predict_v": False, "predict_x_start": True, "init_image_embed_l2norm": False}


def config_from_dalle2(prior: dict, version: str):
    """A LaionPriorConfig from a DALLE2-pytorch prior config section and the saving release."""
    from dalle2_fast.models.prior.laion import LaionPriorConfig, laion_diffusion_config

    net = dict(prior["net"])
    for k, want in _UNSUPPORTED.items():
        got = net.get(k, prior.get(k, want))
        if bool(got) != want:
            raise ValueError(f"prior config: {k}={got} is not supported (the LAION prior uses {k}={want})")
    if prior.get("beta_schedule", "cosine") not in ("cosine", "linear"):
        raise ValueError(f"prior config: beta_schedule={prior['beta_schedule']!r} is not supported "
                         "('cosine' or 'linear')")
    dim = int(net["dim"])
    if int(prior.get("image_embed_dim", dim)) != dim:
        raise ValueError(f"prior config: image_embed_dim={prior['image_embed_dim']} != net.dim={dim}")
    T = int(prior.get("timesteps", 1000))
    kw = {k: net[k] for k in _NET_FIELDS if k in net}
    if "max_text_len" not in kw:
        kw["max_text_len"] = 256  # DALLE2-pytorch's default
    drop = prior.get("cond_drop_prob", 0.0)
    return LaionPriorConfig(
        dim=dim, **kw, **conventions_for(version),
        condition_on_text_encodings=bool(prior.get("condition_on_text_encodings", True)),
        image_embed_scale=prior.get("image_embed_scale"),
        cond_drop_prob=float(prior.get("text_cond_drop_prob") or drop),
        image_cond_drop_prob=prior.get("image_cond_drop_prob"),
        sample_timesteps=prior.get("sample_timesteps"),
        sampling_clamp_l2norm=bool(prior.get("sampling_clamp_l2norm", False)),
        sampling_final_clamp_l2norm=bool(prior.get("sampling_final_clamp_l2norm", False)),
        source=f"dalle2-pytorch {version}",
        diffusion=laion_diffusion_config(T, prior.get("beta_schedule", "cosine")))


def _check_schedule(state: dict, model, path) -> None:
    betas = state.get("noise_scheduler.betas", state.get("betas"))
    if betas is None:
        return
    ours = model.diffusion.betas.float()
    if betas.shape != ours.shape or not torch.allclose(betas.float(), ours, rtol=1e-4, atol=1e-6):
        raise ValueError(f"{path}: noise_scheduler.betas {tuple(betas.shape)} differ from the configured "
                         f"{model.config.diffusion.schedule} schedule of {ours.numel()} steps")


def load_laion_prior(path: str | Path, config: str | Path | dict | None = None, *, which: str | None = None,
                     version: str | None = None, map_location="cpu"):
    """A :class:`LaionDiffusionPrior` from a DALLE2-pytorch prior checkpoint.

    path: ``best.pth`` (a trainer checkpoint or a bare state dict); config: its
    ``prior_config.json`` (path or parsed dict; default: ``prior_config.json`` beside ``path``);
    which: 'ema' (default when present) or 'model'; version: the DALLE2-pytorch release that
    trained it, when the file does not say (it decides the conventions, see the module table)."""
    from dalle2_fast.checkpoint import load_state_strict
    from dalle2_fast.models.prior.laion import LaionDiffusionPrior

    path = Path(path)
    if config is None:
        config = path.parent / "prior_config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{path}: no prior_config.json beside it; pass config= (DALLE2-pytorch's "
                                    "training config for this prior)")
    prior = config if isinstance(config, dict) else read_prior_config(config)
    obj = safe_load(path)
    saved = obj.get("version") if isinstance(obj, dict) else None
    saved = str(saved) if isinstance(saved, (PickledVersion, str)) else None
    if version is None:
        version = saved
    elif saved is not None and saved != version:
        log.warning("%s: saved by DALLE2-pytorch %s, loading with the conventions of %s as asked", path, saved, version)
    state = _pick_state(obj, which, path)
    if any(k.startswith("module.") for k in state):
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    net = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    if not net:
        raise ValueError(f"{path}: no 'net.*' tensors (a DALLE2-pytorch DiffusionPrior state); keys "
                         f"{sorted(state)[:8]}")
    if version is None:
        if "null_text_encodings" in net:
            version = "1.9.0"
        else:
            raise ValueError(f"{path}: the file does not say which DALLE2-pytorch release trained it, and its keys "
                             "fit several with different attention: pass version= (e.g. '1.1.0' or '1.8.4')")
    model = LaionDiffusionPrior(config_from_dalle2(prior, version))
    _check_schedule(state, model, path)
    if not model.config.null_conditioning:
        net = {k: v for k, v in net.items() if k not in ("null_text_embeds", "null_image_embed")}
    converted = convert_state_dict(net, model.config)
    load_state_strict(model, {k: v.float() for k, v in converted.items()}, str(path))
    return model.to(map_location).eval()


__all__ = ["load_laion_prior", "safe_load", "conventions_for", "convert_state_dict", "config_from_dalle2",
           "read_prior_config", "RENAMES", "PickledVersion", "UnsafeCheckpointError", "ALLOWED_STAND_INS"]
