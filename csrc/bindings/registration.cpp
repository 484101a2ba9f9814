// Operator schemas of the dalle2_fast namespace. Each kernel family adds its own
// TORCH_LIBRARY_FRAGMENT (next to this file) and its CPU / CUDA implementations
// (csrc/cpu, csrc/cuda) with TORCH_LIBRARY_IMPL. Fake (meta) implementations for
// torch.compile are registered from Python (dalle2_fast/ops/*.py).
#include <string>
#include <torch/library.h>

namespace {
std::string build_info() {
  std::string s = "cpu";
#ifdef DALLE2_FAST_WITH_CUDA
  s += ",cuda";
#endif
#ifdef _OPENMP
  s += ";openmp";
#endif
  return s;
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(dalle2_fast, m) { m.def("build_info() -> str", &build_info); }
