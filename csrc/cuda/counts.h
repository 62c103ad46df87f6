// CUDA launcher of the keyed NB / ZINB count sampler (see ../counts.h for the algorithm and the
// Philox stream layout). Only compiled when CMake finds a CUDA compiler. Pointers are device
// pointers to C-contiguous arrays; `stream` is a cudaStream_t (nullptr = the legacy default
// stream) of the device `device`; the launch is asynchronous on that stream. Launch failures throw
// std::runtime_error, bad shapes std::invalid_argument.
#pragma once

#include <cstdint>

namespace cellsynth::cuda {

// The same counts as cellsynth::sample_counts_cpu, one thread per value: mean float32
// [n_cells, n_genes], theta float32 [n_genes], zero_prob float32 [n_cells, n_genes] or nullptr,
// out int32 [n_cells, n_genes]. Device memory cannot be validated from the host: a value whose
// inputs are invalid (mean NaN, inf or < 0, theta NaN or <= 0, zero_prob outside [0, 1]) is
// written as kInvalidCount (-1) instead of being sampled.
void sample_counts(const float* mean, const float* theta, const float* zero_prob, int32_t* out,
                   int64_t n_cells, int64_t n_genes, uint64_t seed, uint64_t cell_offset,
                   void* stream, int device);

}  // namespace cellsynth::cuda
