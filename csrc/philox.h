// Counter-based random numbers: Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as
// easy as 1, 2, 3"; the constants of Random123 and curand) and standard normals by Box-Muller.
//
// Header-only and usable from host and device code, so the CPU and CUDA kernels draw the same
// numbers. A draw is a pure function of (key, counter): no state, no sequence, no skip-ahead.
//
// cellsynth keys the generator by the user's seed and puts the coordinates of a value in the
// counter:
//   key     = (seed & 0xFFFFFFFF, seed >> 32)
//   counter = (gene / 4, step, cell & 0xFFFFFFFF, cell >> 32)
// where `cell` is the GLOBAL cell index (batch offset + row) and `step` is the index of the
// sampling step in the timestep list (kInitialNoiseStep for x_T). One Philox call gives 4 uint32
// and so the normals of 4 consecutive genes (gene % 4 picks one). A cell's noise therefore does not
// depend on the batch size, chunking or sharding.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define CELLSYNTH_HD __host__ __device__ __forceinline__
#else
#define CELLSYNTH_HD inline
#endif

namespace cellsynth {

// The reserved step value that keys the initial noise x_T (never a valid step index).
constexpr uint32_t kInitialNoiseStep = 0xFFFFFFFFu;

struct Philox4 {
  uint32_t v[4];
};

namespace philox_detail {

constexpr uint32_t kM0 = 0xD2511F53u;  // multipliers
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;  // Weyl key increments (golden ratio, sqrt(3) - 1)
constexpr uint32_t kW1 = 0xBB67AE85u;

CELLSYNTH_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

}  // namespace philox_detail

// One Philox round on the counter (c0, c1, c2, c3) with the key (k0, k1).
CELLSYNTH_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                               uint32_t k1) {
  using namespace philox_detail;
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo(kM0, c0, hi0, lo0);
  mulhilo(kM1, c2, hi1, lo1);
  const uint32_t n0 = hi1 ^ c1 ^ k0;
  const uint32_t n2 = hi0 ^ c3 ^ k1;
  c0 = n0;
  c1 = lo1;
  c2 = n2;
  c3 = lo0;
}

// Philox4x32 with 10 rounds: the Random123 reference function philox4x32_R(10, ctr, key).
CELLSYNTH_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                   uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    philox_round(c0, c1, c2, c3, k0, k1);
    k0 += philox_detail::kW0;  // bump the key for the next round (unused after the last)
    k1 += philox_detail::kW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// A uniform in the open interval (0, 1) from the top 23 bits of x:
//   u = ((x >> 9) + 0.5) * 2^-23 = (2 * (x >> 9) + 1) * 2^-24,
// an odd multiple of 2^-24 and so exact in float32: u lies in [2^-24, 1 - 2^-24], never 0 or 1,
// and host and device compute the same float bit for bit.
CELLSYNTH_HD float uniform_open01(uint32_t x) {
  return static_cast<float>(static_cast<int32_t>(x >> 9)) * 1.1920928955078125e-07f +  // 2^-23
         5.9604644775390625e-08f;                                                         // 2^-24
}

