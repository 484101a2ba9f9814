#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dalle2_fast, m) {
  // Pre-LN transformer blocks (x + Attn(LN1 x), then x + MLP(LN2 x) with exact GELU) over x (B, T, W),
  // the trailing tokens after a frozen cached prefix. params: 12 per layer - ln1 weight, ln1 bias,
  // qkv panels (pack_linear; output channels [q|k|v][head][c]), qkv bias, out panels, out bias,
  // ln2 weight, ln2 bias, fc1 panels, fc1 bias, fc2 panels, fc2 bias. keys / values: per layer
  // (B, H, S, dh), the prefix in [0, S - T); the new tokens' keys / values are written into
  // [S - T, S). mask: (B, S) bool, True = hidden key. -> (B, last, W): the last block runs only
  // the last `last` tokens' queries and MLP. csrc/cpu/decode_cpu.cpp; float32 CPU inference.
  m.def(
      "cached_blocks(Tensor x, Tensor[] params, Tensor(a!)[] keys, Tensor(b!)[] values, Tensor? mask, int heads,"
      " int last, bool causal, float eps) -> Tensor");
}
