"""Registers, shared memory and spills of every CUDA kernel, per architecture, from ``ptxas -v``.

    python -m dalle2_fast.gpu_plan.cuda_usage [--build build/cmake-py311-cuda] [--write]

The CUDA build (CMakeLists.txt) compiles csrc/cuda/*.cu for each architecture with
``-Xptxas=-v``, so its log lists every kernel's resources. This command regenerates the same
numbers from the built objects without recompiling: each object's fatbin carries the PTX of
every architecture together with the ptxas options the build used; ``cuobjdump -xptx`` extracts
them and the toolkit's ``ptxas -v`` (the one nvcc used) is rerun on each, which takes seconds,
not the minutes nvcc spends on torch's headers. ``--write`` puts the table in
docs/gpu-readiness.md. Dynamic shared memory is set at launch by host code: attention's is
listed from the formulas in csrc/cuda/attention_cuda.cu (``ATTENTION_DYNAMIC_SMEM``).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class KernelUsage:
    source: str  # csrc/cuda/<file>.cu
    arch: str  # sm_80
    name: str  # demangled, without the parameter list
    regs: int
    smem: int  # static shared memory, bytes
    stack: int
    spill_stores: int
    spill_loads: int
    spill_lines: str = ""  # where the local-memory loads/stores are: 'file:line xN, ...'


def parse_ptxas_log(log: str, source: str = "") -> list[KernelUsage]:
    """One KernelUsage per 'Compiling entry function' block of a ``ptxas -v`` log."""
    out = []
    blocks = re.split(r"ptxas info\s*: Compiling entry function ", log)[1:]
    for b in blocks:
        head = re.match(r"'([^']+)' for '(sm_\d+a?)'", b)
        used = re.search(r"Used (\d+) registers(.*)", b)
        spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", b)
        if not (head and used and spill):
            raise ValueError(f"unexpected ptxas -v block:\n{b[:500]}")
        smem = re.search(r"(\d+) bytes smem", used.group(2))
        out.append(KernelUsage(source, head.group(2), head.group(1), int(used.group(1)),
                               int(smem.group(1)) if smem else 0, int(spill.group(1)), int(spill.group(2)),
                               int(spill.group(3))))
    return out


def parse_build_log(log: str) -> list[KernelUsage]:
    """The ptxas -v lines of a CMake/ninja build log (CMakeLists.txt passes -Xptxas=-v), each
    block attributed to the .cu file whose object the log was building; names demangled."""
    out, source, chunk = [], "", []

    def flush():
        if chunk and source:
            out.extend(parse_ptxas_log("\n".join(chunk), source))

    for line in log.splitlines():
        m = re.search(r"(csrc/cuda/\w+\.cu)\.o\b", line)
        if m and "ptxas" not in line:
            flush()
            source, chunk = m.group(1), []
        elif line.startswith(("ptxas", "    ")):
            chunk.append(line)
    flush()
    for u, name in zip(out, demangle([u.name for u in out])):
        u.name = name
    return out


def demangle(names: list[str]) -> list[str]:
    """c++filt names (when binutils is there), shortened to 'kernel<template args>'."""
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return names
    res = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True)
    out = []
    for full in res.stdout.splitlines():
        full = re.sub(r"\(anonymous namespace\)::", "", full)
        depth, cut = 0, len(full)
        for i, ch in enumerate(full):  # drop the parameter list: the first '(' at template depth 0
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                cut = i
                break
        out.append(full[:cut].replace("void ", "").strip())
    return out


def spill_sites(sass: str) -> dict[str, dict[str, tuple[int, int]]]:
    """{mangled kernel: {'file:line': (count, loop depth)}} of the local-memory loads and stores
    (LDL/STL: the spills) in ``nvdisasm -g`` output, located by its line-info comments. Loop
    depth: how many backward-branch address ranges enclose the instruction. It is a lower bound
    (ptxas lays some loop blocks out after the back branch and reaches them by CALL.REL), so
    the doc's notes on hot loops were checked by reading the SASS, not taken from it."""
    funcs: dict[str, list] = {}
    fn, where, label_at = None, "?", {}
    for line in sass.splitlines():
        t = line.strip()
        m = re.match(r"^\.text\.(\S+):$", t)
        if m:
            fn, where = m.group(1), "?"
            funcs[fn] = []
            continue
        if fn is None:
            continue
        m = re.search(r'//## File "([^"]+)", line (\d+)', t)
        if m:
            where = f"{Path(m.group(1)).name}:{m.group(2)}"
            continue
        m = re.match(r"^(\.L_x_\d+):$", t)
        if m:
            label_at[(fn, m.group(1))] = None  # resolved by the next instruction's address
            funcs[fn].append(("label", m.group(1)))
            continue
        m = re.match(r"^/\*([0-9a-f]+)\*/\s+(.*)$", t)
        if m:
            funcs[fn].append(("ins", int(m.group(1), 16), m.group(2), where))
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for fn, items in funcs.items():
        addr_of, pending = {}, []
        for it in items:
            if it[0] == "label":
                pending.append(it[1])
            else:
                for lab in pending:
                    addr_of[lab] = it[1]
                pending = []
        loops = []
        for it in items:
            if it[0] == "ins":
                b = re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", it[2])
                if b and addr_of.get(b.group(1), 1 << 62) <= it[1]:
                    loops.append((addr_of[b.group(1)], it[1]))
        for it in items:
            if it[0] == "ins" and re.match(r"^(@!?P\d+\s+)?(LDL|STL)\b", it[2]):
                depth = sum(lo <= it[1] <= hi for lo, hi in loops)
                n, d = out.setdefault(fn, {}).get(it[3], (0, 0))
                out[fn][it[3]] = (n + 1, max(d, depth))
    return out


