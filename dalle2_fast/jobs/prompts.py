"""Prompt files for batch jobs, read as a stream (a line at a time: a file of any length is never
held whole in memory).

Two formats, chosen by the file name (nothing is guessed from the text):

- ``*.jsonl`` / ``*.ndjson``: one JSON object per line, ``{"prompt": "...", "n": 4, "seed": 7,
  "prior_steps": 32, "decoder_steps": 25, "upsampler_steps": 8, "prior_guidance": 2.0,
  "decoder_guidance": 3.0}``; only ``prompt`` is required, the rest override the job's defaults
  for that line's images;
- anything else: plain text, one prompt per line.

Blank lines are skipped in both. Every error names the file, the line and the field.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from dalle2_fast.seeding import MAX_SEED

MAX_PROMPT_CHARS = 2000
MAX_IMAGES_PER_LINE = 1_000_000
STEP_FIELDS = ("prior_steps", "decoder_steps", "upsampler_steps")
GUIDANCE_FIELDS = ("prior_guidance", "decoder_guidance")
OPTION_FIELDS = STEP_FIELDS + GUIDANCE_FIELDS
FIELDS = ("prompt", "n", "seed") + OPTION_FIELDS
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class PromptLine:
    """One line of a prompt file: its 1-based line number, the prompt, and what it overrides
    (``None``: the job's default)."""

    line: int
    prompt: str
    n: int | None = None
    seed: int | None = None
    options: dict = field(default_factory=dict)


def is_jsonl(path: str | Path) -> bool:
    return Path(path).suffix.lower() in JSONL_SUFFIXES


def check_prompt(prompt, where: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: prompt: expected non-empty text, got {prompt!r}"[:300])
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"{where}: prompt: {len(prompt)} characters is longer than the {MAX_PROMPT_CHARS} accepted "
                         f"(starts {prompt[:40]!r})")
    return prompt


def check_option(name: str, v, where: str):
    """One steps / guidance value, as the pipeline accepts it."""
    if name in STEP_FIELDS:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10_000:
            raise ValueError(f"{where}: {name}: expected an integer in [1, 10000], got {v!r}")
    elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 100:
        raise ValueError(f"{where}: {name}: expected a finite number in [0, 100], got {v!r}")
    return v


def _parse_json_line(text: str, where: str) -> dict:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object with a 'prompt', got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} (known: {list(FIELDS)})")
    if "prompt" not in obj:
        raise ValueError(f"{where}: missing field 'prompt'")
    return obj


def parse_line(text: str, number: int, jsonl: bool, name: str = "prompts file") -> PromptLine | None:
    """One line -> a checked :class:`PromptLine` (``None`` for a blank line)."""
    where = f"{name}:{number}"
    if not text.strip():
        return None
    if not jsonl:
        return PromptLine(number, check_prompt(text.strip(), where))
    obj = _parse_json_line(text, where)
    prompt = check_prompt(obj["prompt"], where)
    n = obj.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES_PER_LINE):
        raise ValueError(f"{where}: n: expected an integer in [1, {MAX_IMAGES_PER_LINE}], got {n!r}")
    seed = obj.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise ValueError(f"{where}: seed: expected an integer in [0, 2^63 - 1], got {seed!r}")
    options = {k: check_option(k, obj[k], where) for k in OPTION_FIELDS if obj.get(k) is not None}
    return PromptLine(number, prompt, n, seed, options)


def iter_prompt_file(path: str | Path, name: str | None = None) -> Iterator[PromptLine]:
    """The prompt lines of ``path``, checked, one at a time."""
    path = Path(path)
    name = name or str(path)
    jsonl = is_jsonl(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{name}:{number}: not UTF-8 text ({e})") from None
            line = parse_line(text.rstrip("\r\n"), number, jsonl, name)
            if line is not None:
                yield line


def iter_prompt_args(prompts: list[str]) -> Iterator[PromptLine]:
    """Prompts given on the command line, as prompt lines (line k = the k-th PROMPT)."""
    for k, p in enumerate(prompts, 1):
        yield PromptLine(k, check_prompt(p, f"PROMPT {k}"))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_prompts_file(path: str | Path, name: str = "--prompts-file") -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{name}: no such file {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"{name}: expected a file, got {str(p)!r}")
    return p


__all__ = ["PromptLine", "iter_prompt_file", "iter_prompt_args", "parse_line", "file_sha256", "check_prompts_file",
           "check_prompt", "check_option", "is_jsonl", "FIELDS", "OPTION_FIELDS", "MAX_PROMPT_CHARS"]
