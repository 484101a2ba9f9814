// 3x3, stride-1, zero-padded 'same' convolution by Winograd's minimal filtering F(4x4, 3x3)
// (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016), CPU float32,
// inference.
//
// Y = A^T [ (G g G^T) . (B^T d B) ] A per 6x6 input tile d -> 4x4 output tile: the 3x3 filter's
// 9 multiplies per output become 36 per 16 outputs (2.25 per output, 4x fewer), done as 36
// GEMMs (tiles x C) @ (C x K) in one at::bmm, the library's fastest path. The weight transform
// U = G g G^T (36, K, C) is its own op (winograd_weight; the caller decides how long to hold it:
// dalle2_fast/nn/winograd.py transforms at each call); the input
// and output transforms are plain loops over 16-channel vectors of the NHWC activations
// (compiled for AVX-512 / AVX2 / baseline, target_clones), parallel over tiles. Rounding: the
// transforms' constants (up to 8 and 1/24) cost about one decimal digit against a direct
// convolution (relative error ~4e-6 vs ~4e-7, float32). The reference is F.conv2d.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kTile = 4;   // output tile side
constexpr int64_t kIn = 6;     // input tile side (kTile + 2)
constexpr int64_t kVec = 16;   // channels per inner loop (one AVX-512 vector)
constexpr int64_t kChunkTiles = 256;  // tiles per chunk by default (measured best at 32-128 channels, 32-256 px)
constexpr int64_t kChunkFloats = int64_t{16} << 20;  // and never more workspace than 64 MB

#define WG_INLINE inline __attribute__((always_inline))
#define WG_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// 16 floats, unaligned (GCC vector extension: one zmm on AVX-512, split on narrower targets).
typedef float v16f __attribute__((vector_size(64), aligned(4)));

WG_INLINE v16f load16(const float* p) { return *reinterpret_cast<const v16f*>(p); }
WG_INLINE void store16(float* p, v16f v) { *reinterpret_cast<v16f*>(p) = v; }
// The first n (< 16) floats of p, the rest zero / n floats stored.
WG_INLINE v16f load_part(const float* p, int64_t n) {
  alignas(64) float tmp[kVec] = {};
  for (int64_t c = 0; c < n; ++c) tmp[c] = p[c];
  return load16(tmp);
}
WG_INLINE void store_part(float* p, v16f v, int64_t n) {
  alignas(64) float tmp[kVec];
  store16(tmp, v);
  for (int64_t c = 0; c < n; ++c) p[c] = tmp[c];
}

// B^T d along one axis: d[0..5 * sd] -> t[0..5 * st].
WG_INLINE void input_1d(const v16f* d, int sd, v16f* t, int st) {
  const v16f d0 = d[0], d1 = d[sd], d2 = d[2 * sd], d3 = d[3 * sd], d4 = d[4 * sd], d5 = d[5 * sd];
  t[0] = 4.0f * d0 - 5.0f * d2 + d4;
  t[st] = -4.0f * (d1 + d2) + d3 + d4;
  t[2 * st] = 4.0f * (d1 - d2) - d3 + d4;
  t[3 * st] = 2.0f * (d3 - d1) - d2 + d4;
  t[4 * st] = 2.0f * (d1 - d3) - d2 + d4;
  t[5 * st] = 4.0f * d1 - 5.0f * d3 + d5;
}

// A^T m along one axis: m[0..5 * sm] -> o[0..3 * so].
WG_INLINE void output_1d(const v16f* m, int sm, v16f* o, int so) {
  const v16f m0 = m[0], m1 = m[sm], m2 = m[2 * sm], m3 = m[3 * sm], m4 = m[4 * sm], m5 = m[5 * sm];
  const v16f a = m1 + m2, b = m1 - m2, p = m3 + m4, q = m3 - m4;
  o[0] = m0 + a + p;
  o[so] = b + 2.0f * q;
  o[2 * so] = a + 4.0f * p;
  o[3 * so] = b + 8.0f * q + m5;
}

struct Geometry {
  int64_t N, C, H, W, K, th, tw, T;
};

