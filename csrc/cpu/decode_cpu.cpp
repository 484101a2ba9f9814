// Pre-LN transformer blocks over a few trailing tokens against frozen key/value caches, CPU
// float32, inference: a diffusion prior's sampling step (its [timestep, z_i, query] tokens after
// the cached text prefix) in one call.
//
// Run op by op from Python, such a step is ~25 ATen calls per layer on tensors of a few rows
// each, and the fixed cost per call (~8 us: Python, dispatch, allocation) is most of the step
// (measured on the development Xeon: about 150 calls and 3 ms per guided step of the Karlo-sized
// prior). Here each layer is loops over preallocated buffers: LayerNorm (two-pass, as ATen's),
// the packed few-row linears (linear_cpu.cpp), the new tokens' keys/values written into the
// cache's tail, the few-rows attention loops (attention_cpu.cpp), exact GELU (ATen's vectorised
// one, in place), residual adds. The reference is the Python path it replaces
// (nn.TransformerBlock.forward with a frozen nn.KVCache); dalle2_fast/nn/cached_blocks.py
// decides when this op may run.
#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "dalle2_fast/few_rows.h"

namespace {

constexpr int64_t kParams = 12;  // per layer, in this order:
enum Param { kLn1W, kLn1B, kQkvP, kQkvB, kOutP, kOutB, kLn2W, kLn2B, kFc1P, kFc1B, kFc2P, kFc2B };

// y[m] = (x[m] - mean) / sqrt(var + eps) * g + b over rows of W floats (biased variance, two passes).
void layer_norm_rows(const float* x, int64_t M, int64_t W, const float* g, const float* b, float eps, float* y) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * W;
    float* yr = y + m * W;
    float mean = 0.0f;
#pragma omp simd reduction(+ : mean)
    for (int64_t c = 0; c < W; ++c) mean += xr[c];
    mean /= static_cast<float>(W);
    float var = 0.0f;
#pragma omp simd reduction(+ : var)
    for (int64_t c = 0; c < W; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    const float rstd = 1.0f / std::sqrt(var / static_cast<float>(W) + eps);
#pragma omp simd
    for (int64_t c = 0; c < W; ++c) yr[c] = (xr[c] - mean) * rstd * g[c] + b[c];
  }
}

void add_rows(float* h, const float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) h[i] += y[i];
}

void check_f32(const at::Tensor& t, int64_t dim, const char* what, int64_t layer) {
  TORCH_CHECK(t.defined() && t.dim() == dim && t.scalar_type() == at::kFloat && t.device().is_cpu() &&
                  t.is_contiguous(),
              "cached_blocks: layer ", layer, "'s ", what, " must be a contiguous ", dim, "-D float32 CPU tensor, got ",
              t.defined() ? t.sizes() : at::IntArrayRef{});
}

