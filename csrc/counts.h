// Keyed negative-binomial (NB) and zero-inflated NB counts: the integer counts of a cell drawn from
// per-gene means, dispersions and (optionally) zero probabilities.
//
// Header-only sampling math usable from host and device code (CELLSYNTH_HD, as philox.h), so the
// CPU loop (counts.cpp) and the CUDA kernel (cuda/counts.cu) run the same algorithm. Every random
// number is a pure function of (seed, global cell index, gene, draw index j), so a cell's counts do
// not depend on batch size, chunking, sharding or device, like the denoising noise:
//
//   key     = (seed & 0xFFFFFFFF, seed >> 32)
//   counter = (gene, kCountStreamBit | (j / 2), cell & 0xFFFFFFFF, cell >> 32)
//
// The high bit of counter word 1 keeps these counters apart from the denoising noise, whose word 1
// is a step index (< 2^31 in practice) or one of the reserved 0xFFFFFFFF (x_T) and 0xFFFFFFFE
// (library sizes): those two have the bit set too, but equal 0x80000000 | (j / 2) only for
// j >= 2^32 - 4, a stream no count comes near. One Philox call gives 4 words w0..w3 and so two
// doubles: draw j uses (hi, lo) = (w[2 (j % 2)], w[2 (j % 2) + 1]) of block j / 2 and is
//
//   u = ((hi >> 6) * 2^26 + (lo >> 6) + 0.5) * 2^-52 = (2 k + 1) * 2^-53,   k = the 52-bit integer,
//
// an odd multiple of 2^-53: exact in double (k + 0.5 < 2^52 needs 53 significant bits), so u lies
// in [2^-53, 1 - 2^-53] and is never 0 or 1 (numpy's 53-bit (k + 0.5) * 2^-53 would round to 1.0
// at k = 2^53 - 1, hence one bit fewer).
//
// A count of (mean m, dispersion theta, zero probability pi) consumes the stream in this order:
//   1. zero inflation (only when zero probabilities are given): u_0 < pi -> 0. u_0 is drawn even
//      when pi = 0, so the NB part's draws never depend on pi;
//   2. m == 0 -> 0 (nothing further drawn);
//   3. a finite theta and m < 10: the NB count by inversion, one uniform (nb_inversion), done;
//      otherwise lambda = m (theta = +inf: Poisson) or G * (m / theta), G ~ Gamma(theta, 1) by
//      Marsaglia & Tsang (2000) with normals by Box-Muller; for theta < 1,
//      G = Gamma(theta + 1) * U^(1/theta) (U drawn after the Gamma(theta + 1) draws);
//   4. count ~ Poisson(lambda): inversion by sequential search (one uniform) for lambda < 10, else
//      Hoermann's PTRS transformed rejection (1993, two uniforms an attempt); lambda >= 2^32
//      returns the cap without drawing (Poisson(2^32) falls below 2^31 with probability < e^-6e8);
//      the count is capped at 2^31 - 1.
// NB(m, theta) has mean m and variance m + m^2 / theta (scipy's nbinom(n = theta,
// p = theta / (theta + m))); the Gamma-Poisson mixture is its definition.
//
// All arithmetic is double precision with the operations in the order written (no contraction:
// -ffp-contract=off, nvcc -fmad=false). log, exp, pow, cos and lgamma come from the platform's math
// library (glibc on the host, libdevice on CUDA), which may differ by an ulp or two: counts are the
// same unless a comparison falls within those ulps (about 1e-15 per comparison), so CPU and GPU
// agree in practice rather than by construction as the float32 normals of philox.h do.
#pragma once

#include <cmath>
#include <cstdint>

#include "philox.h"

