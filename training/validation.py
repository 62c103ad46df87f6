"""Validation while training: sample cells from the current weights and compare them with real ones.

A loss curve does not say whether the cells are usable: a denoiser's MSE keeps falling while its
samples stay easy to tell from real cells. :class:`HeldOutValidator` therefore does what a user
would do with the model, at a small scale: it samples a few hundred cells with the validation
cells' label mix (DPM-Solver++, 20 steps, the C++ scheduler), and scores them against those
cells with :func:`cellsynth.metrics.compute_metrics` (kNN two-sample AUC, PCA-MMD², label
transfer), beside the same numbers for as many real training cells of the same label mix (the
floor). The trainer keeps the weights with the best score. Both sides are compared re-normalised
over the model's genes (:func:`cellsynth.data.renormalize_log1p`), as the peer benchmark
compares them: a model whose per-cell totals are off cannot hide it.

The validation cells are a slice of the training split held back from training
(:func:`validation_split`), never the test split: weights chosen on the test cells would flatter
every later evaluation on them (the peer benchmark's, ``cellsynth evaluate``'s).

    score = (kNN AUC - its floor) + mean over label keys of max(0, accuracy floor - accuracy)

so 0 is as good as real cells, and a model that blurs the labels is penalised even where its
cells look real.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cellsynth.data import renormalize_log1p
from cellsynth.metrics import compute_metrics

#: A warning is printed when the best validation's kNN AUC exceeds its floor by more than this.
FAR_FROM_FLOOR = 0.25


#: Most cells held back from training for validation, and the fewest that make a validation.
MAX_VALIDATION_CELLS = 1000
MIN_VALIDATION_CELLS = 20
#: Fewest training cells from which validation cells are held back (fewer: none can be spared).
MIN_CELLS_TO_VALIDATE = 5 * MIN_VALIDATION_CELLS


def validation_split(
    codes: np.ndarray, fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray] | None:
    """(training rows, validation rows) of training cells with label codes [n, K], stratified.

    ``fraction`` of the cells, at least :data:`MIN_VALIDATION_CELLS` and at most
    :data:`MAX_VALIDATION_CELLS`; None below :data:`MIN_CELLS_TO_VALIDATE` cells (too few to spare:
    train on every cell instead).
    """
    from cellsynth.data.split import stratified_split

    n = len(codes)
    if n < MIN_CELLS_TO_VALIDATE:
        return None
    size = min(max(int(round(fraction * n)), MIN_VALIDATION_CELLS), MAX_VALIDATION_CELLS)
    return stratified_split(np.asarray(codes).reshape(n, -1), size / n, seed + 11)


def _matched_rows(codes: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``codes`` with the label mix of ``target`` (as far as there are cells of each
    combination)."""
    pool: dict[tuple, list[int]] = {}
    for i, k in enumerate(map(tuple, codes)):
        pool.setdefault(k, []).append(i)
    rows = []
    for k, n in zip(*np.unique(target, axis=0, return_counts=True), strict=True):
        candidates = pool.get(tuple(k), [])
        rows += list(rng.choice(candidates, min(int(n), len(candidates)), replace=False))
    return np.sort(np.asarray(rows, dtype=np.int64))


