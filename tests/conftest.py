"""Test setup shared by every file.

- Without a GPU, Triton kernels run under the interpreter (TRITON_INTERPRET=1 must be set
  before any kernel is defined, hence here, before dalle2_fast is imported).
- ``DALLE2_FAST_REQUIRE_EXT=1`` (set by ``make test``) turns a missing C++ extension into a
  failure instead of a skip: CI must test the cpu backend, not skip it.
- Hypothesis draws each test's examples from a fixed seed (``derandomize``) unless
  ``HYPOTHESIS_PROFILE=random``: the numeric property tests' error budgets are tight, and a rare
  ill-conditioned draw must not turn one CI run red and the next green. Run the random profile
  (fresh examples every run) to hunt for such cases.
"""
import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("derandomized", derandomize=True)
settings.register_profile("random", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dalle2_fast import _ext  # noqa: E402

HAS_GPU = torch.cuda.is_available()


def pytest_configure(config):
    if os.environ.get("DALLE2_FAST_REQUIRE_EXT") == "1" and not _ext.loaded():
        raise pytest.UsageError(f"DALLE2_FAST_REQUIRE_EXT=1 but the extension is missing: {_ext.load_error()}")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch):
    """Tests choose backends explicitly; a DALLE2_FAST_BACKEND from the shell must not leak in."""
    monkeypatch.delenv("DALLE2_FAST_BACKEND", raising=False)


def cpu_backends(fam, dtype=None, include_triton=True):
    """Backends of ``fam`` to test on CPU tensors: torch, cpu (extension), triton (interpreter)."""
    out = []
    for b in ("torch", "cpu", "triton"):
        if b == "triton" and not include_triton:
            continue
        if b in fam.impls and (dtype is None or dtype in fam.impls[b].dtypes):
            if b == "cpu" and fam.impls[b].needs_extension and not _ext.loaded():
                continue
            out.append(b)
    return out


def device_backends(fam):
    """(device, backend) pairs to test: CPU always; CUDA ones when a GPU is present."""
    pairs = [("cpu", b) for b in cpu_backends(fam)]
    if HAS_GPU:
        pairs += [("cuda", b) for b in ("torch", "cuda", "triton") if b in fam.impls]
    return pairs


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``): a
    second OpenMP thread only adds overhead there (5-20x on a shared 2-core machine). Restored
    afterwards so other modules keep their setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
