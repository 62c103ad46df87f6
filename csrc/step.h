// One reverse-diffusion step for a batch of cells, fused into a single pass over memory.
//
// Every scheduler here (DDIM, DDPM, DPM-Solver++ 2M) updates each value independently as
//
//   x0, eps = derive(model_output, x_t)                      (prediction_type, below)
//   x0      = clip(x0) or threshold(x0)                      (optional)
//   eps     = (x_t - sqrt(ab_t) * x0) / sqrt(1 - ab_t)       (optional: rederive_eps)
//   x_prev  = a * x0 + b * eps + c * x_t + d * h + sigma * z
//   h       = x0                                             (optional: the history buffer)
//   x_prev  = x_prev < threshold ? 0 : x_prev                (optional: last step only)
//
// with ab_t = alphas_cumprod[t], h the previous step's x0 (DPM-Solver++ second order) and z standard
// normal noise (Philox, see philox.h, or caller-given). derive() is
//   epsilon:       x0 = (x_t - sqrt(1 - ab_t) * m) / sqrt(ab_t),   eps = m
//   sample:        x0 = m,                                         eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)
//   v_prediction:  x0 = sqrt(ab_t) x_t - sqrt(1 - ab_t) m,         eps = sqrt(ab_t) m + sqrt(1 - ab_t) x_t
// clip is clamp(x0, -clip_sample_range, clip_sample_range); threshold is Imagen's dynamic
// thresholding (Saharia et al. 2022) as diffusers' _threshold_sample: per cell,
//   s = clamp(quantile(|x0|, dynamic_thresholding_ratio), 1, sample_max_value),
//   x0 = clamp(x0, -s, s) / s,
// with torch.quantile's linear interpolation (rank = ratio * (G - 1) in float32).
//
// The scalars (a, b, c, d, sigma) and sqrt(ab_t), sqrt(1 - ab_t) come from the coefficient
// functions below, computed in double; the per-value arithmetic is float32.
#pragma once

#include <cstdint>
#include <string>

