// CUDA fused adaptive GroupNorm, forward and backward (math: dalle2_fast/adagn.h, shared with
// the CPU kernels).
//
// Forward, three launches:
//   1. per-(batch, channel, split) partial statistics (shifted sums -> Moments):
//      NCHW: one warp per (b, c, split), lanes over contiguous positions; 8 warps per block,
//            so a small H*W puts many channels (groups) in a block, and a large H*W is split
//            over several warps (split reduction);
//      NHWC: a (32 channels x 8 rows) block per (b, 32-channel tile, split): loads coalesced
//            across channels, split over rows.
//   2. one warp per (b, group) merges its Cg * splits partials (Chan), writes mean / rstd and
//      per-(b, c) coefficients;
//   3. the fused element-wise pass.
// Backward: the same reduction shapes for sum(dh) and sum(dh * (x - mean)), a per-group
// finalize (u, v, dscale, dshift), the element-wise dx pass, and a per-channel pass for
// dweight / dbias (a sum over the batch; no atomics, deterministic).
// TODO(perf): 16-byte vector loads in the element-wise passes; fusing pass 3 into pass 1 when a
// group fits in one block's registers. Compiled here, run only on a GPU machine.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "dalle2_fast/adagn.h"
#include "dalle2_fast/adagn_host.h"

namespace {

using namespace dalle2_fast::adagn;

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
// per-(b, c) coefficient slots: FwdCoef (mean, a, c, g, shift), then BwdCoef's rstd, g, u, q
constexpr int kCoef = 10;
constexpr int kFwdCoefs = 5;
constexpr int kAllCoefs = 9;
constexpr int64_t kNchwChunk = 2048;  // positions per warp before splitting a channel
constexpr int64_t kNhwcChunk = 256;   // rows per block before splitting
constexpr int kTileC = 32, kTileR = 8;  // NHWC reduction block: channels x rows

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> warp_merge(Moments<acc_t> m) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Moments<acc_t> o;
    o.n = __shfl_down_sync(0xffffffffu, m.n, off);
    o.mean = __shfl_down_sync(0xffffffffu, m.mean, off);
    o.m2 = __shfl_down_sync(0xffffffffu, m.m2, off);
    m = merge_moments(m, o);
  }
  return m;
}

template <typename acc_t>
__device__ __forceinline__ void store_fwd_coef(acc_t* slot, const FwdCoef<acc_t>& f) {
  slot[0] = f.mean;
  slot[1] = f.a;
  slot[2] = f.c;
  slot[3] = f.g;
  slot[4] = f.shift;
}

// ------------------------------------------------------------------ pass 1: reductions
// MODE 0: partial Moments of x -> part[3 * (bc * splits + sp) + {0,1,2}] = (n, mean, m2).
// MODE 1: partial sums of dh and dh * (x - mean) -> part[3 * (...) + {0,1}].
template <int MODE, bool SILU, typename scalar_t, typename acc_t>
__device__ __forceinline__ void accumulate(acc_t v, acc_t dyv, acc_t k, const acc_t* cf, acc_t& r1, acc_t& r2) {
  if constexpr (MODE == 0) {
    const acc_t d = v - k;
    r1 += d;
    r2 += d * d;
  } else {
    const acc_t xm = v - cf[0];
    const acc_t dh = act_backward<SILU>(pre_act_xm(xm, cf[1], cf[2], cf[3], cf[4]), dyv);
    r1 += dh;
    r2 += dh * xm;
  }
}

