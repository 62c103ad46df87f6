"""Reference DDIM/DDPM samplers: diffusers parity, float64 NumPy oracle, guidance, truncation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from reference_sampler import ddim_step, sample, timesteps_for
from torch import nn

from cellsynth import NoiseSchedule
from cellsynth.training.dit import DiT

AC = NoiseSchedule().alphas_cumprod  # float64 [1000]
G = 6


class Toy(nn.Module):
    """A fixed, smooth, label- and time-dependent stand-in for a trained denoiser."""

    def __init__(self, label_sizes=(3,), dtype=torch.float32, uses_labels: bool = True):
        super().__init__()
        self.n_genes = G
        self.label_sizes = tuple(label_sizes)
        self.uses_labels = uses_labels
        self.w = nn.Parameter(torch.linspace(-1.0, 1.0, G, dtype=dtype))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def null_labels(self, batch_size: int, device=None) -> torch.Tensor:
        null = torch.tensor(self.label_sizes, dtype=torch.long, device=device)
        return null.expand(batch_size, len(self.label_sizes)).clone()

    def forward(self, x, t, labels):
        assert not self.training and t.dtype == torch.long and t.shape == (x.shape[0],)
        self.calls.append((x.clone(), t.clone(), labels.clone()))
        s = t.to(x.dtype)[:, None] / 1000
        y = labels[:, :1].to(x.dtype) if self.uses_labels and labels.shape[1] else 0.0
        return 0.5 * torch.tanh(x) * (1 + s) + 0.1 * self.w * (1 + y) - 0.2 * s


def toy_numpy(x, t, y):
    """Toy.forward in float64 NumPy."""
    s = t / 1000
    return 0.5 * np.tanh(x) * (1 + s) + 0.1 * np.linspace(-1, 1, G) * (1 + y) - 0.2 * s


def noise_list(n: int, batch: int, seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, G, generator=g, dtype=dtype) for _ in range(n)]


LABELS = torch.tensor([[0], [1], [2], [1]])


# ---------------------------------------------------------------------------- timesteps


@pytest.mark.parametrize(
    "T, S",
    [
        (1000, 50),
        (1000, 10),
        (1000, 7),
        (1000, 3),
        (1000, 1),
        (1000, 1000),
        (1000, 999),
        (100, 30),
        (10, 10),
        (50, 49),
    ],
)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_match_diffusers(T, S, spacing):
    for offset in (0, 1) if spacing == "leading" and S < T else (0,):
        ours = timesteps_for(T, S, spacing, steps_offset=offset)
        for cls in (DDIMScheduler, DDPMScheduler):
            ref = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
            ref.set_timesteps(S)
            np.testing.assert_array_equal(ours, ref.timesteps.numpy())
        assert ours.dtype == np.int64 and len(ours) == S
        assert np.all(np.diff(ours) < 0) and ours.min() >= 0 and ours.max() < T


def test_timesteps_errors():
    with pytest.raises(ValueError, match="between 1 and num_train_timesteps=100"):
        timesteps_for(100, 101)
    with pytest.raises(ValueError, match="between 1"):
        timesteps_for(100, 0)
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        timesteps_for(100, 10, "cosine")
    with pytest.raises(ValueError, match="outside"):
        timesteps_for(100, 100, "leading", steps_offset=1)


# ---------------------------------------------------------------------------- diffusers parity


def run_diffusers(sched, model, x, labels, eta=None, noises=None, generator=None):
    xs = []
    for i, t in enumerate(sched.timesteps):
        xs.append(x.clone())
        out = model(x, t.repeat(x.shape[0]), labels)
        kw = {}
        if eta is not None:
            kw["eta"] = eta
            if eta > 0:
                kw["variance_noise"] = noises[i]
        if generator is not None:
            kw["generator"] = generator
        x = sched.step(out, t, x, **kw).prev_sample
    return x, xs


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize(
    "steps, spacing, eta",
    [(50, "leading", 0.0), (10, "leading", 0.0), (20, "trailing", 0.0), (50, "leading", 0.7)],
)
def test_ddim_matches_diffusers_step_by_step(kind, steps, spacing, eta):
    """Where diffusers' t - T//S previous timestep is right (T % S == 0), we agree per step."""
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type=kind,
        timestep_spacing=spacing,
    )
    sched.alphas_cumprod = torch.from_numpy(AC)  # the same float64 schedule on both sides
    sched.set_timesteps(steps)
    x_T = noise_list(1, 4, seed=1)[0]
    noises = noise_list(steps, 4, seed=2)
    model = Toy().eval()
    ref, ref_xs = run_diffusers(sched, model, x_T.clone(), LABELS, eta=eta, noises=noises)
    model.calls.clear()
    ours = sample(
        model,
        AC,
        LABELS,
        steps=steps,
        scheduler="ddim",
        eta=eta,
        prediction_type=kind,
        timestep_spacing=spacing,
        initial_noise=x_T,
        noise_fn=lambda i, shape: noises[i],
        truncate=False,
    )
    assert len(model.calls) == steps
    for (x_in, t_in, _), x_ref, t_ref in zip(model.calls, ref_xs, sched.timesteps, strict=True):
        assert (t_in == t_ref).all()
        torch.testing.assert_close(x_in, x_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps, spacing", [(1000, "leading"), (30, "linspace"), (7, "trailing")])
def test_ddpm_matches_diffusers(kind, steps, spacing):
    """diffusers' DDPMScheduler looks the previous timestep up as we do, for every spacing."""
    sched = DDPMScheduler(
        num_train_timesteps=1000,
        clip_sample=False,
        variance_type="fixed_small",
        prediction_type=kind,
        timestep_spacing=spacing,
    )
    sched.alphas_cumprod = torch.from_numpy(AC)
    sched.set_timesteps(steps)
    x_T = noise_list(1, 4, seed=3)[0]
    model = Toy().eval()
    ref, _ = run_diffusers(
        sched, model, x_T.clone(), LABELS, generator=torch.Generator().manual_seed(9)
    )
    ours = sample(
        model,
        AC,
        LABELS,
        steps=steps,
        scheduler="ddpm",
        prediction_type=kind,
        timestep_spacing=spacing,
        initial_noise=x_T,
        generator=torch.Generator().manual_seed(9),
        truncate=False,
    )
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- float64 oracle


def numpy_ddim(x, labels, steps, spacing, eta, noises, kind, set_alpha_to_one=True):
    """DDIM written out independently in float64 NumPy (previous timestep looked up)."""
    ts = timesteps_for(len(AC), steps, spacing)
    y = labels[:, :1].astype(np.float64)
    for i, t in enumerate(ts):
        ab = AC[t]
        ab_prev = AC[ts[i + 1]] if i + 1 < len(ts) else (1.0 if set_alpha_to_one else AC[0])
        out = toy_numpy(x, t, y)
        if kind == "epsilon":
            eps = out
            x0 = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
        else:  # v_prediction
            x0 = np.sqrt(ab) * x - np.sqrt(1 - ab) * out
            eps = np.sqrt(ab) * out + np.sqrt(1 - ab) * x
        var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        sigma = eta * np.sqrt(var)
        x = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev - sigma**2) * eps
        if sigma > 0:
            x = x + sigma * noises[i]
    return x


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(
    "steps, spacing, eta, one",
    [
        (10, "linspace", 0.0, True),
        (7, "trailing", 0.0, True),
        (33, "leading", 0.5, True),
        (12, "trailing", 1.0, False),
        (1, "leading", 0.0, True),
    ],
)
def test_ddim_float64_matches_numpy_oracle(kind, steps, spacing, eta, one):
    x_T = noise_list(1, 4, seed=4, dtype=torch.float64)[0]
    noises = noise_list(steps, 4, seed=5, dtype=torch.float64)
    model = Toy(dtype=torch.float64)
    ours = sample(
        model,
        AC,
        LABELS,
        steps=steps,
        eta=eta,
        prediction_type=kind,
        timestep_spacing=spacing,
        set_alpha_to_one=one,
        initial_noise=x_T,
        noise_fn=lambda i, shape: noises[i],
        truncate=False,
    )
    assert ours.dtype == torch.float64
    ref = numpy_ddim(
        x_T.numpy(), LABELS.numpy(), steps, spacing, eta, [n.numpy() for n in noises], kind, one
    )
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_single_ddim_step_matches_numpy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ab_prev = rng.uniform(0.01, 1.0)
        ab = ab_prev * rng.uniform(0.05, 0.999)
        eta = rng.uniform(0, 1)
        x0, eps, z = rng.normal(size=(3, 5, 8))
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        ref = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev - sigma**2) * eps + sigma * z
        got = ddim_step(
            torch.from_numpy(x0), torch.from_numpy(eps), ab, ab_prev, eta, torch.from_numpy(z)
        )
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------- DDPM == DDIM(eta=1)


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize(
    "steps, spacing, one",
    [
        (1000, "leading", True),
        (25, "trailing", True),
        (9, "linspace", False),
        (12, "trailing", False),
    ],
)
def test_ddpm_equals_ddim_eta_one(kind, steps, spacing, one):
    """Posterior-mean DDPM and DDIM with eta = 1 are the same process given the same noise."""
    x_T = noise_list(1, 4, seed=6, dtype=torch.float64)[0]
    noises = noise_list(steps, 4, seed=7, dtype=torch.float64)
    used = {"ddim": [], "ddpm": []}
    out = {}
    for scheduler, eta in (("ddim", 1.0), ("ddpm", 0.0)):

        def fn(i, shape, scheduler=scheduler):
            used[scheduler].append(i)
            return noises[i]

        out[scheduler] = sample(
            Toy(dtype=torch.float64),
            AC,
            LABELS,
            steps=steps,
            scheduler=scheduler,
            eta=eta,
            prediction_type=kind,
            timestep_spacing=spacing,
            set_alpha_to_one=one,
            initial_noise=x_T,
            noise_fn=fn,
            truncate=False,
        )
    assert used["ddim"] == used["ddpm"]
    # noise at every step but a final one from t = 0 or to ab_prev = 1 (zero variance there)
    final_t = timesteps_for(1000, steps, spacing)[-1]
    noiseless_end = one or final_t == 0
    assert used["ddpm"] == list(range(steps - 1 if noiseless_end else steps))
    torch.testing.assert_close(out["ddim"], out["ddpm"], rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------- guidance, truncation


def test_guidance_scale_one_is_plain_conditional():
    model = Toy().eval()
    x_T = noise_list(1, 4, seed=8)[0]
    plain = sample(model, AC, LABELS, steps=10, initial_noise=x_T, truncate=False)
    assert all(c[0].shape[0] == 4 and torch.equal(c[2], LABELS) for c in model.calls)
    # the same loop written by hand with the conditional model output
    ts = timesteps_for(1000, 10)
    x = x_T.clone()
    for i, t in enumerate(ts):
        eps = model(x, torch.full((4,), int(t)), LABELS)
        ab = AC[t]
        ab_prev = AC[ts[i + 1]] if i + 1 < len(ts) else 1.0
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    torch.testing.assert_close(plain, x, rtol=1e-6, atol=1e-6)


class Guided(nn.Module):
    """Wraps a model and applies classifier-free guidance itself (the oracle of the oracle)."""

    def __init__(self, inner: Toy, scale: float):
        super().__init__()
        self.inner, self.scale, self.n_genes = inner, scale, inner.n_genes

    def forward(self, x, t, labels):
        cond = self.inner(x, t, labels)
        uncond = self.inner(x, t, self.inner.null_labels(x.shape[0]))
        return uncond + self.scale * (cond - uncond)


@pytest.mark.parametrize("scale", [0.0, 2.5, 7.0])
def test_guidance_combines_cond_and_null(scale):
    model = Toy()
    x_T = noise_list(1, 4, seed=10)[0]
    guided = sample(
        model, AC, LABELS, steps=8, guidance_scale=scale, initial_noise=x_T, truncate=False
    )
    x_in, _, labels_in = model.calls[0]
    assert x_in.shape == (8, G)  # one batched call: conditional and null halves
    assert torch.equal(labels_in, torch.cat([LABELS, torch.full((4, 1), 3)]))
    assert torch.equal(x_in[:4], x_in[4:])
    ref = sample(Guided(Toy(), scale), AC, LABELS, steps=8, initial_noise=x_T, truncate=False)
    torch.testing.assert_close(guided, ref, rtol=1e-6, atol=1e-6)
    plain = sample(Toy(), AC, LABELS, steps=8, initial_noise=x_T, truncate=False)
    assert not torch.allclose(guided, plain)


def test_guidance_with_label_blind_model_changes_nothing():
    x_T = noise_list(1, 4, seed=11)[0]
    plain = sample(Toy(uses_labels=False), AC, LABELS, steps=10, initial_noise=x_T)
    guided = sample(
        Toy(uses_labels=False), AC, LABELS, steps=10, guidance_scale=4.0, initial_noise=x_T
    )
    torch.testing.assert_close(guided, plain, rtol=0, atol=1e-6)


def test_truncate_zeroes_exactly_the_negatives():
    raw = sample(
        Toy(), AC, LABELS, steps=10, generator=torch.Generator().manual_seed(0), truncate=False
    )
    cut = sample(Toy(), AC, LABELS, steps=10, generator=torch.Generator().manual_seed(0))
    neg = raw < 0
    assert neg.any() and (~neg).any()
    assert (cut >= 0).all()
    assert (cut[neg] == 0).all()
    assert torch.equal(cut[~neg], raw[~neg])


# ---------------------------------------------------------------------------- perfect denoiser


class Perfect(nn.Module):
    """The exact denoiser of a data distribution that is a single point x*."""

    def __init__(self, x_star: torch.Tensor, kind: str):
        super().__init__()
        self.x_star, self.kind, self.n_genes = x_star, kind, x_star.shape[0]
        self.ac = torch.from_numpy(AC)

    def forward(self, x, t, labels):
        ab = self.ac[t].to(x.dtype)[:, None]
        eps = (x - ab.sqrt() * self.x_star) / (1 - ab).sqrt()
        if self.kind == "epsilon":
            return eps
        if self.kind == "sample":
            return self.x_star.expand_as(x)
        return ab.sqrt() * eps - (1 - ab).sqrt() * self.x_star


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize(
    "scheduler, steps, eta", [("ddim", 20, 0.0), ("ddim", 50, 1.0), ("ddpm", 100, 0.0)]
)
def test_perfect_denoiser_returns_the_data_point(kind, scheduler, steps, eta):
    x_star = torch.tensor([-10.0, -10.0, 0.5, 2.0, 3.5, -10.0, 1.0])
    labels = torch.zeros(5, 0, dtype=torch.long)

    def run(**extra):
        return sample(
            Perfect(x_star, kind),
            AC,
            labels,
            steps=steps,
            scheduler=scheduler,
            eta=eta,
            prediction_type=kind,
            generator=torch.Generator().manual_seed(0),
            **extra,
        )

    out = run(truncate=False)
    torch.testing.assert_close(out, x_star.expand(5, -1), rtol=1e-4, atol=2e-4)
    truncated = run()
    torch.testing.assert_close(truncated, x_star.clamp_min(0).expand(5, -1), rtol=1e-4, atol=2e-4)


# ---------------------------------------------------------------------------- DiT, errors


def test_sampling_a_dit_is_deterministic_and_restores_mode():
    torch.manual_seed(0)
    model = DiT(
        23, [3], patch_size=5, hidden_size=16, depth=1, num_heads=2, frequency_embedding_size=8
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    model.train()
    labels = torch.tensor([[0], [2], [1]])
    a = sample(
        model, AC, labels, steps=5, guidance_scale=2.0, generator=torch.Generator().manual_seed(1)
    )
    b = sample(
        model, AC, labels, steps=5, guidance_scale=2.0, generator=torch.Generator().manual_seed(1)
    )
    assert model.training
    assert a.shape == (3, 23) and torch.equal(a, b) and (a >= 0).all()
    c = sample(
        model, AC, labels, steps=5, guidance_scale=2.0, generator=torch.Generator().manual_seed(2)
    )
    assert not torch.equal(a, c)


def test_sample_errors():
    model = Toy()
    with pytest.raises(ValueError, match="unknown scheduler"):
        sample(model, AC, LABELS, scheduler="euler")
    with pytest.raises(ValueError, match="eta applies to scheduler='ddim'"):
        sample(model, AC, LABELS, scheduler="ddpm", eta=1.0)
    with pytest.raises(ValueError, match="prediction_type"):
        sample(model, AC, LABELS, prediction_type="x0")
    with pytest.raises(ValueError, match="initial_noise must have shape"):
        sample(model, AC, LABELS, initial_noise=torch.zeros(4, G + 1))
    with pytest.raises(ValueError, match="class-conditional"):
        sample(Toy(label_sizes=()), AC, torch.zeros(4, 0, dtype=torch.long), guidance_scale=3.0)
    with pytest.raises(ValueError, match="between 1 and num_train_timesteps"):
        sample(model, AC, LABELS, steps=1001)
