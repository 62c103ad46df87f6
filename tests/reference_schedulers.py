"""A float64 NumPy reference for the C++ schedulers, written straight from the papers' formulas.

This module is the test oracle for ``cellsynth.scheduler``: nothing here is fast and nothing here
imports the package under test. Notation: ``ab_t = alphas_cumprod[t]`` (alpha-bar), the sampler
visits a descending list of timesteps ``t_0 > t_1 > ... > t_{S-1}``, and the previous timestep of
``t_i`` is ``t_{i+1}`` (or -1 after the last step, where ``ab_prev`` is 1 when ``set_alpha_to_one``
else ``ab_0``).

Schedules (Ho et al. 2020; Nichol & Dhariwal 2021; Lin et al. 2023)::

    linear             betas = linspace(beta_start, beta_end, T)
    scaled_linear      betas = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2
    squaredcos_cap_v2  betas_i = min(1 - f((i + 1) / T) / f(i / T), 0.999),
                       f(t) = cos((t + 0.008) / 1.008 * pi / 2) ** 2
    zero terminal SNR  sqrt(ab) -> (sqrt(ab) - sqrt(ab_{T-1})) * sqrt(ab_0)
                                   / (sqrt(ab_0) - sqrt(ab_{T-1}))          (Lin et al., Alg. 1)

Model output -> (x0, eps), with ``a = sqrt(ab_t)``, ``s = sqrt(1 - ab_t)``::

    epsilon       x0 = (x - s * out) / a,   eps = out
    sample        x0 = out,                 eps = (x - a * x0) / s
    v_prediction  x0 = a * x - s * out,     eps = a * out + s * x

DDIM (Song et al. 2021, eq. 12 and 16), ``ab' = ab_prev``::

    sigma  = eta * sqrt((1 - ab') / (1 - ab)) * sqrt(1 - ab / ab')
    x_prev = sqrt(ab') * x0 + sqrt(1 - ab' - sigma^2) * eps + sigma * z

DDPM (Ho et al. 2020, eq. 6-7) on the strided chain ``alpha = ab / ab'``, ``beta = 1 - alpha``::

    mean   = sqrt(ab') * beta / (1 - ab) * x0 + sqrt(alpha) * (1 - ab') / (1 - ab) * x
    var    = (1 - ab') / (1 - ab) * beta   ('fixed_small')   or   beta   ('fixed_large')
    x_prev = mean + sqrt(var) * z

DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, midpoint form as in diffusers), with
``lambda = log(alpha / sigma)``, ``alpha = sqrt(ab)``, ``sigma = sqrt(1 - ab)``, data predictions
``m_i = x0`` at step i, ``h = lambda_{t'} - lambda_t``, ``r = h_prev / h``::

    first order:  x' = sigma'/sigma * x - alpha' * (exp(-h) - 1) * m_i
    second order: x' = sigma'/sigma * x - alpha' * (exp(-h) - 1) * (m_i + (m_i - m_{i-1}) / (2 r))

The last step goes to ``ab' = 1`` (sigma' = 0), where both orders reduce to ``x' = m_i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace", "quadratic")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

# --------------------------------------------------------------------------------------- schedules


def make_betas(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> np.ndarray:
    """Betas float64 [T] of a named schedule (module docstring)."""
    T = int(num_train_timesteps)
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if beta_schedule == "scaled_linear":
        return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":

        def f(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas whose last alpha-bar is exactly 0 (Lin et al. 2023, Algorithm 1), float64 [T]."""
    ab_sqrt = np.sqrt(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))
    first, last = ab_sqrt[0], ab_sqrt[-1]
    ab_sqrt = (ab_sqrt - last) * first / (first - last)
    ab = ab_sqrt**2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """Cumulative products of (1 - beta), float64 [T]."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def schedule(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | None = None,
    rescale_betas_zero_snr: bool = False,
) -> np.ndarray:
    """alphas_cumprod float64 [T] for a scheduler configuration."""
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float64)
    else:
        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return alphas_cumprod(betas)


# --------------------------------------------------------------------------------------- timesteps


def timesteps(
    num_train_timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0
) -> np.ndarray:
    """The descending timesteps int64 [S] of DDIM / DDPM, as diffusers' ``set_timesteps``.

    leading:   ``arange(S) * (T // S) + steps_offset``, reversed;
    trailing:  ``round(arange(T, 0, -T / S)) - 1``, its first S values: for some (T, S) (e.g.
               (1000, 61)) the float arange overshoots to S + 1 values, the last of which is
               ``-1``: diffusers then takes S + 1 steps, the last at t = -1 (alphas_cumprod[-1],
               the noisiest value). Those S first values are diffusers' list without that bug;
    linspace:  ``round(linspace(0, T - 1, S))``, reversed;
    quadratic: not a diffusers spacing; see :func:`quadratic_timesteps`.
    """
    T, S = int(num_train_timesteps), int(steps)
    if spacing == "leading":
        ts = (np.arange(0, S) * (T // S)).round()[::-1].astype(np.int64) + int(steps_offset)
    elif spacing == "trailing":
        ts = (np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1)[:S]
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, S).round()[::-1].astype(np.int64)
    elif spacing == "quadratic":
        ts = quadratic_timesteps(T, S)
    else:
        raise ValueError(f"unknown spacing {spacing!r}")
    return np.ascontiguousarray(ts)


def quadratic_timesteps(num_train_timesteps: int, steps: int) -> np.ndarray:
    """Quadratic spacing of the DDIM paper (appendix D.2), denser near t = 0, made unique.

    The DDIM code takes ``int(linspace(0, sqrt(0.8 T), S) ** 2)``, which repeats small timesteps
    when S is large compared with T; cellsynth bumps each repeat to one past its predecessor
    (``q_i = max(q_i, q_{i-1} + 1)``) so the list is strictly monotone, then reverses it.
    """
    T, S = int(num_train_timesteps), int(steps)
    q = (np.linspace(0, math.sqrt(T * 0.8), S) ** 2).astype(np.int64)
    for i in range(1, S):
        q[i] = max(q[i], q[i - 1] + 1)
    return q[::-1].copy()


def dpm_timesteps(
    num_train_timesteps: int, steps: int, spacing: str = "linspace", steps_offset: int = 0
) -> np.ndarray:
    """diffusers' DPMSolverMultistepScheduler timesteps (S + 1 points, the last one dropped)."""
    T, S = int(num_train_timesteps), int(steps)
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, S + 1).round()[::-1][:-1].astype(np.int64)
    elif spacing == "leading":
        ratio = T // (S + 1)
        ts = (np.arange(0, S + 1) * ratio).round()[::-1][:-1].astype(np.int64) + int(steps_offset)
    elif spacing == "trailing":  # first S values, as in :func:`timesteps`
        ts = (np.arange(T, 0, -T / S).round().astype(np.int64) - 1)[:S]
    elif spacing == "quadratic":
        ts = quadratic_timesteps(T, S)
    else:
        raise ValueError(f"unknown spacing {spacing!r}")
    return np.ascontiguousarray(ts)


