// Noise schedules of DDPM-family diffusion models: betas and cumulative alphas.
//
// Names and formulas follow diffusers so that a bundle's schedule means the same thing here as
// in a diffusers scheduler config. Everything is computed in double precision; callers cast.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cellsynth {

// Betas for `num_train_timesteps` steps.
//   linear:             linspace(beta_start, beta_end, T)
//   scaled_linear:      linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2
//   squaredcos_cap_v2:  Nichol & Dhariwal cosine schedule, betas capped at 0.999
// Throws std::invalid_argument on an unknown name or out-of-range parameters.
std::vector<double> make_betas(const std::string& beta_schedule, int64_t num_train_timesteps,
                               double beta_start, double beta_end);

// Checks user-given betas (finite, 0 < beta < 1, non-empty) and returns them unchanged.
std::vector<double> validate_betas(const std::vector<double>& betas);

// alphas_cumprod[t] = prod_{s <= t} (1 - betas[s]).
std::vector<double> alphas_cumprod(const std::vector<double>& betas);

}  // namespace cellsynth
