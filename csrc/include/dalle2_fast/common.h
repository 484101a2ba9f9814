// Shared between csrc/cpu and csrc/cuda: per-element and per-tile math lives in
// DF_HD inline functions so the CPU backend (and its tests) run the very arithmetic
// the GPU kernels run; only launch, tiling and memory movement are GPU-only.
#pragma once

#if defined(__CUDACC__)
#define DF_HD __host__ __device__ __forceinline__
#define DF_HD_ALWAYS __host__ __device__ __forceinline__
#else
#define DF_HD inline
// always inlined on the host too: the CPU kernels' loops (target_clones) vectorise only with the
// body inlined
#define DF_HD_ALWAYS inline __attribute__((always_inline))
#endif

namespace dalle2_fast {

// +inf without <limits> (usable on device).
DF_HD float pos_inf() { return __builtin_huge_valf(); }

// exp. The host version is a branch-free Cephes-style polynomial so that CPU loops vectorise
// (libm's expf does not without -ffast-math); relative error ~2 ulp; x clamped to [-87, 88]
// (exp(-87) ~ 1.6e-38: float's underflow, not 0).
DF_HD_ALWAYS float exp_approx(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // n = round(x / ln2) by the 1.5 * 2^23 trick (floorf / nearbyintf block GCC's AVX-512
  // vectoriser; these files are never compiled with -ffast-math, which would fold it away).
  const float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int e = static_cast<int>(fx) + 127;
  const float scale = __builtin_bit_cast(float, e << 23);
  return p * scale;
#endif
}

}  // namespace dalle2_fast
