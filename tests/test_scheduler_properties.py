"""Properties of cellsynth.scheduler over random configurations, and its noise and error contracts.

* hypothesis: timestep lists, a perfect denoiser ends at the data point, DDPM == DDIM(eta = 1),
  finite outputs, re-batching invariance of the keyed noise;
* the keyed Philox noise against a NumPy Philox4x32-10 (tests/reference_schedulers.py);
* zero-negation truncation on the last step; a DDIM trajectory against the PyTorch reference
  sampler (reference_sampler); clear ValueErrors for bad options and inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_schedulers as ref
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference_sampler import sample as reference_sample
from torch import nn

from cellsynth.scheduler import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPACINGS = ["leading", "trailing", "linspace", "quadratic"]
KINDS = ["ddim", "ddpm", "dpmsolver++"]


def build(kind: str, **kwargs):
    cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}
    return cls[kind](**kwargs)


@st.composite
def configs(draw, max_T: int = 1000, max_steps: int = 60) -> dict:
    """A random (T, S, spacing, schedule, prediction type) configuration."""
    T = draw(st.integers(2, max_T))
    steps = draw(st.integers(1, min(T, max_steps)))
    return dict(
        num_train_timesteps=T,
        steps=steps,
        timestep_spacing=draw(st.sampled_from(SPACINGS)),
        beta_schedule=draw(st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"])),
        prediction_type=draw(st.sampled_from(ref.PREDICTION_TYPES)),
    )


def split(cfg: dict) -> tuple[int, dict]:
    cfg = dict(cfg)
    return cfg.pop("steps"), cfg


# --------------------------------------------------------------------------------------- timesteps


@SETTINGS
@given(
    T=st.integers(1, 3000),
    data=st.data(),
    spacing=st.sampled_from(SPACINGS),
    kind=st.sampled_from(["ddim", "ddpm"]),
)
def test_timesteps_strictly_descending_in_range(T: int, data, spacing: str, kind: str) -> None:
    steps = data.draw(st.integers(1, T))
    sched = build(kind, num_train_timesteps=T, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    ts = sched.timesteps
    assert isinstance(ts, np.ndarray) and ts.dtype == np.int64 and ts.shape == (steps,)
    assert (np.diff(ts) < 0).all(), ts
    assert ts.min() >= 0 and ts.max() < T
    if spacing == "quadratic":
        np.testing.assert_array_equal(ts, ref.quadratic_timesteps(T, steps))
    else:
        np.testing.assert_array_equal(ts, ref.timesteps(T, steps, spacing))


@SETTINGS
@given(T=st.integers(2, 3000), data=st.data(), spacing=st.sampled_from(SPACINGS))
def test_dpmsolver_timesteps_descending_in_range(T: int, data, spacing: str) -> None:
    steps = data.draw(st.integers(1, min(T, 200)))
    sched = DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    ts = sched.timesteps
    assert ts.dtype == np.int64 and ts.shape == (steps,)
    assert (np.diff(ts) <= 0).all() and ts.min() >= 0 and ts.max() < T
    np.testing.assert_array_equal(ts, ref.dpm_timesteps(T, steps, spacing))


# -------------------------------------------------------------------------------- perfect denoiser


def perfect_output(x: np.ndarray, x0: np.ndarray, ab: float, prediction_type: str) -> np.ndarray:
    """What an exact model outputs at x_t when the data point is x0 (float64 -> float32)."""
    x, x0 = x.astype(np.float64), x0.astype(np.float64)
    a, s = math.sqrt(ab), math.sqrt(1 - ab)
    eps = (x - a * x0) / s
    out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[prediction_type]
    return out.astype(np.float32)


@SETTINGS
@given(cfg=configs(), kind=st.sampled_from(KINDS), eta=st.floats(0.0, 1.0), seed=st.integers(0, 9))
def test_perfect_denoiser_returns_the_data_point(cfg: dict, kind: str, eta: float, seed: int):
    steps, cfg = split(cfg)
    if kind == "dpmsolver++":  # its lists repeat timesteps when S is close to T (as diffusers')
        T, spacing = cfg["num_train_timesteps"], cfg["timestep_spacing"]
        assume((np.diff(ref.dpm_timesteps(T, steps, spacing)) < 0).all())
    sched = build(kind, seed=seed, **cfg)
    sched.set_timesteps(steps)
    ac = sched.alphas_cumprod
    rng = np.random.default_rng(seed)
    x0 = (3 * rng.standard_normal((3, 16))).astype(np.float32)
    x = sched.init_noise(3, 16)
    kw = {"eta": eta} if kind == "ddim" else {}
    for t in sched.timesteps.tolist():
        x = sched.step(perfect_output(x, x0, float(ac[t]), cfg["prediction_type"]), t, x, **kw)
        assert np.isfinite(x).all()
    # The last x0 estimate carries the float32 rounding of the model output / sqrt(alpha-bar).
    ab_last = float(ac[sched.timesteps[-1]])
    atol = 1e-5 * (1 + np.abs(x0).max()) / math.sqrt(ab_last)
    np.testing.assert_allclose(x, x0, rtol=1e-5, atol=atol)


# ---------------------------------------------------------------------------------- DDPM = DDIM(1)


def toy(x: np.ndarray, t: int, T: int) -> np.ndarray:
    """A fixed smooth stand-in for a trained epsilon model."""
    s = t / T
    g = np.linspace(-1, 1, x.shape[1], dtype=np.float32)
    return (0.5 * np.tanh(x) * (1 + s) + 0.1 * g - 0.2 * s).astype(np.float32)


@SETTINGS
@given(
    T=st.integers(2, 300),
    full=st.booleans(),
    data=st.data(),
    spacing=st.sampled_from(SPACINGS),
    prediction_type=st.sampled_from(ref.PREDICTION_TYPES),
    philox=st.booleans(),
)
def test_ddpm_equals_ddim_with_eta_1(
    T: int, full: bool, data, spacing: str, prediction_type: str, philox: bool
) -> None:
    """Given the same noise, ancestral DDPM ('fixed_small') is DDIM with eta = 1 (any schedule)."""
    steps = T if full else data.draw(st.integers(1, T))
    kw = dict(num_train_timesteps=T, timestep_spacing=spacing, prediction_type=prediction_type)
    ddim, ddpm = DDIMScheduler(seed=5, **kw), DDPMScheduler(seed=5, **kw)
    ddim.set_timesteps(steps)
    ddpm.set_timesteps(steps)
    np.testing.assert_array_equal(ddim.timesteps, ddpm.timesteps)
    rng = np.random.default_rng(T)
    x = y = ddim.init_noise(4, 9)
    for i, t in enumerate(ddim.timesteps.tolist()):
        z = None if philox else rng.standard_normal((4, 9)).astype(np.float32)
        x = ddim.step(toy(x, t, T), t, x, eta=1.0, variance_noise=z)
        y = ddpm.step(toy(y, t, T), t, y, variance_noise=z)
        scale = max(1.0, float(np.abs(y).max()))
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=2e-5 * scale, err_msg=f"step {i}")


@SETTINGS
@given(
    cfg=configs(),
    kind=st.sampled_from(KINDS),
    eta=st.floats(0.0, 1.0),
    magnitude=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_output_is_finite(cfg: dict, kind: str, eta: float, magnitude: float) -> None:
    steps, cfg = split(cfg)
    sched = build(kind, **cfg)
    sched.set_timesteps(steps)
    rng = np.random.default_rng(steps)
    kw = {"eta": eta} if kind == "ddim" else {}
    x = sched.init_noise(2, 11)
    for t in sched.timesteps.tolist():
        out = (magnitude * rng.standard_normal((2, 11))).astype(np.float32)
        x = sched.step(out, t, x, **kw)
        assert x.dtype == np.float32 and np.isfinite(x).all()


# ------------------------------------------------------------------------------------- keyed noise


@pytest.mark.parametrize("cell_offset", [0, 12345, 2**32 - 2, 2**40 + 3])
@pytest.mark.parametrize("n_genes", [1, 3, 4, 37])
def test_init_noise_is_the_keyed_philox_stream(cell_offset: int, n_genes: int) -> None:
    """x_T = Philox4x32-10 normals keyed by (seed, global cell, step = 2^32 - 1, gene)."""
    seed = 2**33 + 17  # both key words non-zero
    sched = DDIMScheduler(seed=seed)
    got = sched.init_noise(6, n_genes, cell_offset=cell_offset)
    assert got.dtype == np.float32 and got.shape == (6, n_genes)
    cells = cell_offset + np.arange(6, dtype=np.uint64)
    want = ref.philox_normals(seed, cells, ref.INITIAL_NOISE_STEP, n_genes)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_step_noise_is_keyed_by_step_index() -> None:
    """The noise a stochastic step adds is the Philox stream of (seed, cell, step index, gene)."""
    seed, G = 9, 21
    sched = DDIMScheduler(seed=seed)
    sched.set_timesteps(10)
    ac = sched.alphas_cumprod
    ts = sched.timesteps
    rng = np.random.default_rng(0)
    for i in (0, 4, 8):  # not the last step: there sigma = 0
        t = int(ts[i])
        out, x = (rng.standard_normal((5, G)).astype(np.float32) for _ in range(2))
        noisy = sched.step(out, t, x, eta=1.0, cell_offset=100)
        plain = sched.step(out, t, x, eta=1.0, variance_noise=np.zeros_like(x))
        sigma = ref.ddim_sigma(float(ac[t]), float(ac[ts[i + 1]]), 1.0)
        z = (noisy.astype(np.float64) - plain) / sigma
        want = ref.philox_normals(seed, 100 + np.arange(5), i, G)
        np.testing.assert_allclose(z, want, atol=2e-5 / sigma)


def test_noise_statistics_and_seeds() -> None:
    a = DDIMScheduler(seed=1).init_noise(400, 500)
    b = DDIMScheduler(seed=2).init_noise(400, 500)
    n = a.size
    assert abs(a.mean()) < 5 / math.sqrt(n) and abs(a.std() - 1) < 5 / math.sqrt(n)
    # Gaussian tails, not uniform: P(|z| > 3) = 0.0027
    assert abs((np.abs(a) > 3).mean() - 0.0027) < 0.0006
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, DDIMScheduler(seed=1).init_noise(400, 500))
    # neighbouring cells and genes are uncorrelated
    assert abs(np.corrcoef(a[:-1].ravel(), a[1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]) < 0.01


@SETTINGS
@given(
    kind=st.sampled_from(KINDS),
    cut=st.integers(1, 9),
    base=st.sampled_from([0, 7, 2**32 - 5]),
    n_genes=st.integers(1, 40),
    spacing=st.sampled_from(SPACINGS),
)
def test_noise_invariant_under_rebatching(
    kind: str, cut: int, base: int, n_genes: int, spacing: str
) -> None:
    """10 cells in one batch == cells [0, cut) and [cut, 10) in two batches, bit for bit."""
    kw = {"eta": 1.0} if kind == "ddim" else {}

    def run(first: int, n: int) -> np.ndarray:
        sched = build(kind, seed=3, timestep_spacing=spacing)
        sched.set_timesteps(8)
        x = sched.init_noise(n, n_genes, cell_offset=base + first)
        for t in sched.timesteps.tolist():
            x = sched.step(toy(x, t, 1000), t, x, cell_offset=base + first, **kw)
        return x

    whole = run(0, 10)
    parts = np.concatenate([run(0, cut), run(cut, 10 - cut)])
    np.testing.assert_array_equal(whole, parts)


# -------------------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("threshold", [0.0, 0.5])
@pytest.mark.parametrize("kind", KINDS)
def test_truncation_zeroes_exactly_the_values_below_threshold_on_the_last_step(
    kind: str, threshold: float
) -> None:
    def run(**kw) -> list[np.ndarray]:
        sched = build(kind, seed=4, **kw)
        sched.set_timesteps(6)
        x = sched.init_noise(8, 33)
        xs = []
        for t in sched.timesteps.tolist():
            x = sched.step(toy(x, t, 1000), t, x)
            xs.append(x)
        return xs

    plain = run()
    cut = run(truncate_final=True, truncate_threshold=threshold)
    for a, b in zip(plain[:-1], cut[:-1], strict=True):  # earlier steps untouched
        np.testing.assert_array_equal(a, b)
    assert (plain[-2] < 0).any()
    last, want = cut[-1], np.where(plain[-1] < threshold, 0.0, plain[-1])
    assert ((plain[-1] < threshold).mean()) > 0.05  # the test truncates something
    np.testing.assert_array_equal(last, want.astype(np.float32))


# ------------------------------------------------------------------------- vs reference_sampler.py


class Toy(nn.Module):
    """A label- and time-dependent stand-in for a DiT (the interface sampler.sample needs)."""

    def __init__(self, n_genes: int) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.w = nn.Parameter(torch.linspace(-1.0, 1.0, n_genes))

    def null_labels(self, batch_size: int, device=None) -> torch.Tensor:
        return torch.full((batch_size, 1), 3, dtype=torch.long, device=device)

    def forward(self, x, t, labels):
        s = t.to(x.dtype)[:, None] / 1000
        y = labels[:, :1].to(x.dtype)
        return 0.5 * torch.tanh(x) * (1 + s) + 0.1 * self.w * (1 + y) - 0.2 * s


@pytest.mark.parametrize(
    "scheduler, eta, spacing, prediction_type, guidance",
    [
        ("ddim", 0.0, "leading", "epsilon", 1.0),
        ("ddim", 0.0, "trailing", "v_prediction", 2.0),
        ("ddim", 0.5, "linspace", "epsilon", 1.5),
        ("ddim", 1.0, "leading", "sample", 1.0),
        ("ddpm", 0.0, "trailing", "epsilon", 1.0),
    ],
)
def test_trajectory_matches_reference_sampler(
    scheduler: str, eta: float, spacing: str, prediction_type: str, guidance: float
) -> None:
    G, steps = 24, 50
    model = Toy(G).eval()
    labels = torch.tensor([[0], [1], [2], [1], [0]])
    B = len(labels)
    cls = DDIMScheduler if scheduler == "ddim" else DDPMScheduler
    sched = cls(
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        truncate_final=True,
        seed=11,
    )
    sched.set_timesteps(steps)
    x_T = sched.init_noise(B, G)
    zs = np.random.default_rng(1).standard_normal((steps, B, G)).astype(np.float32)

    want = reference_sample(
        model,
        sched.alphas_cumprod,
        labels,
        steps=steps,
        scheduler=scheduler,
        eta=eta,
        guidance_scale=guidance,
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        initial_noise=torch.from_numpy(x_T.copy()),
        noise_fn=lambda i, shape: torch.from_numpy(zs[i]),
        truncate=True,
    ).numpy()

    x = x_T
    kw = {"eta": eta} if scheduler == "ddim" else {}
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps.tolist()):
            tb = torch.full((B,), t, dtype=torch.long)
            xt = torch.from_numpy(x)
            cond = model(xt, tb, labels)
            if guidance != 1.0:
                uncond = model(xt, tb, model.null_labels(B))
                cond = uncond + guidance * (cond - uncond)
            x = sched.step(cond.numpy(), t, x, variance_noise=zs[i], **kw)
    assert (x == 0).any() and (x > 0).any()
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


# --------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (DDIMScheduler, dict(beta_schedule="cosine"), "beta_schedule"),
        (DDIMScheduler, dict(prediction_type="noise"), "prediction_type"),
        (DDIMScheduler, dict(timestep_spacing="uniform"), "timestep_spacing"),
        (DDIMScheduler, dict(num_train_timesteps=0), "num_train_timesteps"),
        (DDIMScheduler, dict(trained_betas=[0.1, 1.5]), "betas"),
        (DDIMScheduler, dict(trained_betas=[0.1, -0.1]), "betas"),
        (DDIMScheduler, dict(beta_start=0.5, beta_end=2.0), "beta"),
        (DDIMScheduler, dict(clip_sample=True, clip_sample_range=0.0), "clip_sample_range"),
        (DDIMScheduler, dict(thresholding=True, dynamic_thresholding_ratio=1.5), "ratio"),
        (DDPMScheduler, dict(variance_type="learned"), "variance_type"),
        (DPMSolverMultistepScheduler, dict(solver_order=4), "solver_order"),
    ],
)
def test_bad_options_raise_clear_errors(cls, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sched = cls(**kwargs)
        sched.set_timesteps(10)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.set_timesteps(0), "num_inference_steps"),
        (lambda s: s.set_timesteps(1001), "num_inference_steps"),
        (lambda s: s.set_timesteps(), "num_inference_steps|timesteps"),
        (lambda s: s.set_timesteps(5, timesteps=[9, 5, 1]), "timesteps"),
        (lambda s: s.set_timesteps(timesteps=[5, 9, 1]), "descending"),
        (lambda s: s.set_timesteps(timesteps=[5, 5, 1]), "descending"),
        (lambda s: s.set_timesteps(timesteps=[1000, 5]), r"\[0, 1000\)"),
        (lambda s: s.set_timesteps(timesteps=[]), "empty"),
    ],
)
def test_bad_timesteps_raise(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(DDIMScheduler())


def _ready() -> DDIMScheduler:
    s = DDIMScheduler()
    s.set_timesteps(10)
    return s


X = np.zeros((3, 8), dtype=np.float32)
M = np.ones((3, 8), dtype=np.float32)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.step(X, 900, X, eta=-0.5), "eta"),
        (lambda s: s.step(X, 900, X, eta=float("nan")), "eta"),
        (lambda s: s.step(X, 902, X), "902"),  # not in the list
        (lambda s: s.step(X.astype(np.float64), 900, X), "float32"),
        (lambda s: s.step(X, 900, np.zeros((3, 9), np.float32)), "shape"),
        (lambda s: s.step(X, 900, X, variance_noise=np.zeros((2, 8), np.float32)), "shape"),
        (lambda s: s.step(np.zeros((8, 3), np.float32).T, 900, X), "contiguous"),
        (lambda s: s.step(M, 900, X, out=M), "alias|overlap"),
        (lambda s: s.step(X.copy(), 900, X, cell_offset=-1), "cell_offset"),
    ],
)
def test_bad_step_inputs_raise(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(_ready())


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
def test_epsilon_at_zero_terminal_snr_is_refused(cls) -> None:
    """alpha-bar = 0 at t = T - 1: x0 = (x - eps) / 0 does not exist; the error says what to do."""
    s = cls(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    s.set_timesteps(10)
    assert s.alphas_cumprod[999] == 0.0
    with pytest.raises(ValueError, match="v_prediction"):
        s.step(X, 999, X)
    v = cls(
        rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"
    )
    v.set_timesteps(10)
    assert np.isfinite(v.step(M, 999, X)).all()


def test_step_before_set_timesteps_raises() -> None:
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMScheduler().step(X, 900, X)


def test_eta_is_ddim_only() -> None:
    for cls in (DDPMScheduler, DPMSolverMultistepScheduler):
        s = cls()
        s.set_timesteps(10)
        with pytest.raises((TypeError, ValueError)):
            s.step(X, int(s.timesteps[0]), X, eta=0.5)


# ------------------------------------------------------------------------------------- array types


def test_torch_in_torch_out_and_out_buffer() -> None:
    s = _ready()
    rng = np.random.default_rng(0)
    out_np, x_np = (rng.standard_normal((3, 8)).astype(np.float32) for _ in range(2))
    want = s.step(out_np, 900, x_np)
    got = s.step(torch.from_numpy(out_np), 900, torch.from_numpy(x_np))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), want)
    buf = np.empty_like(x_np)
    res = s.step(out_np, 900, x_np, out=buf)
    assert res is buf or np.shares_memory(res, buf)
    np.testing.assert_array_equal(buf, want)
    x_inplace = x_np.copy()
    s.step(out_np, 900, x_inplace, out=x_inplace)  # in place over the sample is allowed
    np.testing.assert_array_equal(x_inplace, want)
