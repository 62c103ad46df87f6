// The fused step and the Philox normals on CUDA. The per-value arithmetic is step_math.h, shared
// with the CPU kernel; this file only maps it onto threads:
//  - step_flat_kernel: one thread per group of 4 consecutive genes of a cell (one Philox call
//    gives their 4 normals), grid-stride over all groups of the batch, float4 loads and stores
//    when the gene count is a multiple of 4 and the pointers are 16-byte aligned;
//  - step_threshold_kernel (dynamic thresholding): one block per cell. The block first finds the
//    two order statistics of |x0| that torch.quantile interpolates between, by bisection on the
//    float bit patterns (for x >= 0 the order of the uint32 patterns is the order of the values):
//    31 rounds of "how many |x0| <= mid" block reductions, plus one min-reduction for the next
//    larger value. |x0| is cached in shared memory when the row fits (<= 12000 genes), otherwise
//    recomputed from global memory at each round. Then the block updates its cell.
#include "cuda/step.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "philox.h"
#include "step_math.h"

namespace cellsynth::cuda {
namespace {

constexpr int kThreads = 256;
// The |x0| cache: 12000 * 4 B plus the 128 B of `red` stay under the 48 KiB of shared memory a
// launch may use without opting in.
constexpr int64_t kMaxCachedGenes = 12000;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
  }
}

template <bool VEC4>
__device__ __forceinline__ void load4(const float* p, int cnt, float v[4]) {
  if (VEC4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = j < cnt ? p[j] : 0.0f;
  }
}

template <bool VEC4>
__device__ __forceinline__ void store4(float* p, int cnt, const float v[4]) {
  if (VEC4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (j < cnt) p[j] = v[j];
    }
  }
}

__device__ __forceinline__ float device_x0(const StepScalars& s, float m, float x) {
  const float sa = s.sqrt_alpha_prod;
  const float s1m = s.sqrt_one_minus_alpha_prod;
  switch (s.prediction_type) {
    case 0:
      return derive_x0<0>(m, x, sa, s1m);
    case 1:
      return derive_x0<1>(m, x, sa, s1m);
    default:
      return derive_x0<2>(m, x, sa, s1m);
  }
}

__device__ __forceinline__ float device_eps(const StepScalars& s, float m, float x, float x0) {
  const float sa = s.sqrt_alpha_prod;
  const float s1m = s.sqrt_one_minus_alpha_prod;
  switch (s.prediction_type) {
    case 0:
      return derive_eps<0>(m, x, x0, sa, s1m);
    case 1:
      return derive_eps<1>(m, x, x0, sa, s1m);
    default:
      return derive_eps<2>(m, x, x0, sa, s1m);
  }
}

// One value: the same operations as the CPU row_kernel.
__device__ __forceinline__ float device_value(const StepScalars& s, float m, float x, float h,
                                              float z, bool clip, float lim, float div,
                                              float& x0_out) {
  float x0 = device_x0(s, m, x);
  float eps = 0.0f;
  if (s.use_eps) eps = device_eps(s, m, x, x0);
  if (clip) {
    x0 = clamp_div(x0, lim, div);
    if (s.use_eps && s.rederive_eps) eps = (x - s.sqrt_alpha_prod * x0) / s.sqrt_one_minus_alpha_prod;
  }
  x0_out = x0;
  return combine(s, x0, eps, x, h, z, s.use_eps, s.read_history, s.add_noise);
}

// Genes [4 * g4, 4 * g4 + 4) of `row`.
template <bool VEC4>
__device__ __forceinline__ void process_group(const StepScalars& s, const float* m, const float* x,
                                              float* out, float* h, const float* z, int64_t row,
                                              int64_t g4, int64_t n_genes, bool clip, float lim,
                                              float div) {
  const int64_t base = row * n_genes + 4 * g4;
  const int64_t left = n_genes - 4 * g4;
  const int cnt = left < 4 ? static_cast<int>(left) : 4;
  float mv[4], xv[4], hv[4] = {0.0f, 0.0f, 0.0f, 0.0f}, zv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  load4<VEC4>(m + base, cnt, mv);
  load4<VEC4>(x + base, cnt, xv);
  if (s.read_history) load4<VEC4>(h + base, cnt, hv);
  if (s.add_noise) {
    if (z != nullptr) {
      load4<VEC4>(z + base, cnt, zv);
    } else {
      const Normal4 n = normal4(s.seed, s.cell_offset + static_cast<uint64_t>(row), s.step_index,
                                static_cast<uint32_t>(g4));
#pragma unroll
      for (int j = 0; j < 4; ++j) zv[j] = n.v[j];
    }
  }
  float ov[4], x0v[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) ov[j] = device_value(s, mv[j], xv[j], hv[j], zv[j], clip, lim, div, x0v[j]);
  store4<VEC4>(out + base, cnt, ov);
  if (h != nullptr) store4<VEC4>(h + base, cnt, x0v);
}

