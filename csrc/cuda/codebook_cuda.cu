// CUDA nearest-code lookup: one block of 256 threads owns 64 rows of x; it walks the
// codebook in 64-code tiles, staging x and code chunks of 32 dims in shared memory
// (converted to float), each thread accumulating a 4x4 register tile of dot products,
// then folding them into a running per-row argmin (the math of codebook.h, shared with
// the CPU backend). The N x K distance matrix is never materialised.
// TODO(perf): tensor-core (mma) path for fp16/bf16; a split-K over codes for small N.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "dalle2_fast/codebook.h"

namespace {

using namespace dalle2_fast::codebook;

constexpr int BM = 64;   // rows per block
constexpr int BN = 64;   // codes per tile
constexpr int BK = 32;   // dims per shared-memory chunk
constexpr int TM = 4;    // rows per thread
constexpr int TN = 4;    // codes per thread
constexpr int THREADS = (BM / TM) * (BN / TN);  // 256

template <typename scalar_t>
__global__ void code_sqnorm_kernel(const scalar_t* __restrict__ c, int64_t sc0, int64_t sc1, int64_t K,
                                   int64_t D, float* __restrict__ out) {
  const int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (k >= K) return;
  float s = 0.f;
  for (int64_t d = 0; d < D; ++d) {
    const float v = static_cast<float>(c[k * sc0 + d * sc1]);
    s += v * v;
  }
  out[k] = s;
}

template <typename scalar_t>
__global__ void __launch_bounds__(THREADS)
nearest_code_kernel(const scalar_t* __restrict__ x, int64_t sx0, int64_t sx1,
                    const scalar_t* __restrict__ c, int64_t sc0, int64_t sc1,
                    const float* __restrict__ code_sq, int64_t N, int64_t K, int64_t D,
                    int64_t* __restrict__ out_idx, float* __restrict__ out_d) {
  __shared__ float xs[BK][BM + 1];
  __shared__ float cs[BK][BN + 1];
  __shared__ float red_d[BM][BN / TN];
  __shared__ long long red_j[BM][BN / TN];

  const int tx = threadIdx.x % (BN / TN);  // code-group index 0..15
  const int ty = threadIdx.x / (BN / TN);  // row-group index 0..15
  const int64_t row0 = (int64_t)blockIdx.x * BM;

  float best_d[TM];
  long long best_j[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    best_d[i] = dalle2_fast::pos_inf();
    best_j[i] = 0;
  }
  float xsq[TM] = {0.f, 0.f, 0.f, 0.f};

  for (int64_t k0 = 0; k0 < K; k0 += BN) {
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

    for (int64_t d0 = 0; d0 < D; d0 += BK) {
      // Stage a (BK x BM) chunk of x and a (BK x BN) chunk of codes, zero-padded.
      for (int e = threadIdx.x; e < BK * BM; e += THREADS) {
        const int r = e / BK, d = e % BK;
        const int64_t gr = row0 + r, gd = d0 + d;
        xs[d][r] = (gr < N && gd < D) ? static_cast<float>(x[gr * sx0 + gd * sx1]) : 0.f;
      }
      for (int e = threadIdx.x; e < BK * BN; e += THREADS) {
        const int r = e / BK, d = e % BK;
        const int64_t gk = k0 + r, gd = d0 + d;
        cs[d][r] = (gk < K && gd < D) ? static_cast<float>(c[gk * sc0 + gd * sc1]) : 0.f;
      }
      __syncthreads();
#pragma unroll 8
      for (int d = 0; d < BK; ++d) {
        float a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = xs[d][ty * TM + i];
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = cs[d][tx * TN + j];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        if (k0 == 0 && tx == 0) {
#pragma unroll
          for (int i = 0; i < TM; ++i) xsq[i] = fmaf(a[i], a[i], xsq[i]);
        }
      }
      __syncthreads();
    }
    // Codes are visited in increasing order within a thread, so update_best keeps the
    // lowest index on ties.
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t gk = k0 + tx * TN + j;
      if (gk < K) {
        const float cn = code_sq[gk];
#pragma unroll
        for (int i = 0; i < TM; ++i) update_best(partial_distance(acc[i][j], cn), gk, best_d[i], best_j[i]);
      }
    }
  }

  // Merge the 16 code-groups of each row (merge_best: ties to the lower index).
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    red_d[ty * TM + i][tx] = best_d[i];
    red_j[ty * TM + i][tx] = best_j[i];
  }
  __syncthreads();
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int r = ty * TM + i;
      float bd = red_d[r][0];
      long long bj = red_j[r][0];
      for (int t = 1; t < BN / TN; ++t) merge_best(red_d[r][t], red_j[r][t], bd, bj);
      const int64_t gr = row0 + r;
      if (gr < N) {
        long long j = 0;
        float d = 0.f;
        finish_row(xsq[i], bd, bj, j, d);
        out_idx[gr] = j;
        out_d[gr] = d;
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> nearest_code_cuda(const at::Tensor& x, const at::Tensor& codebook) {
  TORCH_CHECK(x.dim() == 2 && codebook.dim() == 2 && x.size(1) == codebook.size(1),
              "nearest_code: x must be (N, D) and codebook (K, D)");
  TORCH_CHECK(codebook.size(0) > 0, "nearest_code: codebook must have K >= 1 codes");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), K = codebook.size(0), D = x.size(1);
  auto idx = at::zeros({N}, x.options().dtype(at::kLong));
  auto sqd = at::empty({N}, x.options().dtype(at::kFloat));
  if (N == 0) return {idx, sqd};
  auto code_sq = at::empty({K}, x.options().dtype(at::kFloat));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "nearest_code_cuda", [&] {
    code_sqnorm_kernel<scalar_t><<<(K + 255) / 256, 256, 0, stream>>>(
        codebook.data_ptr<scalar_t>(), codebook.stride(0), codebook.stride(1), K, D, code_sq.data_ptr<float>());
    nearest_code_kernel<scalar_t><<<(N + BM - 1) / BM, THREADS, 0, stream>>>(
        x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), codebook.data_ptr<scalar_t>(), codebook.stride(0),
        codebook.stride(1), code_sq.data_ptr<float>(), N, K, D, idx.data_ptr<int64_t>(), sqd.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {idx, sqd};
}

}  // namespace

TORCH_LIBRARY_IMPL(dalle2_fast, CUDA, m) { m.impl("nearest_code", &nearest_code_cuda); }
