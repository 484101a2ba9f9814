// CPU nearest-code lookup: blocked GEMM tiles (x_blk @ codes_blk^T, at::mm into a per-thread
// buffer) + a fused running argmin over each tile. ONE OpenMP parallel region per call: each
// thread owns whole row blocks (or, when there are fewer row blocks than threads, a range of
// code blocks whose per-row winners are merged at the end), and the GEMMs inside run
// single-threaded. Few barriers matter on small, shared machines where a descheduled thread
// stalls every barrier. Extra memory: one (row block x code block) float tile per thread plus K
// code norms; the N x K distance matrix is never materialised.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "dalle2_fast/codebook.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using namespace dalle2_fast::codebook;

constexpr int64_t kRowBlock = 256;
constexpr int64_t kCodeBlock = 512;

// Fused running argmin over one (nb, kb) tile of dot products, codes k0..k0+kb. Compiled for
// several ISAs; the loader picks the widest the CPU has.
__attribute__((target_clones("avx512f", "avx2", "default")))
void scan_tile(const float* tile, int64_t ld, const float* code_sq, int64_t nb, int64_t kb, int64_t k0,
               float* best_d, int64_t* best_j) {
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

// Scans codes [c_begin, c_end) for rows [n0, n0 + nb): running (best_d, best_j) per row;
// writes the rows' squared norms to x_sq when it is not null.
void scan_rows(const at::Tensor& x, const at::Tensor& codes, const float* code_sq, int64_t n0, int64_t nb,
               int64_t c_begin, int64_t c_end, at::Tensor& tile, float* best_d, int64_t* best_j, float* x_sq) {
  const at::Tensor xb = x.narrow(0, n0, nb).to(at::kFloat).contiguous();  // (nb, D)
  if (x_sq != nullptr) {
    const float* p = xb.data_ptr<float>();
    const int64_t D = xb.size(1);
    for (int64_t i = 0; i < nb; ++i) {
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += p[i * D + d] * p[i * D + d];
      x_sq[i] = s;
    }
  }
  for (int64_t k0 = c_begin; k0 < c_end; k0 += kCodeBlock) {
    const int64_t kb = std::min(kCodeBlock, c_end - k0);
    at::Tensor t = tile.narrow(0, 0, nb).narrow(1, 0, kb);
    at::mm_out(t, xb, codes.narrow(0, k0, kb).t());  // (nb, kb) dot products
    scan_tile(t.data_ptr<float>(), t.stride(0), code_sq + k0, nb, kb, k0, best_d, best_j);
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

  const at::Tensor codes = codebook.to(at::kFloat).contiguous();    // (K, D)
  const at::Tensor code_sq = codes.mul(codes).sum(1).contiguous();  // (K,)
  std::vector<float> x_sq(N);
  const float* cn = code_sq.data_ptr<float>();
  int64_t* out_idx = idx.data_ptr<int64_t>();
  float* out_d = sqd.data_ptr<float>();

  const int64_t n_row_blocks = (N + kRowBlock - 1) / kRowBlock;
  const int64_t n_code_blocks = (K + kCodeBlock - 1) / kCodeBlock;
  const int threads = std::max(1, at::get_num_threads());
  // Split the codes instead of the rows when rows are too few to keep every thread busy.
  const int code_split = (n_row_blocks >= threads) ? 1 : static_cast<int>(std::min<int64_t>(threads, n_code_blocks));
  std::vector<float> part_d(code_split > 1 ? code_split * N : N, dalle2_fast::pos_inf());
  std::vector<int64_t> part_j(code_split > 1 ? code_split * N : 0, 0);
  const auto opts = codes.options();

#pragma omp parallel num_threads(threads)
  {
    at::Tensor tile = at::empty({std::min(kRowBlock, N), std::min(kCodeBlock, K)}, opts);
    if (code_split == 1) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < n_row_blocks; ++b) {
        const int64_t n0 = b * kRowBlock, nb = std::min(kRowBlock, N - n0);
        scan_rows(x, codes, cn, n0, nb, 0, K, tile, part_d.data() + n0, out_idx + n0, x_sq.data() + n0);
      }
    } else {
#pragma omp for schedule(static, 1)
      for (int s = 0; s < code_split; ++s) {
        // contiguous, block-aligned code ranges, in increasing order
        const int64_t blocks_per = (n_code_blocks + code_split - 1) / code_split;
        const int64_t c_begin = std::min(K, s * blocks_per * kCodeBlock);
        const int64_t c_end = std::min(K, (s + 1) * blocks_per * kCodeBlock);
        for (int64_t n0 = 0; n0 < N && c_begin < c_end; n0 += kRowBlock) {
          const int64_t nb = std::min(kRowBlock, N - n0);
          scan_rows(x, codes, cn, n0, nb, c_begin, c_end, tile, part_d.data() + s * N + n0,
                    part_j.data() + s * N + n0, s == 0 ? x_sq.data() + n0 : nullptr);
        }
      }
    }
  }

  const float* xs = x_sq.data();
  for (int64_t i = 0; i < N; ++i) {
    float bd = part_d[i];
    long long bj = code_split > 1 ? part_j[i] : out_idx[i];
    for (int s = 1; s < code_split; ++s) merge_best(part_d[s * N + i], part_j[s * N + i], bd, bj);
    long long j = 0;
    finish_row(xs[i], bd, bj, j, out_d[i]);
    out_idx[i] = j;
  }
  return {idx, sqd};
}

}  // namespace

TORCH_LIBRARY_IMPL(dalle2_fast, CPU, m) { m.impl("nearest_code", &nearest_code_cpu); }
