"""dalle2_fast.allocator: with the policy applied, large tensors allocated and freed in a loop stop
page-faulting in afresh (counted in a child process, so the test process keeps glibc's default);
the environment switch is checked."""
import subprocess
import sys

import pytest

from dalle2_fast import allocator

CHILD = """
import resource, sys, torch
from dalle2_fast.allocator import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(40 << 18)  # 40 MB: above glibc's largest mmap threshold
for _ in range(30):  # the heap settles in a few rounds (the first results may still extend it)
    (x + 1).sum()
before = faults()
for _ in range(10):
    (x + 1).sum()  # a fresh 40 MB result each time, freed at once
print(applied, faults() - before)
"""


def _child(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=300, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux)")
def test_retained_memory_stops_the_page_faults():
    applied, kept = _child("retain")
    if not applied:
        pytest.skip("this libc does not accept the mallopt settings (not glibc)")
    _, default = _child("system")
    pages = (40 << 20) // 4096
    if default < 5 * pages:  # e.g. transparent huge pages for every mapping: few faults to remove
        pytest.skip(f"glibc's default policy faulted only {default} pages here: nothing to measure")
    assert kept < pages  # reused: not even one result's worth (the default: ~10 results of 10240 pages)


def test_env_switch(monkeypatch):
    monkeypatch.setenv("DALLE2_FAST_MALLOC", "system")
    assert allocator.apply_from_env() is False
    monkeypatch.setenv("DALLE2_FAST_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match="DALLE2_FAST_MALLOC: expected 'retain' or 'system'"):
        allocator.apply_from_env()
