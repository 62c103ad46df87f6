// The only file that knows Python: converts arrays and exceptions, holds no math.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "schedules.h"
#ifdef CELLSYNTH_WITH_CUDA
#include "cuda/device.h"
#endif

namespace py = pybind11;

namespace {

py::array_t<double> to_numpy(std::vector<double>&& v) {
  auto* owner = new std::vector<double>(std::move(v));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<double>*>(p); });
  return py::array_t<double>({static_cast<py::ssize_t>(owner->size())}, {sizeof(double)},
                             owner->data(), free_when_done);
}

std::vector<double> from_numpy(const py::array_t<double, py::array::c_style | py::array::forcecast>& a,
                               const char* name) {
  if (a.ndim() != 1) {
    throw std::invalid_argument(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) +
                                " dimensions");
  }
  return std::vector<double>(a.data(), a.data() + a.size());
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "cellsynth compiled core: noise schedules (CPU) and CUDA device queries";

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

#ifdef CELLSYNTH_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.def("cuda_device_count", &cellsynth::cuda::device_count,
        "Number of CUDA devices the runtime sees (0 without a driver).");
  m.def("cuda_device_name", &cellsynth::cuda::device_name, py::arg("index") = 0);
#else
  m.attr("cuda_compiled") = false;
  m.def("cuda_device_count", []() { return 0; }, "Always 0: built without CUDA.");
  m.def("cuda_device_name", [](int) { return std::string(); }, py::arg("index") = 0);
#endif
}
