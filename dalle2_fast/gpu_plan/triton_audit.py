"""Ahead-of-time audit of every Triton launch the wrappers can make, for sm_80 and sm_90.

    python -m dalle2_fast.gpu_plan.triton_audit --write [--jobs N]   # full matrix: regenerate
        dalle2_fast/triton/_audited.py (the table the wrappers choose from) and the Triton
        section of docs/gpu-readiness.md
    python -m dalle2_fast.gpu_plan.triton_audit --ci                 # CI: the committed table
        covers and fits every launch of the full matrix, is not stale, and a subset compiled
        now (matrix.ci_subset: every kernel, dtype, BLOCK_D, flag and variant) agrees with it

Regenerating runs two passes. Sizing: for one representative case per kernel, dtype, BLOCK_D
and architecture, every candidate configuration of launch.py is compiled, which gives the
table. Choosing: every case of the matrix runs the real wrappers, which now choose from that
table, and each launch they record is compiled and checked against the architecture's limits
(shared memory per block; registers x threads); the table then keeps, per configuration, the
maximum over every case, and the pass repeats until no choice changes. The audit fails if any
launch a wrapper would make does not fit, or a wrapper finds no configuration.
Run it without TRITON_INTERPRET=1 (it compiles real kernels); no GPU is needed.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

from dalle2_fast.gpu_plan import matrix as M
from dalle2_fast.triton import launch as L

TUNABLE = ("BLOCK", "BLOCK_C", "BLOCK_D", "BLOCK_K", "BLOCK_M", "BLOCK_N", "BLOCK_S", "num_stages", "num_warps")
ROOT = Path(__file__).resolve().parents[2]
TABLE_PATH = ROOT / "dalle2_fast" / "triton" / "_audited.py"


def kernels() -> dict[str, object]:
    """Audited kernel name -> JITFunction."""
    from dalle2_fast.triton import adagn, attention, codebook, sampling

    return {"attention_fwd": attention._fwd_kernel, "attention_bwd_dkdv": attention._bwd_dkdv_kernel,
            "attention_bwd_dq": attention._bwd_dq_kernel, "nearest_code": codebook._nearest_code_kernel,
            "adagn_fwd": adagn._adagn_fwd_kernel, "adagn_bwd": adagn._adagn_bwd_kernel,
            "sampling_step": sampling._sampling_step_kernel}


def _name_of(kernel) -> str:
    for name, k in kernels().items():
        if k is kernel:
            return name
    raise KeyError(f"launch of an unaudited kernel {kernel}")


def _candidates(kernel: str, dtype, meta: dict) -> list[dict]:
    if kernel.startswith("attention"):
        return L.attention_candidates(kernel, meta["BLOCK_D"])
    if kernel == "nearest_code":
        return L.codebook_candidates(dtype, meta["BLOCK_D"])
    return [{k: meta[k] for k in TUNABLE if k in meta}]  # one configuration: nothing to size


class _Permissive(dict):
    """A table in which every configuration fits: lets the wrappers pick their first
    candidate so the sizing pass can record their arguments."""

    def get(self, key, default=None):
        return {"smem": 0, "regs": 0, "spill": 0}


SINGLE = ("adagn_fwd", "adagn_bwd", "sampling_step")  # one configuration per launch: no sizing


class _Sized(dict):
    """The table being built: sized entries; a kernel with a single configuration is let
    through (its launches are compiled and checked in the choosing pass itself)."""

    def get(self, key, default=None):
        if key in self:
            return self[key]
        return {"smem": 0, "regs": 0, "spill": 0} if key.split("|")[0] in SINGLE else default


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def record(case: M.Case, arch: int) -> list[L.Launch]:
    with L.planning_for(L.AUDITED_TARGETS[arch]), L.recording() as launches:
        case.run()
    return launches


def _jobs_for(case: M.Case, arch: int, sizing: bool) -> list[tuple]:
    """(kernel name, args, meta, arch, case name, dtype) compile jobs of one case."""
    out, dtype = [], case.params["dtype"]
    try:
        launches = record(case, arch)
    except RuntimeError as e:  # a wrapper found no configuration
        return [(None, str(e), None, arch, case.name, dtype)]
    for ln in launches:
        name = _name_of(ln.kernel)
        metas = [ln.meta]
        if sizing:
            fixed = {k: v for k, v in ln.meta.items() if k not in TUNABLE}
            metas = [{**fixed, **c} for c in _candidates(name, _dtype(case.params["dtype"]), ln.meta)]
        out += [(name, ln.args, m, arch, case.name, dtype) for m in metas]
    return out


def _compile_one(item: tuple) -> dict:
    """Worker: compile one prepared launch (plain data in, plain data out)."""
    name, prepared = item
    from dalle2_fast.gpu_plan.compile import compile_prepared

    try:
        return compile_prepared(kernels()[name], prepared)
    except Exception as e:  # a compile error is a finding, not a crash of the audit
        return {"error": f"compile failed: {type(e).__name__}: {str(e)[:500]}"}


CACHE = None  # compile.DiskCache: results across passes and rounds (and runs, with --cache)


def _run_jobs(jobs: list[tuple], n: int) -> list[dict]:
    """Rows of the jobs, each distinct compile done once (in ``n`` processes). Only plain data
    goes to the workers: the launch is bound here (compile.prepare), not pickled as tensors."""
    global CACHE
    from dalle2_fast.gpu_plan.compile import DiskCache, prepare

    CACHE = CACHE or DiskCache(None)
    keys, todo = [], {}
    for name, args, meta, arch, _case, _dt in jobs:
        if name is None:
            keys.append(None)
            continue
        p = prepare(kernels()[name], args, meta, arch)
        keys.append(p.key)
        if CACHE.get(p.key) is None and p.key not in todo:
            todo[p.key] = (name, p)
    items = list(todo.items())
    if n <= 1 or len(items) < 8:
        results = map(_compile_one, (it for _, it in items))
    else:
        pool = cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_compile_one, (it for _, it in items), chunksize=4)
    t0 = time.time()
    for i, ((key, _), res) in enumerate(zip(items, results)):
        CACHE.put(key, res)
        if (i + 1) % 200 == 0:
            print(f"  {i + 1} / {len(items)} compiles, {time.time() - t0:.0f} s", flush=True)
    if n > 1 and len(items) >= 8:
        pool.shutdown()
    rows = []
    for k, (name, args, meta, arch, case_name, dtype) in zip(keys, jobs):
        row = {"kernel": name, "arch": arch, "case": case_name, "dtype": dtype,
               "cfg": {t: meta[t] for t in TUNABLE if t in meta} if meta else {}}
        rows.append({**row, "error": args} if k is None else {**row, **CACHE.get(k)})
    return rows


def _key(row: dict, dtype: str) -> str:
    return f"{row['kernel']}|sm_{row['arch']}|{dtype}|{L.cfg_key(row['cfg'])}"


def _fold(table: dict, rows: list[dict]) -> dict:
    """Per configuration key, the maximum resources over rows (errors skipped)."""
    for r in rows:
        if "error" in r:
            continue
        k = _key(r, r["dtype"])
        old = table.get(k)
        new = {f: r[f] for f in ("smem", "regs", "spill")}
        table[k] = new if old is None else {f: max(old[f], new[f]) for f in new}
    return table


def _check(rows: list[dict]) -> list[dict]:
    for r in rows:
        if "error" not in r:
            r["over"] = L.over_limits(r, r["cfg"].get("num_warps", 4), L.AUDITED_TARGETS[r["arch"]])
    return rows


def _rows(cases: list[M.Case], archs, sizing: bool, jobs: int) -> list[dict]:
    work = [j for arch in archs for c in cases if c.sizing or not sizing for j in _jobs_for(c, arch, sizing)]
    return _rows_from(work, jobs, "sizing" if sizing else "chosen")


def _rows_from(work: list[tuple], jobs: int = 1, pass_: str = "chosen") -> list[dict]:
    rows = _run_jobs(work, jobs)
    for r in rows:
        r["pass"] = pass_
    return _check(rows)


def regenerate(cases: list[M.Case], archs=(80, 90), jobs: int = 1, log=print) -> tuple[dict, list[dict]]:
    """(table, rows of the launches the wrappers choose) for ``cases``: see the module docstring."""
    t0 = time.time()
    with L.using_table(_Permissive()):
        sizing = _rows(cases, archs, True, jobs)
    table = _fold({}, sizing)
    log(f"sizing: {len(sizing)} candidate compiles, {time.time() - t0:.0f} s")
    chosen, previous = [], None
    for round_ in range(3):
        with L.using_table(_Sized(table)):
            chosen = _rows(cases, archs, False, jobs)
        table = _fold(table, chosen)
        picks = {(r["case"], r["arch"], r["kernel"], L.cfg_key(r["cfg"])) for r in chosen}
        log(f"choosing, round {round_ + 1}: {len(chosen)} launches, {time.time() - t0:.0f} s")
        if picks == previous:
            break
        previous = picks
    return table, sizing + chosen


def check_committed(cases: list[M.Case], compile_cases: list[M.Case], archs=(80, 90), jobs: int = 1) -> dict:
    """CI: failures of the committed table against the current code (see the module docstring)."""
    from dalle2_fast.triton import _audited

    fails = []
    stale = stale_kernels(_audited.META)
    fails += [f"table is stale for {k}: its source or Triton changed since the audit "
              "(regenerate: python -m dalle2_fast.gpu_plan.triton_audit --write)" for k in stale]
    # every launch of the full matrix: a configuration is chosen from the committed table
    recorded = 0
    for arch in archs:
        for c in cases:
            try:
                launches = record(c, arch)
            except RuntimeError as e:
                fails.append(f"{c.name} on sm_{arch}: {e}")
                continue
            for ln in launches:
                name, recorded = _name_of(ln.kernel), recorded + 1
                cfg = {k: ln.meta[k] for k in TUNABLE if k in ln.meta}
                res = L.audited(name, arch, _dtype(c.params["dtype"]), cfg)
                over = ["not in the table"] if res is None else L.over_limits(res, cfg.get("num_warps", 4),
                                                                               L.AUDITED_TARGETS[arch])
                fails += [f"{c.name} {name} sm_{arch} {L.cfg_key(cfg)}: {o}" for o in over]
    rows = _rows(compile_cases, archs, False, jobs)
    for r in rows:
        if "error" in r:
            fails.append(f"{r['case']} sm_{r['arch']}: {r['error']}")
            continue
        res = L.audited(r["kernel"], r["arch"], _dtype(r["dtype"]), r["cfg"])
        fails += [f"{r['case']} {r['kernel']} sm_{r['arch']}: {o}" for o in r["over"]]
        if res is None:
            fails.append(f"{r['case']} {r['kernel']} sm_{r['arch']}: compiled configuration not in the table")
        elif any(r[f] > res[f] for f in ("smem", "regs", "spill")):
            fails.append(f"{r['case']} {r['kernel']} sm_{r['arch']}: compiled {r['smem']} B smem, {r['regs']} regs, "
                         f"{r['spill']} B spills; the table says {res}")
    return {"launches_checked": recorded, "compiled": len(rows), "rows": rows, "failures": fails}


def kernel_hashes() -> dict[str, str]:
    import triton

    return {"triton": triton.__version__, **{n: k.cache_key for n, k in kernels().items()}}


def stale_kernels(meta: dict) -> list[str]:
    now = kernel_hashes()
    return [k for k, v in now.items() if meta.get("hashes", {}).get(k) != v]


def write_table(table: dict, summary: dict, path: Path = TABLE_PATH) -> None:
    meta = {"hashes": kernel_hashes(), "summary": summary}
    lines = ['"""Generated by `python -m dalle2_fast.gpu_plan.triton_audit --write`: do not edit.',
             "",
             "Resources of every audited Triton launch configuration, compiled for each architecture by",
             "Triton's own compiler and ptxas: 'kernel|sm_arch|dtype|config' -> max over the audited cases",
             "of shared memory (bytes), registers per thread and spill stores (bytes). META: the kernels'",
             'source hashes when audited (a change makes the table stale) and the audit\'s counts."""',
             f"META = {json.dumps(meta, indent=1, sort_keys=True)}",
             "TABLE = {"]
    lines += [f"    {json.dumps(k)}: {json.dumps(table[k], sort_keys=True)}," for k in sorted(table)]
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")