template <int MODE, bool SILU, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
reduce_nchw_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, const acc_t* __restrict__ coef,
                   acc_t* __restrict__ part, int64_t BC, int64_t S, int splits, int64_t chunk) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= BC * splits) return;  // uniform per warp
  const int64_t bc = warp / splits;
  const int sp = static_cast<int>(warp % splits);
  const int64_t s0 = sp * chunk, s1 = std::min(S, s0 + chunk);
  const scalar_t* xc = x + bc * S;
  const scalar_t* dyc = MODE == 1 ? dy + bc * S : nullptr;
  acc_t cf[kFwdCoefs] = {0, 0, 0, 0, 0};
  if constexpr (MODE == 1) {
#pragma unroll
    for (int i = 0; i < kFwdCoefs; ++i) cf[i] = coef[bc * kCoef + i];
  }
  const acc_t k = (MODE == 0 && s0 < s1) ? static_cast<acc_t>(xc[s0]) : acc_t(0);
  acc_t r1 = 0, r2 = 0;
  for (int64_t s = s0 + lane; s < s1; s += 32) {
    const acc_t dyv = MODE == 1 ? static_cast<acc_t>(dyc[s]) : acc_t(0);
    accumulate<MODE, SILU, scalar_t, acc_t>(static_cast<acc_t>(xc[s]), dyv, k, cf, r1, r2);
  }
  r1 = warp_sum(r1);
  r2 = warp_sum(r2);
  if (lane == 0) {
    acc_t* o = part + 3 * warp;
    if constexpr (MODE == 0) {
      const Moments<acc_t> m = moments_from_shifted(acc_t(s1 > s0 ? s1 - s0 : 0), k, r1, r2);
      o[0] = m.n;
      o[1] = m.mean;
      o[2] = m.m2;
    } else {
      o[0] = r1;
      o[1] = r2;
    }
  }
}

// grid.x = B * ceil(C / 32), grid.y = splits; block (32, 8).
template <int MODE, bool SILU, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileC * kTileR)
reduce_nhwc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, const acc_t* __restrict__ coef,
                   acc_t* __restrict__ part, int64_t C, int64_t S, int splits, int64_t chunk) {
  __shared__ acc_t red[2][kTileR][kTileC + 1];
  const int64_t ctiles = (C + kTileC - 1) / kTileC;
  const int64_t b = blockIdx.x / ctiles;
  const int64_t c = (blockIdx.x % ctiles) * kTileC + threadIdx.x;
  const int sp = blockIdx.y;
  const int64_t s0 = sp * chunk, s1 = std::min(S, s0 + chunk);
  const bool valid = c < C;
  const int64_t base = b * S * C + c;
  const int64_t bc = b * C + c;
  acc_t cf[kFwdCoefs] = {0, 0, 0, 0, 0};
  if (MODE == 1 && valid) {
#pragma unroll
    for (int i = 0; i < kFwdCoefs; ++i) cf[i] = coef[bc * kCoef + i];
  }
  const acc_t k = (MODE == 0 && valid && s0 < s1) ? static_cast<acc_t>(x[base + s0 * C]) : acc_t(0);
  acc_t r1 = 0, r2 = 0;
  if (valid) {
    for (int64_t s = s0 + threadIdx.y; s < s1; s += kTileR) {
      const acc_t dyv = MODE == 1 ? static_cast<acc_t>(dy[base + s * C]) : acc_t(0);
      accumulate<MODE, SILU, scalar_t, acc_t>(static_cast<acc_t>(x[base + s * C]), dyv, k, cf, r1, r2);
    }
  }
  red[0][threadIdx.y][threadIdx.x] = r1;
  red[1][threadIdx.y][threadIdx.x] = r2;
  __syncthreads();
  if (threadIdx.y == 0 && valid) {
    acc_t t1 = 0, t2 = 0;
#pragma unroll
    for (int r = 0; r < kTileR; ++r) {
      t1 += red[0][r][threadIdx.x];
      t2 += red[1][r][threadIdx.x];
    }
    acc_t* o = part + 3 * (bc * splits + sp);
    if constexpr (MODE == 0) {
      const Moments<acc_t> m = moments_from_shifted(acc_t(s1 > s0 ? s1 - s0 : 0), k, t1, t2);
      o[0] = m.n;
      o[1] = m.mean;
      o[2] = m.m2;
    } else {
      o[0] = t1;
      o[1] = t2;
    }
  }
}

// ------------------------------------------------------------------ pass 2: per-group finalize
template <typename acc_t>
struct ParamPtrs {
  const acc_t* w;      // (C,)
  const acc_t* b;      // (C,)
  const acc_t* scale;  // (B, C)
  const acc_t* shift;  // (B, C)
};