def _tool(name: str) -> str:
    nvcc = shutil.which("nvcc")
    for cand in ([str(Path(nvcc).resolve().parent / name)] if nvcc else []) + [shutil.which(name) or ""]:
        if cand and Path(cand).exists():
            return cand
    if name in ("cuobjdump", "nvdisasm"):  # the toolkit may lack them; Triton bundles both
        from triton import knobs

        return getattr(knobs.nvidia, name).path
    raise FileNotFoundError(f"{name} not found (needs the CUDA toolkit that built the extension)")


def _ptxas_version() -> str:
    out = subprocess.run([_tool("ptxas"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+), (V[\d.]+)", out)
    return m.group(2) if m else "unknown"


def find_objects(build: Path | None = None) -> list[Path]:
    """The CUDA objects of ``build``, or of the most recently built directory under build/."""
    roots = [build] if build else sorted((ROOT / "build").glob("*"), key=lambda d: d.stat().st_mtime, reverse=True)
    for r in roots:
        objs = sorted(r.rglob("csrc/cuda/*.cu.o")) if r.exists() else []
        if objs:
            return objs
    return []


def object_usage(obj: Path) -> list[KernelUsage]:
    """Rerun ptxas -v on the PTX of every architecture embedded in one built object."""
    source = "csrc/cuda/" + obj.name.removesuffix(".o")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([_tool("cuobjdump"), "-xptx", "all", str(obj.resolve())], cwd=tmp,
                             capture_output=True, text=True, check=True)
        for line in res.stdout.splitlines():
            m = re.match(r"Extracting PTX file and ptxas options\s+\d+:\s+(\S+)\s+(.*)", line)
            if not m:
                continue
            opts = m.group(2).split()
            log = subprocess.run([_tool("ptxas"), "-v", *opts, m.group(1), "-o", "/dev/null"], cwd=tmp,
                                 capture_output=True, text=True, check=True)
            out += parse_ptxas_log(log.stdout + log.stderr, source)
        if any(u.spill_stores or u.spill_loads for u in out):  # locate them in the built SASS
            subprocess.run([_tool("cuobjdump"), "-xelf", "all", str(obj.resolve())], cwd=tmp, capture_output=True,
                           check=True)
            for cubin in Path(tmp).glob("*.cubin"):
                arch = re.search(r"\.(sm_\d+a?)\.cubin$", cubin.name).group(1)
                sass = subprocess.run([_tool("nvdisasm"), "-g", "-c", str(cubin)], capture_output=True, text=True,
                                      check=True).stdout
                for fn, sites in spill_sites(sass).items():
                    for u in out:
                        if u.name == fn and u.arch == arch:
                            u.spill_lines = ", ".join(f"{k} x{n}" for k, (n, _) in sorted(sites.items()))
    if not out:
        raise RuntimeError(f"{obj}: no PTX in the fatbin (build with PTX for each architecture, the CMake default)")
    for u, name in zip(out, demangle([u.name for u in out])):
        u.name = name
    return out


# Dynamic shared memory of csrc/cuda/attention_cuda.cu, bytes, per padded head dim DP, mirroring
# its host code: Cfg<DP> (BM = BK = 16 for DP = 256, else 32; BN = BQ = 32) and the `smem` lines.
def _att_smem(dp: int) -> dict[str, int]:
    bm = bk = 16 if dp >= 256 else 32
    bn = bq = 32
    return {"attn_fwd_kernel": (bm * dp + bn * (dp + 1) + bn * dp) * 4,
            "attn_bwd_dq_kernel": (2 * bm * dp + 2 * bn * (dp + 1)) * 4,
            "attn_bwd_dkdv_kernel": (2 * bk * dp + 2 * bq * (dp + 1) + 2 * bq) * 4}


ATTENTION_DYNAMIC_SMEM = {dp: _att_smem(dp) for dp in (32, 64, 128, 256)}
ATTENTION_SMEM_LINES = ("(C::BM * DP + C::BN * (DP + 1) + C::BN * DP) * sizeof(float)",
                        "(2 * C::BM * DP + 2 * C::BN * (DP + 1)) * sizeof(float)",
                        "(2 * C::BK * DP + 2 * C::BQ * (DP + 1) + 2 * C::BQ) * sizeof(float)")


def markdown(usage: list[KernelUsage]) -> str:
    spilled = [u for u in usage if u.spill_stores or u.spill_loads]
    lines = [f"{len(usage)} kernel instantiations x architectures; "
             f"{len(spilled)} of them spill registers" + (":" if spilled else "."), ""]
    lines += [f"- {u.source} `{u.name}` {u.arch}: {u.spill_stores} B stores / {u.spill_loads} B loads"
              + (f" at {u.spill_lines}" if u.spill_lines else "") for u in spilled]
    lines += ["", "| source | kernel | arch | registers | static smem | stack | spill stores / loads |",
              "|---|---|---|---|---|---|---|"]
    for u in sorted(usage, key=lambda u: (u.source, u.name, u.arch)):
        lines.append(f"| {u.source} | `{u.name}` | {u.arch} | {u.regs} | {u.smem} B | {u.stack} B | "
                     f"{u.spill_stores} / {u.spill_loads} B |")
    lines += ["", "Attention's dynamic shared memory (set at launch, csrc/cuda/attention_cuda.cu), per padded head dim:",
              "", "| DP | " + " | ".join(ATTENTION_DYNAMIC_SMEM[32]) + " |", "|---|---|---|---|"]
    for dp, d in ATTENTION_DYNAMIC_SMEM.items():
        lines.append(f"| {dp} | " + " | ".join(f"{v / 1024:.1f} KiB" for v in d.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dalle2_fast.gpu_plan.cuda_usage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", type=Path, default=None, help="CMake build directory (default: the newest build/*)")
    p.add_argument("--log", type=Path, default=None, help="read a CUDA build's log instead of its objects")
    p.add_argument("--write", action="store_true", help="write the table into docs/gpu-readiness.md")
    a = p.parse_args(argv)
    if a.log:
        usage = parse_build_log(a.log.read_text())
        if not usage:
            p.error(f"--log {a.log}: no ptxas -v lines (build with -DDALLE2_FAST_PTXAS_VERBOSE=ON, the default)")
        text = f"From the build log `{a.log.name}` (spill sites need the objects: --build).\n\n" + markdown(usage)
        if a.write:
            from dalle2_fast.gpu_plan.report import replace_section

            replace_section("cuda-ptxas", text)
        print(text)
        return 0
    objs = find_objects(a.build)
    if not objs:
        p.error("no built CUDA objects (csrc/cuda/*.cu.o) under build/: build with DALLE2_FAST_CUDA=1 first")
    usage = [u for o in objs for u in object_usage(o)]
    build = objs[0].parents[4] if len(objs[0].parents) > 4 else objs[0].parent  # <build>/CMakeFiles/<t>.dir/csrc/cuda
    text = (f"From the objects of the CMake build `{build.name}` ({', '.join(o.name for o in objs)}), "
            f"ptxas `{_ptxas_version()}`.\n\n")
    text += markdown(usage)
    if a.write:
        from dalle2_fast.gpu_plan.report import replace_section

        replace_section("cuda-ptxas", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
