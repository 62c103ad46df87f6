"""Does an exported denoiser compute what the PyTorch model computes? Two kinds of evidence.

**Elementwise parity** (one model call). For each test batch the error is

    max_rel_error = max |y_export - y_torch| / max(max |y_torch|, SCALE_FLOOR)

i.e. the worst absolute error relative to the largest output of that batch. Normalising by the
batch's output scale, not per element, is deliberate: epsilon predictions cross zero everywhere,
and a per-element ratio would be dominated by outputs that happen to be ~0 and say nothing about
the model. ``SCALE_FLOOR`` only matters for an all-zero output (a freshly built adaLN-Zero model),
where it turns the check into an absolute one. fp32 exports must stay within ``FP32_TOLERANCE``.

Test batches: random x_t ~ N(0, 1) at batch sizes 1 and odd sizes, random timesteps in [0, T),
random labels including the null class (the last row of each batch is all-null, as classifier-free
guidance feeds it); synthetic zero-negated cells noised to a random t; and, where available, real
cells: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with x0 the zero-negated, log-normalised
expression of real cells, so the inputs cover the value range the model meets in sampling.
A latent-diffusion denoiser (SCDG) works on scaled autoencoder codes, not on genes: its synthetic
batch is random codes of the scale it was trained on (``scale * unit vector`` for an L2-normalised
latent), and its real cells are the autoencoder's codes of real cells, times the scale.

An autoencoder's encoder (x [B, G] -> z [B, D]) and decoder (z -> x) are checked the same way, one
input each (:func:`autoencoder_cases`): synthetic log-normalised cells and real cells for the
encoder, random codes and the codes of real cells for the decoder.

**Trajectory fidelity** (fp16, int8). Reduced precision is judged by what it does to generated
cells, not per call: the same deterministic DDIM trajectory (same initial noise, labels drawn from
the training label mix) is run with the PyTorch fp32 model and the candidate, and the final cells
(negatives truncated, as in generation) are compared: RMS difference relative to the RMS of the
cells, per-gene means and zero fractions. A latent trajectory is decoded to cells first, by the
PyTorch autoencoder for both, so the comparison is in gene space there too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthError
from cellsynth.generation.depth import depth_conditioning

FP32_TOLERANCE = 1e-4
SCALE_FLOOR = 1e-6
REAL_CELLS = 256  # real cells noised for the parity check
METRIC = "max|export - torch| / max(max|torch|, 1e-6), per batch"

# (x_t [B, G] float32, timesteps [B] int64, labels [B, K] int64) -> [B, G] float32; an
# autoencoder part takes one array instead: x [B, G] -> z [B, D] or z -> x.
Model = Callable[..., np.ndarray]
# (name, x_t, timesteps, labels) for a denoiser, (name, x) for an autoencoder part
Case = tuple


class ExportError(CellsynthError):
    """An export failed, or its output differs from the PyTorch model beyond tolerance."""


def torch_model(module: Any) -> Model:
    """Wrap an eval-mode torch module as a NumPy -> NumPy model."""
    import torch

    def run(x: np.ndarray, t: np.ndarray, labels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(labels))
        return out.float().numpy()

    return run


def session_model(session: Any) -> Model:
    """Wrap an onnxruntime session (inputs x_t, timestep, labels) as a NumPy -> NumPy model."""

    def run(x: np.ndarray, t: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return session.run(["model_output"], {"x_t": x, "timestep": t, "labels": labels})[0]

    return run


def torch_function(fn: Any) -> Model:
    """Wrap a one-input torch function (an autoencoder's encode or decode) as NumPy -> NumPy."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return fn(torch.from_numpy(x)).float().numpy()

    return run


def session_function(session: Any) -> Model:
    """Wrap a one-input, one-output onnxruntime session as NumPy -> NumPy."""
    (name,) = [i.name for i in session.get_inputs()]

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    return run


# ------------------------------------------------------------------------------- test inputs


def _random_labels(rng: np.random.Generator, sizes: Sequence[int], n: int) -> np.ndarray:
    """Codes [n, K] uniform over 0..size (size = null class); the last row is all-null."""
    labels = np.stack([rng.integers(0, s + 1, n) for s in sizes], 1) if sizes else None
    labels = labels if labels is not None else np.zeros((n, 0), dtype=np.int64)
    labels = labels.astype(np.int64)
    if n:
        labels[-1] = sizes
    return labels


def _noised(bundle: Any, x0: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at random t; returns (x_t, t)."""
    abar = bundle.schedule.alphas_cumprod  # [T]
    t = rng.integers(0, len(abar), len(x0)).astype(np.int64)  # [n]
    eps = rng.standard_normal(x0.shape, dtype=np.float32)
    a = abar[t][:, None]
    return (np.sqrt(a) * x0 + np.sqrt(1 - a) * eps).astype(np.float32), t


def _synthetic_expression(rng: np.random.Generator, n: int, G: int, zero: float) -> np.ndarray:
    """[n, G]: mostly silent genes at ``zero``, the rest log-expression in (0, 5)."""
    x = np.where(rng.random((n, G)) < 0.7, zero, rng.uniform(0, 5, (n, G)))
    return x.astype(np.float32)


def is_latent(bundle: Any) -> bool:
    """True for a latent-diffusion bundle (its denoiser maps scaled autoencoder codes)."""
    return getattr(bundle, "kind", "diffusion") == "latent_diffusion"


def latent_scale(bundle: Any) -> float:
    """The factor the latent denoiser's codes were multiplied by in training."""
    return float(bundle.config["latent"]["scale"])


def random_codes(bundle: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, D] random codes in the latent denoiser's (scaled) space.

    With an L2-normalised latent, codes lie on the unit sphere, so ``scale * unit vector``; else
    unit-RMS normals (the scale makes the training codes' RMS 1).
    """
    g = rng.standard_normal((n, bundle.width))
    if bundle.autoencoder.architecture.get("normalize_latent", True):
        g = latent_scale(bundle) * g / np.linalg.norm(g, axis=1, keepdims=True)
    return g.astype(np.float32)


def random_cases(bundle: Any, batch_sizes: Sequence[int], seed: int) -> list[Case]:
    """Random batches of each size, plus 64 synthetic zero-negated cells (for a latent denoiser:
    64 random codes of its scale) noised to random t."""
    rng = np.random.default_rng(seed)
    G, T, sizes = bundle.width, bundle.schedule.num_train_timesteps, bundle.model_label_sizes
    cases: list[Case] = []
    for b in batch_sizes:
        x = rng.standard_normal((b, G), dtype=np.float32)
        t = rng.integers(0, T, b).astype(np.int64)
        cases.append((f"random batch {b}", x, t, _random_labels(rng, sizes, b)))
    if is_latent(bundle):
        x, t = _noised(bundle, random_codes(bundle, 64, rng), rng)
        cases.append(("random codes (64)", x, t, _random_labels(rng, sizes, 64)))
    else:
        x, t = _noised(bundle, _synthetic_expression(rng, 64, G, bundle.zero_value), rng)
        cases.append(("synthetic cells (64)", x, t, _random_labels(rng, sizes, 64)))
    return cases


def encode_cells(bundle: Any, expression: np.ndarray) -> np.ndarray:
    """Codes [n, D] of log-normalised expression [n, G] by the (latent) bundle's autoencoder."""
    from cellsynth.training.autoencoder import encode

    return encode(bundle.autoencoder.to_torch(), expression)


def decode_codes(bundle: Any, codes: np.ndarray) -> np.ndarray:
    """Cells [n, G] of autoencoder codes [n, D], as generation makes them: decoded by the PyTorch
    autoencoder, values below its zero threshold (and negatives) set to zero."""
    from cellsynth.training.autoencoder import decode

    ae = bundle.autoencoder
    threshold = max(0.0, float(ae.config.get("decode", {}).get("zero_threshold", 0.0)))
    return decode(ae.to_torch(), codes, threshold)


def autoencoder_cases(
    bundle: Any, part: str, batch_sizes: Sequence[int], expression: np.ndarray | None, seed: int
) -> list[Case]:
    """Test batches ``(name, x)`` of an autoencoder's ``part`` ('encoder' or 'decoder').

    encoder: synthetic log-normalised cells of each batch size (70% silent genes) and, when given,
    real cells ``expression`` [n, G]. decoder: random codes of each batch size (normal, so of
    every norm: the decoder L2-normalises its input when the latent is normalised), random unit
    codes, and the PyTorch encoder's codes of ``expression``.
    """
    rng = np.random.default_rng(seed)
    ae = bundle.autoencoder
    G, D = len(ae.genes), int(ae.architecture["latent_dim"])
    cases: list[Case] = []
    for b in batch_sizes:
        if part == "encoder":
            cases.append((f"synthetic cells {b}", _synthetic_expression(rng, b, G, 0.0)))
        else:
            cases.append((f"random codes {b}", rng.standard_normal((b, D), dtype=np.float32)))
    if part == "decoder":
        g = rng.standard_normal((64, D))
        unit = (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32)
        cases.append(("unit codes (64)", unit))
    if expression is not None:
        x = np.ascontiguousarray(expression, dtype=np.float32)
        if part == "encoder":
            cases.append((f"real cells ({len(x)})", x))
        else:
            cases.append((f"codes of real cells ({len(x)})", encode_cells(ae, x)))
    return cases


def resolve_real_cells(bundle: Any, real_cells: Any, seed: int) -> tuple[np.ndarray | None, str]:
    """Log-normalised real expression [n <= REAL_CELLS, G] in model gene order, and its source.

    ``real_cells``: an AnnData of raw counts, a built-in data set name or .h5ad path, an array
    already log-normalised in model gene order, or None for the bundle's training data when that
    was a built-in data set. Returns (None, why) when no real cells are available.
    """
    from anndata import AnnData

    from cellsynth.data import datasets

    source = real_cells if isinstance(real_cells, str) else type(real_cells).__name__
    if real_cells is None:
        source = str(bundle.config.get("training", {}).get("data", ""))
        if source not in datasets.DATASETS:
            return None, (
                f"random inputs only: the training data ({source or 'unrecorded'}) is not a "
                "built-in data set; pass real cells (--data) to check on them too"
            )
    if isinstance(real_cells, np.ndarray):
        x = np.asarray(real_cells, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(bundle.genes):  # genes, also for a latent bundle
            raise ExportError(
                f"real cells must be [n_cells, {len(bundle.genes)}] log-normalised expression in "
                f"the bundle's gene order, got shape {x.shape}"
            )
    else:
        adata = real_cells if isinstance(real_cells, AnnData) else datasets.load(source)
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(adata.n_obs, min(REAL_CELLS, adata.n_obs), replace=False))
        # Transform only the cells used; the library size is per cell, so this is exact.
        x = bundle.preprocessing.transform(adata[keep])
    if len(x) > REAL_CELLS:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), REAL_CELLS, replace=False))]
    return x, source