// One warp per (b, g).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
fwd_finalize_kernel(const acc_t* __restrict__ part, ParamPtrs<acc_t> p, acc_t* __restrict__ mean_out,
                    acc_t* __restrict__ rstd_out, acc_t* __restrict__ coef, int64_t B, int64_t C, int64_t G,
                    int splits, acc_t eps) {
  const int64_t bg = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (bg >= B * G) return;
  const int64_t b = bg / G, g = bg % G, Cg = C / G;
  Moments<acc_t> m{0, 0, 0};
  for (int64_t i = lane; i < Cg * splits; i += 32) {
    const int64_t c = g * Cg + i / splits;
    const acc_t* q = part + 3 * ((b * C + c) * splits + i % splits);
    m = merge_moments(m, Moments<acc_t>{q[0], q[1], q[2]});
  }
  m = warp_merge(m);
  const acc_t mean = __shfl_sync(0xffffffffu, m.mean, 0);
  const acc_t rstd = __shfl_sync(0xffffffffu, group_rstd(m, eps), 0);
  if (lane == 0) {
    mean_out[bg] = mean;
    rstd_out[bg] = rstd;
  }
  for (int64_t cl = lane; cl < Cg; cl += 32) {
    const int64_t c = g * Cg + cl, bc = b * C + c;
    const FwdCoef<acc_t> f = fwd_coef(mean, rstd, p.w[c], p.b[c], p.scale[bc], p.shift[bc]);
    store_fwd_coef(coef + bc * kCoef, f);
  }
}

// Thread per (b, c): forward coefficients from saved mean / rstd (backward's first step).
template <typename acc_t>
__global__ void bwd_prep_kernel(const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd, ParamPtrs<acc_t> p,
                                acc_t* __restrict__ coef, int64_t B, int64_t C, int64_t G) {
  const int64_t bc = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (bc >= B * C) return;
  const int64_t b = bc / C, c = bc % C, bg = b * G + c / (C / G);
  const FwdCoef<acc_t> f = fwd_coef(mean[bg], rstd[bg], p.w[c], p.b[c], p.scale[bc], p.shift[bc]);
  store_fwd_coef(coef + bc * kCoef, f);
}

// One warp per (b, g): per-channel S, T; dscale, dshift; dx coefficients.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
bwd_finalize_kernel(const acc_t* __restrict__ part, const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                    ParamPtrs<acc_t> p, acc_t* __restrict__ coef, acc_t* __restrict__ Sout, acc_t* __restrict__ Tout,
                    acc_t* __restrict__ dscale, int64_t B, int64_t C, int64_t G, int64_t S, int splits) {
  const int64_t bg = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (bg >= B * G) return;
  const int64_t b = bg / G, g = bg % G, Cg = C / G;
  const acc_t mu = mean[bg], rs = rstd[bg];
  acc_t su = 0, sv = 0;
  for (int64_t cl = lane; cl < Cg; cl += 32) {
    const int64_t c = g * Cg + cl, bc = b * C + c;
    acc_t s = 0, t = 0;
    for (int sp = 0; sp < splits; ++sp) {
      s += part[3 * (bc * splits + sp) + 0];
      t += part[3 * (bc * splits + sp) + 1];
    }
    t *= rs;
    Sout[bc] = s;
    Tout[bc] = t;
    acc_t ds, dsh;
    grad_scale_shift(s, t, p.w[c], p.b[c], ds, dsh);
    dscale[bc] = ds;
    const acc_t gc = p.w[c] * (acc_t(1) + p.scale[bc]);
    su += gc * s;
    sv += gc * t;
  }
  su = __shfl_sync(0xffffffffu, warp_sum(su), 0);
  sv = __shfl_sync(0xffffffffu, warp_sum(sv), 0);
  const acc_t n = acc_t(Cg * S);
  for (int64_t cl = lane; cl < Cg; cl += 32) {
    const int64_t c = g * Cg + cl, bc = b * C + c;
    const BwdCoef<acc_t> k = bwd_coef(mu, rs, p.w[c] * (acc_t(1) + p.scale[bc]), su / n, sv / n);
    coef[bc * kCoef + 5] = k.rstd;
    coef[bc * kCoef + 6] = k.g;
    coef[bc * kCoef + 7] = k.u;
    coef[bc * kCoef + 8] = k.q;
  }
}