class HeldOutValidator:
    """Scores a denoiser by sampling cells and comparing them with held-out real cells.

    Parameters
    ----------
    x_test, y_test : validation cells (held back from training, not the test split),
        log-normalised expression [n, G] and label codes [n, K].
    x_train, y_train : training cells (the floor's real cells and the PCA's come from them).
    schedule, prediction_type : the model's noise schedule and output.
    label_keys : names of the K label columns (for the record).
    width : the model's input width (G, or the latent width D).
    decode : turns sampled model-space values [B, width] into log-normalised cells [B, G]
        (a latent model's decoder); None for a gene-space model, whose samples are truncated at 0.
    n_cells, steps, seed : validation size, sampler steps, seed of every draw.
    condition : turns the cells' label codes [n, K] into the model's label input (a
        depth-conditioned model's depth bins added); None gives the codes as they are.
    """

    def __init__(
        self,
        x_test: np.ndarray,
        y_test: np.ndarray,
        x_train: np.ndarray,
        y_train: np.ndarray,
        schedule: Any,
        prediction_type: str,
        label_keys: Sequence[str],
        width: int,
        decode: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        n_cells: int = 300,
        steps: int = 20,
        seed: int = 0,
        condition: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        rng = np.random.default_rng(seed)
        n = min(n_cells, len(x_test))
        if n < MIN_VALIDATION_CELLS:
            raise ValueError(f"validation needs {MIN_VALIDATION_CELLS} cells, got {len(x_test)}")
        test_rows = np.sort(rng.choice(len(x_test), n, replace=False))
        self.real = renormalize_log1p(x_test[test_rows])
        self.codes = np.asarray(y_test[test_rows], dtype=np.int64).reshape(n, -1)
        floor_rows = _matched_rows(y_train.reshape(len(y_train), -1), self.codes, rng)
        self.floor = renormalize_log1p(x_train[floor_rows])
        self.floor_codes = np.asarray(y_train[floor_rows], dtype=np.int64).reshape(
            len(floor_rows), -1
        )
        rest = np.setdiff1d(np.arange(len(x_train)), floor_rows)
        pca_rows = np.sort(rng.choice(rest, min(1000, len(rest)), replace=False))
        self.pca = renormalize_log1p(x_train[pca_rows])
        self.keys = list(label_keys)
        self.schedule, self.prediction_type = schedule, prediction_type
        self.width, self.decode, self.steps, self.seed = int(width), decode, int(steps), int(seed)
        self.condition = condition
        self.progress = False  # the trainer turns it on with its own progress setting

    def sample(self, model: torch.nn.Module) -> np.ndarray:
        """Cells [n, G] (log-normalised) sampled by ``model`` with the held-out label mix."""
        from cellsynth.scheduler import scheduler_from_schedule

        sched = scheduler_from_schedule(
            self.schedule,
            "dpmsolver++",
            prediction_type=self.prediction_type,
            truncate_final=self.decode is None,
            seed=self.seed,
        )
        sched.set_timesteps(self.steps)
        x = sched.init_noise(len(self.codes), self.width)  # [n, width]
        device = next(model.parameters()).device
        codes = self.codes if self.condition is None else self.condition(self.codes)  # [n, K(+1)]
        labels = torch.from_numpy(np.ascontiguousarray(codes)).to(device)
        from tqdm.auto import tqdm

        # A big model validates for minutes on a CPU: show the steps (gone when done).
        steps = tqdm(
            sched.timesteps.tolist(), desc="validating", unit="step", leave=False,
            disable=not self.progress,
        )  # fmt: skip
        for t in steps:
            tt = torch.full((len(x),), int(t), dtype=torch.long, device=device)
            out = model(torch.from_numpy(x).to(device), tt, labels).float().cpu().numpy()
            sched.step(np.ascontiguousarray(out), t, x, out=x)
        return x if self.decode is None else self.decode(x, self.codes)

    def __call__(self, model: torch.nn.Module) -> dict[str, Any]:
        syn = self.sample(model)
        if np.isfinite(syn).all():  # renormalising would hide a -inf (it counts as zero)
            syn = renormalize_log1p(syn)
        if not np.isfinite(syn).all():  # as sampled, or overflowing expm1 when renormalised
            return {"score": float("inf"), "knn_auc": float("nan"), "note": "non-finite cells"}
        labels = {k: self.codes[:, j].astype(str) for j, k in enumerate(self.keys)}
        floor_labels = {k: self.floor_codes[:, j].astype(str) for j, k in enumerate(self.keys)}
        m = compute_metrics(
            self.real,
            syn,
            labels or None,
            labels or None,
            seed=self.seed,
            floor_real=self.floor,
            floor_labels=floor_labels or None,
            pca_real=self.pca,
            families=("distribution",),
            class_metrics=("knn_auc",),
            n_components=min(30, len(self.pca) - 1, self.real.shape[1]),
            knn_k=min(15, max(1, len(self.real) // 10)),
            mmd_bandwidth="floor",
            sliced_projections=50,
            w2_max_cells=500,
        )
        knn, mmd = m["metrics"]["knn_auc"], m["metrics"]["mmd2_rbf_pca"]
        transfer = m.get("label_transfer", {})
        acc = [v["value"] for v in transfer.values()]
        acc_floor = [v["floor"] for v in transfer.values()]
        gap = [max(0.0, f - a) for a, f in zip(acc, acc_floor, strict=True) if np.isfinite(a)]
        score = (knn["value"] - knn["floor"]) + (float(np.mean(gap)) if gap else 0.0)
        return {
            "score": float(score) if np.isfinite(score) else float("inf"),
            "knn_auc": knn["value"],
            "knn_auc_floor": knn["floor"],
            "mmd2_rbf_pca": mmd["value"],
            "mmd2_rbf_pca_floor": mmd["floor"],
            "label_accuracy": float(np.mean(acc)) if acc else None,
            "label_accuracy_floor": float(np.mean(acc_floor)) if acc_floor else None,
            "n_cells": int(len(syn)),
        }


def verdict(best: dict[str, Any] | None, unvalidated_cells: int | None = None) -> str | None:
    """A plain warning when the best validated model is far from real cells; else None.

    ``unvalidated_cells``: validation was asked for but the run had only this many training
    cells, too few to hold any back; the model is then unchecked, which the user must be told
    at the end of training and by ``cellsynth info``, not only in a line at its start.
    """
    if not best:
        if unvalidated_cells is None:
            return None
        return (
            f"this model was never compared with real cells: {unvalidated_cells} training cells "
            f"are too few to hold back validation cells ({MIN_CELLS_TO_VALIDATE} needed), so "
            "the last weights are kept. Compare its cells with held-out real ones (cellsynth "
            "evaluate) before using them."
        )
    if best.get("knn_auc") is None or not np.isfinite(best["knn_auc"]):
        return (
            "the model's samples are not finite numbers (it diverged or never learned); "
            "lower the learning rate, or train longer on more cells"
        )
    auc, floor = best["knn_auc"], best.get("knn_auc_floor", 0.5)
    acc, acc_floor = best.get("label_accuracy"), best.get("label_accuracy_floor")
    problems = []
    if auc - floor > FAR_FROM_FLOOR:
        problems.append(
            f"synthetic cells are easy to tell from real ones: kNN AUC {auc:.2f} (real cells: "
            f"{floor:.2f})"
        )
    if acc is not None and acc_floor is not None and acc < acc_floor - 0.15:
        problems.append(
            f"their labels are often wrong: a classifier trained on them is {acc:.0%} right on "
            f"real cells ({acc_floor:.0%} when trained on real cells)"
        )
    if not problems:
        return None
    return (
        "; ".join(problems)
        + ". Train longer (--time-budget), on more cells, or with a larger --config."
    )
