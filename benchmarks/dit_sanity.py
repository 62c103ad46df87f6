"""First-look fidelity of a small DiT trained on Kang: does it learn the labels and the marginals?

Trains a DiT config ('small' by default; --patch/--hidden/--depth/--mlp-ratio override it) on a
Kang subsample (--cells 0 = all cells) for each prediction type, samples the held-out split's
label mix (DDIM or DPM-Solver++) and reports, against the real held-out cells:
- label consistency: accuracy of a logistic regression trained on REAL training cells when it
  predicts the synthetic cells' cell_type / stim (real held-out cells give the ceiling);
- Pearson r of per-gene means and of per-gene zero fractions;
- mean expression and zero fraction overall.
The full fidelity metrics (MMD, W2, kNN AUC, ...) arrive with the evaluation module.

    python benchmarks/dit_sanity.py --cells 4000 --epochs 10 --out benchmarks/results
    python benchmarks/dit_sanity.py --config kang --cells 0 --epochs 8 --prediction-types sample \
        --scheduler dpmsolver++ --steps 20 --threads 1 --tag _kang_e8
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

import cellsynth
from cellsynth.data import prepare
from cellsynth.training.dit import DIT_CONFIGS
from cellsynth.training.train_dit import train_dit_bundle

LABELS = ["cell_type", "stim"]


def summarise(x: np.ndarray, real: np.ndarray) -> dict[str, float]:
    return {
        "mean_r": float(np.corrcoef(x.mean(0), real.mean(0))[0, 1]),
        "zero_fraction_r": float(np.corrcoef((x == 0).mean(0), (real == 0).mean(0))[0, 1]),
        "mean_expression": float(x.mean()),
        "zero_fraction": float((x == 0).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4000, help="subsample size; 0 = all cells")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50, help="sampling steps")
    parser.add_argument("--scheduler", default="ddim", choices=["ddim", "dpmsolver++"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--prediction-types", nargs="+", default=["epsilon", "v_prediction"])
    parser.add_argument("--config", default="small", choices=sorted(DIT_CONFIGS))
    parser.add_argument("--patch", type=int, default=None, help="override patch_size")
    parser.add_argument("--hidden", type=int, default=None, help="override hidden_size")
    parser.add_argument("--depth", type=int, default=None, help="override depth")
    parser.add_argument("--mlp-ratio", type=float, default=None, help="override mlp_ratio")
    parser.add_argument("--zero-value", type=float, default=-10.0)
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--ema-decay", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--tag", default=None, help="output name suffix (default _eE_bB)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    max_cells = args.cells or None
    overrides = {
        key: value
        for key, value in [
            ("patch_size", args.patch),
            ("hidden_size", args.hidden),
            ("depth", args.depth),
            ("mlp_ratio", args.mlp_ratio),
        ]
        if value is not None
    }
    config = {**DIT_CONFIGS[args.config], **overrides} if overrides else args.config
    train_options = {
        key: value
        for key, value in [("warmup_steps", args.warmup_steps), ("ema_decay", args.ema_decay)]
        if value is not None
    }

    adata = cellsynth.datasets.kang()
    prepared = prepare(adata, LABELS, max_cells=max_cells)
    real_test = prepared.x_test
    classifiers = {
        key: LogisticRegression(max_iter=300).fit(prepared.x_train, prepared.y_train[:, j])
        for j, key in enumerate(LABELS)
    }
    ceiling = {
        key: float(clf.score(real_test, prepared.y_test[:, j]))
        for j, (key, clf) in enumerate(classifiers.items())
    }
    rows = [
        {
            "source": "real held-out",
            **summarise(real_test, real_test),
            **{f"{k}_accuracy": v for k, v in ceiling.items()},
        }
    ]

    with tempfile.TemporaryDirectory() as tmp:
        for ptype in args.prediction_types:
            start = time.perf_counter()
            bundle = train_dit_bundle(
                adata,
                LABELS,
                Path(tmp) / ptype,
                config=config,
                epochs=args.epochs,
                max_cells=max_cells,
                prediction_type=ptype,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                zero_value=args.zero_value,
                progress=False,
                **train_options,
            )
            train_s = time.perf_counter() - start
            n = len(real_test)
            # Sample the held-out split's label mix exactly: one call per combination.
            parts, codes = [], []
            combos, counts = np.unique(prepared.y_test, axis=0, return_counts=True)
            for combo, count in zip(combos, counts, strict=True):
                cond = {k: prepared.vocabularies[k][c] for k, c in zip(LABELS, combo, strict=True)}
                syn = cellsynth.generate(
                    bundle,
                    n_cells=int(count),
                    steps=args.steps,
                    seed=1,
                    conditions=cond,
                    scheduler=args.scheduler,
                    device="cpu",
                    progress=False,
                )
                parts.append(syn.X.toarray())
                codes.append(np.repeat(combo[None], count, axis=0))
            x, y = np.vstack(parts), np.vstack(codes)
            acc = {
                f"{key}_accuracy": float(clf.score(x, y[:, j]))
                for j, (key, clf) in enumerate(classifiers.items())
            }
            steps = cellsynth.load_bundle(bundle).config["training"]["steps"]
            rows.append(
                {
                    "source": f"DiT {args.config}{overrides or ''}, {ptype}, {args.epochs} epochs "
                    f"({steps} steps, batch {args.batch_size}, lr {args.learning_rate:g}, "
                    f"zero {args.zero_value:g})",
                    **summarise(x, real_test),
                    **acc,
                    "train_s": train_s,
                    "n": n,
                }
            )

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag if args.tag is not None else f"_e{args.epochs}_b{args.batch_size}"
    (out / f"dit_sanity{tag}.json").write_text(
        json.dumps({"date": stamp, "args": vars(args), "rows": rows}, indent=1) + "\n"
    )
    lines = [
        f"Measured {stamp}; Kang {f'subsample of {args.cells}' if args.cells else 'all'} cells "
        f"(80/20 split), {args.scheduler} {args.steps} steps, compared with the real held-out "
        "cells.",
        "",
        "| source | cell_type acc. | stim acc. | r(gene means) | r(zero fractions) "
        "| mean expr. | zero fraction | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['cell_type_accuracy']:.3f} | {r['stim_accuracy']:.3f} | "
            f"{r['mean_r']:.3f} | {r['zero_fraction_r']:.3f} | {r['mean_expression']:.3f} | "
            f"{r['zero_fraction']:.3f} | {r.get('train_s', float('nan')):.0f} |"
        )
    (out / f"dit_sanity{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
