// CPU fused sampling step: one pass over x / model_out / noise, OpenMP (at::parallel_for) over
// the flattened (sample, element) range; the per-element math is sampling.h, shared with CUDA.
// The kind / parameterisation / guidance / clipping switches are template parameters so that
// each inner loop is branch-free and vectorises.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

#include "dalle2_fast/sampling.h"
#include "dalle2_fast/sampling_host.h"

namespace {

using namespace dalle2_fast::sampling;

template <typename scalar_t, typename acc_t>
struct Args {
  const scalar_t* x;
  const scalar_t* m;  // model output, (B or 2B) rows of n_out
  const acc_t* coefs;
  const acc_t* guidance;
  const acc_t* thresh;
  const scalar_t* noise;
  const scalar_t* prev;
  const scalar_t* known;  // inpainting (null when off): known x0, mask, known-region noise (may be null)
  const scalar_t* mask;
  const scalar_t* known_noise;
  scalar_t* out;
  scalar_t* x0_out;
  int64_t B, N, n_out;
  int64_t w_n, w_bstride;  // mask elements per sample, mask sample stride (0: shared)
  bool learned;
};

template <typename scalar_t, typename acc_t, int KIND, int PRED, bool CFG, bool CLIP, bool NOISE, bool PREV,
          bool KNOWN>
void run_range(const Args<scalar_t, acc_t>& a, int64_t begin, int64_t end) {
  int64_t i = begin;
  while (i < end) {
    const int64_t b = i / a.N;
    const int64_t e0 = i - b * a.N;
    const int64_t e1 = std::min(a.N, e0 + (end - i));
    const Coefs<acc_t> k = load_coefs(a.coefs + b * kNumCoefs);
    const acc_t g = CFG ? a.guidance[b] : acc_t(1);
    const acc_t thr = CLIP ? a.thresh[b] : acc_t(0);
    const scalar_t* xb = a.x + b * a.N;
    const scalar_t* mc = a.m + b * a.n_out;
    const scalar_t* mu = CFG ? a.m + (a.B + b) * a.n_out : mc;
    const scalar_t* zb = NOISE ? a.noise + b * a.N : nullptr;
    const scalar_t* pb = PREV ? a.prev + b * a.N : nullptr;
    scalar_t* ob = a.out + b * a.N;
    scalar_t* x0b = a.x0_out ? a.x0_out + b * a.N : nullptr;
    const scalar_t* kb = KNOWN ? a.known + b * a.N : nullptr;
    const scalar_t* wrow = KNOWN ? a.mask + b * a.w_bstride : nullptr;
    // Without known-region noise the blend reads kz = known with ks = 0: 0 * known is 0 for a
    // finite known value and NaN exactly where w * (ka * known) is already NaN, so the result is
    // the reference's (w (ka k + ks 0) + (1 - w) x') bit for bit, and the loop stays branch-free.
    Coefs<acc_t> kk = k;
    const scalar_t* kzb = KNOWN ? (a.known_noise ? a.known_noise + b * a.N : kb) : nullptr;
    if (KNOWN && !a.known_noise) kk.ks = acc_t(0);
    const bool learned = KIND == kDDPM && a.learned;
    // A mask of one channel (or one row for the batch) repeats every w_n elements: walk the row
    // in spans over which wrow[e - off] == wrow[e % w_n], so the inner loop has no division.
    int64_t s0 = e0;
    while (s0 < e1) {
      int64_t s1 = e1, off = 0;
      if (KNOWN) {
        off = (s0 / a.w_n) * a.w_n;
        s1 = std::min(e1, off + a.w_n);
      }
#pragma omp simd
      for (int64_t e = s0; e < s1; ++e) {
        const acc_t xv = static_cast<acc_t>(xb[e]);
        acc_t m = static_cast<acc_t>(mc[e]);
        if (CFG) m = cfg_combine(m, static_cast<acc_t>(mu[e]), g);
        acc_t x0, eps;
        predict_x0_eps<acc_t>(PRED, xv, m, k, thr, x0, eps);
        // Variance channel of a learned-range model: taken from the conditional half.
        const acc_t v = learned ? static_cast<acc_t>(mc[a.N + e]) : acc_t(0);
        const acc_t z = NOISE ? static_cast<acc_t>(zb[e]) : acc_t(0);
        const acc_t p = PREV ? static_cast<acc_t>(pb[e]) : acc_t(0);
        acc_t o = step_update<acc_t>(KIND, learned, xv, x0, eps, v, z, p, k);
        if (KNOWN) {
          o = known_blend<acc_t>(o, static_cast<acc_t>(kb[e]), static_cast<acc_t>(wrow[e - off]),
                                 static_cast<acc_t>(kzb[e]), kk);
        }
        ob[e] = static_cast<scalar_t>(o);
        if (x0b) x0b[e] = static_cast<scalar_t>(x0);
      }
      s0 = s1;
    }
    i += e1 - e0;
  }
}

template <typename scalar_t, typename acc_t, int KIND, int PRED, bool KNOWN>
void dispatch_flags(const Args<scalar_t, acc_t>& a, int64_t b, int64_t e) {
  const bool cfg = a.guidance != nullptr, clip = a.thresh != nullptr;
  const bool noise = a.noise != nullptr, prev = a.prev != nullptr;
#define DF_RUN(C, L, Z, P) run_range<scalar_t, acc_t, KIND, PRED, C, L, Z, P, KNOWN>(a, b, e)
#define DF_ZP(C, L)           \
  if (noise && prev)          \
    DF_RUN(C, L, true, true); \
  else if (noise)             \
    DF_RUN(C, L, true, false); \
  else if (prev)              \
    DF_RUN(C, L, false, true); \
  else                        \
    DF_RUN(C, L, false, false);
  if (cfg && clip) {
    DF_ZP(true, true)
  } else if (cfg) {
    DF_ZP(true, false)
  } else if (clip) {
    DF_ZP(false, true)
  } else {
    DF_ZP(false, false)
  }
#undef DF_ZP
#undef DF_RUN
}

template <typename scalar_t, typename acc_t>
void dispatch(const Args<scalar_t, acc_t>& a, int64_t kind, int64_t pred, int64_t b, int64_t e) {
#define DF_P(K, KN)                                                 \
  if (pred == kEps)                                                 \
    dispatch_flags<scalar_t, acc_t, K, kEps, KN>(a, b, e);          \
  else if (pred == kXStart)                                         \
    dispatch_flags<scalar_t, acc_t, K, kXStart, KN>(a, b, e);       \
  else                                                              \
    dispatch_flags<scalar_t, acc_t, K, kV, KN>(a, b, e);
#define DF_K(K)          \
  if (a.known) {         \
    DF_P(K, true)        \
  } else {               \
    DF_P(K, false)       \
  }
  switch (kind) {
    case kX0: DF_P(kX0, false) break;  // the x0 pre-pass never blends
    case kDDPM: DF_K(kDDPM) break;
    case kDDIM: DF_K(kDDIM) break;
    default: DF_K(kDPMPP2M) break;
  }
#undef DF_K
#undef DF_P
}

std::tuple<at::Tensor, at::Tensor> sampling_step_cpu(
    const at::Tensor& x_in, const at::Tensor& m_in, const at::Tensor& coefs_in,
    const std::optional<at::Tensor>& guidance, const std::optional<at::Tensor>& thresh,
    const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& prev_x0, int64_t kind,
    int64_t pred, bool learned_var, bool want_x0, const std::optional<at::Tensor>& known,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& known_noise) {
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(0) > 0, "sampling_step: x must be (B, ...) with B >= 1");
  TORCH_CHECK(kind >= 0 && kind <= 3 && pred >= 0 && pred <= 2, "sampling_step: bad kind/pred");
  StepArgs a = prepare_step(x_in, m_in, coefs_in, guidance, thresh, noise, prev_x0, known, mask, known_noise, kind,
                            learned_var, want_x0);
  const at::Tensor &x = a.x, &m = a.m, &coefs = a.coefs;
  const auto &g = a.g, &th = a.th, &z = a.z, &p = a.p, &kn = a.k, &w = a.w, &kz = a.kz;
  at::Tensor &out = a.out, &x0 = a.x0;
  const int64_t B = a.B, N = a.N, n_out = a.n_out, w_n = a.w_n, w_bstride = a.w_bstride;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sampling_step_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    Args<scalar_t, acc_t> a{x.data_ptr<scalar_t>(),
                            m.data_ptr<scalar_t>(),
                            coefs.data_ptr<acc_t>(),
                            g ? g->data_ptr<acc_t>() : nullptr,
                            th ? th->data_ptr<acc_t>() : nullptr,
                            z ? z->data_ptr<scalar_t>() : nullptr,
                            p ? p->data_ptr<scalar_t>() : nullptr,
                            kn ? kn->data_ptr<scalar_t>() : nullptr,
                            w ? w->data_ptr<scalar_t>() : nullptr,
                            kz ? kz->data_ptr<scalar_t>() : nullptr,
                            out.data_ptr<scalar_t>(),
                            x0.numel() ? x0.data_ptr<scalar_t>() : nullptr,
                            B, N, n_out, w_n, w_bstride, learned_var};
    // Grain: ~10-20 flops per element, so below ~64K elements threads cost more than they save
    // (torch uses 32768 for its own elementwise ops).
    at::parallel_for(0, B * N, 1 << 16, [&](int64_t b, int64_t e) { dispatch(a, kind, pred, b, e); });
  });
  return {out.view(x_in.sizes()), x0.numel() ? x0.view(x_in.sizes()) : x0};
}

}  // namespace

TORCH_LIBRARY_IMPL(dalle2_fast, CPU, m) { m.impl("sampling_step", &sampling_step_cpu); }
