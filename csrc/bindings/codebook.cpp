#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dalle2_fast, m) {
  // x (N, D), codebook (K, D) -> (indices (N,) int64, sqdist (N,) float32)
  m.def("nearest_code(Tensor x, Tensor codebook) -> (Tensor, Tensor)");
}
