// Codebook nearest-neighbour math shared by the CPU and CUDA kernels.
//
// Distance to code j of row x: ||x||^2 - 2 x.c_j + ||c_j||^2. The argmin does not need
// ||x||^2, so kernels track the "partial distance" ||c_j||^2 - 2 x.c_j and add ||x||^2 at
// the end (then clamp at 0: the expansion can round slightly below zero).
#pragma once
#include "dalle2_fast/common.h"

namespace dalle2_fast::codebook {

// NaN distances become +inf so that a vectorised min never sees NaN: a NaN never wins.
DF_HD float partial_distance(float dot, float code_sqnorm) {
  const float d = code_sqnorm - 2.0f * dot;
  return d == d ? d : pos_inf();
}

// Running argmin over codes visited in increasing index order. Strict '<' keeps the lowest
// index on ties; a NaN distance never wins (documented: a code with NaN entries is never
// chosen, a row with NaN keeps index 0 and gets sqdist NaN from its NaN norm).
DF_HD void update_best(float d, long long j, float& best_d, long long& best_j) {
  if (d < best_d) {
    best_d = d;
    best_j = j;
  }
}

// Merge two partial results (e.g. from two threads that scanned different code ranges):
// the smaller distance wins, ties go to the lower index.
DF_HD void merge_best(float d, long long j, float& best_d, long long& best_j) {
  if (d < best_d || (d == best_d && j < best_j)) {
    best_d = d;
    best_j = j;
  }
}

// A row with a non-finite entry has a NaN (NaN entry) or +inf (Inf entry) squared norm: it
// gets index 0 and that norm as its distance (NaN, or +inf: every finite code is infinitely
// far). Without this an Inf row would pick whichever code's partial distance came out -inf.
DF_HD bool row_is_finite(float x_sqnorm) { return x_sqnorm <= 3.402823466e+38f; }

DF_HD float finish_sqdist(float x_sqnorm, float best_partial) {
  float s = x_sqnorm + best_partial;
  return s < 0.0f ? 0.0f : s;  // NaN stays NaN
}

// The final (index, sqdist) of a row from its best partial distance.
DF_HD void finish_row(float x_sqnorm, float best_partial, long long best_j, long long& idx, float& sqdist) {
  if (!row_is_finite(x_sqnorm)) {
    idx = 0;
    sqdist = x_sqnorm;
    return;
  }
  idx = best_j;
  sqdist = finish_sqdist(x_sqnorm, best_partial);
}

}  // namespace dalle2_fast::codebook
