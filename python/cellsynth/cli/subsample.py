"""``cellsynth subsample``: downsample a data set and report its composition and diversity."""

from __future__ import annotations

import argparse

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "subsample",
        help="select cells by random, cell-type re-weighting or geometric sketching",
        description="Select cells by a downsampling strategy, write them to an .h5ad file and "
        "print the label composition and the diversity (Shannon, Gini-Simpson, Vendi) before "
        "and after.",
    )
    p.add_argument("data", help="built-in data set (kang, pbmc3k, wu2020) or an .h5ad file")
    p.add_argument(
        "--strategy",
        required=True,
        metavar="{random,reweight,geosketch}",
        help="random: uniform; reweight: equal cells per type of --label; geosketch: "
        "geometric sketching of the expression PCA",
    )
    p.add_argument("--n", type=int, help="number of cells to select")
    p.add_argument("--fraction", type=float, help="fraction of the cells to select (0 < F <= 1)")
    p.add_argument(
        "--label", help="obs column to balance (reweight) and to report the composition of"
    )
    p.add_argument("--seed", type=int, default=0, help="same seed, same cells (default: 0)")
    p.add_argument(
        "--out", required=True, help="output .h5ad (written to a temporary name, then renamed)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(run=run)


def _composition(labels: np.ndarray, before: np.ndarray) -> list[str]:
    """Lines 'type  selected (share)  of available' for each type of the full data."""
    types, total = np.unique(before, return_counts=True)
    chosen = {t: int(c) for t, c in zip(*np.unique(labels, return_counts=True), strict=True)}
    width = max(len(str(t)) for t in types)
    lines = []
    for t, avail in zip(types, total, strict=True):
        got = chosen.get(t, 0)
        lines.append(
            f"  {t:<{width}}  {got:>7}  ({100 * got / len(labels):5.1f}%)  of {int(avail)}"
        )
    return lines


def _diversity_line(name: str, d: dict) -> str:
    parts = [f"{name:<8} {d['n_cells']:>7} cells"]
    if "shannon" in d:
        parts.append(f"Shannon {d['shannon']:.3f}  Gini-Simpson {d['gini_simpson']:.3f}")
    parts.append(f"Vendi {d['vendi']:.2f}")
    return "  ".join(parts)


def run(args: argparse.Namespace) -> None:
    from cellsynth.data import datasets
    from cellsynth.data.validate import validate_labels
    from cellsynth.errors import DataError
    from cellsynth.files import check_output, write_h5ad
    from cellsynth.stages import say_stage
    from cellsynth.subsample import diversity, pca_features, resolve_size, select_indices
    from cellsynth.subsample.selection import take_cells
    from cellsynth.subsample.strategies import STRATEGIES

    if not args.out.endswith(".h5ad"):
        raise DataError(f"--out must end in .h5ad, got {args.out!r}.")
    if args.strategy not in STRATEGIES:
        raise DataError(
            f"Unknown --strategy {args.strategy!r}; choose one of {', '.join(STRATEGIES)}."
        )
    if (args.n is None) == (args.fraction is None):
        raise DataError("Give exactly one of --n (a number of cells) and --fraction (0 < F <= 1).")
    check_output(args.out, args.overwrite)
    say_stage(f"reading {args.data}")
    adata = datasets.load(args.data)
    # Cheap checks first, so a bad request fails before the PCA of a large data set.
    resolve_size(adata.n_obs, args.n, args.fraction)
    if args.strategy == "reweight" and args.label is None:
        raise DataError("--strategy reweight needs --label, the obs column to balance.")
    if args.label is not None:
        validate_labels(adata.obs, [args.label])
    # One PCA of all cells serves geosketch and both Vendi scores, so before and after are
    # measured in the same space and can be compared.
    say_stage(f"PCA of the {adata.n_obs} cells")
    features = pca_features(adata)
    say_stage(f"selecting cells by {args.strategy}")
    idx = select_indices(
        adata, args.strategy, args.n, args.fraction, args.label, args.seed, features=features
    )
    out = take_cells(
        adata,
        idx,
        strategy=args.strategy,
        fraction=args.fraction,
        label_key=args.label,
        seed=args.seed,
        data=str(args.data),
    )
    write_h5ad(out, args.out, overwrite=args.overwrite)

    labels = adata.obs[args.label].to_numpy().astype(str) if args.label else None
    say_stage("scoring the diversity of all cells and of the selection")
    before = diversity(features, labels=labels)
    after = diversity(features[idx], labels=None if labels is None else labels[idx])
    print(f"selected {len(idx)} of {adata.n_obs} cells by {args.strategy} (seed {args.seed})")
    if labels is not None:
        print(f"composition of {args.label!r}:")
        print("\n".join(_composition(labels[idx], labels)))
    print(f"diversity (Vendi: {after['vendi_kernel']} kernel on the PCA of all cells):")
    print("  " + _diversity_line("all", before))
    print("  " + _diversity_line("selected", after))
    print(f"wrote {out.n_obs} cells x {out.n_vars} genes to {args.out}")
