// Which training timesteps a sampler visits, and the previous timestep of each.
//
// All lists are descending int64 timesteps in [0, T). With T = num_train_timesteps and
// S = num_inference_steps, the spacings follow diffusers' DDIMScheduler / DDPMScheduler
// `set_timesteps` to the bit (including NumPy's float rounding):
//   leading:   (arange(S) * (T // S)).round()[::-1] + steps_offset
//   trailing:  (round(arange(T, 0, -T / S)) - 1)[:S]   (for some (T, S), e.g. (1000, 61), the float
//              arange overshoots to S + 1 values, the last giving t = -1, and diffusers then takes
//              S + 1 steps, the last at alphas_cumprod[-1]; we keep the S valid ones)
//   linspace:  linspace(0, T - 1, S).round()[::-1]
// plus cellsynth's
//   quadratic: the DDIM paper's "quad" skip (Song et al. 2021, appendix D.2), made unique:
//                q_i = int(linspace(0, sqrt(0.8 T), S)[i] ** 2)        i = 0 .. S-1, ascending
//                q_i = max(q_i, q_{i-1} + 1)                             for i >= 1
//              then reversed. Dense near t = 0, sparse near 0.8 T (the largest timestep is
//              max(int(0.8 T), S - 1) <= T - 1). steps_offset does not apply.
// np.round rounds half to even; std::nearbyint does the same in the default rounding mode.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cellsynth {

// Timesteps for S steps out of T (see above). Throws std::invalid_argument on an unknown spacing,
// S outside [1, T], or timesteps that fall outside [0, T) (e.g. a large steps_offset).
std::vector<int64_t> make_timesteps(int64_t num_train_timesteps, int64_t num_inference_steps,
                                    const std::string& spacing, int64_t steps_offset);

// diffusers' DPMSolverMultistepScheduler.set_timesteps (lambda_min_clipped = -inf, no Karras /
// exponential / beta / Lu sigmas), which spaces S + 1 points and drops the last:
//   linspace:  linspace(0, T - 1, S + 1).round()[::-1][:-1]
//   leading:   (arange(S + 1) * (T // (S + 1))).round()[::-1][:-1] + steps_offset
//   trailing:  (arange(T, 0, -T / S).round() - 1)[:S]
//   quadratic: as make_timesteps.
// Unlike make_timesteps the result may repeat a timestep (as diffusers' may, when S is close to T).
std::vector<int64_t> make_dpmsolver_timesteps(int64_t num_train_timesteps,
                                              int64_t num_inference_steps,
                                              const std::string& spacing, int64_t steps_offset);

// Checks a user-given list: non-empty, strictly descending, every value in [0, T). Returns it.
std::vector<int64_t> validate_timesteps(const std::vector<int64_t>& timesteps,
                                        int64_t num_train_timesteps);

// The previous timestep of each entry: the next entry of the list, -1 after the last (meaning
// "the clean end": alpha_bar_prev = 1 when set_alpha_to_one, else alphas_cumprod[0]).
// bug_compatible = true reproduces diffusers' DDIMScheduler instead: prev = t - T // S with
// S = len(timesteps) (negative values mean the clean end there too). That formula is wrong for
// 'linspace' and for 'trailing' when T % S != 0; it exists so parity with diffusers can be tested.
std::vector<int64_t> previous_timesteps(const std::vector<int64_t>& timesteps,
                                        int64_t num_train_timesteps, bool bug_compatible);

}  // namespace cellsynth
