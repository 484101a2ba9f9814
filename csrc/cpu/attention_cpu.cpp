// CPU flash attention, forward and backward: blocked GEMM tiles (at::mm_out / addmm_ into
// reused per-task buffers; single-threaded inside at::parallel_for) plus the per-element
// online-softmax and backward math of csrc/include/dalle2_fast/attention.h, which the CUDA
// kernels share. The Sq x Sk score matrix is never materialised: one (BM x BN) tile per task.
//
// Measured against torch's F.scaled_dot_product_attention (dalle2_fast/bench/attention.py);
// the `cpu` dispatch backend runs whichever was faster (see ops/attention.py CPU_REASON).
// This kernel stays the host-side check of the math the GPU kernel runs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "dalle2_fast/attention.h"
#include "dalle2_fast/few_rows.h"

namespace {

using namespace dalle2_fast::attention;

constexpr int64_t kBM = 128;  // query rows per task / tile
constexpr int64_t kBN = 256;  // keys per tile (forward)
constexpr int64_t kBNb = 128;  // keys per tile (backward)

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention: q, k, v must be (B, H, S, D)");
  TORCH_CHECK(k.sizes() == v.sizes(), "attention: k and v must have the same shape");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "attention: q and k must agree in B, H and D");
  if (mask.has_value()) {
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == q.size(0) && mask->size(1) == k.size(2),
                "attention: key_padding_mask must be (B, Sk)");
  }
}

// (B, Sk) uint8 with 1 = hidden key, or an empty tensor.
at::Tensor pad_bytes(const std::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return at::Tensor();
  return mask->to(at::kByte).contiguous();
}

// ---- few query rows: decoding steps, a frozen prefix's trailing tokens ------------------------
// The tiled path below makes a handful of ATen calls per (batch, head) tile, which costs more
// than the math when each head has only a few queries (e.g. 3 queries against 80 cached keys).
// Here each (b, h) is plain loops over contiguous float rows: scores of the keys padding leaves
// (a padded cache's hidden keys are never read), one max, exp (common.h's vectorisable
// exp_approx), sum, then P V as AXPYs, compiled for AVX-512 / AVX2 / baseline (target_clones). Same semantics as attention.h (hidden
// keys never computed with, empty rows zero with lse +inf, poisoned rows and columns NaN),
// detected lazily: with a finite q row, a visible key with a non-finite k entry gives a
// non-finite score, and a visible key with a non-finite v[d] a non-finite accumulator column
// d, so no per-key scan is needed.
using dalle2_fast::cpu::kFewRows;  // Sq up to this takes the few-rows path

#define ATT_INLINE inline __attribute__((always_inline))
#define ATT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// 16 floats, unaligned (GCC vector extension: one zmm on AVX-512, split on narrower targets).
typedef float v16f __attribute__((vector_size(64), aligned(4)));
typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef float v4f __attribute__((vector_size(16), aligned(4)));

ATT_INLINE v16f load16(const float* p) { return *reinterpret_cast<const v16f*>(p); }

ATT_INLINE float hsum(v16f a) {
  const v8f b = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
  const v4f c = __builtin_shufflevector(b, b, 0, 1, 2, 3) + __builtin_shufflevector(b, b, 4, 5, 6, 7);
  return (c[0] + c[2]) + (c[1] + c[3]);
}

// q . k_j for four keys k0..k3 (rows of length D) at once: four independent accumulators.
ATT_INLINE void dot4(const float* q, const float* k0, const float* k1, const float* k2, const float* k3, int64_t D,
                     float* out) {
  v16f a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    const v16f qv = load16(q + d);
    a0 += qv * load16(k0 + d);
    a1 += qv * load16(k1 + d);
    a2 += qv * load16(k2 + d);
    a3 += qv * load16(k3 + d);
  }
  float t0 = hsum(a0), t1 = hsum(a1), t2 = hsum(a2), t3 = hsum(a3);
  for (; d < D; ++d) {
    t0 += q[d] * k0[d];
    t1 += q[d] * k1[d];
    t2 += q[d] * k2[d];
    t3 += q[d] * k3[d];
  }
  out[0] = t0, out[1] = t1, out[2] = t2, out[3] = t3;
}

