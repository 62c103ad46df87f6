// The per-value arithmetic of the fused step (see step.h), shared by the CPU and CUDA kernels so
// both perform the same float32 operations in the same order. Both builds disable floating-point
// contraction (-ffp-contract=off, nvcc -fmad=false) and use IEEE division and square root, and the
// Philox normals use no library math (philox.h), so the two should agree bit for bit (verified
// between scalar, SSE2 and AVX2 host builds; the GPU tests in tests/test_core_step.py check the
// device against the host to 1e-6).
#pragma once

#include <cstdint>

#include "philox.h"
#include "step.h"

namespace cellsynth {

// The float32 scalars of one step, made once on the host from StepOptions.
struct StepScalars {
  float sqrt_alpha_prod;
  float sqrt_one_minus_alpha_prod;
  float a, b, c, d, sigma;
  float clip_sample_range;
  float dynamic_thresholding_ratio;
  float sample_max_value;
  float truncate_threshold;
  int prediction_type;  // PredictionType as int
  bool clip_sample;
  bool thresholding;
  bool rederive_eps;
  bool truncate;
  bool use_eps;       // b != 0 (eps is needed at all)
  bool read_history;  // d != 0
  bool add_noise;     // sigma != 0
  uint64_t seed;
  uint32_t step_index;
  uint64_t cell_offset;
};

inline StepScalars make_step_scalars(const StepOptions& o) {
  StepScalars s{};
  const StepCoefficients& k = o.coefficients;
  s.sqrt_alpha_prod = static_cast<float>(k.sqrt_alpha_prod);
  s.sqrt_one_minus_alpha_prod = static_cast<float>(k.sqrt_one_minus_alpha_prod);
  s.a = static_cast<float>(k.a);
  s.b = static_cast<float>(k.b);
  s.c = static_cast<float>(k.c);
  s.d = static_cast<float>(k.d);
  s.sigma = static_cast<float>(k.sigma);
  s.clip_sample_range = o.clip_sample_range;
  s.dynamic_thresholding_ratio = o.dynamic_thresholding_ratio;
  s.sample_max_value = o.sample_max_value;
  s.truncate_threshold = o.truncate_threshold;
  s.prediction_type = static_cast<int>(o.prediction_type);
  s.clip_sample = o.clip_sample && !o.thresholding;  // thresholding wins, as in diffusers
  s.thresholding = o.thresholding;
  s.rederive_eps = o.rederive_eps && (o.clip_sample || o.thresholding);
  s.truncate = o.truncate;
  s.use_eps = s.b != 0.0f;
  s.read_history = s.d != 0.0f;
  s.add_noise = s.sigma != 0.0f;
  s.seed = o.seed;
  s.step_index = o.step_index;
  s.cell_offset = o.cell_offset;
  return s;
}

// x0 from the model output m and x_t (prediction_type PRED, see step.h).
template <int PRED>
CELLSYNTH_HD float derive_x0(float m, float x, float sa, float s1m) {
  if (PRED == 0) return (x - s1m * m) / sa;
  if (PRED == 1) return m;
  return sa * x - s1m * m;
}

// eps from m, x_t and the (unclipped) x0.
template <int PRED>
CELLSYNTH_HD float derive_eps(float m, float x, float x0, float sa, float s1m) {
  if (PRED == 0) return m;
  if (PRED == 1) return (x - sa * x0) / s1m;
  return sa * m + s1m * x;
}

// clamp(v, -lim, lim) / div, propagating NaN like torch.clamp.
CELLSYNTH_HD float clamp_div(float v, float lim, float div) {
  const float c = v < -lim ? -lim : (v > lim ? lim : v);
  return c / div;
}

// The linear combination and the truncation.
CELLSYNTH_HD float combine(const StepScalars& s, float x0, float eps, float x, float h, float z,
                           bool use_eps, bool read_history, bool add_noise) {
  float r = s.a * x0;
  if (use_eps) r = r + s.b * eps;
  r = r + s.c * x;
  if (read_history) r = r + s.d * h;
  if (add_noise) r = r + s.sigma * z;
  if (s.truncate) r = r < s.truncate_threshold ? 0.0f : r;
  return r;
}

// torch.quantile(..., interpolation="linear") of sorted values, from the two order statistics
// v_lo = sorted[floor(rank)] and v_hi = sorted[ceil(rank)], rank = float32(q) * (n - 1), and
// torch's lerp. Then s = clamp(quantile, 1, sample_max_value) (torch.clamp: max wins).
struct QuantileRank {
  int64_t lo, hi;
  float weight;
};

CELLSYNTH_HD QuantileRank quantile_rank(float q, int64_t n) {
  const float rank = q * static_cast<float>(n - 1);
  QuantileRank r;
  r.lo = static_cast<int64_t>(rank);
  r.hi = static_cast<int64_t>(ceilf(rank));
  if (r.hi > n - 1) r.hi = n - 1;
  if (r.lo > n - 1) r.lo = n - 1;
  r.weight = rank - static_cast<float>(r.lo);
  return r;
}

CELLSYNTH_HD float threshold_scale(float v_lo, float v_hi, float weight, float sample_max_value) {
  const float diff = v_hi - v_lo;
  const float q = weight < 0.5f ? v_lo + weight * diff : v_hi - diff * (1.0f - weight);
  float s = q < 1.0f ? 1.0f : q;  // NaN stays NaN
  s = s > sample_max_value ? sample_max_value : s;
  return s;
}

// The lo-th and hi-th smallest (0-based; hi is lo or lo + 1) of a set of non-negative floats given
// by their bit patterns ("keys": for x >= 0 the uint32 order is the float order; +inf is
// 0x7F800000 and NaN, above it, must be excluded by the caller), by bisection on the pattern:
// p_lo is the smallest P with #{key <= P} > lo (31 rounds of count_le), and p_hi is p_lo when
// #{key <= p_lo} > hi, else the smallest key above p_lo (min_above). count_le(P) and min_above(P)
// are a serial loop on the host and block-wide reductions in the CUDA kernel (so every thread of
// the block must call this with the same arguments).
template <class CountLE, class MinAbove>
CELLSYNTH_HD void bisect_order_statistics(int64_t lo_rank, int64_t hi_rank, CountLE count_le,
                                          MinAbove min_above, uint32_t& p_lo, uint32_t& p_hi) {
  uint32_t lo = 0u, hi = 0x7F800000u;
  const uint64_t need = static_cast<uint64_t>(lo_rank) + 1u;
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2u;
    if (static_cast<uint64_t>(count_le(mid)) >= need) {
      hi = mid;
    } else {
      lo = mid + 1u;
    }
  }
  p_lo = lo;
  p_hi = lo;
  if (hi_rank > lo_rank &&
      static_cast<uint64_t>(count_le(lo)) < static_cast<uint64_t>(hi_rank) + 1u) {
    p_hi = min_above(lo);
  }
}

}  // namespace cellsynth
