// CUDA flash attention, forward and backward (fp32 math, any of fp32/fp16/bf16 storage).
//
// Layout: 256 threads = 8 warps per block. Forward and dQ: a block owns BM query rows of one
// (batch, head) (each warp RPW rows) and walks the keys in 32-key tiles staged in shared memory
// as float; lane j of a warp owns key j of the tile (scores by a dot over D), the online
// softmax runs on warp reductions, and each lane accumulates the output dims d = lane + 32c
// (head dims padded to DP = 32/64/128/256 with zero columns, never stored). dK/dV: a block owns
// 32 (16 for DP=256) keys, walks the query rows in 32-row tiles, lane i owning query row i.
// The per-element math (causal bound, online-softmax update, empty rows, lse, dS) is the one
// in dalle2_fast/attention.h, which the CPU kernel shares and the CPU tests run.
//
// Compiled for sm_80/sm_90 but, when written, never run (no GPU on the development machine).
// TODO(perf): tensor-core (mma / wgmma) tiles for fp16/bf16, cp.async double buffering.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "dalle2_fast/attention.h"

namespace {

using namespace dalle2_fast::attention;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;

struct Str {  // strides of a (B, H, S, D) tensor, in elements
  int64_t b, h, s, d;
};

Str strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

template <int DP>
struct Cfg {
  static constexpr int BM = DP >= 256 ? 16 : 32;  // query rows per block (fwd, dQ)
  static constexpr int BN = 32;                   // keys per tile (fwd, dQ): one per lane
  static constexpr int RPW = BM / kWarps;         // query rows per warp
  static constexpr int BK = DP >= 256 ? 16 : 32;  // keys per block (dK/dV)
  static constexpr int KPW = BK / kWarps;         // keys per warp (dK/dV)
  static constexpr int BQ = 32;                   // query rows per tile (dK/dV): one per lane
  static constexpr int C = DP / 32;               // output dims per lane
};

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFull, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}

// Stage rows [row0, row0 + rows) of head (b, h) into dst (row stride ld), as float, with
// zeros past S and past D (the head-dim padding).
template <typename T>
__device__ __forceinline__ void load_tile(float* dst, int ld, const T* __restrict__ src, Str st, int64_t b,
                                          int64_t h, int64_t row0, int rows, int64_t S, int D, int DP) {
  for (int e = threadIdx.x; e < rows * DP; e += kThreads) {
    const int r = e / DP, d = e % DP;
    const int64_t gr = row0 + r;
    dst[r * ld + d] = (gr < S && d < D) ? static_cast<float>(src[b * st.b + h * st.h + gr * st.s + d * st.d]) : 0.f;
  }
}

// load_tile that also reports whether this thread staged a non-finite value.
template <typename T>
__device__ __forceinline__ bool load_tile_nf(float* dst, int ld, const T* __restrict__ src, Str st, int64_t b,
                                             int64_t h, int64_t row0, int rows, int64_t S, int D, int DP) {
  bool bad = false;
  for (int e = threadIdx.x; e < rows * DP; e += kThreads) {
    const int r = e / DP, d = e % DP;
    const int64_t gr = row0 + r;
    const float x = (gr < S && d < D) ? static_cast<float>(src[b * st.b + h * st.h + gr * st.s + d * st.d]) : 0.f;
    dst[r * ld + d] = x;
    bad = bad || !is_finite(x);
  }
  return bad;
}

__device__ __forceinline__ bool key_padded(const uint8_t* __restrict__ pad, int64_t b, int64_t j, int64_t Sk) {
  return j >= Sk || (pad != nullptr && pad[b * Sk + j] != 0);
}

