// A linear layer for a few rows at a time (decoding steps: a diffusion prior's trailing tokens,
// an AR prior's next token), CPU float32, inference.
//
// For a handful of rows a GEMM library spends most of a call reformatting ("packing") the
// weight matrix, which is as large as all the arithmetic of those rows: measured on the
// development Xeon, F.linear with 24 rows x 256 -> 1024 ran at ~100 GFLOP/s against ~160 for
// 166 rows. Here the weight is packed once per sampling call (pack_linear: column panels of 32
// outputs, each K x 32 contiguous, the same size as the weight) and each call streams every
// panel once: per panel, blocks of up to 12 rows keep 12 x 32 accumulators in registers (24
// AVX-512 vectors), one weight row of the panel loaded per k and each x value broadcast
// (compiled for AVX-512 / AVX2 / baseline, target_clones). The reference is F.linear.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "dalle2_fast/few_rows.h"

namespace {

using dalle2_fast::cpu::kPanel;  // output columns per panel (two 16-float vectors)
constexpr int64_t kRows = 12;   // rows per register block

typedef float v16f __attribute__((vector_size(64), aligned(4)));

#define LIN_INLINE inline __attribute__((always_inline))
#define LIN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

LIN_INLINE v16f load16(const float* p) { return *reinterpret_cast<const v16f*>(p); }

// R rows (x, row stride K) against one panel (K x 32): y[r][c] = sum_k x[r][k] w[k][c] (+ bias),
// the first `cols` columns stored (row stride ldy).
template <int R>
LIN_INLINE void panel_rows(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t ldy,
                           int64_t cols) {
  v16f a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = v16f{}, a1[r] = v16f{};
  for (int64_t k = 0; k < K; ++k) {
    const v16f w0 = load16(w + k * kPanel), w1 = load16(w + k * kPanel + 16);
    for (int r = 0; r < R; ++r) {
      const float xv = x[r * K + k];
      a0[r] += xv * w0;
      a1[r] += xv * w1;
    }
  }
  for (int r = 0; r < R; ++r) {
    float out[kPanel];
    *reinterpret_cast<v16f*>(out) = a0[r];
    *reinterpret_cast<v16f*>(out + 16) = a1[r];
    float* yr = y + r * ldy;
    for (int64_t c = 0; c < cols; ++c) yr[c] = out[c] + (bias ? bias[c] : 0.0f);
  }
}

LIN_CLONES void linear_panels(const float* x, int64_t M, int64_t K, const float* panels, int64_t p0, int64_t p1,
                              const float* bias, float* y, int64_t N) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* w = panels + p * K * kPanel;
    const int64_t c0 = p * kPanel, cols = std::min(kPanel, N - c0);
    const float* b = bias ? bias + c0 : nullptr;
    int64_t m = 0;
    for (; m + kRows <= M; m += kRows) panel_rows<kRows>(x + m * K, K, w, b, y + m * N + c0, N, cols);
    const float* xm = x + m * K;
    float* ym = y + m * N + c0;
    switch (M - m) {  // the last rows
      case 0: break;
      case 1: panel_rows<1>(xm, K, w, b, ym, N, cols); break;
      case 2: panel_rows<2>(xm, K, w, b, ym, N, cols); break;
      case 3: panel_rows<3>(xm, K, w, b, ym, N, cols); break;
      case 4: panel_rows<4>(xm, K, w, b, ym, N, cols); break;
      case 5: panel_rows<5>(xm, K, w, b, ym, N, cols); break;
      case 6: panel_rows<6>(xm, K, w, b, ym, N, cols); break;
      case 7: panel_rows<7>(xm, K, w, b, ym, N, cols); break;
      case 8: panel_rows<8>(xm, K, w, b, ym, N, cols); break;
      case 9: panel_rows<9>(xm, K, w, b, ym, N, cols); break;
      case 10: panel_rows<10>(xm, K, w, b, ym, N, cols); break;
      default: panel_rows<11>(xm, K, w, b, ym, N, cols); break;
    }
  }
}

at::Tensor pack_linear_cpu(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat,
              "pack_linear: weight must be a 2-D float32 tensor (N, K), got ", weight.sizes(), " ",
              weight.scalar_type());
  const int64_t N = weight.size(0), K = weight.size(1), P = (N + kPanel - 1) / kPanel;
  const at::Tensor w = weight.contiguous();
  at::Tensor out = at::zeros({P, K, kPanel}, weight.options());
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t cols = std::min(kPanel, N - p * kPanel);
      const float* src = wp + p * kPanel * K;
      float* dst = op + p * K * kPanel;
      // 16 k at a time: the panel's rows are read in cache-line runs, its output written in order
      for (int64_t k0 = 0; k0 < K; k0 += 16) {
        const int64_t kn = std::min<int64_t>(16, K - k0);
        for (int64_t c = 0; c < cols; ++c)
          for (int64_t k = 0; k < kn; ++k) dst[(k0 + k) * kPanel + c] = src[c * K + k0 + k];
      }
    }
  });
  return out;
}

at::Tensor packed_linear_cpu(const at::Tensor& x_in, const at::Tensor& panels, const std::optional<at::Tensor>& bias_in,
                             int64_t N) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat, "packed_linear: x must be 2-D float32 (M, K), got ",
              x_in.sizes(), " ", x_in.scalar_type());
  TORCH_CHECK(panels.dim() == 3 && panels.size(2) == kPanel && panels.scalar_type() == at::kFloat &&
                  panels.is_contiguous(),
              "packed_linear: panels must come from pack_linear (P, K, ", kPanel, ") float32, got ", panels.sizes());
  const int64_t M = x_in.size(0), K = x_in.size(1), P = panels.size(0);
  TORCH_CHECK(panels.size(1) == K, "packed_linear: x has K = ", K, " but the panels K = ", panels.size(1));
  TORCH_CHECK(N > (P - 1) * kPanel && N <= P * kPanel, "packed_linear: n = ", N, " does not fit ", P, " panels");
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == N && bias_in->scalar_type() == at::kFloat,
                "packed_linear: bias must be float32 (", N, ",), got ", bias_in->sizes());
    bias = bias_in->contiguous();
  }
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  if (K == 0) return bias.defined() ? bias.expand({M, N}).clone() : y.zero_();
  dalle2_fast::cpu::packed_linear_rows(x.data_ptr<float>(), M, K, panels.data_ptr<float>(),
                                       bias.defined() ? bias.data_ptr<float>() : nullptr, y.data_ptr<float>(), N);
  return y;
}

}  // namespace

void dalle2_fast::cpu::packed_linear_rows(const float* x, int64_t M, int64_t K, const float* panels,
                                          const float* bias, float* y, int64_t N) {
  if (M == 0 || N == 0) return;
  const int64_t P = (N + kPanel - 1) / kPanel;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(1, M * K * kPanel));
  at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) { linear_panels(x, M, K, panels, p0, p1, bias, y, N); });
}

TORCH_LIBRARY_IMPL(dalle2_fast, CPU, m) {
  m.impl("pack_linear", &pack_linear_cpu);
  m.impl("packed_linear", &packed_linear_cpu);
}
