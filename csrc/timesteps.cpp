#include "timesteps.h"

#include "schedules.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace cellsynth {
namespace {

// np.linspace(start, stop, n) for start = 0: y[i] = i * ((stop - start) / (n - 1)) + start, with
// the end point set exactly (the same float operations as NumPy, so the same rounding).
std::vector<double> np_linspace(double start, double stop, int64_t n) {
  std::vector<double> y(static_cast<size_t>(n));
  const int64_t div = n - 1;
  const double delta = stop - start;
  if (div > 0) {
    const double step = delta / static_cast<double>(div);
    for (int64_t i = 0; i < n; ++i) {
      const double v = static_cast<double>(i);
      y[static_cast<size_t>(i)] = (step == 0.0 ? v / static_cast<double>(div) * delta : v * step) + start;
    }
    y.back() = stop;
  } else if (n == 1) {
    y[0] = 0.0 * delta + start;
  }
  return y;
}

// np.arange(start, stop, step) for an integer start and stop and a float step: the length is
// ceil((stop - start) / step), y[0] = start, y[1] = start + step and y[i] = start + i * delta with
// delta = y[1] - y[0] (NumPy's DOUBLE_fill).
std::vector<double> np_arange(double start, double stop, double step) {
  const double len_f = std::ceil((stop - start) / step);
  const int64_t n = len_f > 0 ? static_cast<int64_t>(len_f) : 0;
  std::vector<double> y(static_cast<size_t>(n));
  if (n >= 1) y[0] = start;
  if (n >= 2) y[1] = start + step;
  const double delta = n >= 2 ? y[1] - y[0] : 0.0;
  for (int64_t i = 2; i < n; ++i) y[static_cast<size_t>(i)] = start + static_cast<double>(i) * delta;
  return y;
}

// np.round (half to even) then astype(int64).
int64_t round_even(double v) { return static_cast<int64_t>(std::nearbyint(v)); }

void check_counts(int64_t T, int64_t S) {
  check_train_timesteps(T);
  if (S < 1 || S > T) {
    throw std::invalid_argument("num_inference_steps must be between 1 and num_train_timesteps=" +
                                std::to_string(T) + ", got " + std::to_string(S));
  }
}

void check_range(const std::vector<int64_t>& ts, int64_t T, int64_t steps_offset) {
  for (int64_t t : ts) {
    if (t < 0 || t >= T) {
      std::ostringstream msg;
      msg << "timestep " << t << " falls outside [0, " << T << ")";
      if (steps_offset != 0) msg << " (steps_offset=" << steps_offset << ")";
      throw std::invalid_argument(msg.str());
    }
  }
}

std::vector<int64_t> quadratic(int64_t T, int64_t S) {
  const std::vector<double> r = np_linspace(0.0, std::sqrt(static_cast<double>(T) * 0.8), S);
  std::vector<int64_t> asc(static_cast<size_t>(S));
  for (int64_t i = 0; i < S; ++i) {
    const double v = r[static_cast<size_t>(i)];
    int64_t q = static_cast<int64_t>(v * v);  // astype(int64) truncates
    if (i > 0 && q <= asc[static_cast<size_t>(i - 1)]) q = asc[static_cast<size_t>(i - 1)] + 1;
    asc[static_cast<size_t>(i)] = q;
  }
  return std::vector<int64_t>(asc.rbegin(), asc.rend());
}

[[noreturn]] void unknown_spacing(const std::string& spacing) {
  throw std::invalid_argument("unknown timestep_spacing '" + spacing +
                              "' (expected 'leading', 'trailing', 'linspace' or 'quadratic')");
}

}  // namespace

