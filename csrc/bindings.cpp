// The only file that knows Python: converts arrays and exceptions, holds no math.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "philox.h"
#include "schedules.h"
#include "step.h"
#include "timesteps.h"
#ifdef CELLSYNTH_WITH_CUDA
#include "cuda/device.h"
#include "cuda/step.h"
#endif

namespace py = pybind11;

namespace {

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* owner = new std::vector<T>(std::move(v));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(owner->size())}, {sizeof(T)}, owner->data(),
                        free_when_done);
}

std::vector<double> from_numpy(const py::array_t<double, py::array::c_style | py::array::forcecast>& a,
                               const char* name) {
  if (a.ndim() != 1) {
    throw std::invalid_argument(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) +
                                " dimensions");
  }
  return std::vector<double>(a.data(), a.data() + a.size());
}

std::vector<int64_t> int_list(const py::handle& obj, const char* name) {
  const auto a = py::array::ensure(obj);
  if (!a) throw std::invalid_argument(std::string(name) + " must be a sequence of integers");
  if (a.ndim() != 1) {
    throw std::invalid_argument(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) +
                                " dimensions");
  }
  const char kind = a.dtype().kind();
  if (a.size() > 0 && kind != 'i' && kind != 'u') {
    throw std::invalid_argument(std::string(name) + " must hold integers, got dtype " +
                                std::string(py::str(a.dtype())));
  }
  const auto as64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  return std::vector<int64_t>(as64.data(), as64.data() + as64.size());
}

// A float32, C-contiguous, 2-D NumPy array of the expected shape (shape[0] < 0: any).
struct View {
  float* data = nullptr;
  int64_t rows = 0, cols = 0;
  const char* lo = nullptr;
  const char* hi = nullptr;  // [lo, hi) is the memory the array spans
};

View check_array(const py::handle& obj, const char* name, bool writeable, int64_t rows = -1,
                 int64_t cols = -1) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  auto a = py::reinterpret_borrow<py::array>(obj);
  const py::dtype dt = a.dtype();
  if (dt.kind() != 'f' || dt.itemsize() != 4 || dt.byteorder() == '>') {
    throw std::invalid_argument(std::string(name) + " must have dtype float32, got " +
                                std::string(py::str(dt)));
  }
  if (a.ndim() != 2) {
    throw std::invalid_argument(std::string(name) + " must be 2-D [n_cells, n_genes], got " +
                                std::to_string(a.ndim()) + " dimensions");
  }
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(name) +
                                " must be C-contiguous (use numpy.ascontiguousarray)");
  }
  if (writeable && !a.writeable()) throw std::invalid_argument(std::string(name) + " is read-only");
  View v;
  v.rows = a.shape(0);
  v.cols = a.shape(1);
  if (rows >= 0 && (v.rows != rows || v.cols != cols)) {
    std::ostringstream msg;
    msg << name << " has shape (" << v.rows << ", " << v.cols << "), expected (" << rows << ", "
        << cols << ") like sample";
    throw std::invalid_argument(msg.str());
  }
  v.data = static_cast<float*>(const_cast<void*>(a.data()));
  v.lo = reinterpret_cast<const char*>(v.data);
  v.hi = v.lo + a.nbytes();
  return v;
}

bool overlap(const View& a, const View& b) {
  return a.lo != a.hi && b.lo != b.hi && a.lo < b.hi && b.lo < a.hi;
}

void check_no_overlap(const View& a, const char* an, const View& b, const char* bn) {
  if (overlap(a, b)) {
    throw std::invalid_argument(std::string(an) + " and " + bn +
                                " overlap in memory (aliased arrays); pass separate arrays");
  }
}

cellsynth::StepOptions make_options(const cellsynth::StepCoefficients& k,
                                    const std::string& prediction_type, bool clip_sample,
                                    double clip_sample_range, bool thresholding,
                                    double dynamic_thresholding_ratio, double sample_max_value,
                                    bool use_clipped_model_output, uint64_t seed,
                                    int64_t step_index, int64_t cell_offset, bool truncate,
                                    double truncate_threshold) {
  if (step_index < 0 || step_index > 0xFFFFFFFFll) {
    throw std::invalid_argument("step_index must lie in [0, 2^32), got " + std::to_string(step_index));
  }
  if (cell_offset < 0) {
    throw std::invalid_argument("cell_offset must be >= 0, got " + std::to_string(cell_offset));
  }
  cellsynth::StepOptions o;
  o.prediction_type = cellsynth::parse_prediction_type(prediction_type);
  o.coefficients = k;
  o.clip_sample = clip_sample;
  o.clip_sample_range = static_cast<float>(clip_sample_range);
  o.thresholding = thresholding;
  o.dynamic_thresholding_ratio = static_cast<float>(dynamic_thresholding_ratio);
  o.sample_max_value = static_cast<float>(sample_max_value);
  o.rederive_eps = use_clipped_model_output;
  o.seed = seed;
  o.step_index = static_cast<uint32_t>(step_index);
  o.cell_offset = static_cast<uint64_t>(cell_offset);
  o.truncate = truncate;
  o.truncate_threshold = static_cast<float>(truncate_threshold);
  cellsynth::validate_step_options(o);
  return o;
}

