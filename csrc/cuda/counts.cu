// The keyed NB / ZINB count sampler on CUDA: one thread per value, grid-stride over the batch. The
// math is ../counts.h, shared with the CPU loop (counts.cpp), so both draw the same counts. A
// value's cost varies with its mean (rejection loops, Philox calls); threads of a warp diverge only
// in how many draws they take.
#include "cuda/counts.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../counts.h"  // csrc/counts.h (not this file's header)

namespace cellsynth::cuda {
namespace {

constexpr int kThreads = 256;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
  }
}

__global__ void sample_counts_kernel(const float* __restrict__ mean,
                                     const float* __restrict__ theta,
                                     const float* __restrict__ zero_prob, int32_t* __restrict__ out,
                                     int64_t n_cells, int64_t n_genes, uint64_t seed,
                                     uint64_t cell_offset) {
  const int64_t total = n_cells * n_genes;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t row = idx / n_genes;
    const int64_t gene = idx - row * n_genes;
    const double pi = zero_prob == nullptr ? -1.0 : static_cast<double>(zero_prob[idx]);
    out[idx] = sample_count(static_cast<double>(mean[idx]), static_cast<double>(theta[gene]), pi,
                            seed, cell_offset + static_cast<uint64_t>(row),
                            static_cast<uint32_t>(gene));
  }
}

}  // namespace

void sample_counts(const float* mean, const float* theta, const float* zero_prob, int32_t* out,
                   int64_t n_cells, int64_t n_genes, uint64_t seed, uint64_t cell_offset,
                   void* stream, int device) {
  if (n_cells < 0 || n_genes < 0) throw std::invalid_argument("sample_counts: negative shape");
  if (n_genes > 4294967296ll) throw std::invalid_argument("sample_counts: at most 2^32 genes");
  if (n_cells == 0 || n_genes == 0) return;
  if (mean == nullptr || theta == nullptr || out == nullptr) {
    throw std::invalid_argument("sample_counts: null device pointer");
  }
  check(cudaSetDevice(device), "cudaSetDevice");
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute");
  const int64_t total = n_cells * n_genes;
  const int64_t want = (total + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(sms) * 32;
  const int blocks = static_cast<int>(want < cap ? want : cap);
  sample_counts_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      mean, theta, zero_prob, out, n_cells, n_genes, seed, cell_offset);
  check(cudaGetLastError(), "the sample_counts kernel launch");
}

}  // namespace cellsynth::cuda
