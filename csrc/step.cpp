#include "step.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "philox.h"
#include "step_math.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace cellsynth {

// ---------------------------------------------------------------------------------------------
// Names and coefficients
// ---------------------------------------------------------------------------------------------

PredictionType parse_prediction_type(const std::string& name) {
  if (name == "epsilon") return PredictionType::kEpsilon;
  if (name == "sample") return PredictionType::kSample;
  if (name == "v_prediction") return PredictionType::kVPrediction;
  throw std::invalid_argument("unknown prediction_type '" + name +
                              "' (expected 'epsilon', 'sample' or 'v_prediction')");
}

VarianceType parse_variance_type(const std::string& name) {
  if (name == "fixed_small") return VarianceType::kFixedSmall;
  if (name == "fixed_large") return VarianceType::kFixedLarge;
  throw std::invalid_argument("unsupported variance_type '" + name +
                              "' (expected 'fixed_small' or 'fixed_large')");
}

namespace {

void check_alpha_prods(double ab, double ab_prev) {
  // ab_t may be 0 (zero terminal SNR); ab_prev is 1 at the clean end.
  if (!(ab >= 0.0 && ab < 1.0)) {
    std::ostringstream msg;
    msg << "alpha_prod_t must lie in [0, 1), got " << ab;
    throw std::invalid_argument(msg.str());
  }
  if (!(ab_prev > 0.0 && ab_prev <= 1.0)) {
    std::ostringstream msg;
    msg << "alpha_prod_t_prev must lie in (0, 1], got " << ab_prev;
    throw std::invalid_argument(msg.str());
  }
}

}  // namespace

StepCoefficients ddim_coefficients(double ab, double ab_prev, double eta) {
  check_alpha_prods(ab, ab_prev);
  if (!(eta >= 0.0) || !std::isfinite(eta)) {
    std::ostringstream msg;
    msg << "eta must be a finite number >= 0, got " << eta;
    throw std::invalid_argument(msg.str());
  }
  StepCoefficients k;
  k.sqrt_alpha_prod = std::sqrt(ab);
  k.sqrt_one_minus_alpha_prod = std::sqrt(1.0 - ab);
  const double variance = (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev);
  k.sigma = eta * std::sqrt(std::max(variance, 0.0));
  k.a = std::sqrt(ab_prev);
  k.b = std::sqrt(std::max(0.0, 1.0 - ab_prev - k.sigma * k.sigma));
  return k;
}

StepCoefficients ddpm_coefficients(double ab, double ab_prev, int64_t timestep,
                                   VarianceType variance_type) {
  check_alpha_prods(ab, ab_prev);
  StepCoefficients k;
  k.sqrt_alpha_prod = std::sqrt(ab);
  k.sqrt_one_minus_alpha_prod = std::sqrt(1.0 - ab);
  const double alpha = ab / ab_prev;
  const double beta = 1.0 - alpha;
  k.a = std::sqrt(ab_prev) * beta / (1.0 - ab);
  k.c = std::sqrt(alpha) * (1.0 - ab_prev) / (1.0 - ab);
  double variance = variance_type == VarianceType::kFixedLarge ? beta
                                                                : (1.0 - ab_prev) / (1.0 - ab) * beta;
  variance = std::max(variance, 0.0);
  k.sigma = timestep > 0 ? std::sqrt(variance) : 0.0;
  return k;
}

DpmSolverType parse_dpmsolver_type(const std::string& name) {
  if (name == "midpoint") return DpmSolverType::kMidpoint;
  if (name == "heun") return DpmSolverType::kHeun;
  throw std::invalid_argument("unknown solver_type '" + name + "' (expected 'midpoint' or 'heun')");
}