template <typename T, int DP>
__global__ void __launch_bounds__(kThreads)
attn_fwd_kernel(const T* __restrict__ q, Str sq, const T* __restrict__ k, Str sk, const T* __restrict__ v, Str sv,
                const uint8_t* __restrict__ pad, T* __restrict__ out, float* __restrict__ lse, int64_t H,
                int64_t Sq, int64_t Sk, int D, bool causal, float scale, int64_t n_mblk) {
  using C = Cfg<DP>;
  extern __shared__ float smem[];
  float* Qs = smem;                       // [BM][DP]
  float* Ks = Qs + C::BM * DP;            // [BN][DP + 1] (padded: lane j reads row j)
  float* Vs = Ks + C::BN * (DP + 1);      // [BN][DP]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t bh = blockIdx.x / n_mblk, b = bh / H, h = bh % H;
  const int64_t m0 = (blockIdx.x % n_mblk) * C::BM;
  load_tile(Qs, DP, q, sq, b, h, m0, C::BM, Sq, D, DP);
  __syncthreads();

  // Non-finite bookkeeping (attention.h): per row "saw a key", "poisoned" (q, scale, or the k
  // of a key it sees is non-finite) and a bit per owned output column "a v it sees is".
  float m[C::RPW], l[C::RPW], acc[C::RPW][C::C];
  bool seen[C::RPW], row_bad[C::RPW];
  unsigned col_bad[C::RPW];
#pragma unroll
  for (int r = 0; r < C::RPW; ++r) {
    m[r] = neg_inf();
    l[r] = 0.f;
    seen[r] = false;
    col_bad[r] = 0u;
    bool qbad = !is_finite(scale);
#pragma unroll
    for (int c = 0; c < C::C; ++c) {
      acc[r][c] = 0.f;
      qbad = qbad || !is_finite(Qs[(warp * C::RPW + r) * DP + lane + 32 * c]);
    }
    row_bad[r] = __any_sync(kFull, qbad);
  }
  const int64_t last_row = (m0 + C::BM < Sq ? m0 + C::BM : Sq) - 1;
  const int64_t kend = causal ? causal_key_end(last_row, Sq, Sk) : Sk;

  for (int64_t n0 = 0; n0 < kend; n0 += C::BN) {
    __syncthreads();  // the previous tile is consumed
    load_tile(Ks, DP + 1, k, sk, b, h, n0, C::BN, Sk, D, DP);
    const bool v_nf = load_tile_nf(Vs, DP, v, sv, b, h, n0, C::BN, Sk, D, DP);
    const int tile_vbad = __syncthreads_or(v_nf);  // block-uniform
    float s[C::RPW];
    bool kfin = true;  // this lane's key has a finite k
#pragma unroll
    for (int r = 0; r < C::RPW; ++r) s[r] = 0.f;
#pragma unroll 8
    for (int d = 0; d < DP; ++d) {
      const float kd = Ks[lane * (DP + 1) + d];
      kfin = kfin && is_finite(kd);
#pragma unroll
      for (int r = 0; r < C::RPW; ++r) s[r] = fmaf(Qs[(warp * C::RPW + r) * DP + d], kd, s[r]);
    }
    const int64_t j = n0 + lane;
    const bool padded = key_padded(pad, b, j, Sk);
    unsigned vis[C::RPW];  // bit jj: row r sees key n0 + jj
#pragma unroll
    for (int r = 0; r < C::RPW; ++r) {
      const int64_t i = m0 + warp * C::RPW + r;
      const bool hidden = padded || (causal && j >= causal_key_end(i, Sq, Sk));
      vis[r] = __ballot_sync(kFull, !hidden);
      seen[r] = seen[r] || vis[r] != 0u;
      row_bad[r] = row_bad[r] || __any_sync(kFull, !hidden && !kfin);
      const float sc = hidden ? neg_inf() : s[r] * scale;
      const float alpha = online_update_max(m[r], warp_max(sc));
      const float p = online_prob(sc, m[r]);
      l[r] = alpha * l[r] + warp_sum(p);
#pragma unroll
      for (int c = 0; c < C::C; ++c) acc[r][c] *= alpha;
      s[r] = p;
    }
    if (tile_vbad) {  // rare: poison the columns that see a non-finite v, then zero it for P V
      for (int jj = 0; jj < C::BN; ++jj) {
#pragma unroll
        for (int c = 0; c < C::C; ++c) {
          if (is_finite(Vs[jj * DP + lane + 32 * c])) continue;
#pragma unroll
          for (int r = 0; r < C::RPW; ++r)
            if ((vis[r] >> jj) & 1u) col_bad[r] |= 1u << c;
        }
      }
      __syncthreads();
      for (int e = threadIdx.x; e < C::BN * DP; e += kThreads)
        if (!is_finite(Vs[e])) Vs[e] = 0.f;
      __syncthreads();
    }
#pragma unroll 4
    for (int jj = 0; jj < C::BN; ++jj) {
      float pj[C::RPW];
#pragma unroll
      for (int r = 0; r < C::RPW; ++r) pj[r] = __shfl_sync(kFull, s[r], jj);
#pragma unroll
      for (int c = 0; c < C::C; ++c) {
        const float vv = Vs[jj * DP + lane + 32 * c];
#pragma unroll
        for (int r = 0; r < C::RPW; ++r) acc[r][c] = fmaf(pj[r], vv, acc[r][c]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < C::RPW; ++r) {
    const int64_t i = m0 + warp * C::RPW + r;
    if (i >= Sq) continue;
    const float inv = finish_inv_sum(l[r]);
    const bool poisoned = seen[r] && row_bad[r];
#pragma unroll
    for (int c = 0; c < C::C; ++c) {
      const int d = lane + 32 * c;
      const bool bad = poisoned || ((col_bad[r] >> c) & 1u);
      if (d < D) out[(bh * Sq + i) * D + d] = static_cast<T>(finish_out(acc[r][c], inv, bad));
    }
    if (lane == 0) lse[bh * Sq + i] = finish_lse_row(m[r], l[r], poisoned);
  }
}

template <typename T, int DP>
__global__ void __launch_bounds__(kThreads)
attn_bwd_dq_kernel(const T* __restrict__ q, Str sq, const T* __restrict__ k, Str sk, const T* __restrict__ v, Str sv,
                   const T* __restrict__ go, Str sg, const uint8_t* __restrict__ pad, const float* __restrict__ lse,
                   const float* __restrict__ delta, T* __restrict__ dq, int64_t H, int64_t Sq, int64_t Sk, int D,
                   bool causal, float scale, int64_t n_mblk) {
  using C = Cfg<DP>;
  extern __shared__ float smem[];
  float* Qs = smem;                      // [BM][DP]
  float* Gs = Qs + C::BM * DP;           // [BM][DP]   dO
  float* Ks = Gs + C::BM * DP;           // [BN][DP + 1]
  float* Vs = Ks + C::BN * (DP + 1);     // [BN][DP + 1]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t bh = blockIdx.x / n_mblk, b = bh / H, h = bh % H;
  const int64_t m0 = (blockIdx.x % n_mblk) * C::BM;
  load_tile(Qs, DP, q, sq, b, h, m0, C::BM, Sq, D, DP);
  load_tile(Gs, DP, go, sg, b, h, m0, C::BM, Sq, D, DP);

  float row_lse[C::RPW], row_delta[C::RPW], acc[C::RPW][C::C];
#pragma unroll
  for (int r = 0; r < C::RPW; ++r) {
    const int64_t i = m0 + warp * C::RPW + r;
    row_lse[r] = i < Sq ? lse[bh * Sq + i] : __builtin_huge_valf();
    row_delta[r] = i < Sq ? delta[bh * Sq + i] : 0.f;
#pragma unroll
    for (int c = 0; c < C::C; ++c) acc[r][c] = 0.f;
  }
  const int64_t last_row = (m0 + C::BM < Sq ? m0 + C::BM : Sq) - 1;
  const int64_t kend = causal ? causal_key_end(last_row, Sq, Sk) : Sk;

  for (int64_t n0 = 0; n0 < kend; n0 += C::BN) {
    __syncthreads();
    load_tile(Ks, DP + 1, k, sk, b, h, n0, C::BN, Sk, D, DP);
    load_tile(Vs, DP + 1, v, sv, b, h, n0, C::BN, Sk, D, DP);
    __syncthreads();
    float s[C::RPW], dp[C::RPW];
#pragma unroll
    for (int r = 0; r < C::RPW; ++r) s[r] = dp[r] = 0.f;
#pragma unroll 4
    for (int d = 0; d < DP; ++d) {
      const float kd = Ks[lane * (DP + 1) + d], vd = Vs[lane * (DP + 1) + d];
#pragma unroll
      for (int r = 0; r < C::RPW; ++r) {
        s[r] = fmaf(Qs[(warp * C::RPW + r) * DP + d], kd, s[r]);
        dp[r] = fmaf(Gs[(warp * C::RPW + r) * DP + d], vd, dp[r]);
      }
    }
    const int64_t j = n0 + lane;
    const bool padded = key_padded(pad, b, j, Sk);
#pragma unroll
    for (int r = 0; r < C::RPW; ++r) {
      const int64_t i = m0 + warp * C::RPW + r;
      const bool hidden = padded || (causal && j >= causal_key_end(i, Sq, Sk));
      const float p = bwd_prob(hidden ? neg_inf() : s[r] * scale, row_lse[r]);
      s[r] = bwd_dscore(p, dp[r], row_delta[r]);  // dS for key j of row r
    }
#pragma unroll 4
    for (int jj = 0; jj < C::BN; ++jj) {
      float dsj[C::RPW];
#pragma unroll
      for (int r = 0; r < C::RPW; ++r) dsj[r] = __shfl_sync(kFull, s[r], jj);
#pragma unroll
      for (int c = 0; c < C::C; ++c) {
        const float kv = Ks[jj * (DP + 1) + lane + 32 * c];
#pragma unroll
        for (int r = 0; r < C::RPW; ++r) acc[r][c] = fmaf(dsj[r], kv, acc[r][c]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < C::RPW; ++r) {
    const int64_t i = m0 + warp * C::RPW + r;
    if (i >= Sq) continue;
#pragma unroll
    for (int c = 0; c < C::C; ++c) {
      const int d = lane + 32 * c;
      if (d < D) dq[(bh * Sq + i) * D + d] = static_cast<T>(acc[r][c] * scale);
    }
  }
}

template <typename T, int DP>
__global__ void __launch_bounds__(kThreads)
attn_bwd_dkdv_kernel(const T* __restrict__ q, Str sq, const T* __restrict__ k, Str sk, const T* __restrict__ v,
                     Str sv, const T* __restrict__ go, Str sg, const uint8_t* __restrict__ pad,
                     const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ dk,
                     T* __restrict__ dv, int64_t H, int64_t Sq, int64_t Sk, int D, bool causal, float scale,
                     int64_t n_kblk) {
  using C = Cfg<DP>;
  extern __shared__ float smem[];
  float* Ks = smem;                      // [BK][DP]
  float* Vs = Ks + C::BK * DP;           // [BK][DP]
  float* Qs = Vs + C::BK * DP;           // [BQ][DP + 1] (lane i reads row i)
  float* Gs = Qs + C::BQ * (DP + 1);     // [BQ][DP + 1]
  float* lse_s = Gs + C::BQ * (DP + 1);  // [BQ]
  float* delta_s = lse_s + C::BQ;        // [BQ]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t bh = blockIdx.x / n_kblk, b = bh / H, h = bh % H;
  const int64_t n0 = (blockIdx.x % n_kblk) * C::BK;
  load_tile(Ks, DP, k, sk, b, h, n0, C::BK, Sk, D, DP);
  load_tile(Vs, DP, v, sv, b, h, n0, C::BK, Sk, D, DP);

  float acc_k[C::KPW][C::C], acc_v[C::KPW][C::C];
  bool padded[C::KPW];
#pragma unroll
  for (int kk = 0; kk < C::KPW; ++kk) {
    padded[kk] = key_padded(pad, b, n0 + warp * C::KPW + kk, Sk);
#pragma unroll
    for (int c = 0; c < C::C; ++c) acc_k[kk][c] = acc_v[kk][c] = 0.f;
  }
  int64_t lo = 0;
  if (causal) {  // query rows before the first key's causal start never see this block
    lo = n0 - (Sk - Sq);
    lo = lo < 0 ? 0 : (lo / C::BQ) * C::BQ;
  }
  for (int64_t m0 = lo; m0 < Sq; m0 += C::BQ) {
    __syncthreads();
    load_tile(Qs, DP + 1, q, sq, b, h, m0, C::BQ, Sq, D, DP);
    load_tile(Gs, DP + 1, go, sg, b, h, m0, C::BQ, Sq, D, DP);
    if (threadIdx.x < C::BQ) {
      const int64_t i = m0 + threadIdx.x;
      lse_s[threadIdx.x] = i < Sq ? lse[bh * Sq + i] : __builtin_huge_valf();
      delta_s[threadIdx.x] = i < Sq ? delta[bh * Sq + i] : 0.f;
    }
    __syncthreads();
    float s[C::KPW], dp[C::KPW];
#pragma unroll
    for (int kk = 0; kk < C::KPW; ++kk) s[kk] = dp[kk] = 0.f;
#pragma unroll 4
    for (int d = 0; d < DP; ++d) {
      const float qd = Qs[lane * (DP + 1) + d], gd = Gs[lane * (DP + 1) + d];
#pragma unroll
      for (int kk = 0; kk < C::KPW; ++kk) {
        s[kk] = fmaf(qd, Ks[(warp * C::KPW + kk) * DP + d], s[kk]);
        dp[kk] = fmaf(gd, Vs[(warp * C::KPW + kk) * DP + d], dp[kk]);
      }
    }
    const int64_t i = m0 + lane;
    const float my_lse = lse_s[lane], my_delta = delta_s[lane];
#pragma unroll
    for (int kk = 0; kk < C::KPW; ++kk) {
      const int64_t j = n0 + warp * C::KPW + kk;
      const bool hidden = padded[kk] || (causal && j >= causal_key_end(i, Sq, Sk));
      const float p = bwd_prob(hidden ? neg_inf() : s[kk] * scale, my_lse);
      s[kk] = p;
      dp[kk] = bwd_dscore(p, dp[kk], my_delta);
    }
#pragma unroll 4
    for (int ii = 0; ii < C::BQ; ++ii) {
      float pi[C::KPW], dsi[C::KPW];
#pragma unroll
      for (int kk = 0; kk < C::KPW; ++kk) {
        pi[kk] = __shfl_sync(kFull, s[kk], ii);
        dsi[kk] = __shfl_sync(kFull, dp[kk], ii);
      }
#pragma unroll
      for (int c = 0; c < C::C; ++c) {
        const float gv = Gs[ii * (DP + 1) + lane + 32 * c], qv = Qs[ii * (DP + 1) + lane + 32 * c];
#pragma unroll
        for (int kk = 0; kk < C::KPW; ++kk) {
          acc_v[kk][c] = fmaf(pi[kk], gv, acc_v[kk][c]);
          acc_k[kk][c] = fmaf(dsi[kk], qv, acc_k[kk][c]);
        }
      }
    }
  }
#pragma unroll
  for (int kk = 0; kk < C::KPW; ++kk) {
    const int64_t j = n0 + warp * C::KPW + kk;
    if (j >= Sk) continue;
#pragma unroll
    for (int c = 0; c < C::C; ++c) {
      const int d = lane + 32 * c;
      if (d < D) {
        dk[(bh * Sk + j) * D + d] = static_cast<T>(acc_k[kk][c] * scale);
        dv[(bh * Sk + j) * D + d] = static_cast<T>(acc_v[kk][c]);
      }
    }
  }
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

int padded_dim(int64_t D) { return D <= 32 ? 32 : D <= 64 ? 64 : D <= 128 ? 128 : 256; }

// Calls fn.template operator()<DP>() for the padded head dim of D.
template <typename Fn>
void dispatch_dp(int64_t D, Fn&& fn) {
  switch (padded_dim(D)) {
    case 32: fn(std::integral_constant<int, 32>{}); break;
    case 64: fn(std::integral_constant<int, 64>{}); break;
    case 128: fn(std::integral_constant<int, 128>{}); break;
    default: fn(std::integral_constant<int, 256>{}); break;
  }
}

// Calls fn(scalar_t{}) for float32 / float16 / bfloat16 (no float64 instantiations: the
// dispatcher never sends float64 here, and each one costs compile time).
template <typename Fn>
void dispatch_dtype(at::ScalarType t, Fn&& fn) {
  switch (t) {
    case at::kFloat: fn(float{}); break;
    case at::kHalf: fn(at::Half{}); break;
    case at::kBFloat16: fn(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "attention (CUDA): supports float32, float16, bfloat16, got ", t);
  }
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention: q, k, v must be (B, H, S, D)");
  TORCH_CHECK(k.sizes() == v.sizes(), "attention: k and v must have the same shape");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "attention: q and k must agree in B, H and D");
  TORCH_CHECK(q.size(3) <= 256, "attention: the CUDA kernel supports head dims up to 256, got ", q.size(3));
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "attention: q, k, v must share a dtype");
  if (mask.has_value()) {
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == q.size(0) && mask->size(1) == k.size(2),
                "attention: key_padding_mask must be (B, Sk)");
  }
}

at::Tensor pad_bytes(const std::optional<at::Tensor>& mask) {
  return mask.has_value() ? mask->to(at::kByte).contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const std::optional<at::Tensor>& mask, bool causal,
                                                      double scale) {
  check_inputs(q, k, v, mask);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3), Sk = k.size(2);
  at::Tensor out = at::zeros({B, H, Sq, D}, q.options());
  at::Tensor lse = at::full({B, H, Sq}, __builtin_huge_valf(), q.options().dtype(at::kFloat));
  if (B * H * Sq == 0 || Sk == 0 || D == 0) return {out, lse};
  const at::Tensor pad = pad_bytes(mask);
  const uint8_t* pad_p = pad.defined() ? pad.data_ptr<uint8_t>() : nullptr;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(q.scalar_type(), [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    dispatch_dp(D, [&](auto dp_c) {
      constexpr int DP = decltype(dp_c)::value;
      using C = Cfg<DP>;
      const size_t smem = (C::BM * DP + C::BN * (DP + 1) + C::BN * DP) * sizeof(float);
      auto kernel = attn_fwd_kernel<scalar_t, DP>;
      allow_smem(kernel, smem);
      const int64_t n_mblk = (Sq + C::BM - 1) / C::BM;
      kernel<<<static_cast<unsigned>(B * H * n_mblk), kThreads, smem, stream>>>(
          q.data_ptr<scalar_t>(), strides_of(q), k.data_ptr<scalar_t>(), strides_of(k), v.data_ptr<scalar_t>(),
          strides_of(v), pad_p, out.data_ptr<scalar_t>(), lse.data_ptr<float>(), H, Sq, Sk, static_cast<int>(D),
          causal, static_cast<float>(scale), n_mblk);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v,
                                                                  const at::Tensor& out, const at::Tensor& lse_in,
                                                                  const std::optional<at::Tensor>& mask, bool causal,
                                                                  double scale) {
  check_inputs(q, k, v, mask);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3), Sk = k.size(2);
  at::Tensor dq = at::zeros({B, H, Sq, D}, q.options());
  at::Tensor dk = at::zeros({B, H, Sk, D}, k.options());
  at::Tensor dv = at::zeros({B, H, Sk, D}, v.options());
  if (B * H * Sq == 0 || Sk == 0 || D == 0) return {dq, dk, dv};
  TORCH_CHECK(grad_out.sizes() == q.sizes() && grad_out.scalar_type() == q.scalar_type(),
              "attention_bwd: grad_out must match q in shape and dtype");
  const at::Tensor lse = lse_in.to(at::kFloat).contiguous();
  const at::Tensor delta = grad_out.to(at::kFloat).mul(out.to(at::kFloat)).sum(-1).contiguous();  // (B, H, Sq)
  const at::Tensor pad = pad_bytes(mask);
  const uint8_t* pad_p = pad.defined() ? pad.data_ptr<uint8_t>() : nullptr;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(q.scalar_type(), [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    dispatch_dp(D, [&](auto dp_c) {
      constexpr int DP = decltype(dp_c)::value;
      using C = Cfg<DP>;
      {
        const size_t smem = (2 * C::BM * DP + 2 * C::BN * (DP + 1)) * sizeof(float);
        auto kernel = attn_bwd_dq_kernel<scalar_t, DP>;
        allow_smem(kernel, smem);
        const int64_t n_mblk = (Sq + C::BM - 1) / C::BM;
        kernel<<<static_cast<unsigned>(B * H * n_mblk), kThreads, smem, stream>>>(
            q.data_ptr<scalar_t>(), strides_of(q), k.data_ptr<scalar_t>(), strides_of(k), v.data_ptr<scalar_t>(),
            strides_of(v), grad_out.data_ptr<scalar_t>(), strides_of(grad_out), pad_p, lse.data_ptr<float>(),
            delta.data_ptr<float>(), dq.data_ptr<scalar_t>(), H, Sq, Sk, static_cast<int>(D), causal,
            static_cast<float>(scale), n_mblk);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      {
        const size_t smem = (2 * C::BK * DP + 2 * C::BQ * (DP + 1) + 2 * C::BQ) * sizeof(float);
        auto kernel = attn_bwd_dkdv_kernel<scalar_t, DP>;
        allow_smem(kernel, smem);
        const int64_t n_kblk = (Sk + C::BK - 1) / C::BK;
        kernel<<<static_cast<unsigned>(B * H * n_kblk), kThreads, smem, stream>>>(
            q.data_ptr<scalar_t>(), strides_of(q), k.data_ptr<scalar_t>(), strides_of(k), v.data_ptr<scalar_t>(),
            strides_of(v), grad_out.data_ptr<scalar_t>(), strides_of(grad_out), pad_p, lse.data_ptr<float>(),
            delta.data_ptr<float>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), H, Sq, Sk,
            static_cast<int>(D), causal, static_cast<float>(scale), n_kblk);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(dalle2_fast, CUDA, m) {
  m.impl("attention_fwd", &attention_fwd_cuda);
  m.impl("attention_bwd", &attention_bwd_cuda);
}
