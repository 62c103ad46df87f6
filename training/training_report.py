"""What a trained bundle tells a person about its training: training.json and training.png.

``training.json`` holds the whole record (settings, loss per epoch, every validation);
``training.png`` shows the loss and the validation scores against the step, with the real-vs-real
floor of each score and the step whose weights the bundle keeps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item"):
        return _plain(obj.item())
    return obj


def json_writer(record: dict[str, Any]) -> Callable[[Path], None]:
    """A writer of ``training.json`` (for :func:`cellsynth.bundle.save.save_bundle`'s ``files``)."""

    def write(path: Path) -> None:
        path.write_text(json.dumps(_plain(record), indent=1) + "\n")

    return write


def plot_writer(record: dict[str, Any]) -> Callable[[Path], None]:
    """A writer of ``training.png``: loss, and validation kNN AUC and label accuracy."""

    def write(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        history = record.get("history", [])
        validation = record.get("validation", [])
        panels = 1 + bool(validation)
        fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.4), squeeze=False)
        ax = axes[0][0]
        steps = [h.get("step", h["epoch"]) for h in history]
        ax.plot(steps, [h["loss"] for h in history], marker="o", ms=2)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("training loss (per epoch)")
        ax.set_yscale("log")
        if validation:
            ax = axes[0][1]
            vs = [v["step"] for v in validation]
            for key, colour, label in (
                ("knn_auc", "C0", "kNN AUC real vs synthetic"),
                ("label_accuracy", "C2", "label accuracy (trained on synthetic)"),
            ):
                values = [v.get(key) for v in validation]
                if all(x is None for x in values):
                    continue
                ax.plot(vs, values, marker="o", ms=3, color=colour, label=label)
                floor = validation[-1].get(f"{key}_floor")
                if floor is not None:
                    ax.axhline(floor, color=colour, ls=":", lw=1, label=f"{label}: real cells")
            best = record.get("best")
            if best:
                ax.axvline(best["step"], color="0.4", ls="--", lw=1, label="kept weights")
            ax.set_xlabel("optimiser step")
            ax.set_ylim(0.0, 1.02)
            ax.legend(fontsize=6, loc="best")
            ax.set_title("validation on held-out cells", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    return write


def files(record: dict[str, Any]) -> dict[str, Callable[[Path], None]]:
    """The report files of a training record, for ``save_bundle(files=...)``."""
    return {"training.json": json_writer(record), "training.png": plot_writer(record)}
