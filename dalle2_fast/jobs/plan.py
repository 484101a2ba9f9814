"""A job's images and the batches they are drawn in, both a function of the job alone.

Image k of a job is line L's i-th image, numbered in file order; its seed is the line's
``seed + i`` when the line names one, else the job's ``seed + k`` (the package's one seed rule:
a job of one prompt with seed s draws exactly what ``sample PROMPT -n N --seed s`` draws).

Chunks are the batches the network runs: consecutive images with the same options, at most
``batch_size`` each. They depend only on the prompt stream and ``batch_size`` -- never on the
number of processes or on what an interrupted run had already written -- so an image is always
computed in the same batch, and a resumed or sharded job writes the same bytes as one
uninterrupted process. Chunk j belongs to rank ``j % world``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from dalle2_fast.jobs.prompts import PromptLine
from dalle2_fast.seeding import MAX_SEED


@dataclass(frozen=True)
class WorkItem:
    """One image of a job: its index, prompt ('' for a suite checkpoint) and seed."""

    index: int
    prompt: str
    seed: int


@dataclass(frozen=True)
class Chunk:
    """One batch: its number in the job, the options its lines override, its images."""

    number: int
    options: tuple  # sorted (name, value) pairs
    items: tuple[WorkItem, ...]

    @property
    def first(self) -> int:
        return self.items[0].index


def _seed(base: int, offset: int, where: str) -> int:
    s = base + offset
    if s > MAX_SEED:
        raise ValueError(f"{where}: seed {base} + {offset} exceeds the largest seed 2^63 - 1")
    return s


def iter_items(lines: Iterable[PromptLine], n: int, seed: int) -> Iterator[tuple[WorkItem, tuple]]:
    """(image, its options key) for every image of the prompt lines, in order."""
    k = 0
    for line in lines:
        key = tuple(sorted(line.options.items()))
        for i in range(line.n or n):
            s = _seed(line.seed, i, f"line {line.line}") if line.seed is not None else _seed(seed, k, "--seed")
            yield WorkItem(k, line.prompt, s), key
            k += 1


def iter_plain_items(n: int, seed: int) -> Iterator[tuple[WorkItem, tuple]]:
    """The ``n`` images of a suite checkpoint job: image k from seed + k."""
    _seed(seed, max(n - 1, 0), "--seed")
    for k in range(n):
        yield WorkItem(k, "", seed + k), ()


def count_images(lines: Iterable[PromptLine], n: int) -> int:
    return sum(line.n or n for line in lines)


def iter_chunks(items: Iterable[tuple[WorkItem, tuple]], batch_size: int) -> Iterator[Chunk]:
    """Group the images into batches: consecutive images sharing options, ``batch_size`` at most."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    number, cur, cur_key = 0, [], None
    for item, key in items:
        if cur and (key != cur_key or len(cur) == batch_size):
            yield Chunk(number, cur_key, tuple(cur))
            number, cur = number + 1, []
        cur.append(item)
        cur_key = key
    if cur:
        yield Chunk(number, cur_key, tuple(cur))


def file_name(index: int, total: int) -> str:
    """``000042.png``: six digits, more when the job has a million images or more."""
    return f"{index:0{max(6, len(str(max(total - 1, 0))))}d}.png"


__all__ = ["WorkItem", "Chunk", "iter_items", "iter_plain_items", "iter_chunks", "count_images", "file_name"]
