"""Generation speed: cellsynth's engines, the usual PyTorch loop and the published scRDiT way.

Every method generates the same cells of the same bundle (same seed, labels, initial noise x_T,
DDIM with eta = 0 over diffusers' 'leading' timesteps, negatives truncated at the end), timed side
by side in one run: the methods take turns within each round and each row is the median of its
rounds.

Methods
-------
* **cellsynth (onnxruntime fp32)**: ``cellsynth.generate(engine='onnxruntime')``: the ONNX export
  on onnxruntime's CPU provider, stepped by the C++ scheduler. Also ``engine='torch'`` (the same
  loop with the eager module) and, where the bundle exports to it, onnxruntime int8.
* **usual PyTorch loop** (:func:`usual_loop`): ``bundle.to_torch()`` in eager mode under
  ``torch.no_grad()`` with diffusers' ``DDIMScheduler`` configured to the bundle's schedule;
  ``for t in sched.timesteps: x = sched.step(model(x, t, labels), t, x).prev_sample``.
* **published scRDiT way** (:func:`published_loop`): the scRDiT repository's ``sample_ddim``: a
  Python loop over all T = 1000 timesteps that skips those outside the DDIM sub-sequence, the DDIM
  update written in torch with ``alpha_hat[t]`` gathered per step, batches of 16 cells, each
  batch's result copied to the host before the next starts.

Acceleration rate r means ``steps = 1000 / r`` (r = 1: all 1000 steps, DDIM eta = 0). Two model
configs: the shipped default ('small') and the scRDiT paper's ('paper', random weights).

Time budget
-----------
A 1000-step run of the paper config takes tens of minutes on a few CPU cores, so each row gets
``--budget-s`` seconds. The timing is cellsynth's own loop (:mod:`cellsynth.bench.timing`, the
one ``cellsynth bench`` uses): each method's cost per step is probed first; a row whose
``--repeats`` full runs would exceed the budget times the first k >= 3 steps of the schedule
instead (after an untimed one-step warm-up) and reports
``cells/s = n / (seconds_per_step * steps)``, marked "extrapolated from k of N steps" (per-run
fixed costs such as opening the ONNX session are left out of those rows; for cellsynth they time
the loop ``generate`` runs, :func:`cellsynth_partial`). Full rows time everything a call does:
for cellsynth the whole ``generate`` (opening the engine, labels, sparse output), for the loops
sampling from an already loaded module.

FLOPs
-----
Model FLOPs per cell and forward (multiply-add = 2 FLOPs), for G genes, patch size p,
N = ceil(G / p) tokens, hidden size D, depth L, MLP width M = int(mlp_ratio * D), timestep
frequency features F::

    patchify conv          2 N p D
    timestep MLP           2 F D + 2 D^2
    per block (x L)        adaLN modulation 12 D^2      (D -> 6D)
                           qkv 6 N D^2, proj 2 N D^2    (GEMMs)
                           attention 4 N^2 D            (Q K^T 2 N^2 D, weights x V 2 N^2 D)
                           MLP 4 N D M                  (D -> M -> D)
    final layer            adaLN 4 D^2 + linear 2 N D p

    total = 2NpD + 2FD + 2D^2 + L (12D^2 + 8ND^2 + 4NDM + 4N^2 D) + 4D^2 + 2NDp

Element-wise work (layer norms, softmax, GELU, modulation, biases, label embedding look-ups) is
left out. :func:`check_flop_formula` checks the formula against
``torch.utils.flop_counter.FlopCounterMode`` (with the math attention kernel, whose matrix
products it can see). Achieved GFLOP/s = FLOPs per cell * steps * cells/s; it is compared with
this machine's float32 matrix-multiply rate at the same thread count: ``torch.matmul`` of
2048 x 2048 matrices and a GEMM of the DiT's own MLP shape [B * N, D] x [D, M].

Goals (printed beside the numbers, never asserted): cellsynth on onnxruntime >= 3x the usual
PyTorch loop at equal steps on the CPU; >= 50% of the measured GEMM rate on the paper config.
With a CUDA GPU, TensorRT fp16 and torch CUDA eager rows are added (paper config, 50 steps).

    python benchmarks/engines.py --out benchmarks/results
    python benchmarks/engines.py --quick --threads 1    # smoke run, minutes
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import machine as base_machine

import cellsynth
from cellsynth.bench import timing
from cellsynth.bundle.format import SHIPPED_DIR
from cellsynth.bundle.load import Bundle, load_bundle
from cellsynth.generation.conditions import assign_labels
from cellsynth.generation.depth import depth_conditioning
from cellsynth.scheduler import scheduler_for_bundle

T_TRAIN = 1000
RATES = (1, 10, 20, 50, 100)
PUBLISHED_BATCH = 16  # the scRDiT repository's batch size
GOAL_SPEEDUP = 3.0  # cellsynth (onnxruntime) vs the usual PyTorch loop, equal steps, CPU
GOAL_GEMM_FRACTION = 0.50  # of the fp32 GEMM rate, paper config
GPU_STEPS = 50
DEFAULT_BUNDLE = SHIPPED_DIR / "kang-dit"  # the shipped default model
USUAL = "usual PyTorch loop (diffusers DDIM)"
PUBLISHED = "published scRDiT way"
ORT_FP32 = "cellsynth (onnxruntime fp32)"
ORT_INT8 = "cellsynth (onnxruntime int8)"
AUTO = "cellsynth (auto)"
# The engines auto chooses among (fp32: auto never picks a reduced precision by itself).
AUTO_CHOICES = (ORT_FP32, "cellsynth (torch)")
# The engine issue's goals (CPU, ratios at equal steps, medians of one run).
GOAL_FP32 = 1.3  # onnxruntime fp32 vs the usual loop
GOAL_INT8 = 2.0  # onnxruntime int8 vs the usual loop
GOAL_AUTO_SLACK = 0.05  # auto at most 5% slower than the fastest engine


# ------------------------------------------------------------------------------------- FLOPs


def dit_flops_per_cell(architecture: Mapping[str, Any]) -> int:
    """Analytic FLOPs of one DiT forward for one cell (the formula in the module docstring).

    Parameters
    ----------
    architecture : dict
        A bundle's ``architecture`` block (``DiT.config``).

    Returns
    -------
    int
        FLOPs (a multiply-add counts 2) of the patchify conv, the timestep MLP, every block's
        adaLN modulation, qkv / proj / MLP GEMMs and attention products, and the final layer.
    """
    G, p = int(architecture["n_genes"]), int(architecture["patch_size"])
    D, L = int(architecture["hidden_size"]), int(architecture["depth"])
    M = int(D * float(architecture.get("mlp_ratio", 4.0)))
    F = int(architecture.get("frequency_embedding_size", 256))
    N = -(-G // p)  # tokens (G zero-padded up to a multiple of p)
    block = 12 * D * D + 8 * N * D * D + 4 * N * D * M + 4 * N * N * D
    return 2 * N * p * D + 2 * F * D + 2 * D * D + L * block + 4 * D * D + 2 * N * D * p


def counted_flops_per_cell(model: torch.nn.Module, n_cells: int = 4) -> float:
    """FLOPs per cell of one forward as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

    The math attention kernel is forced: FlopCounterMode cannot see inside the fused CPU kernel.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    G, sizes = model.n_genes, list(model.label_sizes)
    x = torch.randn(n_cells, G)  # [B, G]
    t = torch.randint(0, T_TRAIN, (n_cells,))  # [B]
    labels = torch.tensor([[0] * len(sizes)] * n_cells, dtype=torch.long)  # [B, K]
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(x, t, labels)
    return counter.get_total_flops() / n_cells


