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
  at::Tensor out, x0;                    // outputs (x0 empty unless requested)
  int64_t B, N, n_out;                   // samples, elements per sample, model-output elements per row
};

inline StepArgs prepare_step(const at::Tensor& x_in, const at::Tensor& m_in, const at::Tensor& coefs_in,
                             const std::optional<at::Tensor>& guidance, const std::optional<at::Tensor>& thresh,
                             const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& prev_x0,
                             int64_t kind, bool learned_var, bool want_x0) {
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
  TORCH_CHECK(a.coefs.numel() == a.B * kNumCoefs, "sampling_step: coefs must be (B, 10)");
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
  a.out = at::empty_like(a.x);
  a.x0 = (want_x0 && kind != kX0) ? at::empty_like(a.x) : at::empty({0}, a.x.options());
  return a;
}

}  // namespace dalle2_fast::sampling
