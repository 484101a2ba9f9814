#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dalle2_fast, m) {
  // A 3x3 convolution weight (K, C, 3, 3) float32 -> its Winograd F(4x4, 3x3) transform (36, K, C).
  m.def("winograd_weight(Tensor weight) -> Tensor");
  // x (N, C, H, W) float32 (any memory format), u from winograd_weight, bias (K,) or None ->
  // the stride-1, padding-1 convolution (N, K, H, W) in channels-last memory; chunk_tiles: 4x4 output
  // tiles transformed per chunk (0: the kernel's default). csrc/cpu/winograd_cpu.cpp.
  m.def("winograd_conv3x3(Tensor x, Tensor u, Tensor? bias, int chunk_tiles=0) -> Tensor");
}