def real_cell_case(bundle: Any, expression: np.ndarray, source: str, seed: int) -> Case:
    """Noised zero-negated real cells at random t with random labels (incl. null); for a latent
    denoiser, the autoencoder's codes of the real cells times the latent scale, noised."""
    from cellsynth.data import zero_negate

    rng = np.random.default_rng(seed + 1)
    if is_latent(bundle):
        x0 = encode_cells(bundle, expression) * np.float32(latent_scale(bundle))
        name = f"codes of real cells ({source}, {len(x0)})"
    else:
        x0 = zero_negate(expression, bundle.zero_value)
        name = f"real cells ({source}, {len(x0)})"
    x, t = _noised(bundle, np.ascontiguousarray(x0, dtype=np.float32), rng)
    labels = _random_labels(rng, bundle.model_label_sizes, len(x))
    return (name, x, t, labels)


# ---------------------------------------------------------------------------------- reports


def elementwise_report(
    candidate: Model, reference: Model, cases: Sequence[Case], tolerance: float | None
) -> dict[str, Any]:
    """Per-batch max abs / max relative error of ``candidate`` against ``reference``.

    ``tolerance`` None: reported, not gated (reduced precision). Non-finite output always fails
    (``passed`` False).
    """
    rows, finite = [], True
    for name, *inputs in cases:
        out, ref = candidate(*inputs), reference(*inputs)  # [B, G] each
        if out.shape != ref.shape:
            raise ExportError(f"exported model returned shape {out.shape}, torch {ref.shape}")
        finite &= bool(np.isfinite(out).all())
        err = float(np.abs(out.astype(np.float64) - ref).max()) if out.size else 0.0
        scale = max(float(np.abs(ref).max()) if ref.size else 0.0, SCALE_FLOOR)
        rows.append(
            {
                "case": name,
                "batch": len(inputs[0]),
                "max_abs_error": err,
                "max_rel_error": err / scale,
                "output_scale": scale,
            }
        )
    worst = max(r["max_rel_error"] for r in rows)
    passed = finite and (tolerance is None or worst <= tolerance)
    return {
        "metric": METRIC,
        "tolerance": tolerance,
        "passed": passed,
        "finite": finite,
        "max_rel_error": worst,
        "max_abs_error": max(r["max_abs_error"] for r in rows),
        "cases": rows,
    }


