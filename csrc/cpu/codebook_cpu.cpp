// CPU nearest-code lookup: blocked GEMM tiles (x_blk @ codes_blk^T, at::mm into a reused
// buffer) + a fused running argmin over each tile, OpenMP over rows. Extra memory is one
// (row block x code block) float tile plus K code norms: the N x K distance matrix is never
// materialised.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>

#include "dalle2_fast/codebook.h"

namespace {

using namespace dalle2_fast::codebook;

constexpr int64_t kRowBlock = 1024;
constexpr int64_t kCodeBlock = 1024;

// Fused running argmin over one (nb, kb) tile of dot products. Compiled for several ISAs;
// the loader picks the widest the CPU has.
__attribute__((target_clones("avx512f", "avx2", "default")))
void scan_tile(const float* tile, int64_t ld, const float* code_sq, int64_t nb, int64_t kb, int64_t k0,
               float* best_d, int64_t* best_j) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nb; ++i) {
    const float* row = tile + i * ld;
    // Tile minimum first (a vectorised reduction; partial_distance never returns NaN),
    // then locate its first index only when it beats the running best.
    float tile_min = dalle2_fast::pos_inf();
#pragma omp simd reduction(min : tile_min)
    for (int64_t j = 0; j < kb; ++j) tile_min = std::min(tile_min, partial_distance(row[j], code_sq[j]));
    if (tile_min < best_d[i]) {
      float bd = best_d[i];
      long long bj = best_j[i];
      for (int64_t j = 0; j < kb; ++j) {
        if (partial_distance(row[j], code_sq[j]) == tile_min) {
          update_best(tile_min, k0 + j, bd, bj);
          break;
        }
      }
      best_d[i] = bd;
      best_j[i] = bj;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& x, const at::Tensor& codebook) {
  TORCH_CHECK(x.dim() == 2 && codebook.dim() == 2 && x.size(1) == codebook.size(1),
              "nearest_code: x must be (N, D) and codebook (K, D)");
  TORCH_CHECK(codebook.size(0) > 0, "nearest_code: codebook must have K >= 1 codes");
  const int64_t N = x.size(0), K = codebook.size(0);
  auto idx = at::zeros({N}, x.options().dtype(at::kLong));
  auto sqd = at::empty({N}, x.options().dtype(at::kFloat));
  if (N == 0) return {idx, sqd};

  const at::Tensor codes = codebook.to(at::kFloat).contiguous();  // (K, D)
  const at::Tensor code_sq = codes.mul(codes).sum(1).contiguous();  // (K,)
  const float* cn = code_sq.data_ptr<float>();
  int64_t* out_idx = idx.data_ptr<int64_t>();
  float* out_d = sqd.data_ptr<float>();

  const int64_t kb_max = std::min(kCodeBlock, K);
  at::Tensor tile = at::empty({std::min(kRowBlock, N), kb_max}, codes.options());
  std::vector<float> best_d(std::min(kRowBlock, N));

  for (int64_t n0 = 0; n0 < N; n0 += kRowBlock) {
    const int64_t nb = std::min(kRowBlock, N - n0);
    const at::Tensor xb = x.narrow(0, n0, nb).to(at::kFloat).contiguous();  // (nb, D)
    std::fill(best_d.begin(), best_d.begin() + nb, dalle2_fast::pos_inf());
    for (int64_t k0 = 0; k0 < K; k0 += kCodeBlock) {
      const int64_t kb = std::min(kCodeBlock, K - k0);
      at::Tensor t = tile.narrow(0, 0, nb).narrow(1, 0, kb);
      at::mm_out(t, xb, codes.narrow(0, k0, kb).t());  // (nb, kb) dot products
      scan_tile(t.data_ptr<float>(), t.stride(0), cn + k0, nb, kb, k0, best_d.data(), out_idx + n0);
    }
    const at::Tensor xsq = xb.mul(xb).sum(1).contiguous();
    const float* xs = xsq.data_ptr<float>();
    for (int64_t i = 0; i < nb; ++i) out_d[n0 + i] = finish_sqdist(xs[i], best_d[i]);
  }
  return {idx, sqd};
}

}  // namespace

TORCH_LIBRARY_IMPL(dalle2_fast, CPU, m) { m.impl("nearest_code", &nearest_code_cpu); }
