// CUDA launchers of the fused step and of the Philox normals. Only compiled when CMake finds a CUDA
// compiler. Pointers are device pointers to float32 C-contiguous [n_cells, n_genes] arrays; `stream`
// is a cudaStream_t (0 = the legacy default stream) of the device `device`; the launch is
// asynchronous on that stream. Errors (bad device, launch failure) throw std::runtime_error.
#pragma once

#include <cstdint>

#include "../step.h"  // csrc/step.h (not this file)

namespace cellsynth::cuda {

// The same computation as cellsynth::step_cpu (see step.h): one kernel launch per step. With
// dynamic thresholding the kernel runs one block per cell and finds the two order statistics of
// |x0| by bisection on their float bit patterns.
void step(const StepOptions& opt, const float* model_output, const float* sample, float* out,
          float* history, const float* noise, int64_t n_cells, int64_t n_genes, void* stream,
          int device);

// out[row, gene] = the Philox normal of (seed, cell_offset + row, step, gene), as randn_cpu.
void randn(float* out, int64_t n_cells, int64_t n_genes, uint64_t seed, uint32_t step,
           uint64_t cell_offset, void* stream, int device);

}  // namespace cellsynth::cuda