def prev_timestep(
    ts: np.ndarray, index: int, num_train_timesteps: int, bug_compatible: bool = False
) -> int:
    """The timestep after step ``index`` (-1 after the last).

    Looked up in the list, or, with ``bug_compatible``, diffusers' DDIM rule ``t - T // S``.
    """
    if bug_compatible:
        return int(ts[index]) - int(num_train_timesteps) // len(ts)
    return int(ts[index + 1]) if index + 1 < len(ts) else -1


def alpha_prev(ac: np.ndarray, prev_t: int, set_alpha_to_one: bool = True) -> float:
    """``ab`` at the previous timestep; the final value when ``prev_t < 0``."""
    if prev_t >= 0:
        return float(ac[prev_t])
    return 1.0 if set_alpha_to_one else float(ac[0])


# -------------------------------------------------------------------------------------- x0 and eps


def x0_and_eps(
    model_output: np.ndarray, sample: np.ndarray, ab: float, prediction_type: str = "epsilon"
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted clean sample and noise from a model output at x_t (module docstring)."""
    out = np.asarray(model_output, dtype=np.float64)
    x = np.asarray(sample, dtype=np.float64)
    a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
    if prediction_type == "epsilon":
        return (x - s * out) / a, out
    if prediction_type == "sample":
        return out, (x - a * out) / s
    if prediction_type == "v_prediction":
        return a * x - s * out, a * out + s * x
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def threshold(x0: np.ndarray, ratio: float = 0.995, max_value: float = 1.0) -> np.ndarray:
    """Dynamic thresholding (Saharia et al. 2022) per row: clip to [-s, s], divide by s.

    ``s`` is the ``ratio`` quantile (linear interpolation, as torch.quantile) of |x0| over the
    row's genes, clamped to [1, max_value].
    """
    x0 = np.asarray(x0, dtype=np.float64)
    s = np.quantile(np.abs(x0), ratio, axis=1)
    s = np.clip(s, 1.0, max_value)[:, None]
    return np.clip(x0, -s, s) / s


def clip_or_threshold(
    x0: np.ndarray,
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    thresholding: bool = False,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
) -> np.ndarray:
    """What diffusers does to x0 before the update: thresholding wins over clipping."""
    if thresholding:
        return threshold(x0, dynamic_thresholding_ratio, sample_max_value)
    if clip_sample:
        return np.clip(x0, -clip_sample_range, clip_sample_range)
    return x0


# ------------------------------------------------------------------------------------------- steps


def ddim_sigma(ab: float, ab_prev: float, eta: float) -> float:
    """DDIM noise scale ``eta * sqrt((1 - ab') / (1 - ab) * (1 - ab / ab'))``."""
    return eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))


def ddim_step(
    model_output: np.ndarray,
    sample: np.ndarray,
    ab: float,
    ab_prev: float,
    eta: float = 0.0,
    noise: np.ndarray | None = None,
    prediction_type: str = "epsilon",
    **x0_options,
) -> np.ndarray:
    """One DDIM update in float64; ``x0_options`` go to :func:`clip_or_threshold`.

    As in diffusers, eps is the model's (not re-derived from a clipped x0).
    """
    x0, eps = x0_and_eps(model_output, sample, ab, prediction_type)
    x0 = clip_or_threshold(x0, **x0_options)
    sigma = ddim_sigma(ab, ab_prev, eta)
    x = math.sqrt(ab_prev) * x0 + math.sqrt(max(0.0, 1.0 - ab_prev - sigma**2)) * eps
    if eta > 0:
        x = x + sigma * np.asarray(noise, dtype=np.float64)
    return x


def ddpm_variance(ab: float, ab_prev: float, variance_type: str = "fixed_small") -> float:
    """Posterior variance of the strided chain: beta-tilde ('fixed_small') or beta."""
    beta = 1.0 - ab / ab_prev
    if variance_type == "fixed_small":
        return (1.0 - ab_prev) / (1.0 - ab) * beta
    if variance_type == "fixed_large":
        return beta
    raise ValueError(f"unknown variance_type {variance_type!r}")


def ddpm_step(
    model_output: np.ndarray,
    sample: np.ndarray,
    ab: float,
    ab_prev: float,
    noise: np.ndarray | None = None,
    prediction_type: str = "epsilon",
    variance_type: str = "fixed_small",
    add_noise: bool = True,
    **x0_options,
) -> np.ndarray:
    """One ancestral DDPM update in float64 (module docstring); no noise when not ``add_noise``."""
    x = np.asarray(sample, dtype=np.float64)
    x0, _ = x0_and_eps(model_output, x, ab, prediction_type)
    x0 = clip_or_threshold(x0, **x0_options)
    alpha = ab / ab_prev
    beta = 1.0 - alpha
    mean = (
        math.sqrt(ab_prev) * beta / (1.0 - ab) * x0
        + math.sqrt(alpha) * (1.0 - ab_prev) / (1.0 - ab) * x
    )
    if add_noise:
        var = ddpm_variance(ab, ab_prev, variance_type)
        mean = mean + math.sqrt(var) * np.asarray(noise, dtype=np.float64)
    return mean


class DPMSolverPP2M:
    """DPM-Solver++(2M) in float64 over a fixed timestep list (module docstring).

    ``step(i, model_output, sample)`` takes step ``i`` (0-based, in order); the last step goes to
    ``ab' = 1``. With ``lower_order_final`` and fewer than 15 steps the last step is first order
    (as in diffusers, where the final step to sigma = 0 is first order in any case).
    """

    def __init__(
        self,
        ac: np.ndarray,
        ts: np.ndarray,
        prediction_type: str = "epsilon",
        solver_order: int = 2,
        lower_order_final: bool = True,
        **x0_options,
    ) -> None:
        self.ac = np.asarray(ac, dtype=np.float64)
        self.ts = np.asarray(ts, dtype=np.int64)
        self.prediction_type = prediction_type
        self.solver_order = solver_order
        self.lower_order_final = lower_order_final
        self.x0_options = x0_options
        self.prev_x0: np.ndarray | None = None

    def _ab(self, i: int) -> float:
        return float(self.ac[self.ts[i]]) if i < len(self.ts) else 1.0

    @staticmethod
    def _lambda(ab: float) -> float:
        if ab <= 0.0:
            return -math.inf
        return 0.5 * math.log(ab) - 0.5 * math.log1p(-ab) if ab < 1.0 else math.inf

    def step(self, i: int, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """x at step ``i + 1`` from the model output at step ``i``."""
        ab, ab_next = self._ab(i), self._ab(i + 1)
        x0, _ = x0_and_eps(model_output, sample, ab, self.prediction_type)
        x0 = clip_or_threshold(x0, **self.x0_options)
        # The last step (to sigma = 0) is first order whatever lower_order_final says: there
        # exp(-h) = 0 and every order gives x0 (diffusers: final_sigmas_type='zero').
        first_order = self.solver_order == 1 or self.prev_x0 is None or i == len(self.ts) - 1
        if ab_next >= 1.0:
            out = x0.copy()
        else:
            lam, lam_next = self._lambda(ab), self._lambda(ab_next)
            h = lam_next - lam
            sig, sig_next = math.sqrt(1 - ab), math.sqrt(1 - ab_next)
            alpha_next = math.sqrt(ab_next)
            d = x0
            if not first_order and h != 0.0:  # h = 0: a repeated timestep, x' = x
                h_prev = lam - self._lambda(self._ab(i - 1))
                r = h_prev / h
                d = x0 + 0.5 / r * (x0 - self.prev_x0)
            out = (
                sig_next / sig * np.asarray(sample, dtype=np.float64)
                - alpha_next * math.expm1(-h) * d
            )
        self.prev_x0 = x0
        return out


# ------------------------------------------------------------------------------------------- noise

INITIAL_NOISE_STEP = 0xFFFFFFFF  # the step value that keys x_T
_MASK = np.uint64(0xFFFFFFFF)


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int) -> tuple[np.ndarray, ...]:
    """Philox4x32-10 (Salmon et al. 2011) on arrays of uint32 counters; 4 uint32 arrays out."""
    c = [np.asarray(v, dtype=np.uint64) & _MASK for v in (c0, c1, c2, c3)]
    k = [np.uint64(k0) & _MASK, np.uint64(k1) & _MASK]
    m0, m1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    w0, w1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
    for r in range(10):
        if r > 0:
            k = [(k[0] + w0) & _MASK, (k[1] + w1) & _MASK]
        p0, p1 = m0 * c[0], m1 * c[2]
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ k[0],
            p1 & _MASK,
            (p0 >> np.uint64(32)) ^ c[3] ^ k[1],
            p0 & _MASK,
        ]
    return tuple(v.astype(np.uint32) for v in c)


def _uniform_open01(x: np.ndarray) -> np.ndarray:
    """(2 * (x >> 9) + 1) * 2^-24 in float32: in (0, 1), exact."""
    return (x >> np.uint32(9)).astype(np.float32) * np.float32(2.0**-23) + np.float32(2.0**-24)


def philox_normals(seed: int, cells: np.ndarray, step: int, n_genes: int) -> np.ndarray:
    """Standard normals float32 [len(cells), n_genes] keyed by (seed, global cell, step, gene).

    Key ``(seed & 0xFFFFFFFF, seed >> 32)``, counter ``(gene // 4, step, cell & 0xFFFFFFFF,
    cell >> 32)``; the 4 uint32 of one call give 4 genes by Box-Muller on the pairs (x0, x1) and
    (x2, x3): ``sqrt(-2 ln u_a) * (cos 2 pi u_b, sin 2 pi u_b)``.
    """
    cells = np.asarray(cells, dtype=np.uint64)[:, None]
    groups = np.arange((n_genes + 3) // 4, dtype=np.uint64)[None, :]
    cells, groups = np.broadcast_arrays(cells, groups)
    x = philox4x32_10(
        groups,
        np.full(groups.shape, step, np.uint64),
        cells & _MASK,
        cells >> np.uint64(32),
        seed & 0xFFFFFFFF,
        seed >> 32,
    )
    out = np.empty(groups.shape + (4,), dtype=np.float32)
    two_pi = np.float32(6.28318530717958647692)
    for pair in range(2):
        u1, u2 = _uniform_open01(x[2 * pair]), _uniform_open01(x[2 * pair + 1])
        radius = np.sqrt(np.float32(-2.0) * np.log(u1))
        theta = two_pi * u2
        out[..., 2 * pair] = radius * np.cos(theta)
        out[..., 2 * pair + 1] = radius * np.sin(theta)
    return np.ascontiguousarray(out.reshape(len(cells), -1)[:, :n_genes])


def truncate(x: np.ndarray, threshold_value: float = 0.0) -> np.ndarray:
    """Zero-negation truncation: values below ``threshold_value`` become 0 (default: negatives)."""
    x = np.asarray(x)
    return np.where(x < threshold_value, np.zeros_like(x), x)


# ------------------------------------------------------------------------------------ test configs

# Named scheduler configurations the tests sweep (keyword arguments of the facade's constructors).
_TRAINED = np.sort(np.random.default_rng(7).uniform(5e-5, 0.03, 1000))
SCHEDULE_CONFIGS: dict[str, dict] = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
    "trained_betas": dict(trained_betas=_TRAINED.tolist()),
    "zero_snr": dict(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        rescale_betas_zero_snr=True,
    ),
}


def config_alphas_cumprod(config: dict) -> np.ndarray:
    """Reference alphas_cumprod float64 [T] of one of :data:`SCHEDULE_CONFIGS` (T = 1000)."""
    keys = ("beta_schedule", "beta_start", "beta_end", "trained_betas", "rescale_betas_zero_snr")
    return schedule(num_train_timesteps=1000, **{k: v for k, v in config.items() if k in keys})