#define CELLSYNTH_STEP_OPTION_ARGS                                                              \
  py::arg("coefficients"), py::kw_only(), py::arg("prediction_type") = "epsilon",               \
      py::arg("clip_sample") = false, py::arg("clip_sample_range") = 1.0,                       \
      py::arg("thresholding") = false, py::arg("dynamic_thresholding_ratio") = 0.995,           \
      py::arg("sample_max_value") = 1.0, py::arg("use_clipped_model_output") = false,           \
      py::arg("seed") = 0, py::arg("step_index") = 0, py::arg("cell_offset") = 0,               \
      py::arg("truncate") = false, py::arg("truncate_threshold") = 0.0

}  // namespace

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
        return to_numpy(cellsynth::alphas_cumprod(from_numpy(betas, "betas")));
      },
      py::arg("betas"), "Cumulative product of (1 - betas), float64 [T].");

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

#ifdef CELLSYNTH_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.def("cuda_device_count", &cellsynth::cuda::device_count,
        "Number of CUDA devices the runtime sees (0 without a driver).");
  m.def("cuda_device_name", &cellsynth::cuda::device_name, py::arg("index") = 0);
  m.def(
      "cuda_step",
      [](uintptr_t model_output, uintptr_t sample, uintptr_t out, int64_t n_cells, int64_t n_genes,
         const cellsynth::StepCoefficients& k, const std::string& prediction_type,
         bool clip_sample, double clip_sample_range, bool thresholding,
         double dynamic_thresholding_ratio, double sample_max_value, bool use_clipped_model_output,
         uint64_t seed, int64_t step_index, int64_t cell_offset, bool truncate,
         double truncate_threshold, uintptr_t history, uintptr_t noise, uintptr_t stream,
         int device) {
        if (n_cells < 0 || n_genes < 0) throw std::invalid_argument("cuda_step: negative shape");
        if (n_cells > 0 && n_genes > 0 && (model_output == 0 || sample == 0 || out == 0)) {
          throw std::invalid_argument("cuda_step: null device pointer");
        }
        const cellsynth::StepOptions opt = make_options(
            k, prediction_type, clip_sample, clip_sample_range, thresholding,
            dynamic_thresholding_ratio, sample_max_value, use_clipped_model_output, seed,
            step_index, cell_offset, truncate, truncate_threshold);
        py::gil_scoped_release release;
        cellsynth::cuda::step(opt, reinterpret_cast<const float*>(model_output),
                              reinterpret_cast<const float*>(sample), reinterpret_cast<float*>(out),
                              reinterpret_cast<float*>(history),
                              reinterpret_cast<const float*>(noise), n_cells, n_genes,
                              reinterpret_cast<void*>(stream), device);
      },
      py::arg("model_output"), py::arg("sample"), py::arg("out"), py::arg("n_cells"),
      py::arg("n_genes"), CELLSYNTH_STEP_OPTION_ARGS, py::arg("history") = 0,
      py::arg("noise") = 0, py::arg("stream") = 0, py::arg("device") = 0,
      "The fused step on raw device pointers (float32 C-contiguous [n_cells, n_genes]; 0 = none "
      "for history / noise), launched asynchronously on `stream` (a cudaStream_t as int).");
  m.def(
      "cuda_randn",
      [](uintptr_t out, int64_t n_cells, int64_t n_genes, uint64_t seed, int64_t step,
         int64_t cell_offset, uintptr_t stream, int device) {
        if (n_cells < 0 || n_genes < 0) throw std::invalid_argument("cuda_randn: negative shape");
        if (n_cells > 0 && n_genes > 0 && out == 0) {
          throw std::invalid_argument("cuda_randn: null device pointer");
        }
        if (step < 0 || step > 0xFFFFFFFFll) throw std::invalid_argument("step must lie in [0, 2^32)");
        if (cell_offset < 0) throw std::invalid_argument("cell_offset must be >= 0");
        py::gil_scoped_release release;
        cellsynth::cuda::randn(reinterpret_cast<float*>(out), n_cells, n_genes, seed,
                               static_cast<uint32_t>(step), static_cast<uint64_t>(cell_offset),
                               reinterpret_cast<void*>(stream), device);
      },
      py::arg("out"), py::arg("n_cells"), py::arg("n_genes"), py::arg("seed"), py::arg("step"),
      py::arg("cell_offset") = 0, py::arg("stream") = 0, py::arg("device") = 0,
      "Fills device float32 [n_cells, n_genes] with the Philox normals, on `stream`.");
#else
  m.attr("cuda_compiled") = false;
  m.def("cuda_device_count", []() { return 0; }, "Always 0: built without CUDA.");
  m.def("cuda_device_name", [](int) { return std::string(); }, py::arg("index") = 0);
#endif
}
