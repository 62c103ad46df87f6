// See runtime.h. Thin wrappers over the CUDA runtime API plus two elementwise kernels.
#include "cuda/runtime.h"

#include <cuda_runtime.h>

#include <atomic>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "philox.h"

namespace cellsynth::cuda {
namespace {

constexpr int kThreads = 256;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
  }
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// Captures in progress (begun here) and the frees deferred until none is.
std::atomic<int> g_captures{0};
std::mutex g_pending_mutex;
std::vector<std::pair<void*, int>> g_pending_frees;

void free_now(void* p, int device) noexcept {
  int previous = 0;
  const bool restore = cudaGetDevice(&previous) == cudaSuccess && previous != device;
  if (cudaSetDevice(device) == cudaSuccess) cudaFree(p);
  if (restore) cudaSetDevice(previous);
  cudaGetLastError();  // a destructor never throws; a failed free leaks, nothing else
}

void flush_pending_frees() noexcept {
  std::vector<std::pair<void*, int>> todo;
  {
    std::lock_guard<std::mutex> lock(g_pending_mutex);
    todo.swap(g_pending_frees);
  }
  for (const auto& [p, device] : todo) free_now(p, device);
}

void capture_ended() noexcept {
  if (g_captures.fetch_sub(1) == 1) flush_pending_frees();
}

int grid_for(int64_t work, int device) {
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute");
  const int64_t want = (work + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(sms > 0 ? sms : 1) * 32;
  return static_cast<int>(want < cap ? (want > 0 ? want : 1) : cap);
}

__global__ void guide_kernel(float* out, const float* cond, const float* uncond, int64_t n,
                             float scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float u = uncond[i];
    const float d = cond[i] - u;
    out[i] = u + scale * d;  // two roundings (built with -fmad=false), as NumPy
  }
}

__global__ void randn_offset_kernel(float* out, int64_t n_cells, int64_t n_genes,
                                    int64_t groups_per_row, uint64_t seed, uint32_t step,
                                    const int64_t* cell_offset) {
  const uint64_t offset = static_cast<uint64_t>(*cell_offset);
  const int64_t total = n_cells * groups_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t row = idx / groups_per_row;
    const int64_t g4 = idx - row * groups_per_row;
    const Normal4 nv =
        normal4(seed, offset + static_cast<uint64_t>(row), step, static_cast<uint32_t>(g4));
    const int64_t base = row * n_genes + 4 * g4;
    const int64_t left = n_genes - 4 * g4;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (j < left) out[base + j] = nv.v[j];
    }
  }
}

}  // namespace

// --- devices ----------------------------------------------------------------------------------

DeviceProperties device_properties(int device) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  DeviceProperties p;
  p.name = prop.name;
  p.major = prop.major;
  p.minor = prop.minor;
  p.total_memory = prop.totalGlobalMem;
  p.multiprocessors = prop.multiProcessorCount;
  return p;
}

// --- dtypes -----------------------------------------------------------------------------------

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "float16") return DType::kFloat16;
  if (name == "int32") return DType::kInt32;
  if (name == "int64") return DType::kInt64;
  throw std::invalid_argument("dtype must be 'float32', 'float16', 'int32' or 'int64', got '" +
                              name + "'");
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kInt32:
      return "int32";
    default:
      return "int64";
  }
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return 2;
    case DType::kInt64:
      return 8;
    default:
      return 4;
  }
}

// --- buffers ----------------------------------------------------------------------------------

DeviceBuffer::DeviceBuffer(size_t nbytes, int device) : nbytes_(nbytes), device_(device) {
  if (g_captures.load() > 0) {
    throw std::runtime_error(
        "cannot allocate device memory while a CUDA graph is being captured; allocate the "
        "buffers before begin_capture");
  }
  check(cudaSetDevice(device), "cudaSetDevice");
  if (nbytes > 0) check(cudaMalloc(&data_, nbytes), "cudaMalloc");
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ == nullptr) return;
  if (g_captures.load() > 0) {
    // cudaFree synchronises the device, which is illegal during a capture: defer it.
    std::lock_guard<std::mutex> lock(g_pending_mutex);
    g_pending_frees.emplace_back(data_, device_);
    return;
  }
  free_now(data_, device_);
}

// --- copies -----------------------------------------------------------------------------------

void copy_host_to_device(void* dst, const void* src, size_t nbytes, void* stream, int device) {
  if (nbytes == 0) return;
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, as_stream(stream)),
        "cudaMemcpyAsync (host to device)");
  check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

void copy_device_to_host(void* dst, const void* src, size_t nbytes, void* stream, int device) {
  if (nbytes == 0) return;
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, as_stream(stream)),
        "cudaMemcpyAsync (device to host)");
  check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

void copy_device_to_device(void* dst, const void* src, size_t nbytes, void* stream, int device) {
  if (nbytes == 0) return;
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, as_stream(stream)),
        "cudaMemcpyAsync (device to device)");
}

void memset_async(void* dst, int value, size_t nbytes, void* stream, int device) {
  if (nbytes == 0) return;
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMemsetAsync(dst, value, nbytes, as_stream(stream)), "cudaMemsetAsync");
}

