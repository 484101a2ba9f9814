// CUDA fused sampling step: one thread per element (grid-stride within a sample, blockIdx.y =
// sample), per-element math from sampling.h (the arithmetic the CPU backend runs and tests).
// Switches are uniform across a launch, so runtime branches cost nothing measurable here.
// No host synchronisation: safe inside a CUDA-graph capture.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "dalle2_fast/sampling.h"
#include "dalle2_fast/sampling_host.h"

namespace {

using namespace dalle2_fast::sampling;

template <typename scalar_t, typename acc_t>
__global__ void sampling_step_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ m,
                                     const acc_t* __restrict__ coefs, const acc_t* __restrict__ guidance,
                                     const acc_t* __restrict__ thresh, const scalar_t* __restrict__ noise,
                                     const scalar_t* __restrict__ prev, const scalar_t* __restrict__ known,
                                     const scalar_t* __restrict__ mask, const scalar_t* __restrict__ known_noise,
                                     scalar_t* __restrict__ out, scalar_t* __restrict__ x0_out, int64_t B, int64_t N,
                                     int64_t n_out, int64_t w_n, int64_t w_bstride, int kind, int pred,
                                     bool learned) {
  const int64_t b = blockIdx.y;
  const Coefs<acc_t> k = load_coefs(coefs + b * kNumCoefs);
  const acc_t g = guidance ? guidance[b] : acc_t(1);
  const acc_t thr = thresh ? thresh[b] : acc_t(0);
  const scalar_t* mc = m + b * n_out;
  const scalar_t* mu = m + (B + b) * n_out;
  const bool lv = learned && kind == kDDPM;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < N; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = b * N + e;
    const acc_t xv = static_cast<acc_t>(x[i]);
    acc_t mv = static_cast<acc_t>(mc[e]);
    if (guidance) mv = cfg_combine(mv, static_cast<acc_t>(mu[e]), g);
    acc_t x0, eps;
    predict_x0_eps<acc_t>(pred, xv, mv, k, thr, x0, eps);
    const acc_t v = lv ? static_cast<acc_t>(mc[N + e]) : acc_t(0);
    const acc_t z = noise ? static_cast<acc_t>(noise[i]) : acc_t(0);
    const acc_t p = prev ? static_cast<acc_t>(prev[i]) : acc_t(0);
    acc_t o = step_update<acc_t>(kind, lv, xv, x0, eps, v, z, p, k);
    if (known) {
      const acc_t w = static_cast<acc_t>(mask[b * w_bstride + (w_n == N ? e : e % w_n)]);
      const acc_t kz = known_noise ? static_cast<acc_t>(known_noise[i]) : acc_t(0);
      o = known_blend<acc_t>(o, static_cast<acc_t>(known[i]), w, kz, k);
    }
    out[i] = static_cast<scalar_t>(o);
    if (x0_out) x0_out[i] = static_cast<scalar_t>(x0);
  }
}

std::tuple<at::Tensor, at::Tensor> sampling_step_cuda(
    const at::Tensor& x_in, const at::Tensor& m_in, const at::Tensor& coefs_in,
    const std::optional<at::Tensor>& guidance, const std::optional<at::Tensor>& thresh,
    const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& prev_x0, int64_t kind,
    int64_t pred, bool learned_var, bool want_x0, const std::optional<at::Tensor>& known,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& known_noise) {
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(0) > 0, "sampling_step: x must be (B, ...) with B >= 1");
  TORCH_CHECK(kind >= 0 && kind <= 3 && pred >= 0 && pred <= 2, "sampling_step: bad kind/pred");
  TORCH_CHECK(x_in.size(0) <= 65535, "sampling_step: at most 65535 samples per call on CUDA");
  c10::cuda::CUDAGuard guard(x_in.device());
  StepArgs a = prepare_step(x_in, m_in, coefs_in, guidance, thresh, noise, prev_x0, known, mask, known_noise, kind,
                            learned_var, want_x0);
  const bool blend = kind != kX0 && a.k.has_value();  // the x0 pre-pass never blends
  const at::Tensor &x = a.x, &m = a.m, &coefs = a.coefs;
  const auto &g = a.g, &th = a.th, &z = a.z, &p = a.p;
  at::Tensor &out = a.out, &x0 = a.x0;
  const int64_t B = a.B, N = a.N, n_out = a.n_out;
  if (N > 0) {
    constexpr int kThreads = 256;
    const int64_t blocks_x = std::min<int64_t>((N + kThreads - 1) / kThreads, 4096);
    const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(B));
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sampling_step_cuda", [&] {
      using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      sampling_step_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), coefs.data_ptr<acc_t>(),
          g ? g->data_ptr<acc_t>() : nullptr, th ? th->data_ptr<acc_t>() : nullptr,
          z ? z->data_ptr<scalar_t>() : nullptr, p ? p->data_ptr<scalar_t>() : nullptr,
          blend ? a.k->data_ptr<scalar_t>() : nullptr, blend ? a.w->data_ptr<scalar_t>() : nullptr,
          blend && a.kz ? a.kz->data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(),
          x0.numel() ? x0.data_ptr<scalar_t>() : nullptr, B, N, n_out, a.w_n, a.w_bstride, static_cast<int>(kind),
          static_cast<int>(pred), learned_var);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out.view(x_in.sizes()), x0.numel() ? x0.view(x_in.sizes()) : x0};
}

}  // namespace

TORCH_LIBRARY_IMPL(dalle2_fast, CUDA, m) { m.impl("sampling_step", &sampling_step_cuda); }