// out (D) = sum over c < n of p[c] v_{key[c]}: register accumulators over 64 columns at a time,
// two keys per step (independent FMA chains).
ATT_INLINE void few_rows_pv(const float* p, const float* v, const int32_t* key, int64_t n, int64_t D, float* out) {
  int64_t d0 = 0;
  for (; d0 + 64 <= D; d0 += 64) {
    v16f a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    int64_t c = 0;
    for (; c + 2 <= n; c += 2) {
      const float* v0 = v + key[c] * D + d0;
      const float* v1 = v + key[c + 1] * D + d0;
      const float p0 = p[c], p1 = p[c + 1];
      a0 += p0 * load16(v0), a1 += p0 * load16(v0 + 16), a2 += p0 * load16(v0 + 32), a3 += p0 * load16(v0 + 48);
      b0 += p1 * load16(v1), b1 += p1 * load16(v1 + 16), b2 += p1 * load16(v1 + 32), b3 += p1 * load16(v1 + 48);
    }
    if (c < n) {
      const float* v0 = v + key[c] * D + d0;
      const float p0 = p[c];
      a0 += p0 * load16(v0), a1 += p0 * load16(v0 + 16), a2 += p0 * load16(v0 + 32), a3 += p0 * load16(v0 + 48);
    }
    *reinterpret_cast<v16f*>(out + d0) = a0 + b0;
    *reinterpret_cast<v16f*>(out + d0 + 16) = a1 + b1;
    *reinterpret_cast<v16f*>(out + d0 + 32) = a2 + b2;
    *reinterpret_cast<v16f*>(out + d0 + 48) = a3 + b3;
  }
  for (; d0 < D; d0 += 16) {  // the remaining columns, up to 16 at a time
    const int64_t w = D - d0 < 16 ? D - d0 : 16;
    float acc[16] = {};
    for (int64_t c = 0; c < n; ++c) {
      const float pc = p[c];
      const float* vc = v + key[c] * D + d0;
      for (int64_t e = 0; e < w; ++e) acc[e] += pc * vc[e];
    }
    for (int64_t e = 0; e < w; ++e) out[d0 + e] = acc[e];
  }
}

// One (b, h): q (Sq, D), k and v (Sk, D), out (Sq, D), lse (Sq). key: the indices of the keys
// not hidden by padding, ascending, n_keys of them (a hidden key is never read: a padded cache
// costs only its real keys); s: Sk floats of scratch.
ATT_CLONES void few_rows_head(const float* q, const float* k, const float* v, const int32_t* key, int64_t n_keys,
                              float* out, float* lse, int64_t Sq, int64_t Sk, int64_t D, float scale,
                              bool scale_bad, bool causal, float* s) {
  int64_t n = 0;  // keys visible to row i: key[0 .. n), growing with i under the causal mask
  for (int64_t i = 0; i < Sq; ++i) {
    const float* qi = q + i * D;
    float* oi = out + i * D;
    const int64_t vis_end = causal ? causal_key_end(i, Sq, Sk) : Sk;
    while (n < n_keys && key[n] < vis_end) ++n;
    if (n == 0) {  // every key hidden: zeros, lse +inf
      for (int64_t d = 0; d < D; ++d) oi[d] = 0.0f;
      lse[i] = __builtin_huge_valf();
      continue;
    }
    int q_bad = 0;
#pragma omp simd reduction(| : q_bad)
    for (int64_t d = 0; d < D; ++d) q_bad |= !is_finite(qi[d]);
    int64_t c = 0;
    for (; c + 4 <= n; c += 4)
      dot4(qi, k + key[c] * D, k + key[c + 1] * D, k + key[c + 2] * D, k + key[c + 3] * D, D, s + c);
    for (; c < n; ++c) {
      const float* kc = k + key[c] * D;
      float dot = 0.0f;
      for (int64_t d = 0; d < D; ++d) dot += qi[d] * kc[d];
      s[c] = dot;
    }
    float m = neg_inf();
    int s_bad = 0;
    for (c = 0; c < n; ++c) {
      const float sc = s[c] * scale;
      s_bad |= !is_finite(sc);  // a non-finite k entry (q finite), or an overflow: NaN either way
      s[c] = sc;
      m = sc > m ? sc : m;
    }
    if (scale_bad || q_bad || s_bad) {
      for (int64_t d = 0; d < D; ++d) oi[d] = quiet_nan();
      lse[i] = quiet_nan();
      continue;
    }
#pragma omp simd
    for (c = 0; c < n; ++c) s[c] = dalle2_fast::exp_approx(s[c] - m);  // vectorised (common.h)
    float l = 0.0f;
#pragma omp simd reduction(+ : l)
    for (c = 0; c < n; ++c) l += s[c];
    few_rows_pv(s, v, key, n, D, oi);
    const float inv = finish_inv_sum(l);
    for (int64_t d = 0; d < D; ++d) oi[d] = finish_out(oi[d], inv, !is_finite(oi[d]));  // a non-finite v column
    lse[i] = finish_lse(m, l);
  }
}

