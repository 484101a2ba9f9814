// Host entry points of the CPU few-row kernels (float32, inference), for C++ callers that chain
// them without a dispatcher call per step (csrc/cpu/decode_cpu.cpp). Each parallelises
// internally with at::parallel_for; the ops in linear_cpu.cpp / attention_cpu.cpp wrap them.
#pragma once

#include <cstdint>

namespace dalle2_fast::cpu {

constexpr int64_t kPanel = 32;    // output columns per packed weight panel (pack_linear)
constexpr int64_t kFewRows = 16;  // queries per head up to which attention takes the few-rows loops

// y (M, N) = x (M, K) @ W^T (+ bias (N,) when not null), W given as pack_linear's panels
// (ceil(N / 32), K, 32). All pointers contiguous; y must not alias x.
void packed_linear_rows(const float* x, int64_t M, int64_t K, const float* panels, const float* bias, float* y,
                        int64_t N);

// Attention of q (B, H, Sq, D) over k, v (B, H, Sk, D), all contiguous: out (B, H, Sq, D), lse
// (B, H, Sq). pad: (B, Sk) bytes, nonzero = hidden key, or null; causal bottom-right aligned.
// The semantics of csrc/include/dalle2_fast/attention.h (hidden keys never read, rows that see no
// key zero with lse +inf, non-finite inputs poison their rows / columns).
void few_rows_attention(const float* q, const float* k, const float* v, const uint8_t* pad, float* out, float* lse,
                        int64_t B, int64_t H, int64_t Sq, int64_t Sk, int64_t D, bool causal, float scale);

}  // namespace dalle2_fast::cpu
