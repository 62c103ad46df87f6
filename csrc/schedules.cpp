#include "schedules.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace cellsynth {
namespace {

constexpr double kPi = 3.14159265358979323846;

std::vector<double> linspace(double start, double stop, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  if (n == 1) {
    out[0] = start;
    return out;
  }
  const double step = (stop - start) / static_cast<double>(n - 1);
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = start + step * static_cast<double>(i);
  out.back() = stop;  // exact end point, as numpy does
  return out;
}

// alpha_bar(t) of the cosine schedule, t in [0, 1].
double cosine_alpha_bar(double t) {
  const double c = std::cos((t + 0.008) / 1.008 * kPi / 2.0);
  return c * c;
}

}  // namespace

void check_train_timesteps(int64_t T) {
  if (T < 1 || T > kMaxTrainTimesteps) {
    throw std::invalid_argument("num_train_timesteps must be between 1 and " +
                                std::to_string(kMaxTrainTimesteps) + ", got " + std::to_string(T));
  }
}

std::vector<double> make_betas(const std::string& beta_schedule, int64_t num_train_timesteps,
                               double beta_start, double beta_end) {
  check_train_timesteps(num_train_timesteps);
  const bool uses_range = beta_schedule == "linear" || beta_schedule == "scaled_linear";
  if (uses_range && !(beta_start > 0.0 && beta_start < 1.0 && beta_end > 0.0 && beta_end < 1.0)) {
    std::ostringstream msg;
    msg << "beta_start and beta_end must lie in (0, 1), got " << beta_start << " and " << beta_end;
    throw std::invalid_argument(msg.str());
  }
  if (beta_schedule == "linear") {
    return linspace(beta_start, beta_end, num_train_timesteps);
  }
  if (beta_schedule == "scaled_linear") {
    std::vector<double> b = linspace(std::sqrt(beta_start), std::sqrt(beta_end), num_train_timesteps);
    for (double& v : b) v *= v;
    return b;
  }
  if (beta_schedule == "squaredcos_cap_v2") {
    const double max_beta = 0.999;
    const auto T = static_cast<double>(num_train_timesteps);
    std::vector<double> b(static_cast<size_t>(num_train_timesteps));
    for (int64_t i = 0; i < num_train_timesteps; ++i) {
      const double t1 = static_cast<double>(i) / T;
      const double t2 = static_cast<double>(i + 1) / T;
      b[static_cast<size_t>(i)] = std::min(1.0 - cosine_alpha_bar(t2) / cosine_alpha_bar(t1), max_beta);
    }
    return b;
  }
  throw std::invalid_argument("unknown beta_schedule '" + beta_schedule +
                              "' (expected 'linear', 'scaled_linear' or 'squaredcos_cap_v2')");
}

std::vector<double> validate_betas(const std::vector<double>& betas) {
  if (betas.empty()) throw std::invalid_argument("trained_betas is empty");
  for (size_t i = 0; i < betas.size(); ++i) {
    const double b = betas[i];
    if (!std::isfinite(b) || b <= 0.0 || b >= 1.0) {
      std::ostringstream msg;
      msg << "trained_betas[" << i << "] = " << b << " is outside (0, 1)";
      throw std::invalid_argument(msg.str());
    }
  }
  return betas;
}

std::vector<double> rescale_zero_terminal_snr(const std::vector<double>& betas) {
  const size_t n = betas.size();
  if (n < 2) {
    throw std::invalid_argument("rescale_betas_zero_snr needs at least 2 timesteps, got " +
                                std::to_string(n));
  }
  for (double b : betas) {
    if (!(b >= 0.0 && b < 1.0)) {
      throw std::invalid_argument("rescale_betas_zero_snr needs betas in [0, 1), got " +
                                  std::to_string(b));
    }
  }
  std::vector<double> s = alphas_cumprod(betas);
  for (double& v : s) v = std::sqrt(v);
  const double s0 = s.front();
  const double sT = s.back();
  // Every step but the last divides by its predecessor's rescaled value, (s - sT) * scale: that
  // must not reach zero before the end (a flat tail would give 0 / 0).
  for (size_t i = 0; i + 1 < n; ++i) {
    if (!(s[i] > sT)) {
      throw std::invalid_argument(
          "rescale_betas_zero_snr needs alphas_cumprod above its last value before the last "
          "step (a decreasing schedule)");
    }
  }
  if (!(s0 > sT)) {
    throw std::invalid_argument("rescale_betas_zero_snr needs a decreasing alphas_cumprod");
  }
  const double scale = s0 / (s0 - sT);
  for (double& v : s) v = (v - sT) * scale;
  std::vector<double> out(n);
  out[0] = 1.0 - s[0] * s[0];
  for (size_t i = 1; i < n; ++i) out[i] = 1.0 - (s[i] * s[i]) / (s[i - 1] * s[i - 1]);
  return out;
}

std::vector<double> alphas_cumprod(const std::vector<double>& betas) {
  std::vector<double> out(betas.size());
  double running = 1.0;
  for (size_t i = 0; i < betas.size(); ++i) {
    running *= 1.0 - betas[i];
    out[i] = running;
  }
  return out;
}

}  // namespace cellsynth
