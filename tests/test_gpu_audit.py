"""The ahead-of-time Triton audit (dalle2_fast/gpu_plan/): the CI subset is compiled for sm_80 and
sm_90 with Triton's own compiler and ptxas (no GPU) and checked against the committed table, the
audit demonstrably catches a configuration over the limits and a stale table, and the subset
still exercises every feature of the full matrix.

The full matrix (several thousand compiles, about an hour on one core) regenerates the table:
``python -m dalle2_fast.gpu_plan.triton_audit --write``. CI compiles the subset only and
checks every launch of the full matrix against the table without compiling
(test_gpu_launch.py)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dalle2_fast.gpu_plan import matrix as M
from dalle2_fast.gpu_plan.compile import parse_ptxas

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: the audit compiles real kernels, which TRITON_INTERPRET=1 (set by
# conftest for this process) replaces with the interpreter.
_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from dalle2_fast.gpu_plan import matrix as M, triton_audit as T
    from dalle2_fast.triton import launch as L, _audited
    cases = M.full_matrix()
    out = T.check_committed([], M.ci_subset(cases))   # the full matrix is checked in test_gpu_launch
    # the audit must catch an over-limit launch: the pre-audit float32 forward at head dim 128 on
    # sm_80 (176 KiB > 163 KiB per the issue), compiled with the wrapper's own arguments
    case = next(c for c in cases if c.name == "attention(dtype=float32, D=128, causal=False, pad=False)")
    with L.using_table(T._Permissive()):
        jobs = [j for j in T._jobs_for(case, 80, False) if j[0] == "attention_fwd"]
    legacy = T._rows_from(jobs)[0]
    stale = T.stale_kernels({"hashes": {**_audited.META["hashes"], "attention_fwd": "0" * 64}})
    json.dump({"rows": out["rows"], "failures": out["failures"], "legacy": legacy, "stale": stale,
               "fresh": T.stale_kernels(_audited.META)}, sys.stdout, default=str)
""")


@pytest.fixture(scope="module")
def audit():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout)


def test_ci_subset_compiles_and_agrees_with_the_committed_table(audit):
    assert audit["failures"] == []
    rows = audit["rows"]
    assert rows and all("error" not in r and r["over"] == [] for r in rows)
    kernels = {"attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq", "nearest_code", "adagn_fwd", "adagn_bwd",
               "sampling_step"}
    for arch in (80, 90):  # every kernel, in every dtype, compiled for both architectures
        for dt in ("float32", "float16", "bfloat16"):
            assert {r["kernel"] for r in rows if r["arch"] == arch and r["dtype"] == dt} == kernels, (arch, dt)
    assert all(r["smem"] <= (163 if r["arch"] == 80 else 227) * 1024 for r in rows)


def test_audit_catches_a_launch_over_the_limit(audit):
    legacy = audit["legacy"]
    assert legacy["kernel"] == "attention_fwd" and legacy["cfg"]["BLOCK_M"] == 128
    assert legacy["smem"] > 163 * 1024 and legacy["over"], legacy


def test_audit_detects_a_stale_table(audit):
    assert audit["fresh"] == []  # the committed table matches the kernels and Triton now
    assert audit["stale"] == ["attention_fwd"]


def test_ci_subset_exercises_every_feature_of_the_full_matrix():
    cases = M.full_matrix()
    sub = M.ci_subset(cases)
    assert set().union(*(M.features(c) for c in sub)) == set().union(*(M.features(c) for c in cases))
    assert len(sub) < 30 < len(cases)
    for fam in M.FAMILIES:  # every dtype of every family
        assert {c.params["dtype"] for c in sub if c.family == fam} == {"float32", "float16", "bfloat16"}


def test_matrix_covers_the_wrapper_choices():
    """Every head dim class, tile and sampler variant the wrappers can produce is in the matrix."""
    from dalle2_fast.triton import launch as L

    cases = M.full_matrix()
    att = {max(16, L._next_pow2(c.params["D"])) for c in cases if c.family == "attention"}
    assert att == set(L.ATTENTION_BLOCK_DS)
    tiles = set()
    for c in cases:
        if c.family == "adagn":
            cfg = L.adagn_candidates(c.params["C"] // c.params["groups"], c.params["S"])[0]
            tiles.add((cfg["BLOCK_C"], cfg["BLOCK_S"]))
    assert tiles == set(L.ADAGN_TILES)
    assert len(M.sampling_variants()) == 6 + 6 * 16 + 6 * 8 + 6 * 4 + 3 * 2  # + the inpainting blend per sampler
    assert {v["known"] for v in M.sampling_variants()} == {0, 1, 2}


def test_parse_ptxas_log():
    log = ("ptxas info    : Compiling entry function '_fwd_kernel' for 'sm_90a'\n"
           "ptxas info    : Function properties for _fwd_kernel\n"
           "    432 bytes stack frame, 1008 bytes spill stores, 732 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 432 bytes cumulative stack size\n")
    assert parse_ptxas(log) == {"regs": 255, "spill": 1008, "spill_loads": 732, "stack": 432}
    with pytest.raises(RuntimeError, match="registers"):
        parse_ptxas("ptxas info: nothing here")


def test_doc_section_matches_the_committed_table():
    from dalle2_fast.gpu_plan.report import DOC, triton_markdown
    from dalle2_fast.triton import _audited

    doc = DOC.read_text()
    body = doc.split("<!-- BEGIN triton-audit -->\n", 1)[1].split("\n<!-- END triton-audit -->", 1)[0]
    assert body.strip() == triton_markdown(_audited.META.get("summary")).strip()
