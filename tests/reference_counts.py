"""A float64 pure-Python reference of the keyed NB / ZINB count sampler (csrc/counts.h).

Written from the documented algorithm, not from the C++: the Philox words come from the
(separately tested) ``_core.philox4x32_10`` binding, and everything else -- the counter layout,
the uniforms, Box-Muller, Marsaglia-Tsang, the boost for theta < 1, inversion and PTRS -- is
re-implemented here with Python floats (IEEE doubles) and the ``math`` module, one scalar
operation at a time in the documented order. Slow (a Python call per Philox block): use it on a
few hundred values.
"""

from __future__ import annotations

import math

import numpy as np

from cellsynth import _core

STREAM_BIT = 0x80000000  # counter word 1 of every count draw
MAX_COUNT = 2**31 - 1
INVERSION_LIMIT = 10.0  # Poisson: inversion below, PTRS from here
NB_INVERSION_LIMIT = 10.0  # NB mean: inversion of the NB pmf below, Gamma-Poisson from here
NEGLIGIBLE_SHARE = 1e-18  # the sequential NB search stops when a term is this small a share
CAP_LAMBDA = 2.0**32  # Poisson means from here give MAX_COUNT without drawing
M32 = 0xFFFFFFFF


class Stream:
    """The uniforms of one (seed, cell, gene): draw j is double j % 2 of Philox block j // 2."""

    def __init__(self, seed: int, cell: int, gene: int) -> None:
        self.key = [seed & M32, seed >> 32]
        self.gene, self.cell = gene, cell
        self.j = 0
        self.words: tuple[int, ...] = ()

    def block(self, b: int) -> tuple[int, ...]:
        ctr = [self.gene, STREAM_BIT | b, self.cell & M32, self.cell >> 32]
        return _core.philox4x32_10(ctr, self.key)

    def next(self) -> float:
        b, half = divmod(self.j, 2)
        if half == 0:
            self.words = self.block(b)
        self.j += 1
        hi, lo = self.words[2 * half], self.words[2 * half + 1]
        k = ((hi >> 6) << 26) | (lo >> 6)  # 52 bits
        u = (k + 0.5) * 2.0**-52  # an odd multiple of 2^-53: exact
        assert 0.0 < u < 1.0
        return u


def normal(s: Stream) -> float:
    u1 = s.next()
    u2 = s.next()
    return math.sqrt(-2.0 * math.log(u1)) * math.cos((2.0 * math.pi) * u2)


def gamma_mt(a: float, s: Stream) -> float:
    """Marsaglia & Tsang (2000) for a >= 1."""
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        while True:
            x = normal(s)
            v = 1.0 + c * x
            if v > 0.0:
                break
        v = v * v * v
        u = s.next()
        x2 = x * x
        if u < 1.0 - 0.0331 * (x2 * x2):
            return d * v
        if math.log(u) < 0.5 * x2 + d * (1.0 - v + math.log(v)):
            return d * v


def gamma(a: float, s: Stream) -> float:
    if a < 1.0:
        g = gamma_mt(a + 1.0, s)
        u = s.next()
        return g * math.pow(u, 1.0 / a)
    return gamma_mt(a, s)


def poisson(lam: float, s: Stream) -> float:
    if lam < INVERSION_LIMIT:
        u = s.next()
        k = 0.0
        p = math.exp(-lam)
        f = p
        while u > f and p > 0.0:
            k = k + 1.0
            p = p * (lam / k)
            f = f + p
        return k
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        U = s.next() - 0.5
        V = s.next()
        us = 0.5 - abs(U)
        k = math.floor((2.0 * a / us + b) * U + lam + 0.43)
        k = float(k)
        if us >= 0.07 and V <= vr:
            return k
        if k < 0.0 or (us < 0.013 and V > us):
            continue
        lhs = math.log(V) + math.log(inv_alpha) - math.log(a / (us * us) + b)
        if lhs <= -lam + k * loglam - math.lgamma(k + 1.0):
            return k


def nb_inversion(mean: float, theta: float, s: Stream) -> float:
    """NB(mean, theta) by sequential search over its pmf, one uniform (csrc/counts.h)."""
    u = s.next()
    q = mean / (theta + mean)
    k = 0.0
    p = math.exp(-theta * math.log1p(mean / theta))
    f = p
    while u > f and p > NEGLIGIBLE_SHARE * f:
        p = p * ((k + theta) / (k + 1.0)) * q
        k = k + 1.0
        f = f + p
    return k


def count(mean: float, theta: float, zero_prob: float | None, seed: int, cell: int, gene: int):
    s = Stream(seed, cell, gene)
    if zero_prob is not None and s.next() < zero_prob:
        return 0
    if mean == 0.0:
        return 0
    if not math.isinf(theta) and mean < NB_INVERSION_LIMIT:
        return int(nb_inversion(mean, theta, s))
    lam = mean if math.isinf(theta) else gamma(theta, s) * (mean / theta)
    if lam >= CAP_LAMBDA:
        return MAX_COUNT
    return min(int(poisson(lam, s)), MAX_COUNT)


def sample_counts(mean, theta, seed: int, cell_offset: int = 0, zero_prob=None) -> np.ndarray:
    """int64 [n, G] counts of float32 mean [n, G], theta [G] and zero_prob [n, G] (or None)."""
    mean = np.asarray(mean, dtype=np.float32)
    theta = np.asarray(theta, dtype=np.float32)
    zp = None if zero_prob is None else np.asarray(zero_prob, dtype=np.float32)
    out = np.zeros(mean.shape, dtype=np.int64)
    for i in range(mean.shape[0]):
        for g in range(mean.shape[1]):
            pi = None if zp is None else float(zp[i, g])
            out[i, g] = count(float(mean[i, g]), float(theta[g]), pi, seed, cell_offset + i, g)
    return out
