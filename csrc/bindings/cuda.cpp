// The CUDA side of the core's Python module: the fused step and noise on device pointers, and the
// torch-free CUDA runtime (device arrays, streams, graphs). Without CUDA, stubs that say so.
#include "bindings/helpers.h"

namespace cellsynth_py {
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


void bind_cuda(py::module_& m) {
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

}  // namespace cellsynth_py
