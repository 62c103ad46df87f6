// The CPU entry of the keyed NB / ZINB count sampler: validation and the loop over cells. The
// sampling math is counts.h, shared with the CUDA kernel.
#include "counts.h"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace cellsynth {

namespace {

[[noreturn]] void bad_value(const char* what, double value, int64_t row, int64_t col) {
  std::ostringstream msg;
  msg << what << ", got " << value << " at ";
  if (row < 0) {
    msg << "gene " << col;
  } else {
    msg << "[" << row << ", " << col << "]";
  }
  throw std::invalid_argument(msg.str());
}

// Every value checked before anything is written, so a bad input leaves `out` untouched and the
// samplers never see NaN (on which their rejection loops would not end). A serial pass: it costs
// a nanosecond or so a value against the 100-300 ns of a draw.
void validate_counts(const float* mean, const float* theta, const float* zero_prob,
                     int64_t n_cells, int64_t n_genes) {
  if (n_cells < 0 || n_genes < 0) {
    throw std::invalid_argument("sample_counts: negative shape (" + std::to_string(n_cells) + ", " +
                                std::to_string(n_genes) + ")");
  }
  // The gene is counter word 0 (a uint32).
  if (n_genes > 4294967296ll) {
    throw std::invalid_argument("sample_counts: at most 2^32 genes, got " +
                                std::to_string(n_genes));
  }
  for (int64_t g = 0; g < n_genes; ++g) {
    if (!(theta[g] > 0.0f)) bad_value("theta must be > 0 (or +inf for Poisson)", theta[g], -1, g);
  }
  for (int64_t i = 0; i < n_cells; ++i) {
    const float* m = mean + i * n_genes;
    for (int64_t g = 0; g < n_genes; ++g) {
      if (!(m[g] >= 0.0f && std::isfinite(m[g]))) {
        bad_value("mean must be finite and >= 0", m[g], i, g);
      }
    }
  }
  if (zero_prob == nullptr) return;
  for (int64_t i = 0; i < n_cells; ++i) {
    const float* z = zero_prob + i * n_genes;
    for (int64_t g = 0; g < n_genes; ++g) {
      if (!(z[g] >= 0.0f && z[g] <= 1.0f)) bad_value("zero_prob must lie in [0, 1]", z[g], i, g);
    }
  }
}

// Block 0 of the count streams of genes g0 .. g0 + n - 1 of one cell, word by word into w0..w3.
// A branch-free loop over genes that the compiler vectorises (Philox's 32x32->64 multiplies map
// to vector instructions; an AVX2 clone is picked at run time where the CPU has it): one Philox
// call per gene is most of a count's cost, since most draws are zeros decided by this block.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))
#endif
void first_blocks(uint64_t seed, uint64_t cell, uint32_t g0, int64_t n, uint32_t* w0,
                  uint32_t* w1, uint32_t* w2, uint32_t* w3) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t c2 = static_cast<uint32_t>(cell), c3 = static_cast<uint32_t>(cell >> 32);
  for (int64_t t = 0; t < n; ++t) {
    const Philox4 r = philox4x32_10(g0 + static_cast<uint32_t>(t), kCountStreamBit, c2, c3, k0, k1);
    w0[t] = r.v[0];
    w1[t] = r.v[1];
    w2[t] = r.v[2];
    w3[t] = r.v[3];
  }
}

// Which of genes 0 .. n - 1 (means m, dispersions theta) are 0 by their first draw alone, the
// draw of block 0's words (w0, w1), without zero inflation: exactly the cases where
// sample_count_from returns 0 before any other work (mean 0, or nb_inversion's
// u <= 1 - mean - 1e-12), decided in one vectorised pass; the inputs are validated already. The
// uniform is uniform_open01_double's, with the 52-bit integer converted to double by the exponent
// trick (2^52 + k has k as its mantissa) because AVX2 has no int64 -> double conversion: k < 2^52,
// so both conversions are exact and the value is the same.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))
#endif
void zeros_by_first_draw(const float* m, const float* theta, const uint32_t* w0,
                         const uint32_t* w1, int64_t n, uint8_t* zero) {
  constexpr double kTwo52 = 4503599627370496.0;
  for (int64_t t = 0; t < n; ++t) {
    const uint64_t k =
        (static_cast<uint64_t>(w0[t] >> 6) << 26) | static_cast<uint64_t>(w1[t] >> 6);
    const double u = (__builtin_bit_cast(double, 0x4330000000000000ull | k) - kTwo52 + 0.5) *
                     2.220446049250313e-16;  // 2^-52
    const double mean = static_cast<double>(m[t]);
    const double th = static_cast<double>(theta[t]);
    const bool nb_zero = th <= counts_detail::kDoubleMax &&
                         mean < counts_detail::kNbInversionLimit && u <= 1.0 - mean - 1e-12;
    zero[t] = static_cast<uint8_t>((mean == 0.0) | nb_zero);
  }
}

// Genes per pass of first_blocks: four word arrays of this many stay in L1.
constexpr int64_t kGeneTile = 256;

}  // namespace

void sample_counts_cpu(const float* mean, const float* theta, const float* zero_prob, int32_t* out,
                       int64_t n_cells, int64_t n_genes, uint64_t seed, uint64_t cell_offset) {
  validate_counts(mean, theta, zero_prob, n_cells, n_genes);
  if (n_cells == 0 || n_genes == 0) return;
  // A draw costs from nothing (mean 0) to a few Philox calls and rejections: dynamic scheduling
  // keeps the threads busy when cells differ in depth. The values do not depend on the schedule.
#pragma omp parallel for schedule(dynamic, 16) if (n_cells * n_genes > 4096)
  for (int64_t i = 0; i < n_cells; ++i) {
    const int64_t off = i * n_genes;
    const uint64_t cell = cell_offset + static_cast<uint64_t>(i);
    uint32_t w0[kGeneTile], w1[kGeneTile], w2[kGeneTile], w3[kGeneTile];
    uint8_t zero[kGeneTile];
    for (int64_t g0 = 0; g0 < n_genes; g0 += kGeneTile) {
      const int64_t n = n_genes - g0 < kGeneTile ? n_genes - g0 : kGeneTile;
      first_blocks(seed, cell, static_cast<uint32_t>(g0), n, w0, w1, w2, w3);
      if (zero_prob == nullptr) {
        zeros_by_first_draw(mean + off + g0, theta + g0, w0, w1, n, zero);
      }
      for (int64_t t = 0; t < n; ++t) {
        const int64_t g = g0 + t;
        if (zero_prob == nullptr && zero[t]) {
          out[off + g] = 0;
          continue;
        }
        const double pi = zero_prob == nullptr ? -1.0 : static_cast<double>(zero_prob[off + g]);
        CountStream s(seed, cell, static_cast<uint32_t>(g), w0[t], w1[t], w2[t], w3[t]);
        out[off + g] = sample_count_from(static_cast<double>(mean[off + g]),
                                         static_cast<double>(theta[g]), pi, s);
      }
    }
  }
}

}  // namespace cellsynth
