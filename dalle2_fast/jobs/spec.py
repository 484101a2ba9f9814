"""The job spec (``job.json``): everything an image's bytes depend on, written once when a job
starts in a directory and compared at every restart.

It records the model's identity (a SHA-256 over the pipeline's or checkpoint's files, so a copy
in another place is the same model and a retrained one is not), the prompts' SHA-256, the seed,
images per line, batch size, every sampling setting, and the runtime that changes floating-point
results (device; CPU threads per process: a different thread count splits reductions
differently). A restart whose spec differs is refused with the differences listed; paths are
recorded for the reader but not compared.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dalle2_fast.jobs.prompts import file_sha256

SPEC_FILE = "job.json"
FORMAT = 1
INFORMATIONAL = ("model.path", "prompts.path")  # recorded, never compared


class JobMismatch(ValueError):
    """An existing job directory was made with other settings, prompts or model."""


def tree_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a directory's files (relative names and contents, sorted;
    hidden files skipped)."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    if not p.is_dir():
        raise FileNotFoundError(f"model identity: {p} is neither a file nor a directory")
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        rel = f.relative_to(p)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        h.update(rel.as_posix().encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return h.hexdigest()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differences(old: dict, new: dict) -> list[str]:
    """'field: X in the job, Y now' for every compared field that differs."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k in INFORMATIONAL:
            continue
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            out.append(f"{k}: {a.get(k, '<absent>')!r} in the job, {b.get(k, '<absent>')!r} now")
    return out


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def check_job_dir(out: Path, spec: dict, name: str = "--images-dir") -> bool:
    """True when ``out`` already holds this job (a restart), False when it is new (empty or
    absent). Raises :class:`JobMismatch` listing the differences when it holds another job, and
    ``ValueError`` when it holds files but no job."""
    f = out / SPEC_FILE
    if f.is_file():
        try:
            old = json.loads(f.read_text())
        except ValueError as e:
            raise JobMismatch(f"{name}: {f} is not valid JSON ({e}); it is not a job this command can continue") \
                from None
        diff = differences(old, json.loads(json.dumps(spec)))
        if diff:
            raise JobMismatch(f"{name}: {out} holds a job made with other settings; refusing to mix them. "
                              f"Differences: {'; '.join(diff)}. Use another directory, or the job's settings.")
        return True
    if out.exists() and any(not _is_hidden(p) for p in out.iterdir()):
        raise ValueError(f"{name}: {out} holds files but no {SPEC_FILE}; a job starts in an empty or new directory")
    return False


def write_spec(out: Path, spec: dict) -> None:
    from dalle2_fast.checkpoint import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SPEC_FILE, json.dumps(spec, indent=2, sort_keys=True) + "\n")


__all__ = ["tree_sha256", "differences", "check_job_dir", "write_spec", "JobMismatch", "SPEC_FILE", "FORMAT"]