StepCoefficients dpmsolver_coefficients(double sigma_s1, double sigma_s0, double sigma_t,
                                        int order, DpmSolverType solver_type) {
  if (order != 1 && order != 2) {
    throw std::invalid_argument("DPM-Solver order must be 1 or 2, got " + std::to_string(order));
  }
  for (double s : {sigma_s0, sigma_t}) {
    if (!(s >= 0.0) || !std::isfinite(s)) {
      std::ostringstream msg;
      msg << "DPM-Solver sigmas must be finite and >= 0, got " << s;
      throw std::invalid_argument(msg.str());
    }
  }
  if (!(sigma_s0 > 0.0)) throw std::invalid_argument("DPM-Solver: sigma_s0 must be > 0");
  // sigma^2 + 1 must stay finite for alpha = 1 / sqrt(sigma^2 + 1) (no noise level is near this).
  constexpr double kMaxSigma = 1e150;
  for (double s : {sigma_s1, sigma_s0, sigma_t}) {
    if (s > kMaxSigma) {
      std::ostringstream msg;
      msg << "DPM-Solver sigmas must be <= " << kMaxSigma << ", got " << s;
      throw std::invalid_argument(msg.str());
    }
  }
  // alpha = 1 / sqrt(sigma^2 + 1), sigma_hat = sigma * alpha (diffusers' _sigma_to_alpha_sigma_t).
  const double alpha_s0 = 1.0 / std::sqrt(sigma_s0 * sigma_s0 + 1.0);
  const double sig_s0 = sigma_s0 * alpha_s0;
  StepCoefficients k;
  k.sqrt_alpha_prod = alpha_s0;
  k.sqrt_one_minus_alpha_prod = sig_s0;
  if (sigma_t == 0.0) {  // final_sigmas_type "zero": the last step lands on x0
    k.a = 1.0;
    return k;
  }
  const double alpha_t = 1.0 / std::sqrt(sigma_t * sigma_t + 1.0);
  const double sig_t = sigma_t * alpha_t;
  const double lambda_t = std::log(alpha_t) - std::log(sig_t);
  const double lambda_s0 = std::log(alpha_s0) - std::log(sig_s0);
  const double h = lambda_t - lambda_s0;
  k.c = sig_t / sig_s0;
  if (h == 0.0) return k;  // a repeated timestep: the identity (the limit h -> 0)
  const double A = -alpha_t * std::expm1(-h);  // -alpha_t (e^-h - 1)
  double lambda_s1 = lambda_s0;
  if (order == 2) {
    if (!(sigma_s1 > 0.0) || !std::isfinite(sigma_s1)) {
      std::ostringstream msg;
      msg << "DPM-Solver order 2 needs a finite sigma_s1 > 0, got " << sigma_s1;
      throw std::invalid_argument(msg.str());
    }
    const double alpha_s1 = 1.0 / std::sqrt(sigma_s1 * sigma_s1 + 1.0);
    lambda_s1 = std::log(alpha_s1) - std::log(sigma_s1 * alpha_s1);
  }
  const double h0 = lambda_s0 - lambda_s1;
  if (order == 1 || h0 == 0.0) {  // first order (also after a repeated timestep: r0 = 0)
    k.a = A;
    return k;
  }
  // D0 = x0, D1 = (x0 - x0_prev) / r0, r0 = h0 / h
  //   midpoint: x_t = c x + A (D0 + D1 / 2)
  //   heun:     x_t = c x + A D0 + B D1,   B = alpha_t ((e^-h - 1) / h + 1)
  const double r0 = h0 / h;
  const double w = solver_type == DpmSolverType::kHeun ? alpha_t * (std::expm1(-h) / h + 1.0)
                                                       : 0.5 * A;
  k.a = A + w / r0;
  k.d = -w / r0;
  return k;
}

