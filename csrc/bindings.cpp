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

// A C-contiguous NumPy array of `ndim` dimensions and dtype float32 (kind 'f') or int32 ('i'):
// check_array's checks for the count sampler's per-gene theta and its int32 out.
py::array check_typed(const py::handle& obj, const char* name, char kind, int ndim,
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
View span_of(const py::array& a) {
  View v;
  v.lo = static_cast<const char*>(a.data());
  v.hi = v.lo + a.nbytes();
  return v;
}

void check_shape(const View& v, const char* name, int64_t rows, int64_t cols) {
  if (v.rows != rows || v.cols != cols) {
    std::ostringstream msg;
    msg << name << " has shape (" << v.rows << ", " << v.cols << "), expected (" << rows << ", "
        << cols << ") like mean";
    throw std::invalid_argument(msg.str());
  }
}

// A seed: any Python integer (or NumPy integer) in [0, 2^64), else ValueError (pybind11's own
// uint64_t conversion would raise a TypeError that does not say why).
uint64_t seed_arg(const py::handle& obj) {
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


// --- the torch-free CUDA runtime (csrc/cuda/runtime.h): device arrays, streams, graphs -------

#ifdef CELLSYNTH_WITH_CUDA
namespace cu = cellsynth::cuda;

// A stream argument: None (the default given), an int (a cudaStream_t), or an object with a
// `handle` (CudaStream) or `cuda_stream` (torch.cuda.Stream) attribute.
uintptr_t stream_arg(const py::object& s, uintptr_t fallback) {
  if (s.is_none()) return fallback;
  if (py::hasattr(s, "handle")) return s.attr("handle").cast<uintptr_t>();
  if (py::hasattr(s, "cuda_stream")) return s.attr("cuda_stream").cast<uintptr_t>();
  return s.cast<uintptr_t>();
}

void* as_ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

// A C-contiguous device array: shape, dtype, device memory shared by views, and the stream its
// operations default to.
struct DeviceArray {
  std::shared_ptr<cu::DeviceBuffer> buffer;
  std::vector<int64_t> shape;
  cu::DType dtype = cu::DType::kFloat32;
  uintptr_t stream = 0;

  int64_t size() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(size()) * cu::dtype_size(dtype); }
  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(buffer->data()); }
  int device() const { return buffer->device(); }
};

std::vector<int64_t> shape_arg(const py::object& shape) {
  std::vector<int64_t> out;
  if (py::isinstance<py::int_>(shape)) {
    out.push_back(shape.cast<int64_t>());
  } else {
    for (const auto& d : shape) out.push_back(d.cast<int64_t>());
  }
  for (int64_t d : out) {
    if (d < 0) throw std::invalid_argument("DeviceArray: negative dimension in shape");
  }
  return out;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) s << ",";
  s << ")";
  return s.str();
}

bool dtype_matches(const py::dtype& dt, cu::DType want) {
  if (dt.byteorder() == '>') return false;
  const char kind = dt.kind();
  const auto size = static_cast<size_t>(dt.itemsize());
  switch (want) {
    case cu::DType::kFloat32:
    case cu::DType::kFloat16:
      return kind == 'f' && size == cu::dtype_size(want);
    default:
      return kind == 'i' && size == cu::dtype_size(want);
  }
}

void check_bounds(size_t offset, size_t nbytes, size_t total, const char* what) {
  if (offset > total || nbytes > total - offset) {
    throw std::invalid_argument(std::string(what) + ": byte range [" + std::to_string(offset) +
                                ", " + std::to_string(offset + nbytes) + ") exceeds the " +
                                std::to_string(total) + " bytes of the array");
  }
}

struct CudaStream {
  void* handle = nullptr;
  int device = 0;
  explicit CudaStream(int dev) : handle(cu::stream_create(dev)), device(dev) {}
  ~CudaStream() { close(); }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  void close() {
    cu::stream_destroy(handle, device);
    handle = nullptr;
  }
};

struct CudaGraph {
  cu::Graph* graph = nullptr;
  int device = 0;
  CudaGraph(cu::Graph* g, int dev) : graph(g), device(dev) {}
  ~CudaGraph() { close(); }
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  void close() {
    cu::graph_destroy(graph);
    graph = nullptr;
  }
};

// The device of a stream argument: a CudaStream's own, else `device`.
int stream_device(const py::object& s, int device) {
  if (py::isinstance<CudaStream>(s)) return s.cast<const CudaStream&>().device;
  return device;
}

