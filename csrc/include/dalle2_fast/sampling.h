// Fused sampling-step math shared by the CPU and CUDA kernels (and mirrored by the Triton
// kernel and the torch reference in dalle2_fast/ops/sampling.py).
//
// One element of one sample goes through, in registers:
//   1. classifier-free-guidance combine  m = m_u + g (m_c - m_u)         (GLIDE, Eq. 7)
//   2. predicted x0 and eps from the model's parameterisation (eps / x0 / v)
//        eps: x0 = (x - s m) / a              x0: eps = (x - a x0) / s
//        v  : x0 = a x - s v, eps = s x + a v  (Salimans & Ho 2022, Sec. 4)
//      with a = sqrt(abar_t), s = sqrt(1 - abar_t)
//   3. x0 clipping / dynamic thresholding: x0 <- clamp(x0, -thr, thr) / thr (Imagen, Sec. 2.3;
//      static clipping is thr = 1); eps is then recomputed from the clipped x0
//   4. the update of one sampler:
//        DDPM     x' = c0 x0 + c1 x + sigma z, sigma = c5 (fixed variance) or
//                 c4 exp(0.5 (f c3 + (1 - f) c2)), f = (v + 1) / 2 (learned range,
//                 Nichol & Dhariwal Eq. 15)
//        DDIM     x' = c0 x0 + c1 eps + c2 z                       (Song et al. Eq. 12)
//        DPM++2M  x' = c0 x + c1 (c2 x0 + c3 x0_prev)              (Lu et al. 2022, Alg. 2)
//        X0       x' = x0 (unclipped; the pre-pass of dynamic thresholding)
//   5. inpainting (RePaint, Lugmayr et al. 2022), when a known region is given: the known image
//      k (x0 of the known region) forward-noised to the step's target level s replaces x' where
//      the mask w is 1:  x' <- w (ka k + ks zk) + (1 - w) x',  ka = sqrt(abar_s),
//      ks = sqrt(1 - abar_s) (columns 10, 11). At the end of sampling (abar_s = 1) a binary mask
//      keeps k exactly. NaN in either term propagates (IEEE: 0 * NaN = NaN).
//
// Per-sample coefficients are a row of kNumCoefs values (see Coefs); the Python side builds
// them from the schedule, in float64, once per step.
#pragma once
#include <math.h>

#include "dalle2_fast/common.h"

namespace dalle2_fast::sampling {

enum Kind : int { kX0 = 0, kDDPM = 1, kDDIM = 2, kDPMPP2M = 3 };
enum Pred : int { kEps = 0, kXStart = 1, kV = 2 };
constexpr int kNumCoefs = 12;

// Row layout of the (B, kNumCoefs) coefficient table.
template <typename T>
struct Coefs {
  T a, s, inv_a, inv_s, c0, c1, c2, c3, c4, c5, ka, ks;
};

template <typename T>
DF_HD Coefs<T> load_coefs(const T* row) {
  return Coefs<T>{row[0], row[1], row[2], row[3], row[4],  row[5],
                  row[6], row[7], row[8], row[9], row[10], row[11]};
}

DF_HD float exp_(float v) { return expf(v); }
DF_HD double exp_(double v) { return exp(v); }

template <typename T>
DF_HD T cfg_combine(T m_cond, T m_uncond, T g) {
  return m_uncond + g * (m_cond - m_uncond);
}

// Steps 2-3: x0 (clipped when thr > 0) and eps from the model output m.
template <typename T>
DF_HD void predict_x0_eps(int pred, T x, T m, const Coefs<T>& k, T thr, T& x0, T& eps) {
  if (pred == kEps) {
    eps = m;
    x0 = (x - k.s * m) * k.inv_a;
  } else if (pred == kXStart) {
    x0 = m;
    eps = (x - k.a * m) * k.inv_s;
  } else {
    x0 = k.a * x - k.s * m;
    eps = k.s * x + k.a * m;
  }
  // thr is 0 when clipping is off; a NaN threshold (dynamic thresholding of a sample holding
  // NaN) clips, i.e. turns the sample's x0 into NaN, as the reference's min/max do. The
  // comparisons below leave a NaN x0 NaN (never the bound, as fminf/fmaxf would).
  if (thr > T(0) || thr != thr) {
    T c = x0 < -thr ? -thr : (x0 > thr ? thr : x0);
    x0 = c / thr;
    eps = (x - k.a * x0) * k.inv_s;
  }
}

// Step 4. `v` is the (combined) variance channel of a learned-range model, `z` the noise,
// `prev` the previous step's x0 (DPM-Solver++ 2M); absent inputs are passed as 0.
template <typename T>
DF_HD T step_update(int kind, bool learned, T x, T x0, T eps, T v, T z, T prev, const Coefs<T>& k) {
  switch (kind) {
    case kDDPM: {
      T sigma;
      if (learned) {
        const T f = (v + T(1)) * T(0.5);
        sigma = k.c4 * exp_(T(0.5) * (f * k.c3 + (T(1) - f) * k.c2));
      } else {
        sigma = k.c5;
      }
      return k.c0 * x0 + k.c1 * x + sigma * z;
    }
    case kDDIM:
      return k.c0 * x0 + k.c1 * eps + k.c2 * z;
    case kDPMPP2M:
      return k.c0 * x + k.c1 * (k.c2 * x0 + k.c3 * prev);
    default:
      return x0;
  }
}

// Step 5: x' blended with the known region (w: mask, 1 = keep the known value; kz: its noise).
template <typename T>
DF_HD T known_blend(T out, T known, T w, T kz, const Coefs<T>& k) {
  return w * (k.ka * known + k.ks * kz) + (T(1) - w) * out;
}

}  // namespace dalle2_fast::sampling