def check_flop_formula(configs: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Self-test: the analytic count against FlopCounterMode on small DiTs.

    Parameters
    ----------
    configs : list of dict, optional
        DiT constructor options (``n_genes``, ``label_sizes``, ``patch_size``, ...); default two
        small shapes, one whose gene count is not a multiple of the patch size.

    Returns
    -------
    list of dict
        Per config: ``analytic``, ``counted`` and ``relative_difference``.
    """
    from cellsynth.training.dit import DiT

    configs = configs or [
        dict(n_genes=103, label_sizes=[3, 2], patch_size=5, hidden_size=32, depth=2, num_heads=2,
             mlp_ratio=2.0),
        dict(n_genes=400, label_sizes=[8], patch_size=10, hidden_size=64, depth=1, num_heads=4,
             mlp_ratio=4.0),
    ]  # fmt: skip
    out = []
    for cfg in configs:
        model = DiT(**cfg).eval()
        analytic = dit_flops_per_cell(model.config)
        counted = counted_flops_per_cell(model)
        out.append(
            {
                "config": {k: v for k, v in model.config.items() if k != "name"},
                "analytic": analytic,
                "counted": counted,
                "relative_difference": abs(analytic - counted) / counted,
            }
        )
    return out


def gemm_gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Median float32 ``torch.matmul`` rate [m, k] x [k, n] in GFLOP/s (current torch threads)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    torch.matmul(a, b)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(times) / 1e9


# ----------------------------------------------------------------- the same cells, three ways


def benchmark_labels(bundle: Bundle, n_cells: int, seed: int = 0) -> np.ndarray:
    """The model's label input int64 [n, K] (+ a depth-conditioned model's depth bins): the draw
    ``cellsynth.generate`` makes with no conditions."""
    codes = assign_labels(bundle.labels, n_cells, None, seed=seed)
    depth = depth_conditioning(bundle.config)
    return codes if depth is None else depth.draw(codes, seed, 0)[1]


def initial_noise(bundle: Bundle, n_cells: int, seed: int = 0) -> np.ndarray:
    """x_T float32 [n, G] exactly as ``cellsynth.generate`` draws it (Philox, keyed per cell)."""
    sched = scheduler_for_bundle(bundle, "ddim", seed=seed)
    return sched.init_noise(n_cells, len(bundle.genes), cell_offset=0)


def ddim_timesteps(bundle: Bundle, steps: int) -> list[int]:
    """The descending 'leading' timesteps cellsynth's DDIM visits in ``steps`` steps."""
    sched = scheduler_for_bundle(bundle, "ddim", timestep_spacing="leading")
    sched.set_timesteps(steps)
    return [int(t) for t in sched.timesteps]


def final_alpha_cumprod(bundle: Bundle) -> float:
    """alpha-bar after the last step in cellsynth's DDIM (1.0: ``set_alpha_to_one=True``)."""
    return float(scheduler_for_bundle(bundle, "ddim").final_alpha_cumprod)