// Thread per channel: dweight, dbias (sums over the batch).
template <typename acc_t>
__global__ void param_grad_kernel(const acc_t* __restrict__ Sbc, const acc_t* __restrict__ Tbc,
                                  const acc_t* __restrict__ scale, acc_t* __restrict__ dw, acc_t* __restrict__ db,
                                  int64_t B, int64_t C) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  acc_t w = 0, bb = 0;
  for (int64_t b = 0; b < B; ++b) {
    const acc_t g = acc_t(1) + scale[b * C + c];
    w += g * Tbc[b * C + c];
    bb += g * Sbc[b * C + c];
  }
  dw[c] = w;
  db[c] = bb;
}

// ------------------------------------------------------------------ pass 3: element-wise
template <bool BWD, bool SILU, typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t elementwise(acc_t v, acc_t dyv, const acc_t* cf) {
  const FwdCoef<acc_t> f{cf[0], cf[1], cf[2], cf[3], cf[4]};
  if constexpr (!BWD) {
    return static_cast<scalar_t>(activate<SILU>(pre_act(v, f)));
  } else {
    const acc_t dh = act_backward<SILU>(pre_act(v, f), dyv);
    const BwdCoef<acc_t> k{cf[0], cf[5], cf[6], cf[7], cf[8]};
    return static_cast<scalar_t>(grad_x(v, dh, k));
  }
}

constexpr int kNchwPerThread = 4;

// grid.x = B * C, grid.y = ceil(S / (kThreads * kNchwPerThread)).
template <bool BWD, bool SILU, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
apply_nchw_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, const acc_t* __restrict__ coef,
                  scalar_t* __restrict__ out, int64_t S) {
  const int64_t bc = blockIdx.x;
  acc_t cf[kAllCoefs];
#pragma unroll
  for (int i = 0; i < kAllCoefs; ++i) cf[i] = (BWD || i < kFwdCoefs) ? coef[bc * kCoef + i] : acc_t(0);
  const int64_t base = bc * S;
  const int64_t s0 = static_cast<int64_t>(blockIdx.y) * kThreads * kNchwPerThread + threadIdx.x;
#pragma unroll
  for (int i = 0; i < kNchwPerThread; ++i) {
    const int64_t s = s0 + i * kThreads;
    if (s < S) {
      const acc_t dyv = BWD ? static_cast<acc_t>(dy[base + s]) : acc_t(0);
      out[base + s] = elementwise<BWD, SILU, scalar_t>(static_cast<acc_t>(x[base + s]), dyv, cf);
    }
  }
}

// grid.x = ceil(B * S / rows); each block covers `rows` whole rows of C channels.
template <bool BWD, bool SILU, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
apply_nhwc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ dy, const acc_t* __restrict__ coef,
                  scalar_t* __restrict__ out, int64_t B, int64_t S, int64_t C, int64_t rows) {
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows;
  const int64_t nrows = std::min(rows, B * S - row0);
  const int64_t n = nrows * C;
  for (int64_t e = threadIdx.x; e < n; e += kThreads) {
    const int64_t r = e / C, c = e - r * C;
    const int64_t row = row0 + r;
    const int64_t b = row / S;
    const acc_t* cfp = coef + (b * C + c) * kCoef;
    acc_t cf[kAllCoefs];
#pragma unroll
    for (int i = 0; i < kAllCoefs; ++i) cf[i] = (BWD || i < kFwdCoefs) ? cfp[i] : acc_t(0);
    const int64_t idx = row * C + c;
    const acc_t dyv = BWD ? static_cast<acc_t>(dy[idx]) : acc_t(0);
    out[idx] = elementwise<BWD, SILU, scalar_t>(static_cast<acc_t>(x[idx]), dyv, cf);
  }
}

// ------------------------------------------------------------------ launch helpers
struct Plan {
  int splits;
  int64_t chunk;
};

Plan plan_for(bool nhwc, int64_t S) {
  const int64_t target = nhwc ? kNhwcChunk : kNchwChunk;
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(64, (S + target - 1) / target));
  const int64_t chunk = (S + splits - 1) / splits;
  splits = (S + chunk - 1) / chunk;  // no empty split
  return {static_cast<int>(splits), chunk};
}