void few_rows_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& pad,
                  at::Tensor& out, at::Tensor& lse, bool causal, float scale) {
  dalle2_fast::cpu::few_rows_attention(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                                       pad.defined() ? pad.data_ptr<uint8_t>() : nullptr, out.data_ptr<float>(),
                                       lse.data_ptr<float>(), q.size(0), q.size(1), q.size(2), k.size(2), q.size(3),
                                       causal, scale);
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                     const at::Tensor& v_in,
                                                     const std::optional<at::Tensor>& mask, bool causal,
                                                     double scale_d) {
  // The internal at::mm_out calls must not see autograd (the op's gradient is attention_bwd);
  // worker threads start with default thread-local state, hence detach() and not only a guard.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_inputs(q_in, k_in, v_in, mask);
  const int64_t B = q_in.size(0), H = q_in.size(1), Sq = q_in.size(2), D = q_in.size(3), Sk = k_in.size(2);
  const float scale = static_cast<float>(scale_d);
  auto fopt = q_in.options().dtype(at::kFloat);
  at::Tensor out = at::zeros({B, H, Sq, D}, fopt);
  at::Tensor lse = at::full({B, H, Sq}, __builtin_huge_valf(), fopt);
  if (B * H * Sq == 0 || Sk == 0 || D == 0) return {out.to(q_in.scalar_type()), lse};

  const at::Tensor q = q_in.detach().to(at::kFloat).contiguous();
  const at::Tensor k = k_in.detach().to(at::kFloat).contiguous();
  const at::Tensor v = v_in.detach().to(at::kFloat).contiguous();
  const at::Tensor pad = pad_bytes(mask);
  if (Sq <= kFewRows) {
    few_rows_fwd(q, k, v, pad, out, lse, causal, scale);
    return {out.to(q_in.scalar_type()), lse};
  }
  const uint8_t* pad_p = pad.defined() ? pad.data_ptr<uint8_t>() : nullptr;
  const int64_t n_mblk = (Sq + kBM - 1) / kBM;
  const bool scale_bad = !is_finite(scale);

  at::parallel_for(0, B * H * n_mblk, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd_worker;
    at::Tensor s_buf = at::empty({kBM, kBN}, fopt);
    at::Tensor v_buf;  // a v tile with non-finite entries zeroed, allocated on first need
    std::vector<float> m(kBM), l(kBM), alpha(kBM);
    // Non-finite bookkeeping (attention.h): per row "saw a key" / "poisoned", per key of the
    // tile "k / v has a non-finite entry", per output element "poisoned column".
    std::vector<char> seen(kBM), row_bad(kBM), kbad(kBN), vbad(kBN), col_bad;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / n_mblk, m0 = (task % n_mblk) * kBM;
      const int64_t b = bh / H, bm = std::min(kBM, Sq - m0);
      const at::Tensor qb = q[b][bh % H].narrow(0, m0, bm);  // (bm, D)
      const at::Tensor kh = k[b][bh % H], vh = v[b][bh % H];  // (Sk, D)
      at::Tensor acc = out[b][bh % H].narrow(0, m0, bm);     // (bm, D), accumulates in place
      std::fill(m.begin(), m.end(), neg_inf());
      std::fill(l.begin(), l.end(), 0.0f);
      std::fill(seen.begin(), seen.end(), 0);
      const float* qp = qb.data_ptr<float>();
      for (int64_t i = 0; i < bm; ++i) {
        bool bad = scale_bad;
        for (int64_t d = 0; d < D; ++d) bad = bad || !is_finite(qp[i * D + d]);
        row_bad[i] = bad;
      }
      bool any_col_bad = false;
      const int64_t kend = causal ? causal_key_end(m0 + bm - 1, Sq, Sk) : Sk;
      for (int64_t n0 = 0; n0 < kend; n0 += kBN) {
        const int64_t bn = std::min(kBN, kend - n0);
        const float* kp = kh.data_ptr<float>() + n0 * D;
        const float* vp = vh.data_ptr<float>() + n0 * D;
        bool tile_vbad = false;
        for (int64_t j = 0; j < bn; ++j) {
          bool kb = false, vb = false;
          for (int64_t d = 0; d < D; ++d) {
            kb = kb || !is_finite(kp[j * D + d]);
            vb = vb || !is_finite(vp[j * D + d]);
          }
          kbad[j] = kb;
          vbad[j] = vb;
          tile_vbad = tile_vbad || vb;
        }
        at::Tensor s = s_buf.narrow(0, 0, bm).narrow(1, 0, bn);
        at::mm_out(s, qb, kh.narrow(0, n0, bn).t());  // (bm, bn) raw dot products
        float* sp = s.data_ptr<float>();
        const int64_t ld = s.stride(0);
        for (int64_t i = 0; i < bm; ++i) {
          float* row = sp + i * ld;
          const int64_t vis_end = causal ? causal_key_end(m0 + i, Sq, Sk) : Sk;
          float tmax = neg_inf();
          for (int64_t j = 0; j < bn; ++j) {
            const int64_t kj = n0 + j;
            const bool hidden = kj >= vis_end || (pad_p && pad_p[b * Sk + kj]);
            if (!hidden) {
              seen[i] = 1;
              row_bad[i] = row_bad[i] || kbad[j];
            }
            row[j] = hidden ? neg_inf() : row[j] * scale;
            tmax = std::max(tmax, row[j]);
          }
          alpha[i] = online_update_max(m[i], tmax);
          float sum = 0.0f;
          for (int64_t j = 0; j < bn; ++j) {
            row[j] = online_prob(row[j], m[i]);
            sum += row[j];
          }
          l[i] = alpha[i] * l[i] + sum;
          float* arow = acc.data_ptr<float>() + i * D;
          for (int64_t d = 0; d < D; ++d) arow[d] *= alpha[i];
        }
        if (!tile_vbad) {
          acc.addmm_(s, vh.narrow(0, n0, bn));  // acc += P V
          continue;
        }
        // Rare path: a non-finite v poisons the columns of the rows that see its key, and is
        // zeroed for the product (a hidden key's P = 0 would still give 0 * NaN = NaN).
        if (!v_buf.defined()) v_buf = at::empty({kBN, D}, fopt);
        if (!any_col_bad) col_bad.assign(kBM * D, 0);
        any_col_bad = true;
        float* vz = v_buf.data_ptr<float>();
        for (int64_t j = 0; j < bn; ++j)
          for (int64_t d = 0; d < D; ++d) vz[j * D + d] = is_finite(vp[j * D + d]) ? vp[j * D + d] : 0.0f;
        for (int64_t i = 0; i < bm; ++i) {
          const int64_t vis_end = causal ? causal_key_end(m0 + i, Sq, Sk) : Sk;
          for (int64_t j = 0; j < bn; ++j) {
            const int64_t kj = n0 + j;
            if (!vbad[j] || kj >= vis_end || (pad_p && pad_p[b * Sk + kj])) continue;
            for (int64_t d = 0; d < D; ++d) col_bad[i * D + d] |= !is_finite(vp[j * D + d]);
          }
        }
        acc.addmm_(s, v_buf.narrow(0, 0, bn));
      }
      float* lse_p = lse.data_ptr<float>() + bh * Sq + m0;
      for (int64_t i = 0; i < bm; ++i) {
        const float inv = finish_inv_sum(l[i]);
        const bool poisoned = seen[i] && row_bad[i];
        float* arow = acc.data_ptr<float>() + i * D;
        for (int64_t d = 0; d < D; ++d) {
          arow[d] = finish_out(arow[d], inv, poisoned || (any_col_bad && col_bad[i * D + d]));
        }
        lse_p[i] = finish_lse_row(m[i], l[i], poisoned);
      }
    }
  });
  return {out.to(q_in.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const std::optional<at::Tensor>& mask, bool causal,
    double scale_d) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  check_inputs(q_in, k_in, v_in, mask);
  const int64_t B = q_in.size(0), H = q_in.size(1), Sq = q_in.size(2), D = q_in.size(3), Sk = k_in.size(2);
  const float scale = static_cast<float>(scale_d);
  auto fopt = q_in.options().dtype(at::kFloat);
  at::Tensor dq = at::zeros({B, H, Sq, D}, fopt);
  at::Tensor dk = at::zeros({B, H, Sk, D}, fopt);
  at::Tensor dv = at::zeros({B, H, Sk, D}, fopt);
  auto finish = [&]() {
    return std::make_tuple(dq.to(q_in.scalar_type()), dk.to(k_in.scalar_type()), dv.to(v_in.scalar_type()));
  };
  if (B * H == 0 || Sq == 0 || Sk == 0 || D == 0) return finish();

  const at::Tensor q = q_in.detach().to(at::kFloat).contiguous();
  const at::Tensor k = k_in.detach().to(at::kFloat).contiguous();
  const at::Tensor v = v_in.detach().to(at::kFloat).contiguous();
  const at::Tensor go = grad_out.detach().to(at::kFloat).contiguous();
  const at::Tensor lse = lse_in.detach().to(at::kFloat).contiguous();
  const at::Tensor delta = (go * out_in.detach().to(at::kFloat)).sum(-1).contiguous();  // (B, H, Sq)
  const at::Tensor pad = pad_bytes(mask);
  const uint8_t* pad_p = pad.defined() ? pad.data_ptr<uint8_t>() : nullptr;

  // One task per (b, h): it owns dq, dk, dv of that head, so no reduction across threads.
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd_worker;
    at::Tensor p_buf = at::empty({kBM, kBNb}, fopt);
    at::Tensor dp_buf = at::empty({kBM, kBNb}, fopt);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const at::Tensor qh = q[b][h], kh = k[b][h], vh = v[b][h], goh = go[b][h];
      at::Tensor dqh = dq[b][h], dkh = dk[b][h], dvh = dv[b][h];
      const float* lse_p = lse.data_ptr<float>() + bh * Sq;
      const float* delta_p = delta.data_ptr<float>() + bh * Sq;
      for (int64_t n0 = 0; n0 < Sk; n0 += kBNb) {
        const int64_t bn = std::min(kBNb, Sk - n0);
        const at::Tensor kb = kh.narrow(0, n0, bn), vb = vh.narrow(0, n0, bn);
        at::Tensor dkb = dkh.narrow(0, n0, bn), dvb = dvh.narrow(0, n0, bn);
        for (int64_t m0 = 0; m0 < Sq; m0 += kBM) {
          const int64_t bm = std::min(kBM, Sq - m0);
          if (causal && causal_key_end(m0 + bm - 1, Sq, Sk) <= n0) continue;  // tile fully hidden
          const at::Tensor qb = qh.narrow(0, m0, bm), gob = goh.narrow(0, m0, bm);
          at::Tensor p = p_buf.narrow(0, 0, bm).narrow(1, 0, bn);
          at::Tensor dp = dp_buf.narrow(0, 0, bm).narrow(1, 0, bn);
          at::mm_out(p, qb, kb.t());
          at::mm_out(dp, gob, vb.t());
          float* pp = p.data_ptr<float>();
          float* dpp = dp.data_ptr<float>();
          const int64_t ld = p.stride(0), ldd = dp.stride(0);
          for (int64_t i = 0; i < bm; ++i) {
            const int64_t vis_end = causal ? causal_key_end(m0 + i, Sq, Sk) : Sk;
            for (int64_t j = 0; j < bn; ++j) {
              const int64_t kj = n0 + j;
              const bool hidden = kj >= vis_end || (pad_p && pad_p[b * Sk + kj]);
              const float s = hidden ? neg_inf() : pp[i * ld + j] * scale;
              const float pr = bwd_prob(s, lse_p[m0 + i]);
              pp[i * ld + j] = pr;
              dpp[i * ldd + j] = bwd_dscore(pr, dpp[i * ldd + j], delta_p[m0 + i]);
            }
          }
          dvb.addmm_(p.t(), gob);                     // dV += P^T dO
          dqh.narrow(0, m0, bm).addmm_(dp, kb, 1.0, scale);  // dQ += scale dS K
          dkb.addmm_(dp.t(), qb, 1.0, scale);         // dK += scale dS^T Q
        }
      }
    }
  });
  return finish();
}

}  // namespace