int capture_mode(const std::string& mode) {
  if (mode == "global") return 0;
  if (mode == "thread_local") return 1;
  if (mode == "relaxed") return 2;
  throw std::invalid_argument("capture mode must be 'global', 'thread_local' or 'relaxed', got '" +
                              mode + "'");
}

void bind_cuda_runtime(py::module_& m) {
  m.def(
      "cuda_device_properties",
      [](int index) {
        const cu::DeviceProperties p = cu::device_properties(index);
        py::dict d;
        d["name"] = p.name;
        d["major"] = p.major;
        d["minor"] = p.minor;
        d["compute_capability"] = std::to_string(p.major) + "." + std::to_string(p.minor);
        d["total_memory"] = p.total_memory;
        d["multiprocessors"] = p.multiprocessors;
        return d;
      },
      py::arg("index") = 0,
      "Name, compute capability ('M.m', major, minor), total memory (bytes) and SM count of a "
      "CUDA device; RuntimeError when it cannot be queried.");

  py::class_<CudaStream>(m, "CudaStream", "A non-blocking CUDA stream, destroyed with the object.")
      .def(py::init<int>(), py::arg("device") = 0)
      .def_property_readonly("handle",
                             [](const CudaStream& s) { return reinterpret_cast<uintptr_t>(s.handle); },
                             "The cudaStream_t as an int (for TensorRT, onnxruntime, cuda_step).")
      .def_readonly("device", &CudaStream::device)
      .def(
          "synchronize",
          [](const CudaStream& s) {
            if (s.handle == nullptr) throw std::runtime_error("the stream is closed");
            py::gil_scoped_release release;
            cu::stream_synchronize(s.handle, s.device);
          },
          "Wait until all work queued on the stream is done.")
      .def("close", &CudaStream::close, "Destroy the stream now (also done when collected).")
      .def("__int__", [](const CudaStream& s) { return reinterpret_cast<uintptr_t>(s.handle); })
      .def("__repr__", [](const CudaStream& s) {
        std::ostringstream r;
        r << "CudaStream(device=" << s.device << ", handle=0x" << std::hex
          << reinterpret_cast<uintptr_t>(s.handle) << ")";
        return r.str();
      });

  py::class_<CudaGraph>(m, "CudaGraph",
                        "An instantiated CUDA graph captured from a stream (end_capture).")
      .def_static(
          "begin_capture",
          [](const py::object& stream, const std::string& mode, int device) {
            const uintptr_t s = stream_arg(stream, 0);
            cu::begin_capture(as_ptr(s), capture_mode(mode), stream_device(stream, device));
          },
          py::arg("stream"), py::arg("mode") = "thread_local", py::arg("device") = 0,
          "Start recording the work queued on `stream` (a CudaStream or handle) instead of "
          "running it. Device memory cannot be allocated until the capture ends.")
      .def_static(
          "end_capture",
          [](const py::object& stream, int device) {
            const uintptr_t s = stream_arg(stream, 0);
            const int dev = stream_device(stream, device);
            return std::make_unique<CudaGraph>(cu::end_capture(as_ptr(s), dev), dev);
          },
          py::arg("stream"), py::arg("device") = 0,
          "Stop recording and instantiate the graph; RuntimeError when the capture was "
          "invalidated (the stream is out of capture mode either way).")
      .def_static(
          "abort_capture",
          [](const py::object& stream, int device) {
            cu::abort_capture(as_ptr(stream_arg(stream, 0)), stream_device(stream, device));
          },
          py::arg("stream"), py::arg("device") = 0,
          "End a capture in progress on `stream` and discard it (no-op when none is).")
      .def_static(
          "is_capturing",
          [](const py::object& stream, int device) {
            return cu::is_capturing(as_ptr(stream_arg(stream, 0)), stream_device(stream, device));
          },
          py::arg("stream"), py::arg("device") = 0)
      .def(
          "launch",
          [](const CudaGraph& g, const py::object& stream) {
            if (g.graph == nullptr) throw std::runtime_error("the graph is closed");
            cu::graph_launch(g.graph, as_ptr(stream_arg(stream, 0)));
          },
          py::arg("stream"), "Replay the graph on `stream` (asynchronous).")
      .def_property_readonly("num_nodes",
                             [](const CudaGraph& g) { return cu::graph_num_nodes(g.graph); })
      .def_readonly("device", &CudaGraph::device)
      .def("close", &CudaGraph::close, "Free the graph now (also done when collected).");

  py::class_<DeviceArray>(
      m, "DeviceArray",
      "A C-contiguous array in CUDA device memory (cudaMalloc'd, freed with the last reference). "
      "Operations run on `stream` unless given one; host copies wait for it.")
      .def(py::init([](const py::object& shape, const std::string& dtype, int device,
                       const py::object& stream) {
             auto a = std::make_unique<DeviceArray>();
             a->shape = shape_arg(shape);
             a->dtype = cu::parse_dtype(dtype);
             a->stream = stream_arg(stream, 0);
             a->buffer = std::make_shared<cu::DeviceBuffer>(a->nbytes(), device);
             return a;
           }),
           py::arg("shape"), py::arg("dtype") = "float32", py::arg("device") = 0,
           py::arg("stream") = py::none(),
           "Uninitialised device memory of `shape` and `dtype` ('float32', 'float16', 'int32', "
           "'int64') on CUDA device `device`.")
      .def("data_ptr", &DeviceArray::ptr, "The device address as an int.")
      .def_property_readonly("shape",
                             [](const DeviceArray& a) {
                               py::tuple t(a.shape.size());
                               for (size_t i = 0; i < a.shape.size(); ++i) t[i] = a.shape[i];
                               return t;
                             })
      .def_property_readonly("ndim", [](const DeviceArray& a) { return a.shape.size(); })
      .def_property_readonly("size", &DeviceArray::size)
      .def_property_readonly("dtype", [](const DeviceArray& a) { return cu::dtype_name(a.dtype); })
      .def_property_readonly("itemsize", [](const DeviceArray& a) { return cu::dtype_size(a.dtype); })
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("device", &DeviceArray::device)
      .def_property_readonly("is_cuda", [](const DeviceArray&) { return true; })
      .def_property(
          "stream", [](const DeviceArray& a) { return a.stream; },
          [](DeviceArray& a, const py::object& s) { a.stream = stream_arg(s, 0); },
          "The default stream (cudaStream_t as int; 0 = legacy default) of this array's "
          "operations and of the scheduler steps that take it.")
      .def(
          "copy_from_host",
          [](DeviceArray& a, const py::object& host, const py::object& stream) {
            auto arr = py::array::ensure(host, py::array::c_style);
            if (!arr) throw py::type_error("copy_from_host needs an array-like");
            if (!dtype_matches(arr.dtype(), a.dtype)) {
              throw py::type_error("copy_from_host: host array has dtype " +
                                   std::string(py::str(arr.dtype())) + ", the DeviceArray " +
                                   cu::dtype_name(a.dtype) + " (cast it first)");
            }
            if (arr.size() != a.size()) {
              std::vector<int64_t> hs(arr.shape(), arr.shape() + arr.ndim());
              throw std::invalid_argument("copy_from_host: host array has shape " +
                                          shape_str(hs) + ", the DeviceArray " +
                                          shape_str(a.shape));
            }
            const uintptr_t s = stream_arg(stream, a.stream);
            const void* src = arr.data();
            void* dst = as_ptr(a.ptr());
            const size_t n = a.nbytes();
            const int dev = a.device();
            py::gil_scoped_release release;
            cu::copy_host_to_device(dst, src, n, as_ptr(s), dev);
          },
          py::arg("host"), py::arg("stream") = py::none(),
          "Copy a host array of the same dtype and size in (waits for `stream`).")
      .def(
          "copy_to_host",
          [](const DeviceArray& a, const py::object& stream) {
            std::vector<py::ssize_t> shape(a.shape.begin(), a.shape.end());
            py::array out(py::dtype(cu::dtype_name(a.dtype)), shape);
            const uintptr_t s = stream_arg(stream, a.stream);
            void* dst = out.mutable_data();
            const void* src = as_ptr(a.ptr());
            const size_t n = a.nbytes();
            const int dev = a.device();
            {
              py::gil_scoped_release release;
              cu::copy_device_to_host(dst, src, n, as_ptr(s), dev);
            }
            return out;
          },
          py::arg("stream") = py::none(),
          "A new NumPy array with the values (waits for `stream`, so queued work is included).")
      .def(
          "copy_from_device",
          [](DeviceArray& a, const DeviceArray& other, const py::object& stream,
             int64_t dst_offset_bytes, int64_t src_offset_bytes, const py::object& nbytes) {
            if (other.device() != a.device()) {
              throw std::invalid_argument("copy_from_device: the arrays are on different devices");
            }
            if (dst_offset_bytes < 0 || src_offset_bytes < 0) {
              throw std::invalid_argument("copy_from_device: negative offset");
            }
            const size_t src_off = static_cast<size_t>(src_offset_bytes);
            const size_t dst_off = static_cast<size_t>(dst_offset_bytes);
            if (src_off > other.nbytes()) {
              throw std::invalid_argument("copy_from_device: src_offset_bytes beyond the source");
            }
            const size_t n =
                nbytes.is_none() ? other.nbytes() - src_off : nbytes.cast<size_t>();
            check_bounds(src_off, n, other.nbytes(), "copy_from_device (source)");
            check_bounds(dst_off, n, a.nbytes(), "copy_from_device (destination)");
            cu::copy_device_to_device(static_cast<char*>(as_ptr(a.ptr())) + dst_off,
                                      static_cast<const char*>(as_ptr(other.ptr())) + src_off, n,
                                      as_ptr(stream_arg(stream, a.stream)), a.device());
          },
          py::arg("other"), py::arg("stream") = py::none(), py::arg("dst_offset_bytes") = 0,
          py::arg("src_offset_bytes") = 0, py::arg("nbytes") = py::none(),
          "Queue a device-to-device copy of `nbytes` (default: the rest of `other`) from `other` "
          "at src_offset_bytes to this array at dst_offset_bytes, on `stream` (capturable).")
      .def(
          "zero_",
          [](DeviceArray& a, const py::object& stream) {
            cu::memset_async(as_ptr(a.ptr()), 0, a.nbytes(), as_ptr(stream_arg(stream, a.stream)),
                             a.device());
          },
          py::arg("stream") = py::none(), "Queue setting every byte to zero (capturable).")
      .def_property_readonly(
          "__cuda_array_interface__",
          [](const DeviceArray& a) {
            static const char* typestr[] = {"<f4", "<f2", "<i4", "<i8"};
            py::dict d;
            py::tuple shape(a.shape.size());
            for (size_t i = 0; i < a.shape.size(); ++i) shape[i] = a.shape[i];
            d["shape"] = shape;
            d["typestr"] = typestr[static_cast<int>(a.dtype)];
            d["data"] = py::make_tuple(a.ptr(), false);
            d["version"] = 3;
            d["strides"] = py::none();
            // The consumer waits for this stream (1 = the legacy default stream).
            d["stream"] = a.stream == 0 ? uintptr_t{1} : a.stream;
            return d;
          })
      .def("__len__",
           [](const DeviceArray& a) {
             if (a.shape.empty()) throw py::type_error("len() of a 0-d DeviceArray");
             return a.shape[0];
           })
      .def("__repr__", [](const DeviceArray& a) {
        return "DeviceArray(shape=" + shape_str(a.shape) + ", dtype='" + cu::dtype_name(a.dtype) +
               "', device=" + std::to_string(a.device()) + ")";
      });

  m.def(
      "cuda_guide",
      [](uintptr_t out, uintptr_t cond, uintptr_t uncond, int64_t n, double scale,
         const py::object& stream, int device) {
        if (n < 0) throw std::invalid_argument("cuda_guide: negative n");
        cu::guide(static_cast<float*>(as_ptr(out)), static_cast<const float*>(as_ptr(cond)),
                  static_cast<const float*>(as_ptr(uncond)), n, static_cast<float>(scale),
                  as_ptr(stream_arg(stream, 0)), stream_device(stream, device));
      },
      py::arg("out"), py::arg("cond"), py::arg("uncond"), py::arg("n"), py::arg("scale"),
      py::arg("stream") = 0, py::arg("device") = 0,
      "Classifier-free guidance on device float32 pointers: out = uncond + scale * (cond - "
      "uncond) for n values, in float32 as NumPy rounds it (asynchronous on `stream`).");
  m.def(
      "cuda_randn_device_offset",
      [](uintptr_t out, int64_t n_cells, int64_t n_genes, uint64_t seed, int64_t step,
         uintptr_t cell_offset, const py::object& stream, int device) {
        if (n_cells < 0 || n_genes < 0) throw std::invalid_argument("negative shape");
        if (step < 0 || step > 0xFFFFFFFFll) throw std::invalid_argument("step must lie in [0, 2^32)");
        cu::randn_device_offset(static_cast<float*>(as_ptr(out)), n_cells, n_genes, seed,
                                static_cast<uint32_t>(step),
                                static_cast<const int64_t*>(as_ptr(cell_offset)),
                                as_ptr(stream_arg(stream, 0)), stream_device(stream, device));
      },
      py::arg("out"), py::arg("n_cells"), py::arg("n_genes"), py::arg("seed"), py::arg("step"),
      py::arg("cell_offset"), py::arg("stream") = 0, py::arg("device") = 0,
      "As cuda_randn, with the cell offset read from device memory (an int64 at address "
      "`cell_offset`) when the kernel runs, so a captured CUDA graph draws each batch's noise.");
  m.def(
      "cuda_sample_counts",
      [](uintptr_t mean, uintptr_t theta, uintptr_t out, int64_t n_cells, int64_t n_genes,
         const py::object& seed, int64_t cell_offset, uintptr_t zero_prob,
         const py::object& stream, int device) {
        if (n_cells < 0 || n_genes < 0) {
          throw std::invalid_argument("cuda_sample_counts: negative shape");
        }
        if (n_cells > 0 && n_genes > 0 && (mean == 0 || theta == 0 || out == 0)) {
          throw std::invalid_argument("cuda_sample_counts: null device pointer");
        }
        const uint64_t s = seed_arg(seed);
        if (cell_offset < 0) {
          throw std::invalid_argument("cell_offset must be >= 0, got " +
                                      std::to_string(cell_offset));
        }
        const uintptr_t st = stream_arg(stream, 0);
        const int dev = stream_device(stream, device);
        py::gil_scoped_release release;
        cu::sample_counts(static_cast<const float*>(as_ptr(mean)),
                          static_cast<const float*>(as_ptr(theta)),
                          static_cast<const float*>(as_ptr(zero_prob)),
                          static_cast<int32_t*>(as_ptr(out)), n_cells, n_genes, s,
                          static_cast<uint64_t>(cell_offset), as_ptr(st), dev);
      },
      py::arg("mean"), py::arg("theta"), py::arg("out"), py::arg("n_cells"), py::arg("n_genes"),
      py::arg("seed"), py::arg("cell_offset") = 0, py::arg("zero_prob") = 0,
      py::arg("stream") = 0, py::arg("device") = 0,
      "sample_counts on device pointers (ints): float32 [n_cells, n_genes] mean, float32 "
      "[n_genes] theta, int32 [n_cells, n_genes] out, float32 [n_cells, n_genes] zero_prob "
      "(0 = none), launched asynchronously on `stream` (an int cudaStream_t, a CudaStream or a "
      "torch stream). The same counts as the CPU; device values cannot be checked, so a value "
      "with invalid inputs is written as -1.");
}
#else
[[noreturn]] void no_cuda(const std::string& what) {
  throw std::runtime_error(what +
                           " needs CUDA, but cellsynth was built without it (no CUDA compiler was "
                           "found at build time); reinstall with the CUDA toolkit (nvcc) present");
}