namespace philox_detail {

CELLSYNTH_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_bit_cast(uint32_t, f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

CELLSYNTH_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_bit_cast(float, u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// ln(u) for a normal, positive, finite float u: the Cephes logf algorithm (range reduction to
// [sqrt(1/2), sqrt(2)), a degree-9 polynomial and a Cody-Waite split of ln 2), < 2 ulp, written
// without branches or library calls so that it vectorises and rounds identically on every target.
CELLSYNTH_HD float log_positive(float u) {
  const uint32_t bits = float_bits(u);
  const uint32_t mantissa = bits & 0x007FFFFFu;
  // mantissa in [1, 2); above float(sqrt 2) = 0x3FB504F3 halve it (exactly) and bump e, so that
  // f lies in [sqrt(1/2), sqrt(2)). Integer operations only: no branch, no select.
  const uint32_t big = mantissa > 0x003504F3u ? 1u : 0u;
  const int32_t e = static_cast<int32_t>(bits >> 23) - 127 + static_cast<int32_t>(big);
  const float f = bits_float((mantissa | 0x3F800000u) - (big << 23));
  const float x = f - 1.0f;  // exact (Sterbenz)
  const float z = x * x;
  float y = 7.0376836292e-2f;
  y = y * x - 1.1514610310e-1f;
  y = y * x + 1.1676998740e-1f;
  y = y * x - 1.2420140846e-1f;
  y = y * x + 1.4249322787e-1f;
  y = y * x - 1.6668057665e-1f;
  y = y * x + 2.0000714765e-1f;
  y = y * x - 2.4999993993e-1f;
  y = y * x + 3.3333331174e-1f;
  y = y * x * z;
  const float fe = static_cast<float>(e);
  y = y + -2.12194440e-4f * fe;
  y = y - 0.5f * z;
  return (x + y) + 0.693359375f * fe;
}

// sin and cos of 2 pi m / 2^24 for an odd m in (0, 2^24), branch-free. The quadrant q and the
// remainder are integer arithmetic (exact): 2 pi m / 2^24 = (pi / 2) (q + r), |r| <= 1/2; the
// Cephes sinf / cosf polynomials on |x| = |pi r / 2| <= pi / 4 (< 2 ulp) and a quadrant swap.
CELLSYNTH_HD void sincos_2pi(int32_t m, float& s, float& c) {
  const int32_t q = (m + (1 << 21)) >> 22;  // round(m / 2^22), in [0, 4]; never a tie (m odd)
  const float r = static_cast<float>(m - (q << 22)) * 2.384185791015625e-07f;  // * 2^-22, exact
  const float x = r * 1.57079632679489661923f;
  const float z = x * x;
  float ps = -1.9515295891e-4f;
  ps = ps * z + 8.3321608736e-3f;
  ps = ps * z - 1.6666654611e-1f;
  const float sx = ps * z * x + x;
  float pc = 2.443315711809948e-5f;
  pc = pc * z - 1.388731625493765e-3f;
  pc = pc * z + 4.166664568298827e-2f;
  const float cx = pc * z * z - 0.5f * z + 1.0f;
  const bool swap = (q & 1) != 0;
  const float s1 = swap ? cx : sx;
  const float c1 = swap ? sx : cx;
  s = (q & 2) != 0 ? -s1 : s1;
  c = ((q + 1) & 2) != 0 ? -c1 : c1;
}

}  // namespace philox_detail

struct Normal4 {
  float v[4];
};

// Four standard normals by Box-Muller from one Philox output:
//   (v0, v1) = sqrt(-2 ln u(x0)) * (cos 2 pi u(x1), sin 2 pi u(x1)), and (v2, v3) likewise from
//   (x2, x3), with the exact uniforms u of uniform_open01. |v| <= sqrt(-2 ln 2^-24) ~ 5.77: the
//   tails beyond 5.77 sigma (probability 8e-9) are cut, the price of exact float32 uniforms.
// Computed in float32 with the branch-free log_positive and sincos_2pi above (< 2 ulp each, IEEE
// sqrt): only +, -, *, sqrt and integer operations, so with floating-point contraction off
// (-ffp-contract=off, nvcc -fmad=false) host and device produce the same bits, and the CPU loop
// over genes vectorises.
CELLSYNTH_HD void box_muller2(uint32_t a, uint32_t b, float& n0, float& n1) {
  const float radius = sqrtf(-2.0f * philox_detail::log_positive(uniform_open01(a)));
  float s, c;
  philox_detail::sincos_2pi(static_cast<int32_t>((b >> 9) * 2u + 1u), s, c);
  n0 = radius * c;
  n1 = radius * s;
}

CELLSYNTH_HD Normal4 box_muller4(const Philox4& r) {
  Normal4 out;
  box_muller2(r.v[0], r.v[1], out.v[0], out.v[1]);
  box_muller2(r.v[2], r.v[3], out.v[2], out.v[3]);
  return out;
}

// The 4 normals of genes [4 * group, 4 * group + 4) of `cell` at `step` for `seed`.
CELLSYNTH_HD Normal4 normal4(uint64_t seed, uint64_t cell, uint32_t step, uint32_t group) {
  const Philox4 r = philox4x32_10(group, step, static_cast<uint32_t>(cell),
                                  static_cast<uint32_t>(cell >> 32), static_cast<uint32_t>(seed),
                                  static_cast<uint32_t>(seed >> 32));
  return box_muller4(r);
}

}  // namespace cellsynth