template <bool VEC4>
__global__ void step_flat_kernel(StepScalars s, const float* m, const float* x, float* out, float* h,
                                 const float* z, int64_t n_cells, int64_t n_genes,
                                 int64_t groups_per_row) {
  const int64_t total = n_cells * groups_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t row = idx / groups_per_row;
    const int64_t g4 = idx - row * groups_per_row;
    process_group<VEC4>(s, m, x, out, h, z, row, g4, n_genes, s.clip_sample, s.clip_sample_range,
                        1.0f);
  }
}

// Block-wide reductions (blockDim.x == kThreads, a multiple of 32). `red` is shared scratch of 32.
__device__ __forceinline__ uint32_t block_sum(uint32_t v, uint32_t* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xFFFFFFFFu, v, o);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (kThreads >> 5) ? red[lane] : 0u;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xFFFFFFFFu, v, o);
    if (lane == 0) red[0] = v;
  }
  __syncthreads();
  const uint32_t result = red[0];
  __syncthreads();  // red is reused by the next reduction
  return result;
}

__device__ __forceinline__ uint32_t block_min(uint32_t v, uint32_t* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_down_sync(0xFFFFFFFFu, v, o));
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (kThreads >> 5) ? red[lane] : 0xFFFFFFFFu;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_down_sync(0xFFFFFFFFu, v, o));
    if (lane == 0) red[0] = v;
  }
  __syncthreads();
  const uint32_t result = red[0];
  __syncthreads();
  return result;
}

// The bit pattern of |x0| of gene i of the row starting at `off`.
__device__ __forceinline__ uint32_t abs_key(const StepScalars& s, const float* m, const float* x,
                                            int64_t off, int64_t i) {
  return __float_as_uint(fabsf(device_x0(s, m[off + i], x[off + i])));
}

template <bool VEC4, bool CACHE>
__global__ void step_threshold_kernel(StepScalars s, const float* m, const float* x, float* out,
                                      float* h, const float* z, int64_t n_cells, int64_t n_genes,
                                      int64_t groups_per_row) {
  extern __shared__ uint32_t keys[];  // n_genes entries when CACHE
  __shared__ uint32_t red[32];
  constexpr uint32_t kInf = 0x7F800000u;  // +inf; patterns above are NaN
  const QuantileRank r = quantile_rank(s.dynamic_thresholding_ratio, n_genes);
  for (int64_t row = blockIdx.x; row < n_cells; row += gridDim.x) {
    const int64_t off = row * n_genes;
    uint32_t nan_count = 0;
    for (int64_t i = threadIdx.x; i < n_genes; i += blockDim.x) {
      const uint32_t k = abs_key(s, m, x, off, i);
      if (CACHE) keys[i] = k;
      nan_count += k > kInf ? 1u : 0u;
    }
    __syncthreads();
    nan_count = block_sum(nan_count, red);
    float scale;
    if (nan_count > 0) {
      scale = __uint_as_float(0x7FC00000u);  // torch.quantile gives nan for a row with a nan
    } else {
      auto count_le = [&](uint32_t p) {
        uint32_t c = 0;
        for (int64_t i = threadIdx.x; i < n_genes; i += blockDim.x) {
          const uint32_t k = CACHE ? keys[i] : abs_key(s, m, x, off, i);
          c += k <= p ? 1u : 0u;
        }
        return block_sum(c, red);
      };
      auto min_above = [&](uint32_t p) {
        uint32_t next = 0xFFFFFFFFu;
        for (int64_t i = threadIdx.x; i < n_genes; i += blockDim.x) {
          const uint32_t k = CACHE ? keys[i] : abs_key(s, m, x, off, i);
          if (k > p && k < next) next = k;
        }
        return block_min(next, red);
      };
      uint32_t p_lo, p_hi;
      bisect_order_statistics(r.lo, r.hi, count_le, min_above, p_lo, p_hi);
      scale = threshold_scale(__uint_as_float(p_lo), __uint_as_float(p_hi), r.weight,
                              s.sample_max_value);
    }
    for (int64_t g4 = threadIdx.x; g4 < groups_per_row; g4 += blockDim.x) {
      process_group<VEC4>(s, m, x, out, h, z, row, g4, n_genes, true, scale, scale);
    }
    __syncthreads();  // keys are overwritten by the next row
  }
}

