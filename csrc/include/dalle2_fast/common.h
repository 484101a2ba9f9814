// Shared between csrc/cpu and csrc/cuda: per-element and per-tile math lives in
// DF_HD inline functions so the CPU backend (and its tests) run the very arithmetic
// the GPU kernels run; only launch, tiling and memory movement are GPU-only.
#pragma once

#if defined(__CUDACC__)
#define DF_HD __host__ __device__ __forceinline__
#else
#define DF_HD inline
#endif

namespace dalle2_fast {

// +inf without <limits> (usable on device).
DF_HD float pos_inf() { return __builtin_huge_valf(); }

}  // namespace dalle2_fast
