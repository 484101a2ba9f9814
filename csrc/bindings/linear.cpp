#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dalle2_fast, m) {
  // weight (N, K) float32 -> panels (ceil(N / 32), K, 32), the last one zero-padded
  m.def("pack_linear(Tensor weight) -> Tensor");
  // x (M, K) float32, panels from pack_linear, bias (N,) or None, N -> x @ weight^T + bias (M, N)
  m.def("packed_linear(Tensor x, Tensor panels, Tensor? bias, int n) -> Tensor");
}
