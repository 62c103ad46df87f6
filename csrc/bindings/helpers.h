// What both binding files share: array checks and conversions, seeds, step options. No math.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "counts.h"
#include "philox.h"
#include "schedules.h"
#include "step.h"
#include "timesteps.h"
#ifdef CELLSYNTH_WITH_CUDA
#include <memory>

#include "cuda/counts.h"
#include "cuda/device.h"
#include "cuda/runtime.h"
#include "cuda/step.h"
#endif

namespace py = pybind11;

namespace cellsynth_py {

template <typename T>
inline py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* owner = new std::vector<T>(std::move(v));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(owner->size())}, {sizeof(T)}, owner->data(),
                        free_when_done);
}

inline std::vector<double> from_numpy(const py::array_t<double, py::array::c_style | py::array::forcecast>& a,
                               const char* name) {
  if (a.ndim() != 1) {
    throw std::invalid_argument(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) +
                                " dimensions");
  }
  return std::vector<double>(a.data(), a.data() + a.size());
}

inline std::vector<int64_t> int_list(const py::handle& obj, const char* name) {
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

inline View check_array(const py::handle& obj, const char* name, bool writeable, int64_t rows = -1,
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

inline bool overlap(const View& a, const View& b) {
  return a.lo != a.hi && b.lo != b.hi && a.lo < b.hi && b.lo < a.hi;
}

inline void check_no_overlap(const View& a, const char* an, const View& b, const char* bn) {
  if (overlap(a, b)) {
    throw std::invalid_argument(std::string(an) + " and " + bn +
                                " overlap in memory (aliased arrays); pass separate arrays");
  }
}

// A C-contiguous NumPy array of `ndim` dimensions and dtype float32 (kind 'f') or int32 ('i'):
// check_array's checks for the count sampler's per-gene theta and its int32 out.
inline py::array check_typed(const py::handle& obj, const char* name, char kind, int ndim,
                      bool writeable) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  auto a = py::reinterpret_borrow<py::array>(obj);
  const py::dtype dt = a.dtype();
  if (dt.kind() != kind || dt.itemsize() != 4 || dt.byteorder() == '>') {
    throw std::invalid_argument(std::string(name) + " must have dtype " +
                                (kind == 'f' ? "float32" : "int32") + ", got " +
                                std::string(py::str(dt)));
  }
  if (a.ndim() != ndim) {
    throw std::invalid_argument(std::string(name) + " must be " +
                                (ndim == 1 ? "1-D [n_genes]" : "2-D [n_cells, n_genes]") +
                                ", got " + std::to_string(a.ndim()) + " dimensions");
  }
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(name) +
                                " must be C-contiguous (use numpy.ascontiguousarray)");
  }
  if (writeable && !a.writeable()) throw std::invalid_argument(std::string(name) + " is read-only");
  return a;
}

// The memory span of an array, for check_no_overlap (data is left null).
inline View span_of(const py::array& a) {
  View v;
  v.lo = static_cast<const char*>(a.data());
  v.hi = v.lo + a.nbytes();
  return v;
}

inline void check_shape(const View& v, const char* name, int64_t rows, int64_t cols) {
  if (v.rows != rows || v.cols != cols) {
    std::ostringstream msg;
    msg << name << " has shape (" << v.rows << ", " << v.cols << "), expected (" << rows << ", "
        << cols << ") like mean";
    throw std::invalid_argument(msg.str());
  }
}

// A seed: any Python integer (or NumPy integer) in [0, 2^64), else ValueError (pybind11's own
// uint64_t conversion would raise a TypeError that does not say why).
inline uint64_t seed_arg(const py::handle& obj) {
  auto bad = [&obj]() {
    return std::invalid_argument("seed must be an integer in [0, 2^64), got " +
                                 std::string(py::repr(obj)));
  };
  PyObject* index = PyNumber_Index(obj.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    throw bad();
  }
  const auto owner = py::reinterpret_steal<py::object>(index);
  const unsigned long long v = PyLong_AsUnsignedLongLong(index);  // OverflowError when < 0
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw bad();
  }
  return static_cast<uint64_t>(v);
}

inline cellsynth::StepOptions make_options(const cellsynth::StepCoefficients& k,
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



}  // namespace cellsynth_py
