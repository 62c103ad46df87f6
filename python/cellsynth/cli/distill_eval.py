"""``cellsynth distill-eval``: train fresh classifiers on a distilled set, beside its baselines."""

from __future__ import annotations

import argparse

from cellsynth.torch_entry import torch_module

CLASSIFIERS = ("logreg", "mlp", "transformer")  # as in cellsynth.training.classifiers
BASELINES = (  # as in cellsynth.training.distill_eval
    "random",
    "class_mean",
    "kmeans",
    "geosketch",
    "reweight",
    "dm_data",
    "dc_data",
    "decoder",
    "full",
)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill-eval",
        help="train classifiers on a distilled set and on same-budget baselines; test them on "
        "real held-out cells",
        description="Train fresh classifiers (logistic regression, an MLP, a small transformer) "
        "on the synthetic cells of `cellsynth distill` and, at the same number of cells per "
        "class, on baselines built from the real training cells (random cells, class means, "
        "k-means centroids, geometric sketching, re-weighting, data-level DM/DC, decoder-only "
        "distillation, and the full training set). Every classifier is tested on the held-out "
        "split of the bundle the set was distilled with; mean and sd of accuracy and macro F1 "
        "over seeds go to report.md, report.json and accuracy.png in --out.",
    )
    p.add_argument(
        "--synthetic", required=True, help="distilled set (.h5ad from cellsynth distill)"
    )
    p.add_argument(
        "--data",
        required=True,
        help="the counts the bundle was trained on: a built-in data set (kang, pbmc3k, wu2020) "
        "or an .h5ad file",
    )
    p.add_argument("--label", required=True, help="obs column the set was distilled for")
    p.add_argument(
        "--seeds", type=int, default=5, help="runs per method and classifier (default: 5)"
    )
    p.add_argument(
        "--classifiers",
        type=_names,
        default=list(CLASSIFIERS),
        help=f"comma-separated, from {','.join(CLASSIFIERS)} (default: all)",
    )
    p.add_argument(
        "--baselines",
        type=_names,
        default=list(BASELINES),
        help=f"comma-separated, from {','.join(BASELINES)} (default: all; empty: none)",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="optimiser steps of the distillation baselines (default: the synthetic set's own)",
    )
    p.add_argument(
        "--full-runs",
        type=int,
        default=1,
        help="fits of the full training set per classifier (default: 1)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument(
        "--overwrite", action="store_true", help="write into --out even if it is not empty"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from cellsynth.files import check_output

    check_output(args.out, args.overwrite, directory=True)
    module = torch_module("training.distill_eval", "distill-eval (it trains classifiers)")
    evaluate_distilled, write_report = module.evaluate_distilled, module.write_report
    names = module.CLASSIFIER_NAMES
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = evaluate_distilled(
        args.synthetic,
        args.data,
        args.label,
        seeds=args.seeds,
        classifiers=args.classifiers,
        baselines=args.baselines,
        iterations=args.iterations,
        full_runs=args.full_runs,
    )
    files = write_report(result, args.out)
    kinds = result["classifiers"]
    print(
        f"{result['synthetic']['n_cells']} synthetic cells (SPC={result['spc']}) of "
        f"{args.label!r}, tested on {result['task']['n_test']} held-out cells; accuracy, "
        f"mean ± sd over {len(result['seeds'])} seed(s) ({result['seconds']:.0f} s)"
    )
    print(f"  {'method':<12} {'cells':>6}  " + "  ".join(f"{names[k]:>13}" for k in kinds))
    for method in result["methods"]:
        r = result["results"][method]
        accs = [r["classifiers"][k]["accuracy"] for k in kinds]
        cells = "  ".join(f"{a['mean']:>6.3f} ± {a['sd']:.3f}" for a in accs)
        print(f"  {method:<12} {r['n_cells']:>6.0f}  {cells}")
    print(f"report:   {files['report.md']}")
    print(f"json:     {files['report.json']}")
    print(f"figure:   {files['accuracy.png']}")