// --- streams ----------------------------------------------------------------------------------

void* stream_create(int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  return s;
}

void stream_destroy(void* stream, int device) noexcept {
  if (stream == nullptr) return;
  if (cudaSetDevice(device) == cudaSuccess) cudaStreamDestroy(as_stream(stream));
  cudaGetLastError();
}

void stream_synchronize(void* stream, int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

// --- graphs -----------------------------------------------------------------------------------

struct Graph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  int device = 0;
};

void begin_capture(void* stream, int mode, int device) {
  if (stream == nullptr) {
    throw std::invalid_argument("the legacy default stream (0) cannot be captured; use a CudaStream");
  }
  cudaStreamCaptureMode m;
  switch (mode) {
    case 0:
      m = cudaStreamCaptureModeGlobal;
      break;
    case 1:
      m = cudaStreamCaptureModeThreadLocal;
      break;
    case 2:
      m = cudaStreamCaptureModeRelaxed;
      break;
    default:
      throw std::invalid_argument("capture mode must be 0 (global), 1 (thread-local) or 2 (relaxed)");
  }
  check(cudaSetDevice(device), "cudaSetDevice");
  g_captures.fetch_add(1);
  const cudaError_t err = cudaStreamBeginCapture(as_stream(stream), m);
  if (err != cudaSuccess) {
    capture_ended();
    check(err, "cudaStreamBeginCapture");
  }
}

Graph* end_capture(void* stream, int device) {
  cudaSetDevice(device);
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(as_stream(stream), &graph);
  capture_ended();
  if (err != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    check(err, "cudaStreamEndCapture (an operation during the capture was not capturable)");
  }
  if (graph == nullptr) throw std::runtime_error("cudaStreamEndCapture returned no graph");
  auto* g = new Graph;
  g->graph = graph;
  g->device = device;
  const cudaError_t ierr = cudaGraphInstantiate(&g->exec, graph, 0ULL);
  if (ierr != cudaSuccess) {
    cudaGraphDestroy(graph);
    delete g;
    check(ierr, "cudaGraphInstantiate");
  }
  return g;
}

void abort_capture(void* stream, int device) noexcept {
  cudaSetDevice(device);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(as_stream(stream), &status) == cudaSuccess &&
      status != cudaStreamCaptureStatusNone) {
    cudaGraph_t graph = nullptr;
    cudaStreamEndCapture(as_stream(stream), &graph);
    if (graph != nullptr) cudaGraphDestroy(graph);
    capture_ended();
  }
  cudaGetLastError();
}

bool is_capturing(void* stream, int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(as_stream(stream), &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

void graph_launch(Graph* graph, void* stream) {
  if (graph == nullptr || graph->exec == nullptr) throw std::invalid_argument("empty CUDA graph");
  check(cudaSetDevice(graph->device), "cudaSetDevice");
  check(cudaGraphLaunch(graph->exec, as_stream(stream)), "cudaGraphLaunch");
}

size_t graph_num_nodes(const Graph* graph) {
  if (graph == nullptr || graph->graph == nullptr) return 0;
  size_t n = 0;
  check(cudaGraphGetNodes(graph->graph, nullptr, &n), "cudaGraphGetNodes");
  return n;
}

void graph_destroy(Graph* graph) noexcept {
  if (graph == nullptr) return;
  cudaSetDevice(graph->device);
  if (graph->exec != nullptr) cudaGraphExecDestroy(graph->exec);
  if (graph->graph != nullptr) cudaGraphDestroy(graph->graph);
  cudaGetLastError();
  delete graph;
}

// --- kernels ----------------------------------------------------------------------------------

void guide(float* out, const float* cond, const float* uncond, int64_t n, float scale,
           void* stream, int device) {
  if (n <= 0) return;
  if (out == nullptr || cond == nullptr || uncond == nullptr) {
    throw std::invalid_argument("guide: null device pointer");
  }
  check(cudaSetDevice(device), "cudaSetDevice");
  guide_kernel<<<grid_for(n, device), kThreads, 0, as_stream(stream)>>>(out, cond, uncond, n,
                                                                          scale);
  check(cudaGetLastError(), "the guidance kernel launch");
}

void randn_device_offset(float* out, int64_t n_cells, int64_t n_genes, uint64_t seed,
                         uint32_t step, const int64_t* cell_offset, void* stream, int device) {
  if (n_cells <= 0 || n_genes <= 0) return;
  if (out == nullptr || cell_offset == nullptr) {
    throw std::invalid_argument("randn_device_offset: null device pointer");
  }
  if ((n_genes + 3) / 4 > 0xFFFFFFFFll) throw std::invalid_argument("too many genes");
  check(cudaSetDevice(device), "cudaSetDevice");
  const int64_t gpr = (n_genes + 3) / 4;
  randn_offset_kernel<<<grid_for(n_cells * gpr, device), kThreads, 0, as_stream(stream)>>>(
      out, n_cells, n_genes, gpr, seed, step, cell_offset);
  check(cudaGetLastError(), "the randn kernel launch");
}

}  // namespace cellsynth::cuda