def summarize(rows: list[dict], seconds: float) -> dict:
    """Counts per family for META and the doc."""
    out = {}
    for r in rows:
        fam = r["case"].split("(")[0]
        d = out.setdefault(fam, {"launches": 0, "over": 0, "errors": 0, "sizing_compiles": 0, "cases": set()})
        if r["pass"] == "sizing":
            d["sizing_compiles"] += 1
            continue
        d["cases"].add(r["case"])
        d["launches"] += 1
        d["errors"] += "error" in r
        d["over"] += bool(r.get("over"))
    for d in out.values():
        d["cases"] = len(d["cases"])
    return {"families": out, "seconds": round(seconds)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dalle2_fast.gpu_plan.triton_audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="audit the full matrix, write the table and the doc")
    mode.add_argument("--ci", action="store_true", help="check the committed table (subset compiled)")
    p.add_argument("--families", default=None, help=f"comma list of {list(M.FAMILIES)} (default all)")
    p.add_argument("--jobs", type=int, default=1, help="compile processes")
    p.add_argument("--json", default=None, help="write the rows and failures here")
    p.add_argument("--cache", default=None,
                   help="with --write: keep compile results in this JSON-lines file and reuse them (resumable)")
    p.add_argument("--before", action="store_true",
                   help="with --write: also audit the matrix with the pre-audit configurations (the first "
                        "candidate of every list) and record how many launches were over the limits")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: the audit compiles real kernels")
    fams = a.families.split(",") if a.families else None
    cases = M.full_matrix(fams)
    t0 = time.time()
    if a.cache and a.write:
        global CACHE
        from dalle2_fast.gpu_plan.compile import DiskCache

        CACHE = DiskCache(Path(a.cache))
    if a.ci:
        out = check_committed(cases, M.ci_subset(cases), jobs=a.jobs)
        print(f"checked {out['launches_checked']} launches of the full matrix against the committed table; "
              f"compiled {out['compiled']} of the CI subset in {time.time() - t0:.0f} s; "
              f"{len(out['failures'])} failures")
    else:
        from dalle2_fast.gpu_plan.report import write_triton_section
        from dalle2_fast.triton import _audited

        table, rows = regenerate(cases, jobs=a.jobs)
        summary = summarize(rows, time.time() - t0)
        if fams is not None:  # keep the other families' entries and counts
            mine = _kernels_of(fams)
            table = {**{k: v for k, v in _audited.TABLE.items() if k.split("|")[0] not in mine}, **table}
            old = _audited.META.get("summary", {}).get("families", {})
            summary["families"] = {**{f: v for f, v in old.items() if f not in fams}, **summary["families"]}
        write_table(table, summary)
        chosen = [r for r in rows if r["pass"] == "chosen"]
        failures = [f"{r['case']} {r.get('kernel')} sm_{r['arch']}: {r.get('error') or '; '.join(r['over'])}"
                    for r in chosen if "error" in r or r["over"]]
        with L.using_table(table):
            write_triton_section(table, summary)
        out = {"rows": rows, "failures": failures}
        if a.before:  # after writing: the pre-audit configurations compile slowly (spills)
            with L.using_table(_Permissive()):
                old = _rows(cases, (80, 90), False, a.jobs)
            by: dict[str, int] = {}
            for r in old:
                if r.get("over"):
                    k = f"{r['kernel']} {r['dtype']} sm_{r['arch']}"
                    by[k] = by.get(k, 0) + 1
            summary["before"] = {"launches": len(old), "over": sum(by.values()), "over_by_kernel": by}
            write_table(table, summary)
            with L.using_table(table):
                write_triton_section(table, summary)
            out["before"] = old
            print(f"before the audit: {summary['before']['over']} of {len(old)} launches over the limits")
        print(f"audited {len(chosen)} launches ({len(rows)} compiles incl. sizing) in {time.time() - t0:.0f} s; "
              f"{len(failures)} over the limits")
    for f in out["failures"]:
        print("FAIL", f)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))
    return 1 if out["failures"] else 0


def _kernels_of(families: list[str]) -> set[str]:
    pre = {"attention": "attention", "nearest_code": "nearest_code", "adagn": "adagn", "sampling_step": "sampling"}
    return {k for k in kernels() if any(k.startswith(pre[f]) for f in families)}


if __name__ == "__main__":
    sys.exit(main())
