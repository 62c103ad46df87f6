"""``cellsynth distill-eval``: train fresh classifiers on a distilled set, beside its baselines."""

from __future__ import annotations

import argparse
from collections.abc import Callable

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
    "scdd",
    "full",
)
STRATEGIES = ("random", "reweight", "geosketch", "kmeans", "distill")  # as in training.saturation
CURVE_SPC = "1,2,5,10,20,50"
CURVE_FRACTIONS = "0.01,0.1,0.25,0.5,1"
CURVE_SEEDS = 3


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _numbers(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(t) for t in _names(text)]
        except ValueError:
            message = f"expected comma-separated numbers, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None

    return parse


def _add_curve_options(p: argparse.ArgumentParser) -> None:
    """The options of the learning-saturation study (``--curve``)."""
    p.add_argument(
        "--curve", action="store_true", help="run the learning-saturation study (see above)"
    )
    p.add_argument(
        "--bundle", help="with --curve and no --synthetic: the SCDG bundle (its split, its model)"
    )
    p.add_argument(
        "--spc",
        type=_numbers(int),
        default=None,
        help=f"--curve budgets in cells per class (default: {CURVE_SPC})",
    )
    p.add_argument(
        "--fractions",
        type=_numbers(float),
        default=None,
        help=f"--curve budgets as fractions of the training set (default: {CURVE_FRACTIONS})",
    )
    p.add_argument(
        "--strategies",
        type=_names,
        default=None,
        help=f"--curve strategies, comma-separated, from {','.join(STRATEGIES)} (default: all)",
    )
    p.add_argument(
        "--max-distill-spc",
        type=int,
        default=None,
        help="--curve: largest cells per class distilled; larger budgets are listed as skipped "
        "(default: 50)",
    )


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
        "over seeds go to report.md, report.json and accuracy.png in --out. With --curve, "
        "the learning-saturation study instead: accuracy of every classifier against the "
        "budget (cells per class and fractions of the training set) for random cells, "
        "re-weighting, geometric sketching, k-means and distillation, the saturation point of "
        "each (smallest budget reaching 95% of its best accuracy) and the diversity of every "
        "set (Shannon, Gini-Simpson, Vendi), to curve.md, curve.json and curve.png.",
    )
    p.add_argument(
        "--synthetic",
        help="distilled set (.h5ad from cellsynth distill); with --curve its bundle and "
        "distillation settings are used",
    )
    _add_curve_options(p)
    p.add_argument(
        "--data",
        required=True,
        help="the counts the bundle was trained on: a built-in data set (kang, pbmc3k, wu2020) "
        "or an .h5ad file",
    )
    p.add_argument("--label", required=True, help="obs column the set was distilled for")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"runs per method and classifier (default: 5; with --curve {CURVE_SEEDS})",
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
        default=None,
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
    p.set_defaults(run=run, parser=p)


CURVE_ONLY = ("bundle", "spc", "fractions", "strategies", "max_distill_spc")
TABLE_ONLY = ("baselines", "iterations")


def _check_mode(args: argparse.Namespace) -> None:
    """One clear line for options that do not belong to the chosen mode."""
    flag = {k: "--" + k.replace("_", "-") for k in CURVE_ONLY + TABLE_ONLY}
    if args.curve:
        given = [flag[k] for k in TABLE_ONLY if getattr(args, k) is not None]
        if given:
            args.parser.error(f"{', '.join(given)} only without --curve")
        if (args.synthetic is None) == (args.bundle is None):
            args.parser.error("--curve needs exactly one of --synthetic and --bundle")
    else:
        given = [flag[k] for k in CURVE_ONLY if getattr(args, k) is not None]
        if given:
            args.parser.error(f"{', '.join(given)} only with --curve")
        if args.synthetic is None:
            args.parser.error("--synthetic is required (or run the study with --curve)")


def run(args: argparse.Namespace) -> None:
    from cellsynth.files import check_output

    _check_mode(args)
    check_output(args.out, args.overwrite, directory=True)
    if args.curve:
        run_curve(args)
        return
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
        seeds=5 if args.seeds is None else args.seeds,
        classifiers=args.classifiers,
        baselines=args.baselines,  # None: all that apply to the bundle
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


def run_curve(args: argparse.Namespace) -> None:
    """The learning-saturation study (``--curve``)."""
    module = torch_module("training.saturation", "distill-eval --curve (it trains classifiers)")
    report = torch_module("training.saturation_report", "distill-eval --curve")
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    bundle, settings = args.bundle, {}
    if args.synthetic is not None:  # the set's own bundle and distillation settings
        evaluation = torch_module("training.distill_eval", "distill-eval")
        record = evaluation.distill_record(evaluation.read_synthetic(args.synthetic))
        bundle = record["bundle"]
        settings = {k: record[k] for k in module.DISTILL_SETTINGS if k in record}
    result = module.saturation_curve(
        bundle,
        args.data,
        args.label,
        spcs=_numbers(int)(CURVE_SPC) if args.spc is None else args.spc,
        fractions=_numbers(float)(CURVE_FRACTIONS) if args.fractions is None else args.fractions,
        strategies=list(STRATEGIES) if args.strategies is None else args.strategies,
        classifiers=args.classifiers,
        seeds=CURVE_SEEDS if args.seeds is None else args.seeds,
        distill_settings=settings,
        max_distill_spc=(
            module.MAX_DISTILL_SPC if args.max_distill_spc is None else args.max_distill_spc
        ),
    )
    files = report.write_report(result, args.out)
    kinds = result["classifiers"]
    print(
        f"learning saturation of {args.label!r}: {result['task']['n_train']} training, "
        f"{result['task']['n_test']} held-out cells, {len(result['seeds'])} seed(s) "
        f"({result['seconds']:.0f} s); saturation point (95% of the best accuracy) per classifier"
    )
    for strategy in result["strategies"]:
        points = []
        for k in kinds:
            s = result["saturation"][strategy][k]
            points.append("n/a" if s is None else f"{k} {s['budget']} ({s['best_accuracy']:.3f})")
        print(f"  {strategy:<10} " + ", ".join(points))
    for name in report.FILES:
        print(f"{name + ':':<11} {files[name]}")