namespace cellsynth {

enum class PredictionType : int { kEpsilon = 0, kSample = 1, kVPrediction = 2 };

// "epsilon" | "sample" | "v_prediction"; throws std::invalid_argument otherwise.
PredictionType parse_prediction_type(const std::string& name);

struct StepCoefficients {
  double sqrt_alpha_prod = 1.0;            // sqrt(ab_t): derives x0 / eps from the model output
  double sqrt_one_minus_alpha_prod = 0.0;  // sqrt(1 - ab_t)
  double a = 0.0;                          // on x0
  double b = 0.0;                          // on eps
  double c = 0.0;                          // on x_t
  double d = 0.0;                          // on the history h (previous x0)
  double sigma = 0.0;                      // on the noise z
};

// DDIM (Song et al. 2021, eq. 12 and 16), ab = ab_t, ab' = ab_prev:
//   sigma = eta * sqrt((1 - ab') / (1 - ab)) * sqrt(1 - ab / ab')
//   a = sqrt(ab'),  b = sqrt(max(0, 1 - ab' - sigma^2)),  c = d = 0.
StepCoefficients ddim_coefficients(double alpha_prod_t, double alpha_prod_t_prev, double eta);

enum class VarianceType : int { kFixedSmall = 0, kFixedLarge = 1 };

// "fixed_small" | "fixed_large"; throws std::invalid_argument otherwise.
VarianceType parse_variance_type(const std::string& name);

// DDPM (Ho et al. 2020, eq. 6-7) on a possibly strided schedule, as diffusers' DDPMScheduler:
//   alpha = ab / ab',  beta = 1 - alpha
//   a = sqrt(ab') * beta / (1 - ab),  c = sqrt(alpha) * (1 - ab') / (1 - ab),  b = d = 0
//   variance: fixed_small = (1 - ab') / (1 - ab) * beta  (beta-tilde),  fixed_large = beta
//   sigma = sqrt(variance) if timestep > 0 else 0   (diffusers adds noise iff t > 0; it also
//   clamps fixed_small at 1e-20, which adds 1e-10 * z at a last step with t > 0: we add nothing).
StepCoefficients ddpm_coefficients(double alpha_prod_t, double alpha_prod_t_prev, int64_t timestep,
                                   VarianceType variance_type);

enum class DpmSolverType : int { kMidpoint = 0, kHeun = 1 };

// "midpoint" | "heun"; throws std::invalid_argument otherwise.
DpmSolverType parse_dpmsolver_type(const std::string& name);

// DPM-Solver++ multistep in data (x0) space (Lu et al. 2022, alg. 2; diffusers'
// DPMSolverMultistepScheduler with algorithm_type="dpmsolver++"). Noise levels are diffusers'
// sigma = sqrt((1 - ab) / ab); for each, alpha_s = 1 / sqrt(1 + sigma^2), sigma_s = sigma * alpha_s,
// lambda = log(alpha_s) - log(sigma_s). Stepping from s0 to t (s1 is the level of the step before
// s0, used by order 2), h = lambda_t - lambda_s0, A = -alpha_t (e^-h - 1):
//   order 1:  x_t = (sigma_t / sigma_s0) x + A x0
//   order 2:  D1 = (x0 - x0_prev) / r0,  r0 = (lambda_s0 - lambda_s1) / h
//             midpoint: x_t = (sigma_t / sigma_s0) x + A (x0 + D1 / 2)
//             heun:     x_t = (sigma_t / sigma_s0) x + A x0 + alpha_t ((e^-h - 1) / h + 1) D1
// as a x0 + c x + d x0_prev: c = sigma_t / sigma_s0, a = A + w / r0, d = -w / r0 with w = A / 2
// (midpoint) or alpha_t ((e^-h - 1) / h + 1) (heun). Degenerate steps (repeated timesteps, where
// diffusers divides by zero) are defined by their limits: h = 0 gives the identity x_t = x, and
// lambda_s0 = lambda_s1 falls back to order 1.
// sigma_t = 0 (final_sigmas_type "zero") gives x_t = x0: a = 1, c = d = 0.
// sqrt_alpha_prod / sqrt_one_minus_alpha_prod are alpha_s0 / sigma_s0 (derive x0 at s0).
StepCoefficients dpmsolver_coefficients(double sigma_s1, double sigma_s0, double sigma_t,
                                        int order,
                                        DpmSolverType solver_type = DpmSolverType::kMidpoint);

// Everything a step needs besides the arrays. Noise is drawn only where sigma != 0.
struct StepOptions {
  PredictionType prediction_type = PredictionType::kEpsilon;
  StepCoefficients coefficients;
  bool clip_sample = false;
  float clip_sample_range = 1.0f;
  bool thresholding = false;
  float dynamic_thresholding_ratio = 0.995f;
  float sample_max_value = 1.0f;
  bool rederive_eps = false;  // diffusers DDIM's use_clipped_model_output
  bool truncate = false;      // zero-negation truncation (the last step)
  float truncate_threshold = 0.0f;
  // Philox key and counter parts (when no noise array is given).
  uint64_t seed = 0;
  uint32_t step_index = 0;
  uint64_t cell_offset = 0;
};

// Validates the options (finite coefficients, ranges); throws std::invalid_argument.
void validate_step_options(const StepOptions& opt);

// The fused CPU step on float32 C-contiguous [n_cells, n_genes] arrays (OpenMP over cells):
//   model_output, sample: inputs; out: the result (may be `sample` itself, never overlapping
//   anything else); history: optional (nullptr), read where d != 0 and then overwritten with x0;
//   noise: optional standard normals replacing the Philox noise.
void step_cpu(const StepOptions& opt, const float* model_output, const float* sample, float* out,
              float* history, const float* noise, int64_t n_cells, int64_t n_genes);

// Dynamic thresholding's s from |x0| of one cell (a [n], non-negative; reordered in place):
// clamp(quantile(a, ratio), 1, sample_max_value) with torch.quantile's linear interpolation; nan
// when a holds a nan. bisection = false selects the order statistics (std::nth_element, the CPU
// kernel); true uses the CUDA kernel's bisection on float bit patterns (here with serial counts),
// so that algorithm is tested where no GPU is.
float threshold_of_abs(float* a, int64_t n, float ratio, float sample_max_value, bool bisection);

// Fills out [n_cells, n_genes] with the Philox normals of (seed, cell_offset + row, step, gene).
void randn_cpu(float* out, int64_t n_cells, int64_t n_genes, uint64_t seed, uint32_t step,
               uint64_t cell_offset);

}  // namespace cellsynth