// x (B, T, W): the trailing tokens (positions added). params: kParams per layer (see Param).
// keys / values[l]: (B, H, S, dh) with the cached prefix in [0, S - T); the new tokens' keys and
// values are written to [S - T, S). mask: (B, S) bool, True = hidden key, or None. -> (B, last, W),
// the last block running only the last `last` tokens' queries and MLP.
at::Tensor cached_blocks_cpu(const at::Tensor& x_in, at::TensorList params, at::TensorList keys,
                             at::TensorList values, const std::optional<at::Tensor>& mask, int64_t heads,
                             int64_t last, bool causal, double eps_d) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(x_in.dim() == 3 && x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(),
              "cached_blocks: x must be a (B, T, W) float32 CPU tensor, got ", x_in.sizes());
  const int64_t B = x_in.size(0), T = x_in.size(1), W = x_in.size(2), L = static_cast<int64_t>(keys.size());
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(values.size()) == L &&
                  static_cast<int64_t>(params.size()) == kParams * L,
              "cached_blocks: needs keys and values for every layer and ", kParams, " params per layer, got ",
              keys.size(), " keys, ", values.size(), " values, ", params.size(), " params");
  TORCH_CHECK(T >= 1 && T <= dalle2_fast::cpu::kFewRows, "cached_blocks: 1 <= T <= ", dalle2_fast::cpu::kFewRows,
              " trailing tokens, got ", T);
  TORCH_CHECK(last >= 1 && last <= T, "cached_blocks: last must be in [1, T = ", T, "], got ", last);
  TORCH_CHECK(heads >= 1, "cached_blocks: heads must be >= 1, got ", heads);
  const at::Tensor& k0 = keys[0];
  check_f32(k0, 4, "keys", 0);
  TORCH_CHECK(k0.size(0) == B && k0.size(1) == heads && k0.size(2) >= T,
              "cached_blocks: keys must be (B = ", B, ", H = ", heads, ", S >= T = ", T, ", dh), got ", k0.sizes());
  const int64_t S = k0.size(2), dh = k0.size(3), inner = heads * dh, P = S - T;
  const int64_t hidden = params[kFc1B].numel();
  for (int64_t l = 0; l < L; ++l) {
    check_f32(keys[l], 4, "keys", l);
    check_f32(values[l], 4, "values", l);
    TORCH_CHECK(keys[l].sizes() == k0.sizes() && values[l].sizes() == k0.sizes(), "cached_blocks: layer ", l,
                "'s keys / values must be ", k0.sizes(), ", got ", keys[l].sizes(), " / ", values[l].sizes());
    const at::Tensor* p = params.data() + kParams * l;
    for (int i : {kLn1W, kLn1B, kLn2W, kLn2B, kOutB, kFc2B}) {
      check_f32(p[i], 1, "norm weight / bias or output bias", l);
      TORCH_CHECK(p[i].size(0) == W, "cached_blocks: layer ", l, "'s param ", i, " must have ", W, " entries");
    }
    check_f32(p[kQkvB], 1, "qkv bias", l);
    check_f32(p[kFc1B], 1, "fc1 bias", l);
    TORCH_CHECK(p[kQkvB].size(0) == 3 * inner && p[kFc1B].size(0) == hidden, "cached_blocks: layer ", l,
                "'s qkv / fc1 biases must have ", 3 * inner, " / ", hidden, " entries");
    const int64_t shapes[4][3] = {{kQkvP, W, 3 * inner}, {kOutP, inner, W}, {kFc1P, W, hidden}, {kFc2P, hidden, W}};
    for (const auto& s : shapes) {
      const at::Tensor& w = p[s[0]];
      check_f32(w, 3, "packed weight", l);
      TORCH_CHECK(w.size(1) == s[1] && w.size(2) == dalle2_fast::cpu::kPanel &&
                      w.size(0) == (s[2] + dalle2_fast::cpu::kPanel - 1) / dalle2_fast::cpu::kPanel,
                  "cached_blocks: layer ", l, "'s packed weight ", s[0], " must be (", s[2], " / 32 panels, ", s[1],
                  ", 32), got ", w.sizes());
    }
  }
  at::Tensor pad;
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == B && mask->size(1) == S && mask->scalar_type() == at::kBool,
                "cached_blocks: mask must be (B, S) = (", B, ", ", S, ") bool, got ", mask->sizes());
    pad = mask->contiguous().view(at::kByte);
  }
  const uint8_t* pad_p = pad.defined() ? pad.data_ptr<uint8_t>() : nullptr;
  const float eps = static_cast<float>(eps_d), scale = 1.0f / std::sqrt(static_cast<float>(dh));

  const int64_t M = B * T;
  at::Tensor out = x_in.contiguous().clone();  // the hidden states, (B, T, W) then (B, last, W)
  float* h = out.data_ptr<float>();
  std::vector<float> a(M * std::max(W, inner)), qkv(M * 3 * inner), q(M * inner), att(M * inner), lse(B * heads * T),
      y(M * W);
  at::Tensor f = at::empty({M, hidden}, out.options());  // the MLP's hidden layer (ATen's GELU in place)
  float* fp = f.data_ptr<float>();
  int64_t rows_t = T;  // tokens per row of h
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor* p = params.data() + kParams * l;
    const float* pf[kParams];
    for (int64_t i = 0; i < kParams; ++i) pf[i] = p[i].data_ptr<float>();
    const int64_t Tq = l == L - 1 ? last : T;  // queries of this layer: the last Tq tokens
    layer_norm_rows(h, M, W, pf[kLn1W], pf[kLn1B], eps, a.data());
    dalle2_fast::cpu::packed_linear_rows(a.data(), M, W, pf[kQkvP], pf[kQkvB], qkv.data(), 3 * inner);
    float* kp = keys[l].data_ptr<float>();
    float* vp = values[l].data_ptr<float>();
    for (int64_t b = 0; b < B; ++b)  // [q|k|v][head][c] channels -> q (B, H, Tq, dh), the cache's tail
      for (int64_t t = 0; t < T; ++t) {
        const float* r = qkv.data() + (b * T + t) * 3 * inner;
        for (int64_t hh = 0; hh < heads; ++hh) {
          const int64_t bh = b * heads + hh;
          std::memcpy(kp + (bh * S + P + t) * dh, r + inner + hh * dh, dh * sizeof(float));
          std::memcpy(vp + (bh * S + P + t) * dh, r + 2 * inner + hh * dh, dh * sizeof(float));
          if (t >= T - Tq) std::memcpy(q.data() + (bh * Tq + t - (T - Tq)) * dh, r + hh * dh, dh * sizeof(float));
        }
      }
    dalle2_fast::cpu::few_rows_attention(q.data(), kp, vp, pad_p, att.data(), lse.data(), B, heads, Tq, S, dh, causal,
                                         scale);
    for (int64_t b = 0; b < B; ++b)  // (B, H, Tq, dh) -> (B * Tq, inner)
      for (int64_t i = 0; i < Tq; ++i)
        for (int64_t hh = 0; hh < heads; ++hh)
          std::memcpy(a.data() + (b * Tq + i) * inner + hh * dh, att.data() + ((b * heads + hh) * Tq + i) * dh,
                      dh * sizeof(float));
    const int64_t Mq = B * Tq;
    dalle2_fast::cpu::packed_linear_rows(a.data(), Mq, inner, pf[kOutP], pf[kOutB], y.data(), W);
    if (Tq < rows_t) {  // keep only the querying tokens' rows (destination never after source: in order)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < Tq; ++i)
          std::memmove(h + (b * Tq + i) * W, h + (b * rows_t + rows_t - Tq + i) * W, W * sizeof(float));
      rows_t = Tq;
    }
    add_rows(h, y.data(), Mq * W);
    layer_norm_rows(h, Mq, W, pf[kLn2W], pf[kLn2B], eps, a.data());
    dalle2_fast::cpu::packed_linear_rows(a.data(), Mq, W, pf[kFc1P], pf[kFc1B], fp, hidden);
    at::Tensor fq = f.narrow(0, 0, Mq);
    at::gelu_(fq);
    dalle2_fast::cpu::packed_linear_rows(fp, Mq, hidden, pf[kFc2P], pf[kFc2B], y.data(), W);
    add_rows(h, y.data(), Mq * W);
  }
  return rows_t == T ? out : out.view({-1}).narrow(0, 0, B * rows_t * W).view({B, rows_t, W});
}

}  // namespace

TORCH_LIBRARY_IMPL(dalle2_fast, CPU, m) { m.impl("cached_blocks", &cached_blocks_cpu); }