void validate_step_options(const StepOptions& o) {
  const StepCoefficients& k = o.coefficients;
  for (double v : {k.sqrt_alpha_prod, k.sqrt_one_minus_alpha_prod, k.a, k.b, k.c, k.d, k.sigma}) {
    if (!std::isfinite(v)) throw std::invalid_argument("step coefficients must be finite");
  }
  if (k.sigma < 0.0) throw std::invalid_argument("step coefficient sigma must be >= 0");
  if (o.prediction_type == PredictionType::kEpsilon && k.sqrt_alpha_prod == 0.0) {
    // diffusers would divide by zero here and return inf / nan.
    throw std::invalid_argument(
        "prediction_type 'epsilon' cannot recover x0 where alphas_cumprod is 0 (zero terminal "
        "SNR): use 'v_prediction' or 'sample'");
  }
  if (o.clip_sample && !(o.clip_sample_range > 0.0f)) {
    throw std::invalid_argument("clip_sample_range must be > 0");
  }
  if (o.thresholding) {
    if (!(o.dynamic_thresholding_ratio >= 0.0f && o.dynamic_thresholding_ratio <= 1.0f)) {
      throw std::invalid_argument("dynamic_thresholding_ratio must lie in [0, 1]");
    }
    if (!(o.sample_max_value > 0.0f)) throw std::invalid_argument("sample_max_value must be > 0");
  }
  if (!std::isfinite(o.truncate_threshold)) {
    throw std::invalid_argument("truncate_threshold must be finite");
  }
}

// ---------------------------------------------------------------------------------------------
// CPU kernels
// ---------------------------------------------------------------------------------------------

namespace {

// The Philox normals of one row: genes [0, n). The same values as normal4() per group of 4 genes,
// computed in blocks of groups laid out so that every loop vectorises: the 10 Philox rounds run
// as 10 passes over a block of counters, then Box-Muller over the block, then the interleaving.
// On x86-64 with GCC the function is also built for AVX2 and picked at load time (the same
// operations, so the same bits; FMA stays off).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx2", "default")))
#endif
void fill_row_normals(float* z, int64_t n, uint64_t seed, uint64_t cell, uint32_t step) {
  constexpr int64_t kBlock = 128;  // groups of 4 genes
  alignas(64) uint32_t c0[kBlock], c1[kBlock], c2[kBlock], c3[kBlock];
  alignas(64) float v0[kBlock], v1[kBlock], v2[kBlock], v3[kBlock];
  const int64_t groups = (n + 3) / 4;
  const uint32_t cell_lo = static_cast<uint32_t>(cell);
  const uint32_t cell_hi = static_cast<uint32_t>(cell >> 32);
  for (int64_t g0 = 0; g0 < groups; g0 += kBlock) {
    const int64_t nb = std::min(kBlock, groups - g0);
    for (int64_t b = 0; b < nb; ++b) {
      c0[b] = static_cast<uint32_t>(g0 + b);
      c1[b] = step;
      c2[b] = cell_lo;
      c3[b] = cell_hi;
    }
    uint32_t k0 = static_cast<uint32_t>(seed);
    uint32_t k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      for (int64_t b = 0; b < nb; ++b) philox_round(c0[b], c1[b], c2[b], c3[b], k0, k1);
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    for (int64_t b = 0; b < nb; ++b) {
      box_muller2(c0[b], c1[b], v0[b], v1[b]);
      box_muller2(c2[b], c3[b], v2[b], v3[b]);
    }
    float* dst = z + 4 * g0;
    const int64_t full = std::min(nb, (n - 4 * g0) / 4);
    for (int64_t b = 0; b < full; ++b) {
      dst[4 * b + 0] = v0[b];
      dst[4 * b + 1] = v1[b];
      dst[4 * b + 2] = v2[b];
      dst[4 * b + 3] = v3[b];
    }
    for (int64_t j = 4 * full; j < n - 4 * g0; ++j) {  // the last, partial group
      const float* src[4] = {v0, v1, v2, v3};
      dst[j] = src[j % 4][full];
    }
  }
}

enum History : int { kNoHistory = 0, kWriteHistory = 1, kReadWriteHistory = 2 };

// One row: out[i] = combine(...). `x` may equal `out` (element-wise, read before write), so there
// is no __restrict; ivdep tells the vectoriser the iterations are independent.
template <int PRED, bool CLIP, bool USE_EPS, int HIST, bool NOISE>
void row_kernel(const StepScalars& s, const float* m, const float* x, float* out, float* h,
                const float* z, int64_t n, float lim, float div) {
  const float sa = s.sqrt_alpha_prod;
  const float s1m = s.sqrt_one_minus_alpha_prod;
  const bool rederive = s.rederive_eps;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    const float mi = m[i];
    const float xi = x[i];
    float x0 = derive_x0<PRED>(mi, xi, sa, s1m);
    float eps = 0.0f;
    if (USE_EPS) eps = derive_eps<PRED>(mi, xi, x0, sa, s1m);
    if (CLIP) {
      x0 = clamp_div(x0, lim, div);
      if (USE_EPS) {
        const float e2 = (xi - sa * x0) / s1m;
        eps = rederive ? e2 : eps;
      }
    }
    const float hi = HIST == kReadWriteHistory ? h[i] : 0.0f;
    const float zi = NOISE ? z[i] : 0.0f;
    out[i] = combine(s, x0, eps, xi, hi, zi, USE_EPS, HIST == kReadWriteHistory, NOISE);
    if (HIST != kNoHistory) h[i] = x0;
  }
}