namespace cellsynth {

// Counter word 1 of every count draw has this bit set (the denoising steps' indices do not).
constexpr uint32_t kCountStreamBit = 0x80000000u;
// The largest count written: counts are int32.
constexpr int32_t kMaxCount = 2147483647;
// What the CUDA kernel writes for a value whose inputs are invalid (it cannot throw; the CPU entry
// rejects such inputs before sampling).
constexpr int32_t kInvalidCount = -1;

namespace counts_detail {

constexpr double kTwoPi = 6.283185307179586;  // the double nearest 2 pi
constexpr double kDoubleMax = 1.7976931348623157e308;
constexpr double kInversionLimit = 10.0;        // lambda below: inversion, else PTRS
constexpr double kNbInversionLimit = 10.0;      // NB mean below: NB by inversion, else Gamma
constexpr double kNegligibleShare = 1e-18;      // a pmf term below this share of F adds nothing
constexpr double kCapLambda = 4294967296.0;     // 2^32: lambda from which the count is the cap

// log(x!) for x = k + 1 >= 1 (k an integer-valued double): lgamma. On glibc hosts lgamma_r, which
// returns the same value without writing the global `signgam` (lgamma would race across threads).
CELLSYNTH_HD double log_gamma(double x) {
#if !defined(__CUDA_ARCH__) && defined(__GLIBC__)
  int sign;
  return lgamma_r(x, &sign);
#else
  return lgamma(x);
#endif
}

}  // namespace counts_detail

// The uniform of the words (hi, lo): ((hi >> 6) * 2^26 + (lo >> 6) + 0.5) * 2^-52, in
// [2^-53, 1 - 2^-53] (see above).
CELLSYNTH_HD double uniform_open01_double(uint32_t hi, uint32_t lo) {
  const uint64_t k = (static_cast<uint64_t>(hi >> 6) << 26) | static_cast<uint64_t>(lo >> 6);
  return (static_cast<double>(static_cast<int64_t>(k)) + 0.5) * 2.220446049250313e-16;  // 2^-52
}

// The stream of uniforms of one (seed, cell, gene): draw j = 0, 1, 2, ... in order. One Philox call
// serves two draws; the block is kept between them.
struct CountStream {
  uint32_t k0, k1;       // key
  uint32_t c0, c2, c3;   // counter words 0, 2, 3 (word 1 is kCountStreamBit | j / 2)
  uint32_t j = 0;        // the next draw
  uint32_t w[4] = {0u, 0u, 0u, 0u};

  bool first_block_given = false;  // w holds block 0 already (computed by the caller)

  CELLSYNTH_HD CountStream(uint64_t seed, uint64_t cell, uint32_t gene)
      : k0(static_cast<uint32_t>(seed)),
        k1(static_cast<uint32_t>(seed >> 32)),
        c0(gene),
        c2(static_cast<uint32_t>(cell)),
        c3(static_cast<uint32_t>(cell >> 32)) {}

  // The same stream with its block 0 computed by the caller: the CPU loop computes the first
  // blocks of many genes in one vectorised pass (most counts need no other block).
  CELLSYNTH_HD CountStream(uint64_t seed, uint64_t cell, uint32_t gene, uint32_t w0, uint32_t w1,
                           uint32_t w2, uint32_t w3)
      : CountStream(seed, cell, gene) {
    w[0] = w0;
    w[1] = w1;
    w[2] = w2;
    w[3] = w3;
    first_block_given = true;
  }

