"""CUDA kernels' resource usage (dalle2_fast/gpu_plan/cuda_usage.py): the ptxas -v and SASS
parsers on fixed text, attention's dynamic shared memory against the .cu source, and — where a
CUDA build of the extension is on this machine — the real table from its objects."""
import os
from pathlib import Path

import pytest

from dalle2_fast.gpu_plan import cuda_usage as U

ROOT = Path(__file__).resolve().parents[1]

LOG = """ptxas info    : 28 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelIfEvPf' for 'sm_80'
ptxas info    : Function properties for _Z6kernelIfEvPf
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 28928 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_Z6kernelIdEvPd' for 'sm_90'
ptxas info    : Function properties for _Z6kernelIdEvPd
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
"""

SASS = """\t.section\t.text._Z1kv,"ax",@progbits
.text._Z1kv:
\t//## File "/x/k.cu", line 10
        /*0000*/                   STL [R1], R2 ;
.L_x_0:
\t//## File "/x/k.cu", line 20
        /*0010*/                   FFMA R3, R3, R3, R3 ;
        /*0020*/                   LDL R4, [R1] ;
        /*0030*/               @P0 BRA `(.L_x_0) ;
\t//## File "/x/k.cu", line 30
        /*0040*/                   LDL.LU R5, [R1] ;
        /*0050*/                   EXIT ;
"""


def test_parse_ptxas_log():
    us = U.parse_ptxas_log(LOG, "csrc/cuda/k.cu")
    assert [(u.arch, u.regs, u.smem, u.stack, u.spill_stores, u.spill_loads) for u in us] == [
        ("sm_80", 64, 28928, 8, 4, 4), ("sm_90", 40, 0, 0, 0, 0)]
    assert U.demangle([us[0].name]) in (["kernel<float>"], [us[0].name])  # c++filt may be absent


def test_spill_sites_by_source_line_and_loop():
    sites = U.spill_sites(SASS)["_Z1kv"]
    assert sites == {"k.cu:10": (1, 0), "k.cu:20": (1, 1), "k.cu:30": (1, 0)}


def test_attention_dynamic_smem_mirrors_the_cuda_source():
    src = (ROOT / "csrc" / "cuda" / "attention_cuda.cu").read_text()
    assert all(line in src for line in U.ATTENTION_SMEM_LINES)
    assert "DP >= 256 ? 16 : 32" in src  # BM and BK of Cfg<DP>
    assert max(v for d in U.ATTENTION_DYNAMIC_SMEM.values() for v in d.values()) < 163 * 1024
    assert U.ATTENTION_DYNAMIC_SMEM[64]["attn_fwd_kernel"] == (32 * 64 + 32 * 65 + 32 * 64) * 4


def _cuda_build():
    ext = os.environ.get("DALLE2_FAST_EXTENSION_PATH")
    roots = [Path(ext).parent] if ext else []
    for r in roots + sorted((ROOT / "build").glob("*")):
        objs = U.find_objects(r)
        if objs:
            return objs
    return []


def test_real_objects_when_a_cuda_build_is_here():
    objs = [o for o in _cuda_build() if o.name == "sampling_cuda.cu.o"]
    if not objs:
        pytest.skip("no CUDA build of the extension on this machine")
    usage = U.object_usage(objs[0])
    assert {u.arch for u in usage} == {"sm_80", "sm_90"}
    assert all(u.name.startswith("sampling_step_kernel<") and 0 < u.regs <= 255 for u in usage)
    assert "| csrc/cuda/sampling_cuda.cu |" in U.markdown(usage)


def test_parse_build_log_attributes_blocks_to_their_source():
    log = ("[1/3] Building CUDA object CMakeFiles/dalle2_fast_C.dir/csrc/cuda/a_cuda.cu.o\n" + LOG
           + "[2/3] Building CUDA object CMakeFiles/dalle2_fast_C.dir/csrc/cuda/b_cuda.cu.o\n"
           + LOG.split("ptxas info    : Compiling entry function '_Z6kernelIdEvPd'")[0]
           + "[3/3] Linking CXX shared module dalle2_fast_C.so\n")
    us = U.parse_build_log(log)
    assert [(u.source, u.arch) for u in us] == [("csrc/cuda/a_cuda.cu", "sm_80"), ("csrc/cuda/a_cuda.cu", "sm_90"),
                                                ("csrc/cuda/b_cuda.cu", "sm_80")]