using RowFn = void (*)(const StepScalars&, const float*, const float*, float*, float*,
                       const float*, int64_t, float, float);

template <int PRED, bool CLIP, bool USE_EPS, int HIST>
RowFn pick_noise(bool noise) {
  return noise ? &row_kernel<PRED, CLIP, USE_EPS, HIST, true>
               : &row_kernel<PRED, CLIP, USE_EPS, HIST, false>;
}

template <int PRED, bool CLIP, bool USE_EPS>
RowFn pick_history(int hist, bool noise) {
  switch (hist) {
    case kNoHistory:
      return pick_noise<PRED, CLIP, USE_EPS, kNoHistory>(noise);
    case kWriteHistory:
      return pick_noise<PRED, CLIP, USE_EPS, kWriteHistory>(noise);
    default:
      return pick_noise<PRED, CLIP, USE_EPS, kReadWriteHistory>(noise);
  }
}

template <int PRED>
RowFn pick_flags(bool clip, bool use_eps, int hist, bool noise) {
  if (clip) {
    return use_eps ? pick_history<PRED, true, true>(hist, noise)
                   : pick_history<PRED, true, false>(hist, noise);
  }
  return use_eps ? pick_history<PRED, false, true>(hist, noise)
                 : pick_history<PRED, false, false>(hist, noise);
}

RowFn pick_row_kernel(int pred, bool clip, bool use_eps, int hist, bool noise) {
  switch (pred) {
    case 0:
      return pick_flags<0>(clip, use_eps, hist, noise);
    case 1:
      return pick_flags<1>(clip, use_eps, hist, noise);
    default:
      return pick_flags<2>(clip, use_eps, hist, noise);
  }
}

template <int PRED>
void row_abs_x0(const StepScalars& s, const float* m, const float* x, float* a, int64_t n) {
  const float sa = s.sqrt_alpha_prod;
  const float s1m = s.sqrt_one_minus_alpha_prod;
  for (int64_t i = 0; i < n; ++i) a[i] = std::fabs(derive_x0<PRED>(m[i], x[i], sa, s1m));
}

// Dynamic thresholding's s for one row; `a` is scratch of n floats.
float row_threshold(const StepScalars& s, const float* m, const float* x, float* a, int64_t n) {
  switch (s.prediction_type) {
    case 0:
      row_abs_x0<0>(s, m, x, a, n);
      break;
    case 1:
      row_abs_x0<1>(s, m, x, a, n);
      break;
    default:
      row_abs_x0<2>(s, m, x, a, n);
  }
  return threshold_of_abs(a, n, s.dynamic_thresholding_ratio, s.sample_max_value, false);
}

}  // namespace