// Tiles [t0, t1): V[tile - base][e][c] = (B^T d B)[e] of each tile's 6x6 input patch (zero outside the
// image: the convolution's padding of 1). x is NHWC.
WG_CLONES void input_tiles(const float* x, const Geometry& g, int64_t t0, int64_t t1, int64_t base, float* V) {
  v16f d[kIn * kIn], t[kIn * kIn];
  for (int64_t tile = t0; tile < t1; ++tile) {
    const int64_t n = tile / (g.th * g.tw), ty = tile / g.tw % g.th, tx = tile % g.tw;
    float* vt = V + (tile - base) * kIn * kIn * g.C;
    for (int64_t c0 = 0; c0 < g.C; c0 += kVec) {
      const int64_t cb = std::min(kVec, g.C - c0);
      for (int64_t r = 0; r < kIn; ++r) {
        const int64_t yy = ty * kTile - 1 + r;
        for (int64_t s = 0; s < kIn; ++s) {
          const int64_t xx = tx * kTile - 1 + s;
          if (yy < 0 || yy >= g.H || xx < 0 || xx >= g.W) {
            d[r * kIn + s] = v16f{};
          } else {
            const float* src = x + ((n * g.H + yy) * g.W + xx) * g.C + c0;
            d[r * kIn + s] = cb == kVec ? load16(src) : load_part(src, cb);
          }
        }
      }
      for (int s = 0; s < kIn; ++s) input_1d(d + s, kIn, t + s, kIn);              // columns
      for (int r = 0; r < kIn; ++r) input_1d(t + r * kIn, 1, d + r * kIn, 1);      // rows
      for (int64_t e = 0; e < kIn * kIn; ++e) {
        if (cb == kVec) store16(vt + e * g.C + c0, d[e]);
        else store_part(vt + e * g.C + c0, d[e], cb);
      }
    }
  }
}

// Tiles [t0, t1): y's 4x4 outputs (cropped at the image's edge) = A^T M[tile - base] A (+ bias).
// y is NHWC.
WG_CLONES void output_tiles(const float* M, const float* bias, const Geometry& g, int64_t t0, int64_t t1,
                            int64_t base, float* y) {
  v16f m[kIn * kIn], t[kTile * kIn], o[kTile * kTile];
  for (int64_t tile = t0; tile < t1; ++tile) {
    const int64_t n = tile / (g.th * g.tw), ty = tile / g.tw % g.th, tx = tile % g.tw;
    const int64_t rows = std::min(kTile, g.H - ty * kTile), cols = std::min(kTile, g.W - tx * kTile);
    const float* mt = M + (tile - base) * kIn * kIn * g.K;
    for (int64_t k0 = 0; k0 < g.K; k0 += kVec) {
      const int64_t kb = std::min(kVec, g.K - k0);
      for (int64_t e = 0; e < kIn * kIn; ++e)
        m[e] = kb == kVec ? load16(mt + e * g.K + k0) : load_part(mt + e * g.K + k0, kb);
      for (int s = 0; s < kIn; ++s) output_1d(m + s, kIn, t + s, kIn);              // columns
      for (int r = 0; r < kTile; ++r) output_1d(t + r * kIn, 1, o + r * kTile, 1);  // rows
      const v16f b = bias ? (kb == kVec ? load16(bias + k0) : load_part(bias + k0, kb)) : v16f{};
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t s = 0; s < cols; ++s) {
          float* dst = y + ((n * g.H + ty * kTile + r) * g.W + tx * kTile + s) * g.K + k0;
          if (kb == kVec) store16(dst, o[r * kTile + s] + b);
          else store_part(dst, o[r * kTile + s] + b, kb);
        }
    }
  }
}

// The calling thread's scratch for V and M (grown, never shrunk; freed at thread exit).
at::Tensor& workspace() {
  thread_local at::Tensor ws;
  return ws;
}

// Filters [k0, k1) of wt (K, 3, 3, C): U[e][k][c] = (G g G^T)[e] = sum_ab coef[e][a][b] g[a][b],
// vectorised over c.
WG_CLONES void weight_rows(const float* wt, const float* coef, int64_t C, int64_t K, int64_t k0, int64_t k1,
                           float* U) {
  for (int64_t k = k0; k < k1; ++k) {
    const float* g = wt + k * 9 * C;
    for (int64_t e = 0; e < kIn * kIn; ++e) {
      const float* w = coef + e * 9;
      float* dst = U + (e * K + k) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        float acc = 0.0f;
        for (int ab = 0; ab < 9; ++ab) acc += w[ab] * g[ab * C + c];
        dst[c] = acc;
      }
    }
  }
}

// (K, C, 3, 3) -> U (36, K, C): G g G^T per (k, c). The 36 x 9 coefficients G[i][a] G[j][b] are
// rounded once from double; each U entry is a 9-term float32 sum. A channels-last weight is read
// in place (its memory is (K, 3, 3, C) already).
at::Tensor winograd_weight_cpu(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 && weight.scalar_type() == at::kFloat,
              "winograd_weight: weight must be a (K, C, 3, 3) float32 tensor, got ", weight.sizes(), " ",
              weight.scalar_type());
  static const double G[kIn][3] = {{1.0 / 4, 0, 0},          {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                   {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
  float coef[kIn * kIn * 9];
  for (int i = 0; i < kIn; ++i)
    for (int j = 0; j < kIn; ++j)
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) coef[((i * kIn + j) * 3 + a) * 3 + b] = static_cast<float>(G[i][a] * G[j][b]);
  const int64_t K = weight.size(0), C = weight.size(1);
  const at::Tensor wt = weight.permute({0, 2, 3, 1}).contiguous();  // (K, 3, 3, C): c contiguous
  at::Tensor U = at::empty({kIn * kIn, K, C}, weight.options().memory_format(at::MemoryFormat::Contiguous));
  const float* wp = wt.data_ptr<float>();
  float* up = U.data_ptr<float>();
  at::parallel_for(0, K, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, C)),
                   [&](int64_t k0, int64_t k1) { weight_rows(wp, coef, C, K, k0, k1, up); });
  return U;
}

