"""The loop of a batch job: this rank's chunks, each skipped when all its images are written and
match the manifest, else drawn whole (the same batch as in any other run) and its missing
images written atomically and journalled; progress with images/s and time left; SIGTERM/SIGINT
stop after the current chunk with status 128 + signal (SIGKILL loses at most that chunk); the
same command continues.

Images are written atomically (a temp file renamed into place) without an fsync each: a kill
cannot tear a renamed file, and after a power loss the SHA-256 check of a restart redraws any
image whose bytes did not reach the disk. The journal and the directory are fsynced once per
chunk (an fsync per image cost ~3 ms, most of a small model's time per image).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from dalle2_fast.jobs.manifest import Journal, bytes_sha256, file_matches
from dalle2_fast.jobs.plan import Chunk, file_name


@dataclass
class JobStats:
    drawn: int = 0        # images this run drew and wrote
    kept: int = 0         # images found written and verified
    redrawn: int = 0      # images found on disk that did not match the manifest (or had no record)
    chunks: int = 0       # chunks this rank drew
    stopped_by: int | None = None  # the signal that stopped the run early


def _fmt_time(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class Progress:
    """One line per chunk (at most one a second): images done of this rank's share, images/s of
    this run's draws, and the time left at that rate."""

    def __init__(self, total: int, share: int, say: Callable[[str], None], rank_label: str = "",
                 every_s: float = 1.0):
        self.total, self.share, self.say, self.label, self.every = total, share, say, rank_label, every_s
        self.t0 = time.perf_counter()
        self.last = -1e9
        self.done = self.drawn = 0

    def update(self, kept: int = 0, drawn: int = 0, final: bool = False) -> None:
        self.done += kept + drawn
        self.drawn += drawn
        now = time.perf_counter()
        if not final and now - self.last < self.every:
            return
        self.last = now
        rate = self.drawn / max(now - self.t0, 1e-9)
        left = (self.share - self.done) / rate if rate > 0 else float("nan")
        eta = _fmt_time(left) if left == left else "?"
        self.say(f"  {self.done}/{self.share} images{self.label}, {rate:.2f} images/s, ~{eta} left")

    @property
    def rate(self) -> float:
        return self.drawn / max(time.perf_counter() - self.t0, 1e-9)


def write_file(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or its old content, never a part: write a temp file, rename it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_chunks(out: Path, renderer, chunks: Iterable[Chunk], total: int, rank: int, world: int,
               done: dict, progress: Progress, stop=None) -> JobStats:
    """Draw this rank's chunks of the job into ``out``; ``done`` maps index -> (file, sha256)
    from the manifest and journals of earlier runs."""
    from dalle2_fast.data.images import png_bytes

    st = JobStats()
    with Journal(out, rank) as journal:
        for chunk in chunks:
            if chunk.number % world != rank:
                continue
            names = [file_name(it.index, total) for it in chunk.items]
            todo = []
            for it, name in zip(chunk.items, names):
                rec = done.get(it.index)
                if rec is not None and rec[0] == name and file_matches(out / name, rec[1]):
                    st.kept += 1
                    continue
                st.redrawn += (out / name).exists()
                todo.append(it.index)
            if not todo:
                progress.update(kept=len(chunk.items))
                continue
            images = renderer.render(chunk)  # the whole chunk: the batch every run draws
            settings = renderer.settings(chunk.options)
            wanted = set(todo)
            for it, name, img in zip(chunk.items, names, images):
                if it.index not in wanted:
                    continue
                meta = renderer.metadata(it, settings)
                data = png_bytes(img, meta)
                write_file(out / name, data)
                journal.add({"index": it.index, "file": name, "prompt": it.prompt, "seed": it.seed,
                             "settings": settings, "sha256": bytes_sha256(data),
                             "model_sha256": renderer.identity["sha256"]})
            _fsync_dir(out)
            journal.sync()
            st.drawn += len(todo)
            st.chunks += 1
            progress.update(kept=len(chunk.items) - len(todo), drawn=len(todo))
            if stop is not None and stop.signum is not None:
                st.stopped_by = stop.signum
                break
    progress.update(final=True)
    return st


__all__ = ["run_chunks", "JobStats", "Progress"]