float threshold_of_abs(float* a, int64_t n, float ratio, float sample_max_value, bool bisection) {
  if (n <= 0) throw std::invalid_argument("dynamic thresholding needs at least one gene");
  // The ratio picks a rank in [0, n - 1]; outside [0, 1] (or NaN) it would index past the array.
  if (!(ratio >= 0.0f && ratio <= 1.0f)) {
    throw std::invalid_argument("dynamic_thresholding_ratio must lie in [0, 1], got " +
                                std::to_string(ratio));
  }
  if (!(sample_max_value > 0.0f) || !std::isfinite(sample_max_value)) {
    throw std::invalid_argument("sample_max_value must be finite and > 0, got " +
                                std::to_string(sample_max_value));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(a[i])) return a[i];  // torch.quantile returns nan for a row with a nan
  }
  const QuantileRank r = quantile_rank(ratio, n);
  float v_lo, v_hi;
  if (!bisection) {
    std::nth_element(a, a + r.lo, a + n);
    v_lo = a[r.lo];
    v_hi = r.hi > r.lo ? *std::min_element(a + r.lo + 1, a + n) : v_lo;
  } else {  // the CUDA kernel's algorithm, with serial counts
    auto key = [a](int64_t i) {
      uint32_t k;
      std::memcpy(&k, &a[i], sizeof k);
      return k;
    };
    auto count_le = [&](uint32_t p) {
      uint64_t c = 0;
      for (int64_t i = 0; i < n; ++i) c += key(i) <= p ? 1u : 0u;
      return c;
    };
    auto min_above = [&](uint32_t p) {
      uint32_t next = 0xFFFFFFFFu;
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t k = key(i);
        if (k > p && k < next) next = k;
      }
      return next;
    };
    uint32_t p_lo, p_hi;
    bisect_order_statistics(r.lo, r.hi, count_le, min_above, p_lo, p_hi);
    std::memcpy(&v_lo, &p_lo, sizeof v_lo);
    std::memcpy(&v_hi, &p_hi, sizeof v_hi);
  }
  return threshold_scale(v_lo, v_hi, r.weight, sample_max_value);
}

void step_cpu(const StepOptions& opt, const float* model_output, const float* sample, float* out,
              float* history, const float* noise, int64_t n_cells, int64_t n_genes) {
  validate_step_options(opt);
  if (n_cells <= 0 || n_genes <= 0) return;
  const StepScalars s = make_step_scalars(opt);
  const bool clip = s.clip_sample || s.thresholding;
  const int hist = history == nullptr ? kNoHistory
                                      : (s.read_history ? kReadWriteHistory : kWriteHistory);
  if (s.read_history && history == nullptr) {
    throw std::invalid_argument("step coefficient d != 0 needs a history buffer");
  }
  const bool philox = s.add_noise && noise == nullptr;
  const RowFn fn = pick_row_kernel(s.prediction_type, clip, s.use_eps, hist,
                                   s.add_noise);
  const bool need_scratch = philox || s.thresholding;
  const int64_t work = n_cells * n_genes;

#pragma omp parallel if (work > 65536)
  {
    std::vector<float> scratch(need_scratch ? static_cast<size_t>(n_genes) : 0);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < n_cells; ++row) {
      const int64_t off = row * n_genes;
      const float* m = model_output + off;
      const float* x = sample + off;
      float lim = s.clip_sample_range;
      float div = 1.0f;
      if (s.thresholding) {
        lim = div = row_threshold(s, m, x, scratch.data(), n_genes);
      }
      const float* z = nullptr;
      if (s.add_noise) {
        if (philox) {
          fill_row_normals(scratch.data(), n_genes, s.seed, s.cell_offset + static_cast<uint64_t>(row),
                           s.step_index);
          z = scratch.data();
        } else {
          z = noise + off;
        }
      }
      fn(s, m, x, out + off, history == nullptr ? nullptr : history + off, z, n_genes, lim, div);
    }
  }
}

void randn_cpu(float* out, int64_t n_cells, int64_t n_genes, uint64_t seed, uint32_t step,
               uint64_t cell_offset) {
  if (n_cells <= 0 || n_genes <= 0) return;
#pragma omp parallel for schedule(static) if (n_cells * n_genes > 65536)
  for (int64_t row = 0; row < n_cells; ++row) {
    fill_row_normals(out + row * n_genes, n_genes, seed, cell_offset + static_cast<uint64_t>(row),
                     step);
  }
}

}  // namespace cellsynth
