"""The manifest of a job: one JSON line per image (index, file, prompt, seed, settings, SHA-256
of the PNG, the model's SHA-256).

While a job runs, each rank appends the record of every image it writes to its own journal
(``.parts/rank-NNNNN.jsonl``, after the image's atomic rename, flushed per image and fsynced
per batch), so a killed job leaves a journal that names exactly the images completely written
(a torn last line is ignored). When every image is there, rank 0 merges the journals into
``manifest.jsonl`` sorted by index, written atomically, and removes the journals and any temp
file a kill left: the finished directory is the same bytes however the job was run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

MANIFEST = "manifest.jsonl"
PARTS = ".parts"


def part_path(out: Path, rank: int) -> Path:
    return out / PARTS / f"rank-{rank:05d}.jsonl"


def record_line(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Journal:
    """This rank's append-only record of the images it wrote."""

    def __init__(self, out: Path, rank: int):
        p = part_path(out, rank)
        p.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(p, "a", encoding="utf-8")

    def add(self, record: dict) -> None:
        self._f.write(record_line(record) + "\n")
        self._f.flush()

    def sync(self) -> None:
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_lines(path: Path) -> Iterator[dict]:
    with open(path, "rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except ValueError:  # a line torn by a kill: that image is redrawn
                continue
            if isinstance(rec, dict) and isinstance(rec.get("index"), int) and isinstance(rec.get("sha256"), str):
                yield rec


def iter_records(out: Path) -> Iterator[dict]:
    """Every record of the finished manifest and of the journals (later ones win)."""
    if (out / MANIFEST).is_file():
        yield from _read_lines(out / MANIFEST)
    parts = out / PARTS
    if parts.is_dir():
        for p in sorted(parts.glob("rank-*.jsonl")):
            yield from _read_lines(p)


def load_done(out: Path) -> dict[int, tuple[str, str]]:
    """index -> (file name, SHA-256) of the images the manifest and journals record."""
    return {r["index"]: (r.get("file", ""), r["sha256"]) for r in iter_records(out)}


def file_matches(path: Path, sha256: str) -> bool:
    """The file exists and its bytes hash to ``sha256`` (a truncated or corrupt PNG does not)."""
    try:
        return bytes_sha256(path.read_bytes()) == sha256
    except OSError:
        return False


def finalize(out: Path, total: int) -> Path:
    """Merge the journals into ``manifest.jsonl`` (sorted by index), then remove the journals and
    leftover temp files. Raises ``RuntimeError`` naming the missing images if any is unrecorded."""
    from dalle2_fast.checkpoint import atomic_write_text

    records = {r["index"]: r for r in iter_records(out) if 0 <= r["index"] < total}
    missing = [i for i in range(total) if i not in records]
    if missing:
        raise RuntimeError(f"job in {out}: {len(missing)} of {total} images are not recorded (first: {missing[:5]}); "
                           "rerun the same command to finish them")
    atomic_write_text(out / MANIFEST, "".join(record_line(records[i]) + "\n" for i in range(total)))
    shutil.rmtree(out / PARTS, ignore_errors=True)
    for tmp in out.glob(".*.tmp-*"):  # a temp file of a write a kill interrupted
        tmp.unlink(missing_ok=True)
    return out / MANIFEST


__all__ = ["Journal", "iter_records", "load_done", "file_matches", "finalize", "part_path", "bytes_sha256",
           "record_line", "MANIFEST", "PARTS"]
