// The core's Python module: converts arrays and exceptions, holds no math (CPU functions here,
// the CUDA ones in cuda.cpp).
#include "bindings/helpers.h"

namespace cellsynth_py {
void bind_cuda(py::module_& m);  // cuda.cpp
}  // namespace cellsynth_py

using namespace cellsynth_py;  // NOLINT: this file is the helpers' one user besides cuda.cpp

PYBIND11_MODULE(_core, m) {
  m.doc() =
      "cellsynth compiled core: noise schedules, timesteps, Philox noise and the fused sampler "
      "step (CPU, and CUDA when built with it)";

  // --- schedules --------------------------------------------------------------------------
  m.def(
      "make_betas",
      [](const std::string& beta_schedule, int64_t num_train_timesteps, double beta_start,
         double beta_end) {
        return to_numpy(cellsynth::make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end));
      },
      py::arg("beta_schedule"), py::arg("num_train_timesteps"), py::arg("beta_start") = 1e-4,
      py::arg("beta_end") = 0.02, "Betas (float64 [T]) of a named schedule, as diffusers defines them.");

  m.def(
      "validate_betas",
      [](const py::array_t<double, py::array::c_style | py::array::forcecast>& betas) {
        return to_numpy(cellsynth::validate_betas(from_numpy(betas, "trained_betas")));
      },
      py::arg("betas"), "Checks user-given betas lie in (0, 1) and returns them as float64.");

  m.def(
      "alphas_cumprod",
      [](const py::array_t<double, py::array::c_style | py::array::forcecast>& betas) {
        std::vector<double> b = from_numpy(betas, "betas");
        for (size_t i = 0; i < b.size(); ++i) {
          if (!(b[i] >= 0.0 && b[i] <= 1.0)) {  // also NaN: a product of them means nothing
            std::ostringstream msg;
            msg << "betas[" << i << "] = " << b[i] << " is outside [0, 1]";
            throw std::invalid_argument(msg.str());
          }
        }
        return to_numpy(cellsynth::alphas_cumprod(b));
      },
      py::arg("betas"), "Cumulative product of (1 - betas), float64 [T]; betas in [0, 1].");

  m.def(
      "rescale_zero_terminal_snr",
      [](const py::array_t<double, py::array::c_style | py::array::forcecast>& betas) {
        return to_numpy(cellsynth::rescale_zero_terminal_snr(from_numpy(betas, "betas")));
      },
      py::arg("betas"),
      "Betas rescaled to zero terminal SNR (Lin et al. 2023), float64 [T]; the last one is 1.");

  // --- timesteps --------------------------------------------------------------------------
  m.def(
      "timesteps",
      [](int64_t T, int64_t S, const std::string& spacing, int64_t steps_offset) {
        return to_numpy(cellsynth::make_timesteps(T, S, spacing, steps_offset));
      },
      py::arg("num_train_timesteps"), py::arg("num_inference_steps"),
      py::arg("spacing") = "leading", py::arg("steps_offset") = 0,
      "Descending int64 timesteps: 'leading', 'trailing', 'linspace' (as diffusers' DDIM/DDPM) or "
      "'quadratic'.");
  m.def(
      "dpmsolver_timesteps",
      [](int64_t T, int64_t S, const std::string& spacing, int64_t steps_offset) {
        return to_numpy(cellsynth::make_dpmsolver_timesteps(T, S, spacing, steps_offset));
      },
      py::arg("num_train_timesteps"), py::arg("num_inference_steps"),
      py::arg("spacing") = "linspace", py::arg("steps_offset") = 0,
      "Descending int64 timesteps as diffusers' DPMSolverMultistepScheduler.set_timesteps.");
  m.def(
      "validate_timesteps",
      [](const py::object& timesteps, int64_t T) {
        return to_numpy(cellsynth::validate_timesteps(int_list(timesteps, "timesteps"), T));
      },
      py::arg("timesteps"), py::arg("num_train_timesteps"),
      "Checks a user-given list (strictly descending, within [0, T)); returns it as int64.");
  m.def(
      "previous_timesteps",
      [](const py::object& timesteps, int64_t T, bool bug_compatible) {
        return to_numpy(
            cellsynth::previous_timesteps(int_list(timesteps, "timesteps"), T, bug_compatible));
      },
      py::arg("timesteps"), py::arg("num_train_timesteps"), py::arg("bug_compatible") = false,
      "The previous timestep of each entry (-1 after the last), or diffusers' t - T // S.");

  // --- threads ----------------------------------------------------------------------------
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) throw std::invalid_argument("threads must be >= 1, got " + std::to_string(n));
#ifdef _OPENMP
        omp_set_num_threads(n);
