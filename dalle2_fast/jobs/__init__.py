"""Batch jobs: prompt files of any length (streamed), sharded over torchrun ranks by image, each
image written once and atomically with a JSONL manifest, resumable after any kill with the same
bytes as an uninterrupted run, and refusing to mix settings or models in one directory.

- :mod:`~dalle2_fast.jobs.prompts`: the prompt-file formats (text, JSONL), streamed and checked;
- :mod:`~dalle2_fast.jobs.plan`: a job's images, their seeds, and the batches they are drawn in;
- :mod:`~dalle2_fast.jobs.spec`: ``job.json``, the model's identity, the differences of a restart;
- :mod:`~dalle2_fast.jobs.manifest`: journals, verification, ``manifest.jsonl``;
- :mod:`~dalle2_fast.jobs.render`: the pipeline or a suite checkpoint behind one interface;
- :mod:`~dalle2_fast.jobs.runner`: the loop, progress and signals; :mod:`~dalle2_fast.jobs.api`: entry points.
"""
from dalle2_fast.jobs.api import checkpoint_job, prompts_job

__all__ = ["prompts_job", "checkpoint_job"]