// x (N, C, H, W) float32, any memory format; U from winograd_weight (36, K, C); bias (K,) or None
// -> (N, K, H, W) in channels-last memory. chunk_tiles: tiles per chunk (0: kChunkTiles).
at::Tensor winograd_conv3x3_cpu(const at::Tensor& x_in, const at::Tensor& U, const std::optional<at::Tensor>& bias_in,
                                int64_t chunk_tiles) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat, "winograd_conv3x3: x must be (N, C, H, W) float32, got ",
              x_in.sizes(), " ", x_in.scalar_type());
  TORCH_CHECK(U.dim() == 3 && U.size(0) == kIn * kIn && U.size(2) == x_in.size(1) && U.scalar_type() == at::kFloat &&
                  U.is_contiguous(),
              "winograd_conv3x3: the transformed weight must come from winograd_weight (36, K, C = ", x_in.size(1),
              "), got ", U.sizes());
  Geometry g;
  g.N = x_in.size(0), g.C = x_in.size(1), g.H = x_in.size(2), g.W = x_in.size(3), g.K = U.size(1);
  g.th = (g.H + kTile - 1) / kTile, g.tw = (g.W + kTile - 1) / kTile, g.T = g.N * g.th * g.tw;
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == g.K && bias_in->scalar_type() == at::kFloat,
                "winograd_conv3x3: bias must be float32 (", g.K, ",), got ", bias_in->sizes());
    bias = bias_in->contiguous();
  }
  at::Tensor y = at::empty({g.N, g.K, g.H, g.W}, x_in.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (g.T == 0 || g.K == 0) return y;
  if (g.C == 0) return bias.defined() ? y.copy_(bias.view({1, g.K, 1, 1}).expand_as(y)) : y.zero_();
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);  // NHWC memory
  // The transformed tiles V (T, 36, C) and products M (T, 36, K), each tile's 36 rows together
  // (the transforms read and write one tile's block); the 36 GEMMs see them as (36, T, C) and
  // (36, T, K) with a row stride of 36 C / 36 K. Chunks of kChunkTiles tiles at a time (their
  // transformed tiles still in cache for the GEMMs and the output transform: on large images
  // 1.3-1.5x faster than one chunk), in a per-thread workspace kept between calls (a sampling
  // loop's convolutions would otherwise fault fresh pages in on every call).
  const int64_t per_tile = kIn * kIn * (g.C + g.K);
  const int64_t chunk = std::max<int64_t>(
      1, std::min({g.T, chunk_tiles > 0 ? chunk_tiles : kChunkTiles, kChunkFloats / per_tile}));
  at::Tensor& ws = workspace();
  if (ws.numel() < chunk * per_tile) ws = at::empty({chunk * per_tile}, x.options().memory_format(at::MemoryFormat::Contiguous));
  const float* xp = x.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  for (int64_t c0 = 0; c0 < g.T; c0 += chunk) {
    const int64_t n = std::min(chunk, g.T - c0);
    at::Tensor V = ws.narrow(0, 0, n * kIn * kIn * g.C).view({n, kIn * kIn, g.C});
    at::Tensor M = ws.narrow(0, n * kIn * kIn * g.C, n * kIn * kIn * g.K).view({n, kIn * kIn, g.K});
    float* vp = V.data_ptr<float>();
    at::parallel_for(c0, c0 + n, std::max<int64_t>(1, 2048 / std::max<int64_t>(1, g.C)),
                     [&](int64_t t0, int64_t t1) { input_tiles(xp, g, t0, t1, c0, vp); });
    at::Tensor Mt = M.transpose(0, 1);
    at::bmm_out(Mt, V.transpose(0, 1), U.transpose(1, 2));  // (36, n, K) = (36, n, C) @ (36, C, K)
    const float* mp = M.data_ptr<float>();
    at::parallel_for(c0, c0 + n, std::max<int64_t>(1, 2048 / std::max<int64_t>(1, g.K)),
                     [&](int64_t t0, int64_t t1) { output_tiles(mp, bp, g, t0, t1, c0, yp); });
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(dalle2_fast, CPU, m) {
  m.impl("winograd_weight", &winograd_weight_cpu);
  m.impl("winograd_conv3x3", &winograd_conv3x3_cpu);
}