#endif
      },
      py::arg("threads"),
      "Threads of the OpenMP loops (scheduler step, noise, counts); no effect without OpenMP.");
  m.def(
      "get_num_threads",
      []() -> int {
#ifdef _OPENMP
        return omp_get_max_threads();
#else
        return 1;
#endif
      },
      "Threads the OpenMP loops use (1 without OpenMP).");

  // --- noise ------------------------------------------------------------------------------
  m.attr("INITIAL_NOISE_STEP") = py::int_(cellsynth::kInitialNoiseStep);
  m.def(
      "philox4x32_10",
      [](std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
        const auto r = cellsynth::philox4x32_10(ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1]);
        return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
      },
      py::arg("counter"), py::arg("key"), "One Philox4x32-10 block: 4 uint32 from 4 + 2 uint32.");
  m.def(
      "randn",
      [](const py::object& out, uint64_t seed, int64_t step, int64_t cell_offset) {
        const View o = check_array(out, "out", true);
        if (step < 0 || step > 0xFFFFFFFFll) throw std::invalid_argument("step must lie in [0, 2^32)");
        if (cell_offset < 0) throw std::invalid_argument("cell_offset must be >= 0");
        py::gil_scoped_release release;
        cellsynth::randn_cpu(o.data, o.rows, o.cols, seed, static_cast<uint32_t>(step),
                             static_cast<uint64_t>(cell_offset));
      },
      py::arg("out"), py::arg("seed"), py::arg("step"), py::arg("cell_offset") = 0,
      "Fills float32 [n_cells, n_genes] `out` with the Philox normals of "
      "(seed, cell_offset + row, step, gene).");

  // --- NB / ZINB counts -------------------------------------------------------------------
  m.attr("COUNT_STREAM_BIT") = py::int_(cellsynth::kCountStreamBit);
  m.def(
      "sample_counts",
      [](const py::object& mean, const py::object& theta, const py::object& out,
         const py::object& seed, int64_t cell_offset, const py::object& zero_prob) {
        const View mu = check_array(mean, "mean", false);
        const py::array th = check_typed(theta, "theta", 'f', 1, false);
        if (th.shape(0) != mu.cols) {
          throw std::invalid_argument("theta has length " + std::to_string(th.shape(0)) +
                                      ", expected n_genes = " + std::to_string(mu.cols) +
                                      " (the columns of mean)");
        }
        View zp;
        if (!zero_prob.is_none()) {
          zp = check_array(zero_prob, "zero_prob", false);
          check_shape(zp, "zero_prob", mu.rows, mu.cols);
        }
        const py::array o = check_typed(out, "out", 'i', 2, true);
        View ov = span_of(o);
        ov.rows = o.shape(0);
        ov.cols = o.shape(1);
        check_shape(ov, "out", mu.rows, mu.cols);
        check_no_overlap(ov, "out", mu, "mean");
        check_no_overlap(ov, "out", span_of(th), "theta");
        check_no_overlap(ov, "out", zp, "zero_prob");
        const uint64_t s = seed_arg(seed);
        if (cell_offset < 0) {
          throw std::invalid_argument("cell_offset must be >= 0, got " +
                                      std::to_string(cell_offset));
        }
        const auto* theta_data = static_cast<const float*>(th.data());
        auto* out_data = static_cast<int32_t*>(const_cast<void*>(o.data()));
        py::gil_scoped_release release;
        cellsynth::sample_counts_cpu(mu.data, theta_data, zp.data, out_data, mu.rows, mu.cols, s,
                                     static_cast<uint64_t>(cell_offset));
      },
      py::arg("mean"), py::arg("theta"), py::arg("out"), py::arg("seed"),
      py::arg("cell_offset") = 0, py::arg("zero_prob") = py::none(),
      "Fills int32 [n_cells, n_genes] `out` with negative-binomial counts of float32 "
      "[n_cells, n_genes] `mean` and per-gene dispersion float32 [n_genes] `theta` (+inf: "
      "Poisson), zero-inflated with probability float32 [n_cells, n_genes] `zero_prob` when given, "
      "keyed by (seed, cell_offset + row, gene) as counts.h describes.");

  // --- step coefficients ------------------------------------------------------------------
  py::class_<cellsynth::StepCoefficients>(m, "StepCoefficients",
                                          "x_prev = a x0 + b eps + c x_t + d h + sigma z (step.h)")
      .def(py::init([](double sqrt_alpha_prod, double sqrt_one_minus_alpha_prod, double a, double b,
                       double c, double d, double sigma) {
             cellsynth::StepCoefficients k;
             k.sqrt_alpha_prod = sqrt_alpha_prod;
             k.sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod;
             k.a = a;
             k.b = b;
             k.c = c;
             k.d = d;
             k.sigma = sigma;
             return k;
           }),
           py::kw_only(), py::arg("sqrt_alpha_prod") = 1.0, py::arg("sqrt_one_minus_alpha_prod") = 0.0,
           py::arg("a") = 0.0, py::arg("b") = 0.0, py::arg("c") = 0.0, py::arg("d") = 0.0,
           py::arg("sigma") = 0.0)
      .def_readonly("sqrt_alpha_prod", &cellsynth::StepCoefficients::sqrt_alpha_prod)
      .def_readonly("sqrt_one_minus_alpha_prod",
                    &cellsynth::StepCoefficients::sqrt_one_minus_alpha_prod)
      .def_readonly("a", &cellsynth::StepCoefficients::a)
      .def_readonly("b", &cellsynth::StepCoefficients::b)
      .def_readonly("c", &cellsynth::StepCoefficients::c)
      .def_readonly("d", &cellsynth::StepCoefficients::d)
      .def_readonly("sigma", &cellsynth::StepCoefficients::sigma)
      .def("__repr__", [](const cellsynth::StepCoefficients& k) {
        std::ostringstream s;
        s.precision(17);
        s << "StepCoefficients(sqrt_alpha_prod=" << k.sqrt_alpha_prod
          << ", sqrt_one_minus_alpha_prod=" << k.sqrt_one_minus_alpha_prod << ", a=" << k.a
          << ", b=" << k.b << ", c=" << k.c << ", d=" << k.d << ", sigma=" << k.sigma << ")";
        return s.str();
      });

  m.def("ddim_coefficients", &cellsynth::ddim_coefficients, py::arg("alpha_prod_t"),
        py::arg("alpha_prod_t_prev"), py::arg("eta") = 0.0, "DDIM step coefficients (step.h).");
  m.def(
      "ddpm_coefficients",
      [](double ab, double ab_prev, int64_t timestep, const std::string& variance_type) {
        return cellsynth::ddpm_coefficients(ab, ab_prev, timestep,
                                            cellsynth::parse_variance_type(variance_type));
      },
      py::arg("alpha_prod_t"), py::arg("alpha_prod_t_prev"), py::arg("timestep"),
      py::arg("variance_type") = "fixed_small", "DDPM step coefficients (step.h).");
  m.def(
      "dpmsolver_coefficients",
      [](double sigma_s1, double sigma_s0, double sigma_t, int order,
         const std::string& solver_type) {
        return cellsynth::dpmsolver_coefficients(sigma_s1, sigma_s0, sigma_t, order,
                                                 cellsynth::parse_dpmsolver_type(solver_type));
      },
      py::arg("sigma_s1"), py::arg("sigma_s0"), py::arg("sigma_t"), py::arg("order"),
      py::arg("solver_type") = "midpoint",
      "DPM-Solver++ step coefficients from diffusers-style sigmas (step.h).");

  m.def(
      "dynamic_threshold",
      [](const py::array_t<float, py::array::c_style | py::array::forcecast>& abs_x0, double ratio,
         double sample_max_value, const std::string& method) {
        if (abs_x0.ndim() != 1) throw std::invalid_argument("abs_x0 must be 1-D");
        if (method != "select" && method != "bisection") {
          throw std::invalid_argument("method must be 'select' or 'bisection'");
        }
        std::vector<float> a(abs_x0.data(), abs_x0.data() + abs_x0.size());
        for (float v : a) {
          if (v < 0.0f) throw std::invalid_argument("abs_x0 must be >= 0");
        }
        return cellsynth::threshold_of_abs(a.data(), static_cast<int64_t>(a.size()),
                                           static_cast<float>(ratio),
                                           static_cast<float>(sample_max_value),
                                           method == "bisection");
      },
      py::arg("abs_x0"), py::arg("ratio"), py::arg("sample_max_value"),
      py::arg("method") = "select",
      "Dynamic thresholding's s of one cell from |x0| (float32 [G]): 'select' is the CPU "
      "kernel's algorithm, 'bisection' the CUDA kernel's.");

  // --- the fused step ---------------------------------------------------------------------
  m.def(
      "step",
      [](const py::object& model_output, const py::object& sample, const py::object& out,
         const cellsynth::StepCoefficients& k, const std::string& prediction_type,
         bool clip_sample, double clip_sample_range, bool thresholding,
         double dynamic_thresholding_ratio, double sample_max_value, bool use_clipped_model_output,
         uint64_t seed, int64_t step_index, int64_t cell_offset, bool truncate,
         double truncate_threshold, const py::object& history, const py::object& noise) {
        const View x = check_array(sample, "sample", false);
        const View mo = check_array(model_output, "model_output", false, x.rows, x.cols);
        const View o = check_array(out, "out", true, x.rows, x.cols);
        View h, z;
        if (!history.is_none()) h = check_array(history, "history", true, x.rows, x.cols);
        if (!noise.is_none()) z = check_array(noise, "variance_noise", false, x.rows, x.cols);
        // out may be sample itself (in place) but must not partly overlap it or anything else.
        if (!(o.lo == x.lo && o.hi == x.hi)) check_no_overlap(o, "out", x, "sample");
        check_no_overlap(o, "out", mo, "model_output");
        check_no_overlap(o, "out", h, "history");
        check_no_overlap(o, "out", z, "variance_noise");
        check_no_overlap(h, "history", mo, "model_output");
        check_no_overlap(h, "history", x, "sample");
        check_no_overlap(h, "history", z, "variance_noise");
        const cellsynth::StepOptions opt = make_options(
            k, prediction_type, clip_sample, clip_sample_range, thresholding,
            dynamic_thresholding_ratio, sample_max_value, use_clipped_model_output, seed,
            step_index, cell_offset, truncate, truncate_threshold);
        py::gil_scoped_release release;
        cellsynth::step_cpu(opt, mo.data, x.data, o.data, h.data, z.data, x.rows, x.cols);
      },
      py::arg("model_output"), py::arg("sample"), py::arg("out"), CELLSYNTH_STEP_OPTION_ARGS,
      py::arg("history") = py::none(), py::arg("noise") = py::none(),
      "One fused step on float32 C-contiguous [n_cells, n_genes] NumPy arrays, written to `out` "
      "(which may be `sample`). `history` (optional) is read where coefficients.d != 0 and then "
      "overwritten with x0; `noise` replaces the Philox noise (seed, cell_offset + row, "
      "step_index, gene) where coefficients.sigma != 0.");

  bind_cuda(m);
}