std::vector<int64_t> make_timesteps(int64_t T, int64_t S, const std::string& spacing,
                                    int64_t steps_offset) {
  check_counts(T, S);
  std::vector<int64_t> ts;
  ts.reserve(static_cast<size_t>(S));
  if (spacing == "leading") {
    const int64_t ratio = T / S;
    for (int64_t i = S - 1; i >= 0; --i) ts.push_back(i * ratio + steps_offset);
  } else if (spacing == "trailing") {
    const double step = static_cast<double>(T) / static_cast<double>(S);
    // The first S values: for some (T, S), e.g. (1000, 61), the float arange overshoots to S + 1
    // values, the last of which gives t = -1 (diffusers then takes an extra step at t = -1).
    const std::vector<double> y = np_arange(static_cast<double>(T), 0.0, -step);
    for (int64_t i = 0; i < S && i < static_cast<int64_t>(y.size()); ++i) {
      ts.push_back(round_even(y[static_cast<size_t>(i)]) - 1);
    }
  } else if (spacing == "linspace") {
    const std::vector<double> y = np_linspace(0.0, static_cast<double>(T - 1), S);
    for (auto it = y.rbegin(); it != y.rend(); ++it) ts.push_back(round_even(*it));
  } else if (spacing == "quadratic") {
    ts = quadratic(T, S);
  } else {
    unknown_spacing(spacing);
  }
  check_range(ts, T, spacing == "leading" ? steps_offset : 0);
  return ts;
}

std::vector<int64_t> make_dpmsolver_timesteps(int64_t T, int64_t S, const std::string& spacing,
                                              int64_t steps_offset) {
  check_counts(T, S);
  std::vector<int64_t> ts;
  if (spacing == "linspace") {
    const std::vector<double> y = np_linspace(0.0, static_cast<double>(T - 1), S + 1);
    for (int64_t i = S; i >= 1; --i) ts.push_back(round_even(y[static_cast<size_t>(i)]));
  } else if (spacing == "leading") {
    const int64_t ratio = T / (S + 1);
    for (int64_t i = S; i >= 1; --i) ts.push_back(i * ratio + steps_offset);
  } else if (spacing == "trailing") {
    const double step = static_cast<double>(T) / static_cast<double>(S);
    // The first S values: for some (T, S), e.g. (1000, 61), the float arange overshoots to S + 1
    // values, the last of which gives t = -1 (diffusers then takes an extra step at t = -1).
    const std::vector<double> y = np_arange(static_cast<double>(T), 0.0, -step);
    for (int64_t i = 0; i < S && i < static_cast<int64_t>(y.size()); ++i) {
      ts.push_back(round_even(y[static_cast<size_t>(i)]) - 1);
    }
  } else if (spacing == "quadratic") {
    ts = quadratic(T, S);
  } else {
    unknown_spacing(spacing);
  }
  check_range(ts, T, spacing == "leading" ? steps_offset : 0);
  return ts;
}

std::vector<int64_t> validate_timesteps(const std::vector<int64_t>& ts, int64_t T) {
  check_train_timesteps(T);
  if (ts.empty()) throw std::invalid_argument("timesteps is empty");
  for (size_t i = 0; i < ts.size(); ++i) {
    if (ts[i] < 0 || ts[i] >= T) {
      std::ostringstream msg;
      msg << "timesteps[" << i << "] = " << ts[i] << " falls outside [0, " << T << ")";
      throw std::invalid_argument(msg.str());
    }
    if (i > 0 && ts[i] >= ts[i - 1]) {
      std::ostringstream msg;
      msg << "timesteps must be strictly descending, but timesteps[" << i - 1 << "] = " << ts[i - 1]
          << " and timesteps[" << i << "] = " << ts[i];
      throw std::invalid_argument(msg.str());
    }
  }
  return ts;
}

std::vector<int64_t> previous_timesteps(const std::vector<int64_t>& ts, int64_t T,
                                        bool bug_compatible) {
  if (ts.empty()) throw std::invalid_argument("timesteps is empty");
  std::vector<int64_t> prev(ts.size());
  if (bug_compatible) {
    const int64_t ratio = T / static_cast<int64_t>(ts.size());
    for (size_t i = 0; i < ts.size(); ++i) prev[i] = std::max<int64_t>(ts[i] - ratio, -1);
  } else {
    for (size_t i = 0; i + 1 < ts.size(); ++i) prev[i] = ts[i + 1];
    prev.back() = -1;
  }
  return prev;
}

}  // namespace cellsynth
