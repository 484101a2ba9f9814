"""Tables of docs/gpu-readiness.md and `dalle2-fast info --gpu-plan`, from the committed data.

Each generator owns one section of the document, between ``<!-- BEGIN name -->`` and
``<!-- END name -->``, and rewrites only that section. The Triton tables are derived from the
audited table (dalle2_fast/triton/_audited.py) by running the wrappers' own chooser
(triton/launch.py) for every kernel, dtype, tile class and architecture, so they show what a
GPU will be handed, and next to it the configuration the wrappers used before the audit (the
first candidate of each list).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from dalle2_fast.triton import launch as L

DOC = Path(__file__).resolve().parents[2] / "docs" / "gpu-readiness.md"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = {16: "1-16", 32: "17-32", 64: "33-64 (40)", 128: "65-128 (80, 96)", 256: "129-256 (200)"}
CODE_WIDTHS = {16: "1-31", 32: "32-63", 64: ">= 64"}


def replace_section(name: str, text: str, path: Path = DOC) -> None:
    """Put ``text`` between the section's markers (appending the section if it is new)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    doc = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        doc = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip() + ("\n\n" if doc else "") + block + "\n"
    path.write_text(doc)


def _kib(b: int) -> str:
    return f"{b / 1024:.0f}" if b % 1024 == 0 else f"{b / 1024:.1f}"


def _short(cfg: dict) -> str:
    names = {"BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_K": "K", "BLOCK_C": "C", "BLOCK_S": "S", "BLOCK": "B",
             "num_warps": "w", "num_stages": "s"}
    return " ".join(f"{names[k]}{cfg[k]}" for k in names if k in cfg)


def _cell(kernel: str, dtype, arch: int, cfg: dict | None) -> str:
    if cfg is None:
        return "**none fits**"
    res = L.audited(kernel, arch, dtype, cfg)
    if res is None:
        return f"{_short(cfg)}: not audited"
    over = L.over_limits(res, cfg.get("num_warps", 4), L.AUDITED_TARGETS[arch])
    text = f"{_short(cfg)}: {_kib(res['smem'])} KiB, {res['regs']} regs" + (f", spills {res['spill']} B" if res["spill"] else "")
    return f"**{text} - over**" if over else text


def triton_rows() -> list[dict]:
    """Per kernel, dtype, tile class and architecture: the configuration chosen from the table
    and the pre-audit one, with their audited resources."""
    rows = []
    for kernel in L.ATTENTION_KERNELS:
        for dt in DTYPES:
            for bd, dims in HEAD_DIMS.items():
                cands = L.attention_candidates(kernel, bd)
                rows.append(dict(kernel=kernel, dtype=dt, shape=f"head dim {dims}", before=cands[0],
                                 chosen={a: L.choose(kernel, dt, t, cands) for a, t in L.AUDITED_TARGETS.items()}))
    for dt in DTYPES:
        for bd, widths in CODE_WIDTHS.items():
            cands = L.codebook_candidates(dt, bd)
            rows.append(dict(kernel="nearest_code", dtype=dt, shape=f"code width {widths}", before=cands[0],
                             chosen={a: L.choose("nearest_code", dt, t, cands) for a, t in L.AUDITED_TARGETS.items()}))
    return rows


def _fits(kernel: str, dtype, arch: int, cfg: dict | None) -> bool:
    res = None if cfg is None else L.audited(kernel, arch, dtype, cfg)
    return res is not None and not L.over_limits(res, cfg.get("num_warps", 4), L.AUDITED_TARGETS[arch])


def _max_over(kernel: str, dtype, arch: int, cfgs: list[dict]) -> str:
    res = [r for c in cfgs if (r := L.audited(kernel, arch, dtype, c))]
    if len(res) < len(cfgs):
        return f"{len(cfgs) - len(res)} of {len(cfgs)} not audited"
    over = sum(bool(L.over_limits(r, c.get("num_warps", 4), L.AUDITED_TARGETS[arch])) for r, c in zip(res, cfgs))
    return (f"{len(cfgs)} configs: max {_kib(max(r['smem'] for r in res))} KiB, max {max(r['regs'] for r in res)} regs, "
            f"spills {'none' if not any(r['spill'] for r in res) else max(r['spill'] for r in res)}"
            + (f", **{over} over**" if over else ""))


def triton_markdown(summary: dict | None = None) -> str:
    archs = list(L.AUDITED_TARGETS)
    head = " | ".join(f"sm_{a} chosen ({L.AUDITED_TARGETS[a].smem // 1024} KiB)" for a in archs)
    out = [f"| kernel | dtype | shape | {head} | before the audit: " + ", ".join(f"sm_{a}" for a in archs) + " |",
           "|---" * (4 + len(archs)) + "|"]
    n_before = n_over = n_rows = 0
    for r in triton_rows():
        dt = L.dtype_name(r["dtype"])
        chosen = " | ".join(_cell(r["kernel"], r["dtype"], a, r["chosen"][a]) for a in archs)
        before = []
        for a in archs:
            n_rows += 1
            n_over += not _fits(r["kernel"], r["dtype"], a, r["chosen"][a])
            res = L.audited(r["kernel"], a, r["dtype"], r["before"])
            bad = res is not None and not _fits(r["kernel"], r["dtype"], a, r["before"])
            n_before += bad
            before.append("?" if res is None else f"{_kib(res['smem'])} KiB{' **over**' if bad else ''}")
        out.append(f"| {r['kernel']} | {dt} | {r['shape']} | {chosen} | {_short(r['before'])}: {', '.join(before)} |")
    out += ["", "| kernel | dtype | " + " | ".join(f"sm_{a}" for a in archs) + " |", "|---|---|" + "---|" * len(archs)]
    for kernel in L.ADAGN_KERNELS:
        cfgs = [dict(BLOCK_C=bc, BLOCK_S=bs, num_warps=8, num_stages=3) for bc, bs in L.ADAGN_TILES]
        for dt in DTYPES:
            out.append(f"| {kernel} | {L.dtype_name(dt)} | " + " | ".join(_max_over(kernel, dt, a, cfgs) for a in archs) + " |")
    for dt in DTYPES:
        out.append(f"| sampling_step | {L.dtype_name(dt)} | "
                   + " | ".join(_max_over("sampling_step", dt, a, L.SAMPLING_CANDIDATES) for a in archs) + " |")
    lines = [f"Chosen configurations over the limits: **{n_over}** of {n_rows} (kernel x dtype x shape x "
             f"architecture); the pre-audit configurations: **{n_before}** of {n_rows}."]
    if summary:
        fams = summary.get("families", {})
        lines.append("Audited launches (every case of the matrix, both architectures): " + ", ".join(
            f"{f} {d['launches']} ({d['over']} over, {d['errors']} without a configuration)" for f, d in sorted(fams.items()))
            + f"; plus {sum(d['sizing_compiles'] for d in fams.values())} sizing compiles of candidates.")
        if "before" in summary:
            b = summary["before"]
            lines.append(f"The same matrix with the pre-audit configurations: {b['over']} of {b['launches']} launches "
                         "over the limits.")
    return "\n".join(lines + [""] + out) + "\n"


def write_triton_section(table: dict, summary: dict) -> None:
    replace_section("triton-audit", triton_markdown(summary))
