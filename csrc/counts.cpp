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
    for (int64_t g = 0; g < n_genes; ++g) {
      const double pi = zero_prob == nullptr ? -1.0 : static_cast<double>(zero_prob[off + g]);
      out[off + g] = sample_count(static_cast<double>(mean[off + g]),
                                  static_cast<double>(theta[g]), pi, seed, cell,
                                  static_cast<uint32_t>(g));
    }
  }
}

}  // namespace cellsynth
