#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dalle2_fast, m) {
  // Flash attention. q (B, H, Sq, D), k and v (B, H, Sk, D), key_padding_mask (B, Sk) bool with
  // True = padded (hidden) key, causal bottom-right aligned (see csrc/include/dalle2_fast/attention.h).
  // -> out (B, H, Sq, D) in q's dtype, lse (B, H, Sq) float32 natural-log log-sum-exp
  //    (+inf for rows that see no key).
  m.def(
      "attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, bool causal, float scale)"
      " -> (Tensor, Tensor)");
  // -> (dq, dk, dv) in the dtypes of q, k, v.
  m.def(
      "attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
      " Tensor? key_padding_mask, bool causal, float scale) -> (Tensor, Tensor, Tensor)");
}