def trajectory(model: Model, bundle: Any, labels: np.ndarray, steps: int, seed: int) -> np.ndarray:
    """Final cells [n, G] of a deterministic DDIM run (negatives truncated to zero).

    For a latent denoiser the run ends in codes [n, D] (not truncated), which are divided by the
    latent scale and decoded by the PyTorch autoencoder (:func:`decode_codes`).
    """
    from cellsynth.scheduler import scheduler_for_bundle

    latent = is_latent(bundle)
    sched = scheduler_for_bundle(bundle, "ddim", truncate_final=not latent, seed=seed)
    sched.set_timesteps(steps)
    x = sched.init_noise(len(labels), bundle.width)  # [n, G] (or [n, D])
    for t in sched.timesteps.tolist():
        out = model(x, np.full(len(x), t, dtype=np.int64), labels)  # [n, G]
        x = sched.step(np.ascontiguousarray(out, dtype=np.float32), t, x)
    return decode_codes(bundle, x / np.float32(latent_scale(bundle))) if latent else x


def training_labels(bundle: Any, n: int, seed: int) -> np.ndarray:
    """Codes [n, K] drawn from the training label combinations, weighted by their counts."""
    spec = bundle.labels
    if not spec.keys or not spec.combinations:
        return _random_labels(np.random.default_rng(seed), bundle.model_label_sizes, n)
    codes = np.array([c for c, _ in spec.combinations], dtype=np.int64)  # [C, K]
    counts = np.array([k for _, k in spec.combinations], dtype=np.float64)
    pick = np.random.default_rng(seed).choice(len(codes), n, p=counts / counts.sum())
    depth = depth_conditioning(bundle.config)
    return codes[pick] if depth is None else depth.draw(codes[pick], seed, 0)[1]  # [n, K (+1)]