void dalle2_fast::cpu::few_rows_attention(const float* qp, const float* kp, const float* vp, const uint8_t* pad_p,
                                          float* op, float* lp, int64_t B, int64_t H, int64_t Sq, int64_t Sk,
                                          int64_t D, bool causal, float scale) {
  const bool scale_bad = !is_finite(scale);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, Sq * Sk * D));
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> s(static_cast<size_t>(Sk));
    std::vector<int32_t> key(static_cast<size_t>(Sk));
    int64_t key_b = -1, n_keys = 0;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H;
      if (b != key_b) {  // the keys row b's padding leaves
        n_keys = 0;
        for (int64_t j = 0; j < Sk; ++j)
          if (!(pad_p && pad_p[b * Sk + j])) key[n_keys++] = static_cast<int32_t>(j);
        key_b = b;
      }
      few_rows_head(qp + bh * Sq * D, kp + bh * Sk * D, vp + bh * Sk * D, key.data(), n_keys, op + bh * Sq * D,
                    lp + bh * Sq, Sq, Sk, D, scale, scale_bad, causal, s.data());
    }
  });
}

TORCH_LIBRARY_IMPL(dalle2_fast, CPU, m) {
  m.impl("attention_fwd", &attention_fwd_cpu);
  m.impl("attention_bwd", &attention_bwd_cpu);
}
