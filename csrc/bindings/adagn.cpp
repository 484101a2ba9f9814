#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dalle2_fast, m) {
  // Fused adaptive GroupNorm (see dalle2_fast/ops/adagn.py).
  // x (B, C, *S) contiguous or channels-last; weight/bias (C,); scale/shift (B, C); any of the
  // four may be None. -> (out like x, mean (B, G), rstd (B, G)); statistics in float32
  // (float64 for float64 x).
  m.def(
      "adagn_forward(Tensor x, int num_groups, Tensor? weight, Tensor? bias, Tensor? scale, "
      "Tensor? shift, float eps, bool silu) -> (Tensor, Tensor, Tensor)");
  // -> (grad_x like x, grad_weight (C,), grad_bias (C,), grad_scale (B, C), grad_shift (B, C)),
  // the last four in the statistics dtype.
  m.def(
      "adagn_backward(Tensor grad_out, Tensor x, Tensor mean, Tensor rstd, int num_groups, "
      "Tensor? weight, Tensor? bias, Tensor? scale, Tensor? shift, bool silu) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
