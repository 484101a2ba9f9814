"""Batch jobs, the entry points: :func:`prompts_job` (the unCLIP pipeline over prompts given on
the command line or in a prompt file) and :func:`checkpoint_job` (any sampleable suite
checkpoint). Both are resumable and shard over ``torchrun`` ranks:

    dalle2-fast sample --prompts-file prompts.jsonl --images-dir out/ [--pipeline DIR]
    torchrun --nproc-per-node 4 -m dalle2_fast.cli sample --prompts-file prompts.txt --images-dir out/

Every input is checked (the whole prompt file included) before a model loads; the job directory
is checked against its ``job.json`` before any image is drawn.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch

from dalle2_fast.jobs.manifest import MANIFEST, finalize, load_done
from dalle2_fast.jobs.plan import count_images, iter_chunks, iter_items, iter_plain_items
from dalle2_fast.jobs.prompts import (check_prompts_file, file_sha256, is_jsonl, iter_prompt_args,
                                      iter_prompt_file)
from dalle2_fast.jobs.render import CheckpointRenderer, PipelineRenderer
from dalle2_fast.jobs.runner import Progress, run_chunks
from dalle2_fast.jobs.spec import FORMAT, check_job_dir, write_spec


def _share(chunks, rank: int, world: int) -> int:
    return sum(len(c.items) for c in chunks if c.number % world == rank)


def _runtime(device: torch.device, dtype: str = "float32", fast_convs: bool = False) -> dict:
    """What changes floating-point results besides the settings: the device type, the weights'
    dtype, Winograd convolutions, and on the CPU the threads per process."""
    out = {"device": device.type, "threads": torch.get_num_threads() if device.type == "cpu" else None}
    if dtype != "float32":  # only recorded when set, so jobs written before the flag still resume
        out["dtype"] = dtype
    if fast_convs:  # likewise
        out["convs"] = "winograd"
    return out


def _check_count(name: str, v, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {v!r}")
    return v


def prompts_job(out: str | Path, *, pipeline: str | Path | None = None, prompts: list[str] | None = None,
                prompts_file: str | Path | None = None, n: int = 1, seed: int = 0, batch_size: int = 16,
                options: dict | None = None, say: Callable[[str], None] = print, dtype: str = "float32",
                fast_convs: bool = False) -> int:
    """Images of the unCLIP pipeline for ``prompts`` or every line of ``prompts_file`` (``n``
    images a line unless the line says otherwise), into ``out``; ``dtype`` is the weights' dtype
    ("float32", "bfloat16", "float16"); ``fast_convs``: Winograd convolutions
    (``UnCLIPPipeline.fast_convs``), recorded in the job. Returns the exit status: 0 when
    the job is complete, 128 + signal when a signal stopped it (rerun to continue)."""
    from dalle2_fast.pipeline import UnCLIPPipeline, shipped_weights_dir
    from dalle2_fast.seeding import check_seed
    from dalle2_fast.train import distributed as D

    if (prompts is None) == (prompts_file is None):
        raise ValueError("batch job: give prompts or a prompts file, not both or neither")
    _check_count("-n", n)
    _check_count("--batch-size", batch_size)
    check_seed(seed, "--seed")
    if prompts_file is not None:
        path = check_prompts_file(prompts_file)
        lines = lambda: iter_prompt_file(path, str(path))  # noqa: E731
        source = {"path": str(path), "format": "jsonl" if is_jsonl(path) else "text", "sha256": file_sha256(path)}
    else:
        prompts = list(prompts)
        lines = lambda: iter_prompt_args(prompts)  # noqa: E731
        source = {"path": None, "format": "arguments",
                  "sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()}
    total = count_images(lines(), n)  # reads and checks every line before any model loads
    if total == 0:
        raise ValueError(f"--prompts-file: {prompts_file} holds no prompts (only blank lines)")
    chunks = lambda: iter_chunks(iter_items(lines(), n, seed), batch_size)  # noqa: E731
    model_dir = Path(pipeline) if pipeline is not None and str(pipeline) != "shapes" else shipped_weights_dir()
    if model_dir is None:
        raise FileNotFoundError("--pipeline: this install ships no weights; pass --pipeline DIR")
    info = D.setup()
    share = _share(chunks(), info.rank, info.world)  # also checks every seed
    pipe = UnCLIPPipeline.from_pretrained(model_dir, device=info.device, dtype=getattr(torch, dtype))
    if fast_convs:
        pipe.fast_convs()
    renderer = PipelineRenderer(pipe, model_dir, options or {})
    spec = {"format": FORMAT, "model": renderer.identity, "prompts": source, "images": total, "n": n, "seed": seed,
            "batch_size": batch_size, "settings": renderer.defaults,
            "runtime": _runtime(info.device, dtype, fast_convs)}
    return _run(Path(out), renderer, chunks, total, share, spec, info, say)


def checkpoint_job(out: str | Path, checkpoint: str | Path, *, n: int = 64, seed: int = 0, batch_size: int = 16,
                   sampler_options: dict | None = None, say: Callable[[str], None] = print) -> int:
    """``n`` images of a trained suite checkpoint (image k from seed + k) into ``out``."""
    from dalle2_fast.generate import CheckpointSampler
    from dalle2_fast.seeding import check_seed
    from dalle2_fast.train import distributed as D

    _check_count("-n", n)
    _check_count("--batch-size", batch_size)
    check_seed(seed, "--seed")
    chunks = lambda: iter_chunks(iter_plain_items(n, seed), batch_size)  # noqa: E731
    info = D.setup()
    share = _share(chunks(), info.rank, info.world)
    renderer = CheckpointRenderer(CheckpointSampler(checkpoint, **(sampler_options or {})))
    spec = {"format": FORMAT, "model": renderer.identity, "prompts": None, "images": n, "n": n, "seed": seed,
            "batch_size": batch_size, "settings": renderer.defaults, "runtime": _runtime(torch.device("cpu"))}
    return _run(Path(out), renderer, chunks, n, share, spec, info, say)


def _run(out: Path, renderer, chunks, total: int, share: int, spec: dict, info, say) -> int:
    from dalle2_fast.train import distributed as D
    from dalle2_fast.train.signals import StopRequest

    existing = check_job_dir(out, spec)  # every rank checks: all refuse alike
    if not existing and info.is_main:
        write_spec(out, spec)
    D.barrier(info)
    done = load_done(out) if existing else {}
    label = f" (rank {info.rank} of {info.world})" if info.enabled else ""
    say(f"job: {total} images into {out}{label}" + (f"; resuming, {len(done)} recorded so far" if done else ""))
    progress = Progress(total, share, say, label)
    with StopRequest() as stop:
        st = run_chunks(out, renderer, chunks(), total, info.rank, info.world, done, progress, stop)
    if st.stopped_by is not None:
        say(f"stopped by signal {st.stopped_by} after {st.drawn} new images{label}; run the same command again "
            "to continue")
        return 128 + st.stopped_by  # no barrier: torchrun signals every rank
    D.barrier(info)
    if info.is_main:
        finalize(out, total)
        say(f"wrote {total} images and {MANIFEST} to {out}: {st.drawn} drawn by this process, {st.kept} kept "
            f"(verified against the manifest), {st.redrawn} redrawn, {progress.rate:.2f} images/s")
    D.teardown(info)
    return 0


__all__ = ["prompts_job", "checkpoint_job"]