struct DeviceArray {};
struct CudaStream {};
struct CudaGraph {};

void bind_cuda_runtime(py::module_& m) {
  py::class_<DeviceArray>(m, "DeviceArray", "Unavailable: cellsynth was built without CUDA.")
      .def(py::init([](py::args, py::kwargs) -> DeviceArray* { no_cuda("DeviceArray"); }));
  py::class_<CudaStream>(m, "CudaStream", "Unavailable: cellsynth was built without CUDA.")
      .def(py::init([](py::args, py::kwargs) -> CudaStream* { no_cuda("CudaStream"); }));
  py::class_<CudaGraph>(m, "CudaGraph", "Unavailable: cellsynth was built without CUDA.")
      .def_static("begin_capture", [](py::args, py::kwargs) { no_cuda("CudaGraph.begin_capture"); })
      .def_static("end_capture", [](py::args, py::kwargs) { no_cuda("CudaGraph.end_capture"); })
      .def_static("abort_capture", [](py::args, py::kwargs) { no_cuda("CudaGraph.abort_capture"); })
      .def_static("is_capturing", [](py::args, py::kwargs) { no_cuda("CudaGraph.is_capturing"); });
  m.def("cuda_device_properties", [](py::args, py::kwargs) { no_cuda("cuda_device_properties"); });
  m.def("cuda_guide", [](py::args, py::kwargs) { no_cuda("cuda_guide"); });
  m.def("cuda_randn_device_offset",
        [](py::args, py::kwargs) { no_cuda("cuda_randn_device_offset"); });
  m.def("cuda_sample_counts", [](py::args, py::kwargs) { no_cuda("cuda_sample_counts"); });
}
#endif

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
  bind_cuda_runtime(m);
#else
  m.attr("cuda_compiled") = false;
  m.def("cuda_device_count", []() { return 0; }, "Always 0: built without CUDA.");
  m.def("cuda_device_name", [](int) { return std::string(); }, py::arg("index") = 0);
  bind_cuda_runtime(m);
#endif
}
