"""What draws a chunk of a job: the unCLIP pipeline (ours or imported weights) or any sampleable
suite checkpoint, behind one small interface -- ``settings(options)``, ``render(chunk)``,
``metadata(item, settings)`` and ``identity``."""
from __future__ import annotations

from pathlib import Path

import torch

from dalle2_fast.jobs.plan import Chunk, WorkItem
from dalle2_fast.jobs.spec import tree_sha256


class PipelineRenderer:
    """Prompts -> images with an :class:`~dalle2_fast.pipeline.UnCLIPPipeline`. A chunk is drawn
    exactly as ``iter_images`` draws a batch: text embedding, prior, decoder, upsamplers, each
    image from its own seed."""

    kind = "unclip"

    def __init__(self, pipe, path: str | Path, overrides: dict):
        self.pipe = pipe
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self.defaults = pipe.settings(**self.overrides)  # checks every option
        self.identity = {"kind": self.kind, "path": str(path), "sha256": tree_sha256(path)}

    def settings(self, options: tuple) -> dict:
        return self.pipe.settings(**{**self.overrides, **dict(options)})

    @torch.no_grad()
    def render(self, chunk: Chunk) -> torch.Tensor:
        s = self.settings(chunk.options)
        texts = [it.prompt for it in chunk.items]
        seeds = [it.seed for it in chunk.items]
        text, z = self.pipe.text_to_embeddings(texts, seeds, s["prior_steps"], s["prior_guidance"])
        from dalle2_fast.pipeline import OPTIONS  # split guidance, samplers: set only when given

        return self.pipe.decode_embeddings(z, text, seeds, s["decoder_steps"], s["upsampler_steps"],
                                           s["decoder_guidance"], **{k: s[k] for k in OPTIONS if k in s})

    def metadata(self, item: WorkItem, settings: dict) -> dict:
        return {"index": item.index, "prompt": item.prompt, "seed": item.seed, **settings,
                "model_sha256": self.identity["sha256"]}


class CheckpointRenderer:
    """Seeds -> images with a trained suite checkpoint (:class:`~dalle2_fast.generate.CheckpointSampler`)."""

    kind = "checkpoint"

    def __init__(self, sampler):
        self.sampler = sampler
        files = [sampler.path] + ([sampler.clf_path] if getattr(sampler, "clf_path", None) else [])
        sha = tree_sha256(files[0]) if len(files) == 1 else "+".join(tree_sha256(f) for f in files)
        self.identity = {"kind": self.kind, "path": str(sampler.path), "sha256": sha}
        self.defaults = self.settings(())

    def settings(self, options: tuple) -> dict:
        return {k: v for k, v in self.sampler.settings.items() if k != "checkpoint"}

    @torch.no_grad()
    def render(self, chunk: Chunk) -> torch.Tensor:
        return self.sampler([it.seed for it in chunk.items], first=chunk.first)

    def metadata(self, item: WorkItem, settings: dict) -> dict:
        return {"index": item.index, "seed": item.seed, **settings, "model_sha256": self.identity["sha256"]}


__all__ = ["PipelineRenderer", "CheckpointRenderer"]
