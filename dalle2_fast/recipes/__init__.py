"""Training recipes: *what* to train (models, data, hyperparameters, stages). The loop in
``dalle2_fast.train`` owns *how* (DDP, EMA, checkpoints, signals, resume).

- ``suite``: the model suite (gan, ae, dae, vae, vqvae, vqvae2, vqvae2-prior, ddpm, iddpm, adm,
  classifier), per-model defaults;
- ``clip``: the tiny shapes CLIP (contrastive);
- ``unclip``: the unCLIP recipe, its stages (clip, prior, decoder, upsamplers) each a task of the loop.
"""
from __future__ import annotations

from dalle2_fast.recipes.suite import SUITE

TRAINABLE = (*SUITE, "clip", "unclip")


def make_task(name: str, opts):
    """The task training ``name`` with the command line's options ``opts`` (``unclip`` is a
    sequence of tasks: see :func:`dalle2_fast.recipes.unclip.train_unclip`)."""
    if name in SUITE:
        return SUITE[name](opts)
    if name == "clip":
        from dalle2_fast.recipes.clip import ClipTask

        seed = getattr(opts, "seed", 0)
        return ClipTask(data_seed=seed, n_train=getattr(opts, "n_train", 20000))
    raise ValueError(f"train: unknown model {name!r}; choose from {sorted(TRAINABLE)}")


__all__ = ["TRAINABLE", "make_task", "SUITE"]