__global__ void randn_kernel(float* out, int64_t n_cells, int64_t n_genes, int64_t groups_per_row,
                             uint64_t seed, uint32_t step, uint64_t cell_offset) {
  const int64_t total = n_cells * groups_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t row = idx / groups_per_row;
    const int64_t g4 = idx - row * groups_per_row;
    const Normal4 n = normal4(seed, cell_offset + static_cast<uint64_t>(row), step,
                              static_cast<uint32_t>(g4));
    const int64_t base = row * n_genes + 4 * g4;
    const int64_t left = n_genes - 4 * g4;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (j < left) out[base + j] = n.v[j];
    }
  }
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int flat_blocks(int64_t work, int device) {
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  const int64_t want = (work + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(sms) * 32;
  return static_cast<int>(want < cap ? want : cap);
}

}  // namespace

void step(const StepOptions& opt, const float* model_output, const float* sample, float* out,
          float* history, const float* noise, int64_t n_cells, int64_t n_genes, void* stream,
          int device) {
  validate_step_options(opt);
  if (n_cells <= 0 || n_genes <= 0) return;
  const StepScalars s = make_step_scalars(opt);
  if (s.read_history && history == nullptr) {
    throw std::invalid_argument("step coefficient d != 0 needs a history buffer");
  }
  if ((n_genes + 3) / 4 > 0xFFFFFFFFll) throw std::invalid_argument("too many genes");
  const float* z = s.add_noise ? noise : nullptr;
  check(cudaSetDevice(device), "cudaSetDevice");
  auto st = static_cast<cudaStream_t>(stream);
  const int64_t gpr = (n_genes + 3) / 4;
  const bool vec4 = n_genes % 4 == 0 && aligned16(model_output) && aligned16(sample) &&
                    aligned16(out) && aligned16(history) && aligned16(z);
  if (!s.thresholding) {
    const int blocks = flat_blocks(n_cells * gpr, device);
    if (vec4) {
      step_flat_kernel<true><<<blocks, kThreads, 0, st>>>(s, model_output, sample, out, history, z,
                                                          n_cells, n_genes, gpr);
    } else {
      step_flat_kernel<false><<<blocks, kThreads, 0, st>>>(s, model_output, sample, out, history,
                                                           z, n_cells, n_genes, gpr);
    }
  } else {
    const int blocks = static_cast<int>(n_cells < (1 << 20) ? n_cells : (1 << 20));
    const bool cache = n_genes <= kMaxCachedGenes;
    const size_t smem = cache ? static_cast<size_t>(n_genes) * sizeof(uint32_t) : 0;
    if (vec4 && cache) {
      step_threshold_kernel<true, true><<<blocks, kThreads, smem, st>>>(
          s, model_output, sample, out, history, z, n_cells, n_genes, gpr);
    } else if (vec4) {
      step_threshold_kernel<true, false><<<blocks, kThreads, smem, st>>>(
          s, model_output, sample, out, history, z, n_cells, n_genes, gpr);
    } else if (cache) {
      step_threshold_kernel<false, true><<<blocks, kThreads, smem, st>>>(
          s, model_output, sample, out, history, z, n_cells, n_genes, gpr);
    } else {
      step_threshold_kernel<false, false><<<blocks, kThreads, smem, st>>>(
          s, model_output, sample, out, history, z, n_cells, n_genes, gpr);
    }
  }
  check(cudaGetLastError(), "the step kernel launch");
}

void randn(float* out, int64_t n_cells, int64_t n_genes, uint64_t seed, uint32_t step,
           uint64_t cell_offset, void* stream, int device) {
  if (n_cells <= 0 || n_genes <= 0) return;
  check(cudaSetDevice(device), "cudaSetDevice");
  const int64_t gpr = (n_genes + 3) / 4;
  const int blocks = flat_blocks(n_cells * gpr, device);
  randn_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      out, n_cells, n_genes, gpr, seed, step, cell_offset);
  check(cudaGetLastError(), "the randn kernel launch");
}

}  // namespace cellsynth::cuda
