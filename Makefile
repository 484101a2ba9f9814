# The two commands (see README):  make demo   (the main job)   |   make test   (the test suite)
# Both set up everything on a fresh machine: the virtualenv, torch, the package and its
# C++/CUDA extension (compiled for sm_80 + sm_90 when nvcc and a CUDA torch are present).
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
OUT    ?= out
export DALLE2_FAST_MAX_JOBS ?= 2

SOURCES := $(shell find csrc dalle2_fast -name '*.cpp' -o -name '*.cu' -o -name '*.h') CMakeLists.txt setup.py pyproject.toml

.PHONY: all install build test demo bench bench-quick info asan clean peers

all: test

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# torch/torchvision come from the local disk (pip's cap) - never an isolated build env,
# which would fetch another multi-GB torch.
$(VENV)/.deps: $(VPY) pyproject.toml
	$(VPY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "setuptools>=77" "cmake>=4" ninja
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(VPY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

install build: $(VENV)/.built

test: $(VENV)/.built peers
	DALLE2_FAST_REQUIRE_EXT=1 $(VPY) -m pytest -q tests

# Reference implementations that cannot live in our venv (DALLE2-pytorch pins open_clip < 3):
# installed without dependencies under .venv-peers/ and run in a child process by the interop
# tests (tests/_peers.py). Tests skip, saying why, where this cannot be built.
peers: $(VENV)/.built
	$(VPY) -m tests._peers

info: $(VENV)/.built
	$(VPY) -m dalle2_fast.info

# The main job: text to image with the unCLIP pipeline shipped in the package
# (dalle2_fast/weights/unclip_shapes, trained by `dalle2-fast train unclip --seed 0`).
demo: $(VENV)/.built
	$(VENV)/bin/dalle2-fast sample "a red circle above a blue square" -n 16 -o $(OUT)/samples.png
	$(VENV)/bin/dalle2-fast sample "a green triangle" "a yellow star" "a purple diamond" "a blue circle" -n 8 \
	  -o $(OUT)/samples_single.png

bench: $(VENV)/.built
	$(VPY) -m dalle2_fast.bench --memory --out $(OUT)/bench

bench-quick: $(VENV)/.built
	$(VPY) -m dalle2_fast.bench --quick --out $(OUT)/bench-quick

# The C++ CPU kernels under AddressSanitizer: a separate CPU-only build loaded in place of the
# normal one, then the kernel tests (property tests included). Leak checking is off: CPython
# and torch keep allocations alive until exit by design. Triton tests are left out: libtriton
# (imported by triton tests, opcheck and torch.compile) throws C++ exceptions during import, which the
# ASan runtime cannot intercept there.
ASAN_LIB = $(shell gcc -print-file-name=libasan.so)
# The kernel families' test files only: collecting others would import triton (via diffusers etc.).
ASAN_TESTS = $(wildcard tests/ops/test_codebook*.py tests/ops/test_adagn*.py tests/ops/test_attention*.py tests/ops/test_sampling_ops.py tests/nn/test_vq.py tests/nn/test_packed_linear.py tests/nn/test_cached_blocks.py tests/nn/test_winograd.py)
asan: $(VENV)/.built
	$(VENV)/bin/cmake -S . -B build/asan -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
	  -DPython_EXECUTABLE=$(abspath $(VPY)) -DDALLE2_FAST_CUDA=OFF -DDALLE2_FAST_ASAN=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
	$(VENV)/bin/cmake --build build/asan -j $(DALLE2_FAST_MAX_JOBS)
	LD_PRELOAD=$(ASAN_LIB) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	  DALLE2_FAST_EXTENSION_PATH=$(abspath build/asan/dalle2_fast_C.so) DALLE2_FAST_REQUIRE_EXT=1 \
	  $(VPY) -m pytest -q -p no:cacheprovider $(ASAN_TESTS) -k "not triton and not compile and not opcheck" -m "not gpu"

clean:
	rm -rf build $(OUT) dalle2_fast/_C*.so *.egg-info
