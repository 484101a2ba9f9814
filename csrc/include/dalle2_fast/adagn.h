// Adaptive GroupNorm math shared by the CPU and CUDA kernels.
//
//   h   = ((x - mean_g) * rstd_g * w_c + b_c) * (1 + scale_bc) + shift_bc
//   out = act(h),  act in {identity, silu}
//
// Every kernel works in three steps over a (batch, group):
//   1. per-channel moments of x (shifted sums, see below), possibly in several pieces;
//   2. merge them into the group's mean / rstd (Chan et al.'s parallel variance update) and
//      fold everything per (batch, channel) into a few coefficients (ChannelCoef);
//   3. one fused element-wise pass.
// The backward pass does the same with the per-channel sums of dh and dh * xhat.
//
// Statistics use the accumulation type acc_t (float for float/half/bfloat16 inputs, double
// for double). Per-channel sums are taken around a shift (the channel's first element), so a
// large common offset in x never cancels catastrophically; pieces merge with Chan's formula.
#pragma once
#include "dalle2_fast/common.h"

#include <cmath>

// Host: force inlining so the helpers vectorise inside the CPU kernels' ISA clones.
#if defined(__CUDACC__)
#define DF_AGN DF_HD
#else
#define DF_AGN inline __attribute__((always_inline))
#endif