template <int MODE, bool SILU, typename scalar_t, typename acc_t>
void launch_reduce(bool nhwc, const scalar_t* x, const scalar_t* dy, const acc_t* coef, acc_t* part, int64_t B,
                   int64_t C, int64_t S, const Plan& pl, cudaStream_t stream) {
  if (!nhwc) {
    const int64_t warps = B * C * pl.splits;
    const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
    reduce_nchw_kernel<MODE, SILU, scalar_t, acc_t>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, dy, coef, part, B * C, S, pl.splits, pl.chunk);
  } else {
    const int64_t ctiles = (C + kTileC - 1) / kTileC;
    const dim3 grid(static_cast<unsigned>(B * ctiles), static_cast<unsigned>(pl.splits));
    reduce_nhwc_kernel<MODE, SILU, scalar_t, acc_t>
        <<<grid, dim3(kTileC, kTileR), 0, stream>>>(x, dy, coef, part, C, S, pl.splits, pl.chunk);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool BWD, bool SILU, typename scalar_t, typename acc_t>
void launch_apply(bool nhwc, const scalar_t* x, const scalar_t* dy, const acc_t* coef, scalar_t* out, int64_t B,
                  int64_t C, int64_t S, cudaStream_t stream) {
  if (!nhwc) {
    const int64_t per_block = static_cast<int64_t>(kThreads) * kNchwPerThread;
    const dim3 grid(static_cast<unsigned>(B * C), static_cast<unsigned>((S + per_block - 1) / per_block));
    TORCH_CHECK(grid.y <= 65535, "adagn: spatial size too large for the CUDA kernel");
    apply_nchw_kernel<BWD, SILU, scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(x, dy, coef, out, S);
  } else {
    const int64_t rows = std::max<int64_t>(1, (kThreads * 4) / C);
    const int64_t blocks = (B * S + rows - 1) / rows;
    apply_nhwc_kernel<BWD, SILU, scalar_t, acc_t>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, dy, coef, out, B, S, C, rows);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
ParamPtrs<acc_t> param_ptrs(const Prep& p) {
  return {p.w.data_ptr<acc_t>(), p.b.data_ptr<acc_t>(), p.scale.data_ptr<acc_t>(), p.shift.data_ptr<acc_t>()};
}

unsigned warp_blocks(int64_t warps) { return static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> adagn_forward_cuda(
    const at::Tensor& x, int64_t num_groups, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
    const c10::optional<at::Tensor>& shift, double eps, bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());
  Prep p = prepare(x, num_groups, weight, bias, scale, shift);
  const auto aopt = p.x.options().dtype(p.acc);
  at::Tensor out = at::empty(p.x.sizes(), p.x.options());
  at::Tensor mean = at::empty({p.B, p.G}, aopt), rstd = at::empty({p.B, p.G}, aopt);
  if (p.B == 0 || p.C == 0 || p.S == 0) {
    mean.zero_();
    rstd.fill_(1.0 / std::sqrt(eps));  // as the CPU kernel
    return {from_layout(out, p.nhwc), mean, rstd};
  }
  const Plan pl = plan_for(p.nhwc, p.S);
  at::Tensor part = at::empty({p.B * p.C * pl.splits * 3}, aopt);
  at::Tensor coef = at::empty({p.B * p.C * kCoef}, aopt);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "adagn_forward_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* xp = p.x.data_ptr<scalar_t>();
    launch_reduce<0, false, scalar_t, acc_t>(p.nhwc, xp, nullptr, nullptr, part.data_ptr<acc_t>(), p.B, p.C, p.S,
                                             pl, stream);
    fwd_finalize_kernel<acc_t><<<warp_blocks(p.B * p.G), kThreads, 0, stream>>>(
        part.data_ptr<acc_t>(), param_ptrs<acc_t>(p), mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>(),
        coef.data_ptr<acc_t>(), p.B, p.C, p.G, pl.splits, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (silu)
      launch_apply<false, true, scalar_t, acc_t>(p.nhwc, xp, nullptr, coef.data_ptr<acc_t>(),
                                                 out.data_ptr<scalar_t>(), p.B, p.C, p.S, stream);
    else
      launch_apply<false, false, scalar_t, acc_t>(p.nhwc, xp, nullptr, coef.data_ptr<acc_t>(),
                                                  out.data_ptr<scalar_t>(), p.B, p.C, p.S, stream);
  });
  return {from_layout(out, p.nhwc), mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> adagn_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    int64_t num_groups, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());
  Prep p = prepare(x, num_groups, weight, bias, scale, shift);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "adagn_backward: grad_out must have x's shape");
  const at::Tensor dy = to_layout(grad_out.to(x.scalar_type()), p.nhwc);
  const at::Tensor mc = mean.to(p.acc).contiguous(), rc = rstd.to(p.acc).contiguous();
  const auto aopt = p.x.options().dtype(p.acc);
  at::Tensor dx = at::empty(p.x.sizes(), p.x.options());
  at::Tensor Sbc = at::empty({p.B, p.C}, aopt), Tbc = at::empty({p.B, p.C}, aopt);
  at::Tensor dscale = at::empty({p.B, p.C}, aopt);
  at::Tensor dw = at::empty({p.C}, aopt), db = at::empty({p.C}, aopt);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "adagn_backward_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    if (p.B > 0 && p.C > 0 && p.S > 0) {
      const Plan pl = plan_for(p.nhwc, p.S);
      at::Tensor part = at::empty({p.B * p.C * pl.splits * 3}, aopt);
      at::Tensor coef = at::empty({p.B * p.C * kCoef}, aopt);
      acc_t* cf = coef.data_ptr<acc_t>();
      const scalar_t* xp = p.x.data_ptr<scalar_t>();
      const scalar_t* dyp = dy.data_ptr<scalar_t>();
      bwd_prep_kernel<acc_t><<<static_cast<unsigned>((p.B * p.C + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          mc.data_ptr<acc_t>(), rc.data_ptr<acc_t>(), param_ptrs<acc_t>(p), cf, p.B, p.C, p.G);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (silu)
        launch_reduce<1, true, scalar_t, acc_t>(p.nhwc, xp, dyp, cf, part.data_ptr<acc_t>(), p.B, p.C, p.S, pl, stream);
      else
        launch_reduce<1, false, scalar_t, acc_t>(p.nhwc, xp, dyp, cf, part.data_ptr<acc_t>(), p.B, p.C, p.S, pl, stream);
      bwd_finalize_kernel<acc_t><<<warp_blocks(p.B * p.G), kThreads, 0, stream>>>(
          part.data_ptr<acc_t>(), mc.data_ptr<acc_t>(), rc.data_ptr<acc_t>(), param_ptrs<acc_t>(p), cf,
          Sbc.data_ptr<acc_t>(), Tbc.data_ptr<acc_t>(), dscale.data_ptr<acc_t>(), p.B, p.C, p.G, p.S, pl.splits);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (silu)
        launch_apply<true, true, scalar_t, acc_t>(p.nhwc, xp, dyp, cf, dx.data_ptr<scalar_t>(), p.B, p.C, p.S, stream);
      else
        launch_apply<true, false, scalar_t, acc_t>(p.nhwc, xp, dyp, cf, dx.data_ptr<scalar_t>(), p.B, p.C, p.S, stream);
    } else {
      Sbc.zero_();
      Tbc.zero_();
      dscale.zero_();
    }
    if (p.C > 0) {
      param_grad_kernel<acc_t><<<static_cast<unsigned>((p.C + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          Sbc.data_ptr<acc_t>(), Tbc.data_ptr<acc_t>(), p.scale.data_ptr<acc_t>(), dw.data_ptr<acc_t>(),
          db.data_ptr<acc_t>(), p.B, p.C);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {from_layout(dx, p.nhwc), dw, db, dscale, Sbc};
}

}  // namespace

TORCH_LIBRARY_IMPL(dalle2_fast, CUDA, m) {
  m.impl("adagn_forward", &adagn_forward_cuda);
  m.impl("adagn_backward", &adagn_backward_cuda);
}
