"""Flag checks run before any model loads: each bad value raises ``ValueError`` naming the flag
the user typed, what was expected and what was got."""
from __future__ import annotations

import math
import os
from pathlib import Path

MAX_PROMPT_CHARS = 2000


def flag(dest: str) -> str:
    """The command-line spelling of an argparse destination ('prior_steps' -> '--prior-steps')."""
    return "-n" if dest == "n" else "--" + dest.replace("_", "-")


def check_count(name: str, v, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {v!r}")
    return v


def check_finite(name: str, v, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{name}: expected a finite number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def check_positive(name: str, v, allow_none: bool = False):
    if v is None and allow_none:
        return
    if v is None or isinstance(v, bool) or not (v > 0) or (isinstance(v, float) and not math.isfinite(v)):
        raise ValueError(f"{name}: expected a positive finite number, got {v!r}")


def check_seed_arg(seed, name: str = "--seed") -> int:
    from dalle2_fast.seeding import check_seed

    return check_seed(seed, name)


def check_prompts(prompts, name: str = "PROMPT") -> list[str]:
    out = []
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"{name}: expected non-empty text, got {p!r}")
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(f"{name}: a prompt of {len(p)} characters is longer than the {MAX_PROMPT_CHARS} "
                             f"accepted (starts {p[:40]!r})")
        out.append(p)
    return out


def check_out_dir(name: str, path: str | Path) -> Path:
    """``path`` is (or can be created as) a directory we can write into."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name}: expected a directory, got an existing file {str(p)!r}")
    probe = p
    while not probe.exists():  # the nearest existing ancestor decides
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: cannot write under {str(p)!r} ({str(probe)!r} is not a writable directory)")
    return p


def ensure_writable(name: str, directory: str | Path, keep: bool = True) -> Path:
    """Create ``directory`` (and its parents) and prove a file can be written there, right before
    work starts: what os.access cannot tell (read-only mounts, /proc, quotas) shows here, not
    after the work is done. ``keep=False`` removes again the directories the probe created, for
    callers that create the directory themselves after checks of their own (a batch job), so a
    refused command leaves nothing behind."""
    import tempfile

    d = Path(directory)
    created = [p for p in [d, *d.parents] if not p.exists()]
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"{name}: cannot write under {str(d)!r} ({e.strerror or e})") from None
    finally:
        if not keep:
            for p in created:  # deepest first
                try:
                    p.rmdir()
                except OSError:
                    break
    return d


def refuse_unused(args, dests, why: str) -> None:
    """Options that do not apply to this mode must not be given (they would be silently ignored)."""
    given = [flag(d) for d in dests if getattr(args, d, None) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: {why}")


__all__ = ["flag", "check_count", "check_finite", "check_positive", "check_seed_arg", "check_prompts",
           "check_out_dir", "ensure_writable", "refuse_unused", "MAX_PROMPT_CHARS"]