  CELLSYNTH_HD double next() {
    const uint32_t half = j & 1u;
    if (half == 0u && !(j == 0u && first_block_given)) {
      const Philox4 r = philox4x32_10(c0, kCountStreamBit | (j >> 1), c2, c3, k0, k1);
      w[0] = r.v[0];
      w[1] = r.v[1];
      w[2] = r.v[2];
      w[3] = r.v[3];
    }
    ++j;
    return uniform_open01_double(w[2 * half], w[2 * half + 1]);
  }
};

// A standard normal by Box-Muller from two draws, cosine branch only (the sine is discarded so that
// each normal is a fixed pair of draws): z = sqrt(-2 ln u1) cos(2 pi u2).
CELLSYNTH_HD double count_normal(CountStream& s) {
  const double u1 = s.next();
  const double u2 = s.next();
  return sqrt(-2.0 * log(u1)) * cos(counts_detail::kTwoPi * u2);
}

// Gamma(a, 1) for a >= 1 by Marsaglia & Tsang (2000), "A simple method for generating gamma
// variables": d = a - 1/3, c = 1 / sqrt(9 d); repeat x ~ N(0, 1) until v = 1 + c x > 0, then
// v = v^3 and u ~ U(0, 1); accept d v if u < 1 - 0.0331 x^4 (the squeeze) or
// ln u < x^2 / 2 + d (1 - v + ln v). Acceptance >= 95% for a >= 1.
CELLSYNTH_HD double gamma_marsaglia_tsang(double a, CountStream& s) {
  const double d = a - 1.0 / 3.0;
  const double c = 1.0 / sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = count_normal(s);
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = s.next();
    const double x2 = x * x;
    if (u < 1.0 - 0.0331 * (x2 * x2)) return d * v;
    if (log(u) < 0.5 * x2 + d * (1.0 - v + log(v))) return d * v;
  }
}

// Gamma(a, 1) for any a > 0 (finite): below 1 by the boost Gamma(a) = Gamma(a + 1) U^(1/a)
// (Marsaglia & Tsang, section 6), U drawn after the Gamma(a + 1) draws.
CELLSYNTH_HD double gamma_variate(double a, CountStream& s) {
  if (a < 1.0) {
    const double g = gamma_marsaglia_tsang(a + 1.0, s);
    const double u = s.next();
    return g * pow(u, 1.0 / a);
  }
  return gamma_marsaglia_tsang(a, s);
}

// Poisson(lambda) for a finite lambda >= 0, as a double holding an integer (uncapped).
//   lambda < 10: inversion by sequential search, one uniform u: the smallest k with
//     u <= F(k) = sum_{i <= k} p_i, p_0 = e^-lambda, p_i = p_{i-1} * (lambda / i). Rounding can
//     leave F short of u near 1: the search also stops once p_i underflows to 0.
//   lambda >= 10: PTRS (Hoermann 1993, "The transformed rejection method for generating Poisson
//     random variables"), with slam = sqrt(lambda), b = 0.931 + 2.53 slam, a = -0.059 + 0.02483 b,
//     inv_alpha = 1.1239 + 1.1328 / (b - 3.4), v_r = 0.9277 - 3.6224 / (b - 2); each attempt draws
//     U = u - 1/2 then V, us = 1/2 - |U|, k = floor((2 a / us + b) U + lambda + 0.43); accept when
//     us >= 0.07 and V <= v_r; reject when k < 0 or (us < 0.013 and V > us); otherwise accept iff
//     ln V + ln inv_alpha - ln(a / us^2 + b) <= -lambda + k ln lambda - ln k!.
CELLSYNTH_HD double poisson_variate(double lambda, CountStream& s) {
  using namespace counts_detail;
  if (lambda < kInversionLimit) {
    const double u = s.next();
    double k = 0.0;
    double p = exp(-lambda);
    double f = p;
    while (u > f && p > 0.0) {
      k = k + 1.0;
      p = p * (lambda / k);
      f = f + p;
    }
    return k;
  }
  const double slam = sqrt(lambda);
  const double loglam = log(lambda);
  const double b = 0.931 + 2.53 * slam;
  const double a = -0.059 + 0.02483 * b;
  const double inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
  const double vr = 0.9277 - 3.6224 / (b - 2.0);
  for (;;) {
    const double U = s.next() - 0.5;
    const double V = s.next();
    const double us = 0.5 - fabs(U);
    const double k = floor((2.0 * a / us + b) * U + lambda + 0.43);
    if (us >= 0.07 && V <= vr) return k;
    if (k < 0.0 || (us < 0.013 && V > us)) continue;
    if (log(V) + log(inv_alpha) - log(a / (us * us) + b) <=
        -lambda + k * loglam - log_gamma(k + 1.0)) {
      return k;
    }
  }
}