def diffusers_ddim(bundle: Bundle, set_alpha_to_one: bool = True) -> Any:
    """diffusers' ``DDIMScheduler`` on the bundle's training schedule and prediction type.

    ``clip_sample=False`` (the default True clamps x0 to [-1, 1], which destroys expression) and
    'leading' spacing. ``set_alpha_to_one=True`` matches cellsynth's DDIM, so all methods compute
    the same cells; False would change only the last step's arithmetic, not its cost.
    """
    from diffusers import DDIMScheduler

    s = bundle.schedule
    return DDIMScheduler(
        num_train_timesteps=s.num_train_timesteps,
        beta_start=s.beta_start,
        beta_end=s.beta_end,
        beta_schedule=s.beta_schedule,
        trained_betas=None if s.trained_betas is None else list(s.trained_betas),
        rescale_betas_zero_snr=s.rescale_betas_zero_snr,
        prediction_type=bundle.prediction_type,
        clip_sample=False,
        set_alpha_to_one=set_alpha_to_one,
        timestep_spacing="leading",
    )


def usual_loop(
    model: torch.nn.Module,
    bundle: Bundle,
    x_T: np.ndarray,
    labels: np.ndarray,
    steps: int,
    batch_size: int = 256,
    limit: int | None = None,
    set_alpha_to_one: bool = True,
    device: str = "cpu",
) -> np.ndarray:
    """The usual PyTorch sampling loop: eager module, ``torch.no_grad()``, diffusers' DDIM.

    Parameters
    ----------
    model : torch.nn.Module
        ``bundle.to_torch()``, on ``device``.
    bundle : Bundle
    x_T : np.ndarray float32 [n, G]
        Initial noise (:func:`initial_noise`).
    labels : np.ndarray int64 [n, K]
    steps : int
        DDIM steps.
    batch_size : int
        Cells per batch.
    limit : int, optional
        Run only the first ``limit`` timesteps of the ``steps``-step schedule (timing).
    set_alpha_to_one : bool
        See :func:`diffusers_ddim`.
    device : str
        'cpu' or 'cuda'.

    Returns
    -------
    np.ndarray float32 [n, G]
        The cells, negatives clamped to 0.
    """
    sched = diffusers_ddim(bundle, set_alpha_to_one)
    out = []
    with torch.no_grad():
        for start in range(0, len(x_T), batch_size):
            x = torch.from_numpy(x_T[start : start + batch_size]).clone().to(device)  # [B, G]
            y = torch.from_numpy(labels[start : start + batch_size]).to(device)  # [B, K]
            sched.set_timesteps(steps)
            for t in sched.timesteps[:limit]:
                t_batch = torch.full((len(x),), int(t), dtype=torch.long, device=device)  # [B]
                model_output = model(x, t_batch, y)  # [B, G]
                x = sched.step(model_output, t, x).prev_sample  # [B, G]
            x.clamp_(min=0)
            out.append(x.cpu().numpy())
    return np.concatenate(out)


