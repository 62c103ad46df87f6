// Noise schedules of DDPM-family diffusion models: betas and cumulative alphas.
//
// Names and formulas follow diffusers so that a bundle's schedule means the same thing here as
// in a diffusers scheduler config. Everything is computed in double precision; callers cast.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cellsynth {

// The most training timesteps a schedule may have (diffusion models use 1000; 1e6 already takes
// 8 MB per array): a corrupt bundle's 2e9 is refused with a message, not a failed allocation.
constexpr int64_t kMaxTrainTimesteps = 1000000;

// Throws std::invalid_argument unless 1 <= T <= kMaxTrainTimesteps.
void check_train_timesteps(int64_t T);

// Betas for `num_train_timesteps` steps.
//   linear:             linspace(beta_start, beta_end, T)
//   scaled_linear:      linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2
//   squaredcos_cap_v2:  Nichol & Dhariwal cosine schedule, betas capped at 0.999
// Throws std::invalid_argument on an unknown name or out-of-range parameters.
std::vector<double> make_betas(const std::string& beta_schedule, int64_t num_train_timesteps,
                               double beta_start, double beta_end);

// Checks user-given betas (finite, 0 < beta < 1, non-empty) and returns them unchanged.
std::vector<double> validate_betas(const std::vector<double>& betas);

// Zero-terminal-SNR rescaling (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
// are Flawed", Algorithm 1; diffusers' rescale_zero_terminal_snr): with s_t = sqrt(alphas_cumprod),
//   s_t <- (s_t - s_{T-1}) * s_0 / (s_0 - s_{T-1})
// so that alphas_cumprod[0] is unchanged and alphas_cumprod[T-1] = 0 (the last beta becomes 1).
// Needs T >= 2 and a schedule whose alphas_cumprod is not constant.
std::vector<double> rescale_zero_terminal_snr(const std::vector<double>& betas);

// alphas_cumprod[t] = prod_{s <= t} (1 - betas[s]).
std::vector<double> alphas_cumprod(const std::vector<double>& betas);

}  // namespace cellsynth
