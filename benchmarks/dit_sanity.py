"""First-look fidelity of a small DiT trained on Kang: does it learn the labels and the marginals?

Trains the 'small' config on a Kang subsample for each prediction type, samples the held-out
split's label mix and reports, against the real held-out cells:
- label consistency: accuracy of a logistic regression trained on REAL training cells when it
  predicts the synthetic cells' cell_type / stim (real held-out cells give the ceiling);
- Pearson r of per-gene means and of per-gene zero fractions;
- mean expression and zero fraction overall.
The full fidelity metrics (MMD, W2, kNN AUC, ...) arrive with the evaluation module.

    python benchmarks/dit_sanity.py --cells 4000 --epochs 10 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

import cellsynth
from cellsynth.data import prepare
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
    parser.add_argument("--cells", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--prediction-types", nargs="+", default=["epsilon", "v_prediction"])
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    adata = cellsynth.datasets.kang()
    prepared = prepare(adata, LABELS, max_cells=args.cells)
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
                config="small",
                epochs=args.epochs,
                max_cells=args.cells,
                prediction_type=ptype,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                progress=False,
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
                    "source": f"DiT small, {ptype}, {args.epochs} epochs ({steps} steps, "
                    f"batch {args.batch_size}, lr {args.learning_rate:g})",
                    **summarise(x, real_test),
                    **acc,
                    "train_s": train_s,
                    "n": n,
                }
            )

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"_e{args.epochs}_b{args.batch_size}"
    (out / f"dit_sanity{tag}.json").write_text(
        json.dumps({"date": stamp, "args": vars(args), "rows": rows}, indent=1) + "\n"
    )
    lines = [
        f"Measured {stamp}; Kang subsample of {args.cells} cells (80/20 split), "
        f"DDIM {args.steps} steps, compared with the real held-out cells.",
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