def published_loop(
    model: torch.nn.Module,
    bundle: Bundle,
    x_T: np.ndarray,
    labels: np.ndarray,
    steps: int,
    batch_size: int = PUBLISHED_BATCH,
    limit: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """The published scRDiT way: ``DiffusionGene.sample_ddim`` + ``sample_batches`` of the
    scRDiT repository, on the same sub-sequence of timesteps as cellsynth's DDIM.

    A Python loop over all T timesteps ``for i in reversed(range(T))`` skips (``continue``) those
    not in the sub-sequence (a Python list, searched with ``in`` and ``.index`` as in the
    repository); each visited step gathers ``alpha_hat[t]`` per cell and writes the DDIM update in
    torch, with ``randn_like`` noise scaled by sigma (0 at eta = 0). Each batch's cells are copied
    to the host, then all are concatenated. The repository's model predicts epsilon; for a
    bundle predicting x0 ('sample') the loop converts it to epsilon first (one elementwise line,
    the same cost), so any bundle can be timed this way.

    Parameters
    ----------
    model, bundle, x_T, labels, steps, limit
        As in :func:`usual_loop`.
    batch_size : int
        16 in the repository.
    eta : float
        DDIM eta (0: deterministic).
    seed : int
        Seeds the torch generator of the (eta-scaled) step noise.

    Returns
    -------
    np.ndarray float32 [n, G]
    """
    if bundle.prediction_type not in ("epsilon", "sample"):
        raise ValueError(
            f"the published loop takes epsilon or x0 models, not {bundle.prediction_type!r}"
        )
    T = bundle.schedule.num_train_timesteps
    alpha_hat = torch.tensor(bundle.schedule.alphas_cumprod, dtype=torch.float32)  # [T]
    alpha_hat_final = final_alpha_cumprod(bundle)
    sub_time_seq = sorted(ddim_timesteps(bundle, steps))  # ascending, as the repository's list
    gen = torch.Generator().manual_seed(seed)
    batches = []
    with torch.no_grad():
        for start in range(0, len(x_T), batch_size):
            x = torch.from_numpy(x_T[start : start + batch_size]).clone()  # [n, G]
            y = torch.from_numpy(labels[start : start + batch_size])  # [n, K]
            n = len(x)
            calls = 0
            for i in reversed(range(T)):
                if i not in sub_time_seq:
                    continue
                if limit is not None and calls == limit:
                    break
                calls += 1
                time_index = sub_time_seq.index(i)
                i_pre = sub_time_seq[time_index - 1] if time_index > 0 else -1
                t = (torch.ones(n) * i).long()  # [n]
                predicted_noise = model(x, t, y)  # [n, G]
                a_hat = alpha_hat[t][:, None]  # [n, 1]
                if bundle.prediction_type == "sample":  # the model gave x0: eps from it
                    predicted_noise = (x - torch.sqrt(a_hat) * predicted_noise) / torch.sqrt(
                        1 - a_hat
                    )
                if i_pre >= 0:
                    a_hat_pre = alpha_hat[(torch.ones(n) * i_pre).long()][:, None]  # [n, 1]
                else:
                    a_hat_pre = torch.full_like(a_hat, alpha_hat_final)
                sigma = (
                    eta
                    * torch.sqrt((1 - a_hat_pre) / (1 - a_hat))
                    * torch.sqrt(1 - a_hat / a_hat_pre)
                )  # [n, 1]
                noise = torch.randn(x.shape, generator=gen) if i > 1 else torch.zeros_like(x)
                x0_predicted = (x - torch.sqrt(1 - a_hat) * predicted_noise) / torch.sqrt(a_hat)
                direction = torch.sqrt(1 - a_hat_pre - sigma**2) * predicted_noise
                x = torch.sqrt(a_hat_pre) * x0_predicted + direction + sigma * noise  # [n, G]
            x = torch.clamp(x, min=0.0)
            batches.append(x.cpu().numpy())
    return np.concatenate(batches)


def cellsynth_partial(
    denoiser: Any, bundle: Bundle, n_cells: int, steps: int, limit: int, batch_size: int, seed: int
) -> None:
    """The loop ``cellsynth.generate`` runs (per batch: x_T, ``Denoiser.denoise`` with the C++
    DDIM), over only the first ``limit`` timesteps of the ``steps``-step schedule (timing)."""
    labels = benchmark_labels(bundle, n_cells, seed)
    null = np.asarray(bundle.model_label_sizes, dtype=np.int64)
    sched = scheduler_for_bundle(
        bundle, "ddim", timestep_spacing="leading", truncate_final=True, seed=seed
    )
    first = ddim_timesteps(bundle, steps)[:limit]
    for s in range(0, n_cells, batch_size):
        e = min(s + batch_size, n_cells)
        sched.set_timesteps(timesteps=first)
        x_T = sched.init_noise(e - s, len(bundle.genes), cell_offset=s)  # [B, G]
        null_b = np.broadcast_to(null, labels[s:e].shape).copy()  # [B, K]
        denoiser.denoise(sched, x_T, labels[s:e], null_b, 1.0, s, {"eta": 0.0})


# --------------------------------------------------------------------------------- bundles


def perturb_adaln_zero(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Give the zero-initialised adaLN-Zero layers and the final linear random N(0, std) weights,
    so a randomly initialised DiT's output is not identically 0."""
    gen = torch.Generator().manual_seed(seed)
    layers = [b.adaLN_modulation[-1] for b in model.blocks]
    layers += [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * std)


def random_bundle(
    out: Path,
    config: str,
    preprocessing: Any,
    labels: Any,
    schedule: Any = None,
    seed: int = 0,
) -> Bundle:
    """A bundle of DIT_CONFIGS[config] with random weights (adaLN-Zero layers perturbed).

    Parameters
    ----------
    out : Path
        Bundle directory to write.
    config : str
        A name in ``cellsynth.training.dit.DIT_CONFIGS``.
    preprocessing : PreprocessingRecord
        Gives the genes (and everything else a bundle records about preprocessing).
    labels : LabelSpec
    schedule : NoiseSchedule, optional
        Default: the standard linear 1e-4..0.02 over 1000 steps.
    """
    from cellsynth.bundle.save import save_bundle
    from cellsynth.scheduler.schedules import NoiseSchedule
    from cellsynth.training.dit import build_dit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_dit(config, n_genes=len(preprocessing.genes), label_sizes=labels.sizes)
    perturb_adaln_zero(model, seed)
    save_bundle(
        out,
        architecture=model.config,
        schedule=schedule or NoiseSchedule(),
        prediction_type="epsilon",
        preprocessing=preprocessing,
        labels=labels,
        model_state=model.state_dict(),
        training={"data": "none: random weights for benchmarks/engines.py", "config": config},
    )
    return load_bundle(out)


def small_bundle(path: Path | None, tmp: Path, seed: int) -> tuple[Bundle, str]:
    """The shipped small default: ``path`` if it is a bundle, else DIT_CONFIGS['small'] with
    random weights on the Kang genes and labels (2000 cells prepared, 2000 HVG)."""
    if path is not None and (path / "config.json").is_file():
        return load_bundle(path), f"{path}"
    from cellsynth.bundle.format import LabelSpec
    from cellsynth.data import prepare

    prepared = prepare(cellsynth.datasets.kang(), ["cell_type", "stim"], max_cells=2000, seed=seed)
    labels = LabelSpec.from_codes(prepared.label_keys, prepared.vocabularies, prepared.y_train)
    b = random_bundle(tmp / "small", "small", prepared.record, labels, seed=seed)
    why = f"no bundle at {path}" if path is not None else "no bundle given"
    return b, f"DIT_CONFIGS['small'], random weights, Kang genes and labels ({why})"


def paper_bundle(like: Bundle, tmp: Path, seed: int) -> Bundle:
    """DIT_CONFIGS['paper'] with random weights, sharing ``like``'s genes, labels, schedule and
    preprocessing."""
    return random_bundle(
        tmp / "paper", "paper", like.preprocessing, like.labels, like.schedule, seed=seed
    )


def with_onnx(bundle: Bundle, precisions: Sequence[str], tmp: Path) -> tuple[Bundle, dict]:
    """The bundle with ONNX exports of ``precisions`` (exported into a copy under ``tmp`` when
    the bundle lies elsewhere and lacks them); returns it and {precision: None or why not}."""
    from cellsynth.bundle.exports import export_entry

    missing = [p for p in precisions if export_entry(bundle, "onnx", p) is None]
    problems: dict[str, str | None] = {p: None for p in precisions}
    if not missing:
        return bundle, problems
    try:
        from cellsynth.export.onnx import export_onnx
    except ImportError as exc:
        return bundle, {p: f"cellsynth.export.onnx not importable: {exc}" for p in missing}
    if tmp not in bundle.path.parents:
        copy = tmp / f"{bundle.name}-copy"
        shutil.copytree(bundle.path, copy)
        bundle = load_bundle(copy)
    for p in missing:
        started = time.perf_counter()
        print(f"exporting {bundle.name} to ONNX {p} ...", file=sys.stderr)
        try:
            export_onnx(bundle, precision=p, progress=False)
        except Exception as exc:  # noqa: BLE001 - a failed export becomes a row note
            problems[p] = f"export failed: {' '.join(str(exc).split())[:200]}"
        print(f"  {time.perf_counter() - started:.0f} s", file=sys.stderr)
        bundle = load_bundle(bundle.path)
    return bundle, problems


# ---------------------------------------------------------------------------------- timing


@dataclass
class Method(timing.Method):
    """A method of :mod:`cellsynth.bench.timing`, with the batch size its row reports."""

    batch_size: int = 0


def measure_rate(
    methods: Sequence[Method], steps: int, n_cells: int, budget_s: float, repeats: int
) -> dict[str, dict[str, Any]]:
    """Time every method at ``steps`` steps through cellsynth's one timing loop
    (:func:`cellsynth.bench.timing.measure`: interleaved rounds, the budget, extrapolation).

    Returns
    -------
    dict
        Per method name: cells_per_s, seconds (median, of what was timed), timed_steps, repeats,
        extrapolated.
    """
    rows = {}
    for name, t in timing.measure(methods, steps, budget_s, repeats).items():
        rows[name] = {
            "cells_per_s": n_cells / statistics.median(t.seconds()),
            "seconds": statistics.median(r["seconds"] for r in t.runs),
            "timed_steps": t.timed_steps,
            "repeats": len(t.runs),
            "extrapolated": t.extrapolated,
        }
    return rows


# ------------------------------------------------------------------------------ the methods


def cpu_methods(
    bundle: Bundle,
    n_cells: int,
    batch_size: int,
    threads: int,
    seed: int,
    onnx_problems: Mapping[str, str | None],
) -> list[Method]:
    """The CPU methods on ``bundle``, each generating the same ``n_cells`` cells."""
    from cellsynth.backends import load_denoiser

    labels = benchmark_labels(bundle, n_cells, seed)
    x_T = initial_noise(bundle, n_cells, seed)
    model = bundle.to_torch()
    denoisers: dict[tuple[str, str | None], Any] = {}

    def cellsynth_method(engine: str, precision: str | None) -> Callable[[int, int | None], object]:
        def run(steps: int, limit: int | None) -> object:
            if limit is None:
                return cellsynth.generate(
                    bundle,
                    n_cells=n_cells,
                    steps=steps,
                    seed=seed,
                    scheduler="ddim",
                    timestep_spacing="leading",
                    batch_size=batch_size,
                    engine=engine,
                    device="cpu",
                    precision=precision,
                    threads=threads,
                    progress=False,
                )
            key = (engine, precision)
            if key not in denoisers:
                run_info = {"batch_size": batch_size, "steps": steps, "n_cells": n_cells}
                denoisers[key] = load_denoiser(
                    bundle, engine, "cpu", precision=precision, threads=threads, run=run_info
                )[0]
            return cellsynth_partial(
                denoisers[key], bundle, n_cells, steps, limit, batch_size, seed
            )

        return run

    methods = [
        Method(
            ORT_FP32,
            cellsynth_method("onnxruntime", "fp32"),
            unavailable=onnx_problems.get("fp32"),
            batch_size=batch_size,
        ),
        Method("cellsynth (torch)", cellsynth_method("torch", None), batch_size=batch_size),
        # engine='auto': the engine it measures fastest (its calibration runs in the untimed
        # probe and is cached in a private folder, see main).
        Method(AUTO, cellsynth_method("auto", None), batch_size=batch_size),
        Method(
            ORT_INT8,
            cellsynth_method("onnxruntime", "int8"),
            unavailable=onnx_problems.get("int8", "not asked for (--no-int8)"),
            batch_size=batch_size,
        ),
        Method(
            USUAL,
            lambda steps, limit: usual_loop(model, bundle, x_T, labels, steps, batch_size, limit),
            batch_size=batch_size,
        ),
        Method(
            PUBLISHED,
            lambda steps, limit: published_loop(
                model, bundle, x_T, labels, steps, PUBLISHED_BATCH, limit, seed=seed
            ),
            batch_size=PUBLISHED_BATCH,
        ),
    ]
    return methods


def gpu_rows(
    bundle: Bundle, n_cells: int, batch_size: int, seed: int, flops: int, repeats: int
) -> tuple[list[dict[str, Any]], str]:
    """TensorRT fp16 and torch CUDA eager on the paper config at 50 steps (needs a CUDA GPU)."""
    if not torch.cuda.is_available():
        return [], "no CUDA GPU here (torch.cuda.is_available() is False): GPU rows skipped"
    labels = benchmark_labels(bundle, n_cells, seed)
    x_T = initial_noise(bundle, n_cells, seed)
    model = bundle.to_torch(device="cuda")

    def tensorrt(steps: int, limit: int | None) -> None:
        cellsynth.generate(
            bundle,
            n_cells=n_cells,
            steps=steps,
            seed=seed,
            scheduler="ddim",
            timestep_spacing="leading",
            batch_size=batch_size,
            engine="tensorrt",
            device="cuda",
            precision="fp16",
            progress=False,
        )

    def eager(steps: int, limit: int | None) -> None:
        usual_loop(model, bundle, x_T, labels, steps, batch_size, None, device="cuda")
        torch.cuda.synchronize()

    rows = []
    for name, run in [
        ("cellsynth (tensorrt fp16, CUDA)", tensorrt),
        (f"{USUAL} (torch CUDA eager)", eager),
    ]:
        row: dict[str, Any] = {
            "config": "paper",
            "rate": T_TRAIN // GPU_STEPS,
            "steps": GPU_STEPS,
            "method": name,
            "device": torch.cuda.get_device_name(0),
        }
        try:
            # Whole runs only (each call is a whole generate()); the probe's runs warm up the
            # engine build, CUDA graphs and cuBLAS.
            t = timing.measure([Method(name, run)], GPU_STEPS, float("inf"), repeats)[name]
            seconds = statistics.median(t.seconds())
            row.update(
                cells_per_s=n_cells / seconds,
                seconds=seconds,
                timed_steps=GPU_STEPS,
                repeats=repeats,
                extrapolated=False,
                gflop_per_s=flops * GPU_STEPS * n_cells / seconds / 1e9,
            )
        except Exception as exc:  # noqa: BLE001 - reported as the row's note
            row.update(cells_per_s=None, note=f"failed: {' '.join(str(exc).split())[:200]}")
        rows.append(row)
    return rows, "measured"


# ---------------------------------------------------------------------------------- report


def row_note(row: Mapping[str, Any]) -> str:
    """The table's note for a row."""
    if row.get("note"):
        return str(row["note"])
    if row.get("extrapolated"):
        return f"extrapolated from {row['timed_steps']} of {row['steps']} steps"
    return f"median of {row['repeats']}" if row.get("repeats", 0) > 1 else "1 run"


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def markdown(result: Mapping[str, Any]) -> str:
    """The Markdown report of a result dict (also used to re-render a saved JSON)."""
    m, a = result["machine"], result["args"]
    lines = [
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores; {a['threads']} threads "
        f"for torch, onnxruntime and OpenMP; torch {m['torch']}, onnxruntime "
        f"{m['onnxruntime']}, diffusers {m['diffusers']}); load average at the end "
        f"{m['load_average_1_5_15_min']}.",
        "",
        "Same bundle, seed, labels and initial noise for every method; DDIM eta = 0, 'leading' "
        f"timesteps of T = {T_TRAIN}; rate r = {T_TRAIN}/steps. Methods interleaved per round; "
        f"budget {a['budget_s']:.0f} s per row.",
        "",
    ]
    for name, c in result["configs"].items():
        lines.append(
            f"- **{name}**: {c['source']}; {c['params'] / 1e6:.2f} M parameters, "
            f"{c['flops_per_cell'] / 1e9:.3f} GFLOP per cell and step; {c['cells']} cells, batch "
            f"{c['batch_size']} (published way: {PUBLISHED_BATCH}). fp32 GEMM: "
            f"{c['gemm_2048_gflops']:.1f} GFLOP/s (2048^3), {c['gemm_dit_gflops']:.1f} GFLOP/s "
            f"(DiT MLP shape {c['gemm_dit_shape']})."
        )
    lines += [
        "",
        "| config | rate | steps | method | cells/s | ratio vs usual loop | GFLOP/s | % of GEMM "
        "| note |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['config']} | {r['rate']} | {r['steps']} | {r['method']} | "
            f"{_rate(r.get('cells_per_s'))} | {_num(r.get('ratio_vs_usual'), '.2f')} | "
            f"{_num(r.get('gflop_per_s'), '.1f')} | {_num(r.get('pct_of_gemm'), '.0f')} | "
            f"{row_note(r)} |"
        )
    lines += ["", "% of GEMM is of the 2048^3 matmul rate (JSON: also of the DiT-shape GEMM).", ""]
    lines += ["Goals (not asserted):"] + [f"- {g}" for g in result["goals"]]
    lines += ["", f"GPU: {result['gpu_status']}.", ""]
    flop = result["flop_check"]
    worst = max(c["relative_difference"] for c in flop)
    lines.append(
        f"FLOP formula checked against FlopCounterMode on {len(flop)} small DiTs: largest "
        f"relative difference {100 * worst:.2f}%."
    )
    return "\n".join(lines) + "\n"


def goal_lines(rows: Sequence[Mapping[str, Any]], configs: Sequence[str]) -> list[str]:
    """One line per goal: the measured values beside the target, met or not."""
    out = []
    for config in configs:
        ratios = [
            (r["rate"], r["ratio_vs_usual"])
            for r in rows
            if r["config"] == config and r["method"] == ORT_FP32 and r.get("ratio_vs_usual")
        ]
        if ratios:
            worst = min(v for _, v in ratios)
            out.append(
                f"{config}: cellsynth (onnxruntime fp32) vs the usual PyTorch loop at equal steps: "
                + ", ".join(f"{v:.2f}x at rate {k}" for k, v in ratios)
                + f" (goal >= {GOAL_SPEEDUP:.0f}x: {'met' if worst >= GOAL_SPEEDUP else 'NOT met'})"
            )
        out.extend(_engine_goal_lines(rows, config))
    paper = [
        r["pct_of_gemm"]
        for r in rows
        if r["config"] == "paper" and r["method"] == ORT_FP32 and r.get("pct_of_gemm")
    ]
    if paper:
        best = max(paper)
        out.append(
            f"paper: cellsynth (onnxruntime fp32) reaches {best:.0f}% of the fp32 GEMM rate (best) "
            f"(goal >= {100 * GOAL_GEMM_FRACTION:.0f}%: "
            f"{'met' if best >= 100 * GOAL_GEMM_FRACTION else 'NOT met'})"
        )
    return out


def _engine_goal_lines(rows: Sequence[Mapping[str, Any]], config: str) -> list[str]:
    """fp32 >= 1.3x and int8 >= 2x the usual loop; auto within 5% of the faster fp32 engine."""
    by_rate: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["config"] == config and r.get("cells_per_s"):
            by_rate.setdefault(r["rate"], {})[r["method"]] = r["cells_per_s"]
    out = []
    for method, goal in ((ORT_FP32, GOAL_FP32), (ORT_INT8, GOAL_INT8)):
        ratios = {k: v[method] / v[USUAL] for k, v in by_rate.items() if method in v and USUAL in v}
        out += _goal_line(f"{config}: {method} vs the usual loop", ratios, goal)
    gaps = {
        k: v[AUTO] / max(v[m] for m in AUTO_CHOICES if m in v)
        for k, v in by_rate.items()
        if AUTO in v and any(m in v for m in AUTO_CHOICES)
    }
    out += _goal_line(
        f"{config}: auto vs the faster fp32 engine", gaps, round(1 - GOAL_AUTO_SLACK, 2)
    )
    return out


def _goal_line(what: str, ratios: Mapping[int, float], goal: float) -> list[str]:
    """'WHAT: 1.85x at rate 20, ... (goal >= G: met)', judged by the worst rate; none if empty."""
    if not ratios:
        return []
    worst = min(ratios.values())
    figures = ", ".join(f"{v:.2f}x at rate {k}" for k, v in sorted(ratios.items()))
    return [f"{what}: {figures} (goal >= {goal}x: {'met' if worst >= goal else 'NOT met'})"]


def machine() -> dict[str, object]:
    """The shared machine description plus the versions that matter here."""
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    return {
        **base_machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "onnxruntime": v("onnxruntime"),
        "diffusers": v("diffusers"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# ------------------------------------------------------------------------------------ main


FULL = {"configs": ["small", "paper"], "rates": list(RATES), "budget_s": 60.0, "repeats": 3,
        "int8": True}  # fmt: skip
QUICK = {"configs": ["small"], "rates": [50, 100], "cells": [16], "budget_s": 10.0, "repeats": 2,
         "int8": False}  # fmt: skip
DEFAULT_CELLS = {"small": 256, "paper": 64}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` changes the defaults of the options not given."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--configs", nargs="+", choices=["small", "paper"], help="default: both")
    p.add_argument("--rates", nargs="+", type=int, help=f"default: {' '.join(map(str, RATES))}")
    p.add_argument(
        "--cells",
        type=int,
        nargs="+",
        help="cells per run, one value or one per config (default 256 small, 64 paper)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help=f"cellsynth and the usual loop (the published way uses {PUBLISHED_BATCH})",
    )
    p.add_argument("--budget-s", type=float, help="seconds per table row (default 60)")
    p.add_argument(
        "--repeats",
        type=int,
        help="rounds per row (default 3); rows whose rounds exceed --budget-s time fewer steps",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument(
        "--bundle",
        type=Path,
        default=DEFAULT_BUNDLE,
        help="the small default bundle (built with random weights if absent)",
    )
    p.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        help="also export and time onnxruntime int8 (default: yes, except with --quick; the "
        "int8 export's trajectory check takes minutes on the paper config)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: small config, rates 50 100, 16 cells, 10 s budget, 2 rounds, no int8",
    )
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cells = args.cells or [DEFAULT_CELLS[c] for c in args.configs]
    if len(cells) == 1:
        cells = cells * len(args.configs)
    if len(cells) != len(args.configs):
        p.error("--cells takes one value or one per config")
    args.cells = dict(zip(args.configs, cells, strict=True))
    bad = [r for r in args.rates if r < 1 or T_TRAIN % r]
    if bad:
        p.error(f"rates must divide {T_TRAIN}, got {bad}")
    return args


def describe_config(
    bundle: Bundle, source: str, n_cells: int, batch: int, gemm_2048: float
) -> dict[str, Any]:
    """What the table's header says about a config: parameters, FLOPs, cells, GEMM rates."""
    arch = bundle.architecture
    tokens, D = -(-arch["n_genes"] // arch["patch_size"]), arch["hidden_size"]
    M = int(D * arch["mlp_ratio"])
    return {
        "source": source,
        "architecture": arch,
        "params": sum(p.numel() for p in bundle.to_torch().parameters()),
        "flops_per_cell": dit_flops_per_cell(arch),
        "cells": n_cells,
        "batch_size": batch,
        "gemm_2048_gflops": gemm_2048,
        "gemm_dit_shape": [batch * tokens, D, M],
        "gemm_dit_gflops": gemm_gflops(batch * tokens, D, M),
    }


def run_config(
    name: str,
    bundle: Bundle,
    info: Mapping[str, Any],
    onnx_problems: Mapping[str, str | None],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """All rates for one config: probe each method's cost per step, then time every rate."""
    n, batch, flops = info["cells"], info["batch_size"], info["flops_per_cell"]
    methods = cpu_methods(bundle, n, batch, args.threads, args.seed, onnx_problems)
    runnable = [m for m in methods if m.unavailable is None]
    for m in runnable:
        timing.probe(m, min(T_TRAIN // r for r in args.rates))
        print(f"{name}: {m.name}: {m.seconds_per_step:.3f} s/step (probe)", file=sys.stderr)
    rows = []
    for rate in sorted(args.rates, reverse=True):  # cheapest first
        steps = T_TRAIN // rate
        timed = measure_rate(runnable, steps, n, args.budget_s, args.repeats)
        usual = timed[USUAL]["cells_per_s"]
        for m in methods:
            row: dict[str, Any] = {
                "config": name,
                "rate": rate,
                "steps": steps,
                "method": m.name,
                "batch_size": m.batch_size,
            }
            if m.name in timed:
                t = timed[m.name]
                gflops = flops * steps * t["cells_per_s"] / 1e9
                row.update(
                    t,
                    ratio_vs_usual=t["cells_per_s"] / usual,
                    gflop_per_s=gflops,
                    pct_of_gemm=100 * gflops / info["gemm_2048_gflops"],
                    pct_of_dit_gemm=100 * gflops / info["gemm_dit_gflops"],
                )
            else:
                row.update(cells_per_s=None, note=m.unavailable)
            rows.append(row)
            print(
                f"{name} rate {rate}: {m.name}: {_rate(row['cells_per_s'])} cells/s "
                f"({row_note(row)})",
                file=sys.stderr,
            )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != str(args.threads):
        # OpenMP (the C++ scheduler) reads OMP_NUM_THREADS once, at start-up: run again with it.
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.set_num_threads(args.threads)
    # engine='auto' calibrates once per bundle and run; a private cache makes it measure here.
    os.environ["CELLSYNTH_CACHE_DIR"] = tempfile.mkdtemp(prefix="cellsynth-engines-cache-")
    precisions = ["fp32", "int8"] if args.int8 else ["fp32"]
    flop_check = check_flop_formula()
    gemm_2048 = gemm_gflops(2048, 2048, 2048)
    rows: list[dict[str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}
    gpu_status = (
        "no paper config asked for: GPU rows skipped"
        if torch.cuda.is_available()
        else "no CUDA GPU here (torch.cuda.is_available() is False): GPU rows skipped"
    )
    with tempfile.TemporaryDirectory(prefix="cellsynth-engines-") as tmp_name:
        tmp = Path(tmp_name)
        small, small_source = small_bundle(args.bundle, tmp, args.seed)
        for name in args.configs:
            if name == "paper":
                b, source = paper_bundle(small, tmp, args.seed), "DIT_CONFIGS['paper'], random"
            else:
                b, source = small, small_source
            b, problems = with_onnx(b, precisions, tmp)
            n = args.cells[name]
            configs[name] = describe_config(b, source, n, min(args.batch_size, n), gemm_2048)
            rows += run_config(name, b, configs[name], problems, args)
            if name == "paper":
                gpu, gpu_status = gpu_rows(
                    b, n, configs[name]["batch_size"], args.seed,
                    configs[name]["flops_per_cell"], args.repeats,
                )  # fmt: skip
                rows += gpu
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "args": {**vars(args), "bundle": str(args.bundle)},
        "goals": goal_lines(rows, args.configs),
        "goal_targets": {
            "speedup_vs_usual_loop": GOAL_SPEEDUP,
            "fraction_of_gemm": GOAL_GEMM_FRACTION,
            "onnxruntime_fp32_vs_usual": GOAL_FP32,
            "onnxruntime_int8_vs_usual": GOAL_INT8,
            "auto_slack": GOAL_AUTO_SLACK,
        },
        "flop_formula": "2NpD + 2FD + 2D^2 + L(12D^2 + 8ND^2 + 4NDM + 4N^2 D) + 4D^2 + 2NDp",
        "flop_check": flop_check,
        "configs": configs,
        "gpu_status": gpu_status,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engines.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "engines.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
