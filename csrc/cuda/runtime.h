// A minimal CUDA runtime for running exported models without PyTorch: device buffers, streams,
// CUDA graph capture, and the two small kernels a denoising loop needs besides the step (guidance
// and Philox noise keyed by a cell offset read from device memory). Only compiled when CMake finds
// a CUDA compiler. Streams are cudaStream_t passed as void* (nullptr = the legacy default stream).
// Errors throw std::runtime_error (CUDA failures) or std::invalid_argument (bad arguments).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cellsynth::cuda {

// What a device is: its name, compute capability and memory.
struct DeviceProperties {
  std::string name;
  int major = 0;
  int minor = 0;
  size_t total_memory = 0;
  int multiprocessors = 0;
};

DeviceProperties device_properties(int device);

// Element types of DeviceBuffer arrays.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kInt32 = 2, kInt64 = 3 };

// "float32" | "float16" | "int32" | "int64"; throws std::invalid_argument otherwise.
DType parse_dtype(const std::string& name);
const char* dtype_name(DType dtype);
size_t dtype_size(DType dtype);

// cudaMalloc'd memory of one device, freed by the destructor. Allocation is refused while a CUDA
// graph capture started here is in progress (a capture must only record work on buffers that
// exist before it); a buffer destroyed during a capture is freed when the capture ends.
class DeviceBuffer {
 public:
  DeviceBuffer(size_t nbytes, int device);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  int device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  int device_ = 0;
};

// Copies. Host copies wait for the stream to finish (the host memory may be released right
// after); the device-to-device copy and the memset are asynchronous on `stream` (capturable).
void copy_host_to_device(void* dst, const void* src, size_t nbytes, void* stream, int device);
void copy_device_to_host(void* dst, const void* src, size_t nbytes, void* stream, int device);
void copy_device_to_device(void* dst, const void* src, size_t nbytes, void* stream, int device);
void memset_async(void* dst, int value, size_t nbytes, void* stream, int device);

// Streams: created non-blocking (no implicit synchronisation with the legacy default stream).
void* stream_create(int device);
void stream_destroy(void* stream, int device) noexcept;
void stream_synchronize(void* stream, int device);

// CUDA graph capture on a stream. mode: 0 global, 1 thread-local, 2 relaxed
// (cudaStreamCaptureMode). end_capture instantiates the captured graph; when the capture was
// invalidated (an illegal call during capture) it throws, and the stream is out of capture mode
// either way. abort_capture ends a capture and discards it (for error paths; never throws).
void begin_capture(void* stream, int mode, int device);
struct Graph;
Graph* end_capture(void* stream, int device);
void abort_capture(void* stream, int device) noexcept;
void graph_launch(Graph* graph, void* stream);
size_t graph_num_nodes(const Graph* graph);
void graph_destroy(Graph* graph) noexcept;
// Whether `stream` is being captured.
bool is_capturing(void* stream, int device);

// out[i] = uncond[i] + scale * (cond[i] - uncond[i]) for i < n, float32 (no FMA contraction, so
// it rounds as NumPy's float32 expression does). out may alias cond or uncond.
void guide(float* out, const float* cond, const float* uncond, int64_t n, float scale,
           void* stream, int device);

// As cellsynth::cuda::randn, with the cell offset read from device memory (*cell_offset, an
// int64 >= 0) when the kernel runs: a captured graph then draws each batch's own noise after the
// offset is rewritten, without re-capturing.
void randn_device_offset(float* out, int64_t n_cells, int64_t n_genes, uint64_t seed,
                         uint32_t step, const int64_t* cell_offset, void* stream, int device);

}  // namespace cellsynth::cuda