namespace dalle2_fast::adagn {

// (count, mean, M2 = sum of squared deviations from mean) of a set of values.
template <typename acc_t>
struct Moments {
  acc_t n;
  acc_t mean;
  acc_t m2;
};

// Moments of n values from their sums around a shift k: s1 = sum(x - k), s2 = sum((x - k)^2).
// With k a sample of the same channel, s1 / n is of the order of the spread, so
// s2 - s1^2 / n does not cancel catastrophically even when |mean| >> std.
template <typename acc_t>
DF_AGN Moments<acc_t> moments_from_shifted(acc_t n, acc_t k, acc_t s1, acc_t s2) {
  Moments<acc_t> m;
  m.n = n;
  if (n <= acc_t(0)) {
    m.mean = acc_t(0);
    m.m2 = acc_t(0);
    return m;
  }
  const acc_t d = s1 / n;
  m.mean = k + d;
  const acc_t m2 = s2 - s1 * d;
  // clamp rounding below zero, but keep NaN (an Inf in x gives inf - inf here: the group's
  // statistics, hence the whole group, are NaN, as the reference's two-pass mean/variance)
  m.m2 = m2 > acc_t(0) ? m2 : (m2 == m2 ? acc_t(0) : m2);
  return m;
}

// Chan et al. (1979) pairwise merge of two sets' moments.
template <typename acc_t>
DF_AGN Moments<acc_t> merge_moments(Moments<acc_t> a, Moments<acc_t> b) {
  const acc_t n = a.n + b.n;
  if (b.n <= acc_t(0)) return a;
  if (a.n <= acc_t(0)) return b;
  const acc_t delta = b.mean - a.mean;
  const acc_t fb = b.n / n;
  Moments<acc_t> m;
  m.n = n;
  m.mean = a.mean + delta * fb;
  m.m2 = a.m2 + b.m2 + delta * delta * a.n * fb;
  return m;
}

// Welford's single-value update (used where values arrive one by one, e.g. per GPU thread).
template <typename acc_t>
DF_AGN void welford_update(Moments<acc_t>& m, acc_t v) {
  m.n += acc_t(1);
  const acc_t d = v - m.mean;
  m.mean += d / m.n;
  m.m2 += d * (v - m.mean);
}

template <typename acc_t>
DF_AGN acc_t group_rstd(const Moments<acc_t>& m, acc_t eps) {
  const acc_t var = m.n > acc_t(0) ? m.m2 / m.n : acc_t(0);  // biased, as GroupNorm
#if defined(__CUDA_ARCH__)
  return acc_t(1) / sqrt(var + eps);
#else
  return acc_t(1) / std::sqrt(var + eps);
#endif
}

// ---------------------------------------------------------------------------------------
// Forward coefficients for one (batch, channel): h = ((x - mean) * a + c) * g + shift.
// Subtracting the mean first (instead of x * a + (c - mean * a)) keeps the result accurate
// when |mean| >> std. The GroupNorm affine, the (1 + scale) and the shift are applied in the
// reference's order (not folded into one x * a' + c'): with a non-finite scale, shift, weight
// or bias the folded form turns inf - inf into NaN where the reference (adagn_ref) gives +-Inf,
// and every backend must give the reference's non-finite values exactly. The elementwise pass
// is memory-bound, so the extra FMA costs nothing measurable.
template <typename acc_t>
struct FwdCoef {
  acc_t mean;
  acc_t a;      // rstd * w
  acc_t c;      // b
  acc_t g;      // 1 + scale
  acc_t shift;
};

// w, b, scale, shift: pass 1, 0, 0, 0 for an absent one.
template <typename acc_t>
DF_AGN FwdCoef<acc_t> fwd_coef(acc_t mean, acc_t rstd, acc_t w, acc_t b, acc_t scale, acc_t shift) {
  FwdCoef<acc_t> k;
  k.mean = mean;
  k.a = rstd * w;
  k.c = b;
  k.g = acc_t(1) + scale;
  k.shift = shift;
  return k;
}

// The pre-activation from x - mean and the coefficients (shared by every kernel's loops).
template <typename acc_t>
DF_AGN acc_t pre_act_xm(acc_t xm, acc_t a, acc_t c, acc_t g, acc_t shift) {
  return (xm * a + c) * g + shift;
}

template <typename acc_t>
DF_AGN acc_t pre_act(acc_t x, const FwdCoef<acc_t>& k) {
  return pre_act_xm(x - k.mean, k.a, k.c, k.g, k.shift);
}

// ---------------------------------------------------------------------------------------
// exp: the float version is the shared polynomial (common.h), the double one libm's.
using dalle2_fast::exp_approx;

DF_AGN double exp_approx(double x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  return std::exp(x);
#endif
}

template <typename acc_t>
DF_AGN acc_t sigmoid(acc_t h) {
  return acc_t(1) / (acc_t(1) + exp_approx(-h));
}

// out = act(h). silu(-inf) is NaN, as torch's F.silu (x / (1 + exp(-x)) = -inf / inf); the
// clamped exp_approx would otherwise give -inf * tiny = -inf.
template <bool SILU, typename acc_t>
DF_AGN acc_t activate(acc_t h) {
  if constexpr (SILU) {
    const acc_t y = h * sigmoid(h);
    return h == -acc_t(__builtin_huge_val()) ? h - h : y;
  } else {
    return h;
  }
}

// d act(h) / dh * dout
template <bool SILU, typename acc_t>
DF_AGN acc_t act_backward(acc_t h, acc_t dout) {
  if constexpr (SILU) {
    const acc_t s = sigmoid(h);
    return dout * s * (acc_t(1) + h * (acc_t(1) - s));
  } else {
    return dout;
  }
}

// ---------------------------------------------------------------------------------------
// Backward. With xhat = (x - mean) * rstd, g_c = w_c * (1 + scale_bc), dh = act'(h) * dout:
//   per (b, c):  S_c = sum dh,  T_c = sum dh * xhat
//   dshift_bc = S_c                       dscale_bc = w_c T_c + b_c S_c
//   dweight_c = sum_b (1 + scale_bc) T_c   dbias_c  = sum_b (1 + scale_bc) S_c
//   per (b, group):  u = sum_c g_c S_c / N,  v = sum_c g_c T_c / N   (N = elements in group)
//   dx = rstd * (g_c dh - u) + q (x - mean),  q = -rstd^2 v
// (g_c dh - u cancels before the multiplication by rstd, which can be ~1/sqrt(eps) when a
// group's variance is ~0).
template <typename acc_t>
struct BwdCoef {
  acc_t mean;
  acc_t rstd;
  acc_t g;  // w_c * (1 + scale_bc)
  acc_t u;  // sum_c g_c S_c / N
  acc_t q;  // -rstd^2 * v
};

template <typename acc_t>
DF_AGN BwdCoef<acc_t> bwd_coef(acc_t mean, acc_t rstd, acc_t g_c, acc_t u, acc_t v) {
  BwdCoef<acc_t> k;
  k.mean = mean;
  k.rstd = rstd;
  k.g = g_c;
  k.u = u;
  k.q = -rstd * rstd * v;
  return k;
}

template <typename acc_t>
DF_AGN acc_t grad_x(acc_t x, acc_t dh, const BwdCoef<acc_t>& k) {
  return k.rstd * (k.g * dh - k.u) + k.q * (x - k.mean);
}

// dscale and dshift of one (b, c) from its sums.
template <typename acc_t>
DF_AGN void grad_scale_shift(acc_t S, acc_t T, acc_t w, acc_t b, acc_t& dscale, acc_t& dshift) {
  dscale = w * T + b * S;
  dshift = S;
}

}  // namespace dalle2_fast::adagn