def trajectory_report(
    candidate: Model, reference: Model, bundle: Any, n_cells: int, steps: int, seed: int
) -> dict[str, Any]:
    """Compare the final cells of the same DDIM trajectory under both models."""
    labels = training_labels(bundle, n_cells, seed)
    ref = trajectory(reference, bundle, labels, steps, seed).astype(np.float64)
    out = trajectory(candidate, bundle, labels, steps, seed).astype(np.float64)
    if not np.isfinite(out).all():
        return {"cells": n_cells, "steps": steps, "finite": False}
    rms = float(np.sqrt((ref**2).mean()))
    gm_ref, gm_out = ref.mean(0), out.mean(0)  # per-gene means [G]
    zf_ref, zf_out = (ref == 0).mean(0), (out == 0).mean(0)  # per-gene zero fractions [G]
    corr = np.corrcoef(gm_ref, gm_out)[0, 1] if gm_ref.std() > 0 and gm_out.std() > 0 else 1.0
    return {
        "scheduler": "ddim",
        "cells": n_cells,
        "steps": steps,
        "finite": True,
        "rel_rms_error": float(np.sqrt(((out - ref) ** 2).mean())) / max(rms, SCALE_FLOOR),
        "cells_rms": rms,
        "gene_mean_max_abs_diff": float(np.abs(gm_out - gm_ref).max()),
        "gene_mean_corr": float(corr),
        "zero_fraction_reference": float(zf_ref.mean()),
        "zero_fraction_export": float(zf_out.mean()),
        "zero_fraction_max_gene_diff": float(np.abs(zf_out - zf_ref).max()),
    }