// NB(mean, theta) for 0 < mean < kNbInversionLimit and a finite theta, by inversion by sequential
// search with one uniform u: the smallest k with u <= F(k) = sum_{i <= k} p_i, where
//   p_0 = (theta / (theta + mean))^theta = exp(-theta log1p(mean / theta)),
//   p_{i+1} = p_i (i + theta) / (i + 1) q,   q = mean / (theta + mean).
// Most expression means are small (a gene's share of a few thousand UMIs), and this takes one
// Philox call and a few multiplications where the Gamma-Poisson mixture takes three calls, logs and
// a square root; the law is the same. The search stops once a term no longer changes F in double
// precision (p_i < 1e-18 F: the rest of a geometric-like tail sums to less than F's rounding).
CELLSYNTH_HD double nb_inversion(double mean, double theta, CountStream& s) {
  using namespace counts_detail;
  const double u = s.next();
  // P(0) >= 1 - mean for any count law (Markov: P(k >= 1) <= E[k]), and the computed p_0 is
  // within a few ulps of P(0): below 1 - mean - 1e-12 the answer is 0 without the exp and log1p
  // (most draws: most means are far below 1). The same count as the full search, not a new law.
  if (u <= 1.0 - mean - 1e-12) return 0.0;
  const double q = mean / (theta + mean);
  double k = 0.0;
  double p = exp(-theta * log1p(mean / theta));
  double f = p;
  while (u > f && p > kNegligibleShare * f) {
    p = p * ((k + theta) / (k + 1.0)) * q;
    k = k + 1.0;
    f = f + p;
  }
  return k;
}

// One count of (mean, theta, zero_prob) from the stream s of (seed, cell, gene); zero_prob < 0
// means "no zero inflation" (no u_0 drawn). Inputs outside their domain (mean not finite or < 0,
// theta NaN or <= 0, zero_prob > 1 or NaN) give kInvalidCount: the sampler never loops on NaN.
CELLSYNTH_HD int32_t sample_count_from(double mean, double theta, double zero_prob,
                                       CountStream& s) {
  using namespace counts_detail;
  const bool inflated = !(zero_prob < 0.0);  // NaN counts as given (and is then rejected)
  if (!(mean >= 0.0 && mean <= kDoubleMax) || !(theta > 0.0) ||
      (inflated && !(zero_prob <= 1.0))) {
    return kInvalidCount;
  }
  if (inflated && s.next() < zero_prob) return 0;
  if (mean == 0.0) return 0;
  if (theta <= kDoubleMax && mean < kNbInversionLimit) {
    return static_cast<int32_t>(nb_inversion(mean, theta, s));  // < 2^31: F reaches u first
  }
  double lambda = mean;
  if (theta <= kDoubleMax) lambda = gamma_variate(theta, s) * (mean / theta);
  if (lambda >= kCapLambda) return kMaxCount;
  const double k = poisson_variate(lambda, s);
  return k >= static_cast<double>(kMaxCount) ? kMaxCount : static_cast<int32_t>(k);
}

// sample_count_from on the stream of (seed, cell, gene).
CELLSYNTH_HD int32_t sample_count(double mean, double theta, double zero_prob, uint64_t seed,
                                  uint64_t cell, uint32_t gene) {
  CountStream s(seed, cell, gene);
  return sample_count_from(mean, theta, zero_prob, s);
}

// The CPU entry (counts.cpp), on C-contiguous host arrays: out[i, g] = the count of
// (mean[i, g], theta[g], zero_prob[i, g]) for (seed, cell_offset + i, g); zero_prob may be null
// (no zero inflation). mean, zero_prob and out are [n_cells, n_genes], theta is [n_genes]. Checks
// the values first (mean finite and >= 0, theta > 0 or +inf, zero_prob in [0, 1], n_genes <= 2^32)
// and throws std::invalid_argument naming the first bad one; OpenMP over cells.
void sample_counts_cpu(const float* mean, const float* theta, const float* zero_prob, int32_t* out,
                       int64_t n_cells, int64_t n_genes, uint64_t seed, uint64_t cell_offset);

}  // namespace cellsynth
