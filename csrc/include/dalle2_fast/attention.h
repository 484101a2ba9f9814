// Flash-attention math shared by the CPU and CUDA kernels (and mirrored by the Triton kernel).
//
// Conventions (the same on every backend, documented in dalle2_fast/ops/attention.py):
// - scores s_ij = scale * q_i . k_j; a hidden key has s_ij = -inf.
// - causal masking is bottom-right aligned: query i sees key j iff j <= i + (Sk - Sq), so the
//   last query row sees every key (the KV-cache convention). With Sq > Sk the first Sq - Sk
//   rows see no key at all.
// - a row that sees no key (causal or key_padding_mask) outputs zeros, its log-sum-exp is
//   +inf (so every backward probability exp(s - lse) is exactly 0) and its gradients are 0.
// - non-finite inputs (see dalle2_fast/ops/attention.py): a hidden key never reaches a row
//   (its score is replaced by -inf, never computed with; a non-finite v is zeroed before
//   P V when a tile holds one, since 0 * NaN = NaN); a row that sees a key with non-finite
//   k, or has a non-finite q or scale, is NaN ("poisoned", lse NaN); column d of a row that
//   sees a key with non-finite v[d] is NaN. Kernels track "row saw a key" and "row
//   poisoned" flags per row and a poisoned-column flag per output element.
//
// Forward (online softmax, Milakov & Gimelshein 2018; Dao et al. 2022, Alg. 1): per query
// row keep a running max m and a running sum l of exp(s - m); on each key tile
//   m' = max(m, max_j s_j), alpha = exp(m - m'), l = alpha*l + sum_j exp(s_j - m'),
//   acc = alpha*acc + sum_j exp(s_j - m') v_j;  finally out = acc / l, lse = m + log l.
// Backward (Dao 2023, Alg. 2): p_ij = exp(s_ij - lse_i), delta_i = dO_i . O_i,
//   dV = P^T dO, dP = dO V^T, dS = P * (dP - delta), dQ = scale dS K, dK = scale dS^T Q.
#pragma once
#include <cmath>

#include "dalle2_fast/common.h"

namespace dalle2_fast::attention {

DF_HD float neg_inf() { return -__builtin_huge_valf(); }

// First key index hidden from query row i by the causal mask (exclusive end of its keys),
// clamped to [0, sk]. Bottom-right alignment: query i sees keys j <= i + (sk - sq).
DF_HD long long causal_key_end(long long i, long long sq, long long sk) {
  const long long e = i + (sk - sq) + 1;
  return e < 0 ? 0 : (e > sk ? sk : e);
}

DF_HD bool key_visible(long long i, long long j, long long sq, long long sk, bool causal) {
  return !causal || j < causal_key_end(i, sq, sk);
}

// Online-softmax step: fold a tile maximum into the running max m; returns alpha, the factor
// the running sum and accumulator must be multiplied by. Safe when everything so far (and
// the tile) was masked: then m stays -inf and alpha is 0 (nothing to rescale).
DF_HD float online_update_max(float& m, float tile_max) {
  const float m_new = m > tile_max ? m : tile_max;
  const float alpha = (m == neg_inf()) ? 0.0f : expf(m - m_new);
  m = m_new;
  return alpha;
}

// exp(s - m) for a score in the current tile; a hidden key (s = -inf) gives exactly 0,
// also when the whole row is still hidden (m = -inf).
DF_HD float online_prob(float s, float m) { return s == neg_inf() ? 0.0f : expf(s - m); }

// 1 / l for the final normalisation; a row that saw no key gets 0 (zeros, not NaN).
DF_HD float finish_inv_sum(float l) { return l > 0.0f ? 1.0f / l : 0.0f; }

// Natural-log log-sum-exp saved for the backward; +inf for a row that saw no key.
DF_HD float finish_lse(float m, float l) { return l > 0.0f ? m + logf(l) : __builtin_huge_valf(); }

// Finite test that survives any vectorisation (false for +-inf and NaN).
DF_HD bool is_finite(float x) { return fabsf(x) <= 3.402823466e+38f; }

DF_HD float quiet_nan() {
#if defined(__CUDA_ARCH__)
  return __int_as_float(0x7fc00000);
#else
  return __builtin_nanf("");
#endif
}

// Final output element: acc * inv_l, or NaN when a non-finite input reaches it.
DF_HD float finish_out(float acc, float inv, bool poisoned) { return poisoned ? quiet_nan() : acc * inv; }

// Final lse: NaN for a poisoned row (so the backward yields NaN there, never a silent 0).
DF_HD float finish_lse_row(float m, float l, bool poisoned) { return poisoned ? quiet_nan() : finish_lse(m, l); }

// Backward: recomputed probability from the saved lse (0 for a hidden key or an empty row).
DF_HD float bwd_prob(float s, float lse) { return (s == neg_inf() || lse == __builtin_huge_valf()) ? 0.0f : expf(s - lse); }

// Backward: gradient of the (scaled) score, dS_ij = P_ij (dP_ij - delta_i).
DF_HD float bwd_dscore(float p, float dp, float delta) { return p * (dp - delta); }

}  // namespace dalle2_fast::attention
