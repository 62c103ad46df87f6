"""``cellsynth evaluate``: compare synthetic cells with real ones and write a report."""

from __future__ import annotations

import argparse
import math


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compare synthetic cells with real ones: metrics beside their real-vs-real "
        "floors, a Markdown report and figures",
        description="Align the genes of the synthetic cells with the real data, bring both to "
        "log-normalised expression, compute every fidelity metric beside its real-vs-real "
        "floor (per label with --label) and write metrics.json, report.md and PNG figures to "
        "--out. When the real data is the training data of the bundle that generated the "
        "synthetic cells, only its held-out cells are compared. Both sides keep the same mix of "
        "labels (--label and the bundle's labels) unless --all-cells.",
    )
    p.add_argument(
        "--real",
        required=True,
        help="real cells: a built-in data set (kang, pbmc3k, wu2020) or an .h5ad file",
    )
    p.add_argument("--synthetic", required=True, help="synthetic cells (.h5ad)")
    p.add_argument("--label", help="obs column present in both files, for the per-label breakdown")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument(
        "--overwrite", action="store_true", help="write into --out even if it is not empty"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    p.add_argument(
        "--umap", action="store_true", help="also draw a UMAP (needs umap-learn; slower)"
    )
    p.add_argument(
        "--all-cells",
        action="store_true",
        help="compare every cell whatever the label mix of each side (default: like with like, "
        "the same number of cells of every label combination on both sides)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from cellsynth.evaluation.evaluate import evaluate
    from cellsynth.evaluation.report import KEY_METRICS, ratio_to_floor
    from cellsynth.files import check_output

    check_output(args.out, args.overwrite, directory=True)
    result = evaluate(
        args.real,
        args.synthetic,
        label_key=args.label,
        out=args.out,
        seed=args.seed,
        umap=args.umap,
        match_labels=not args.all_cells,
    )
    ev = result["evaluation"]
    h = result["n_compared"]
    print(
        f"scored {h} synthetic against {h} real cells on {ev['n_genes']} genes "
        f"({ev['seconds']} s); of the {result['n_real']} real cells, the others fit the PCA "
        "and give the real-vs-real floor"
    )
    print(f"  {ev['cells_note']}")
    if ev["label_match_note"]:  # what the label-mix matching did (or why it could not)
        print(f"  {ev['label_match_note']}")
    print(f"  {'metric':<28} {'value':>11}  {'floor':>11}  {'ratio':>9}")
    for name in KEY_METRICS:
        m = result["metrics"][name]
        ratio = ratio_to_floor(name, m["value"], m["floor"])
        shown = f"{ratio:>9.3g}" if math.isfinite(ratio) else f"{'n/a':>9}"
        print(f"  {name:<28} {m['value']:>11.4g}  {m['floor']:>11.4g}  {shown}")
    print(f"report:   {result['files']['report.md']}")
    print(f"metrics:  {result['files']['metrics.json']}")
    figures = [n for n in result["files"] if n.endswith(".png")]
    print(f"figures:  {', '.join(figures)} in {args.out}")
