// Host-side argument checks and preparation for the fused sampling step, shared by the CPU and
// CUDA ops (csrc/cpu/sampling_cpu.cpp, csrc/cuda/sampling_cuda.cu): one copy of the shape rules.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <optional>

#include "dalle2_fast/sampling.h"

namespace dalle2_fast::sampling {

struct StepArgs {
  at::Tensor x, m, coefs;                // contiguous x, model output, (B, kNumCoefs) coefficients
  std::optional<at::Tensor> g, th, z, p;  // guidance, threshold (acc type); noise, prev_x0 (x's type)
  std::optional<at::Tensor> k, w, kz;     // inpainting: known x0, mask, known-region noise (x's type)
  at::Tensor out, x0;                    // outputs (x0 empty unless requested)
  int64_t B, N, n_out;                   // samples, elements per sample, model-output elements per row
  int64_t w_n = 0, w_bstride = 0;        // mask: elements per sample (N, or N / C for one channel),
                                         // sample stride (w_n, or 0 for one mask shared by the batch)
};

inline StepArgs prepare_step(const at::Tensor& x_in, const at::Tensor& m_in, const at::Tensor& coefs_in,
                             const std::optional<at::Tensor>& guidance, const std::optional<at::Tensor>& thresh,
                             const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& prev_x0,
                             const std::optional<at::Tensor>& known, const std::optional<at::Tensor>& mask,
                             const std::optional<at::Tensor>& known_noise, int64_t kind, bool learned_var,
                             bool want_x0) {
  StepArgs a;
  a.x = x_in.contiguous();
  a.m = m_in.contiguous();
  a.B = a.x.size(0);
  a.N = a.x.numel() / a.B;
  const int64_t rows = guidance.has_value() ? 2 * a.B : a.B;
  TORCH_CHECK(a.m.dim() >= 1 && a.m.size(0) == rows && a.m.dtype() == a.x.dtype(),
              "sampling_step: model_out must have ", rows, " rows and x's dtype");
  a.n_out = a.m.numel() / rows;
  TORCH_CHECK(a.n_out == a.N || a.n_out == 2 * a.N, "sampling_step: model_out per-sample size must be N or 2N");
  TORCH_CHECK(!learned_var || a.n_out == 2 * a.N, "sampling_step: learned_var needs 2C output channels");
  const auto acc_type = a.x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  a.coefs = coefs_in.to(acc_type).contiguous();
  TORCH_CHECK(a.coefs.numel() == a.B * kNumCoefs, "sampling_step: coefs must be (B, 12)");
  auto acc_opt = [&](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(t->to(acc_type).contiguous()) : std::nullopt;
  };
  auto like_x = [&](const std::optional<at::Tensor>& t) {
    if (!t.has_value()) return std::optional<at::Tensor>();
    TORCH_CHECK(t->numel() == a.B * a.N, "sampling_step: noise / prev_x0 must have x's shape");
    return std::optional<at::Tensor>(t->to(a.x.scalar_type()).contiguous());
  };
  a.g = acc_opt(guidance);
  a.th = acc_opt(thresh);
  a.z = like_x(noise);
  a.p = like_x(prev_x0);
  TORCH_CHECK(known.has_value() == mask.has_value(), "sampling_step: known and mask go together");
  TORCH_CHECK(!known_noise.has_value() || known.has_value(), "sampling_step: known_noise needs known");
  a.k = like_x(known);
  a.kz = like_x(known_noise);
  if (mask.has_value()) {
    // (B or 1, C or 1, *S) with x (B, C, *S): one channel broadcasts over C, one row over B.
    const at::Tensor& w = *mask;
    TORCH_CHECK(w.dim() == a.x.dim() && (w.size(0) == a.B || w.size(0) == 1),
                "sampling_step: mask must be (B or 1, C or 1, *S) for x ", a.x.sizes(), ", got ", w.sizes());
    const int64_t C = a.x.dim() >= 2 ? a.x.size(1) : 1;
    const int64_t c = w.dim() >= 2 ? w.size(1) : 1;
    TORCH_CHECK(c == C || c == 1, "sampling_step: mask channels must be 1 or x's ", C, ", got ", c);
    for (int64_t d = 2; d < a.x.dim(); ++d)
      TORCH_CHECK(w.size(d) == a.x.size(d), "sampling_step: mask must have x's spatial sizes, got ", w.sizes());
    a.w = w.to(a.x.scalar_type()).contiguous();
    a.w_n = a.w->numel() / w.size(0);
    a.w_bstride = w.size(0) == 1 ? 0 : a.w_n;
  }
  a.out = at::empty_like(a.x);
  a.x0 = (want_x0 && kind != kX0) ? at::empty_like(a.x) : at::empty({0}, a.x.options());
  return a;
}

}  // namespace dalle2_fast::sampling
