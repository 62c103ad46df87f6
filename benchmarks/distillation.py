"""Distillation on the default data: accuracy of classifiers trained on a few synthetic cells.

For each task (cell type, stim) and budget (SPC 1, 5, 10): distil the Kang training split with the
shipped ``kang-scdg`` bundle (timed; by default ``cellsynth distill``'s default, the bilevel
logistic regression in expression space), then train fresh classifiers (logistic regression, MLP,
gene-token transformer) on the distilled set and on every same-budget baseline (random real cells,
class means, k-means centroids, geometric sketching, re-weighting, data-level DM and DC,
decoder-only, DM through SCDG as in scDD) and on the full training set, and test them on the real
held-out split
(:func:`cellsynth.training.distill_eval.evaluate_distilled`). Writes distillation.json,
distillation.md (one table, the goals checked beside it), distillation.png and, per run, the
evaluation's own report in distillation/<label>_spc<N>/.

With ``--network-weight W`` the sets are distilled with the networks' term
(:mod:`cellsynth.training.distill_networks`) and the plain bilevel set is distilled and scored in
the same run as the row ``lr_only``; ``--baselines`` limits the baselines (those re-distilled,
DM / DC / decoder / scDD, never use the term).

Goals (printed, never asserted): logistic regression on the distilled set at least 0.01 above the
better of one class-mean cell per class and SPC k-means centroids, at every SPC; accuracy never
falling as SPC grows; MLP and transformer within 3 points of logistic regression on it.

    python benchmarks/distillation.py --out benchmarks/results
    python benchmarks/distillation.py --bundle runs/saturation/pbmc3k-latent --data pbmc3k \
        --labels celltype --prefix distillation_pbmc3k --out benchmarks/results
    python benchmarks/distillation.py --network-weight 0.3 --baselines class_mean kmeans full \
        --prefix distillation_networks --out benchmarks/results
    python benchmarks/distillation.py --match mmd --option features=random \
        --baselines class_mean kmeans --prefix distillation_mmd_random --out benchmarks/results

``--option KEY=VALUE`` sets any other field of
:class:`~cellsynth.training.distill.DistillConfig` (``anchor``, ``features``, ``covariance``,
``separation``, ...) for the distilled set; the report names them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import torch
from _machine import machine

from cellsynth.files import atomic_path
from cellsynth.training.distill import SETTINGS, DistillConfig, distill
from cellsynth.training.distill_data import load_task
from cellsynth.training.distill_eval import (
    CLASSIFIER_NAMES,
    applicable_baselines,
    evaluate_distilled,
    write_report,
)

MARGIN = 0.01  # over max(class_mean, kmeans), logistic regression
ROWS = ("distilled", "lr_only", "class_mean", "random", "kmeans", "geosketch", "reweight",
        "dm_data", "dc_data", "decoder", "scdd", "full")  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    runs = []
    for label in args.labels:
        task = load_task(args.bundle, args.data, label)
        full_row = None
        for spc in args.spc:
            common = dict(
                match=args.match, generator=args.generator, iterations=args.iterations, seed=0,
                task=task, progress=False,
            )  # fmt: skip
            started = time.perf_counter()
            synthetic = distill(
                args.bundle, args.data, label, spc, network_weight=args.network_weight,
                **args.options, **common,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            usable = applicable_baselines(task.bundle)  # scdd only with an SCDG bundle
            wanted = set(args.baselines or ROWS[2:]) & set(usable)
            if full_row is not None:  # the full training set: fitted once per task
                wanted.discard("full")
            baselines = [b for b in ROWS[2:] if b in wanted]
            result = evaluate_distilled(
                synthetic, None, label, seeds=args.seeds, baselines=baselines, task=task,
                progress=False,
            )  # fmt: skip
            if args.network_weight > 0:  # the plain bilevel set, side by side
                plain = distill(args.bundle, args.data, label, spc, **common)
                alone = evaluate_distilled(
                    plain, None, label, seeds=args.seeds, baselines=[], task=task, progress=False
                )
                result["results"]["lr_only"] = {
                    **alone["results"]["distilled"],
                    "description": "the same distillation without the networks' term",
                }
                result["methods"].append("lr_only")
            if full_row is None:
                full_row = result["results"].get("full")
            else:  # the full training set does not depend on SPC: fitted once per task
                result["results"]["full"] = full_row
                result["methods"].append("full")
            write_report(result, Path(args.out) / args.prefix / f"{label}_spc{spc}")
            runs.append(
                {"label": label, "spc": spc, "distill_seconds": round(seconds, 1), **result}
            )
            print(f"{label} SPC={spc}: distilled in {seconds:.0f} s; {_summary(result)}")
    return {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "prefix", "option")},
        "runs": runs,
    }


def add_option_argument(parser: argparse.ArgumentParser) -> None:
    """``--option KEY=VALUE`` (repeatable): another DistillConfig field for the distilled sets."""
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="another DistillConfig field for the distilled sets (repeatable)",
    )  # fmt: skip


def parse_options(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings as DistillConfig fields, each value of its field's default's type."""
    defaults = DistillConfig()
    taken = {"match", "generator", "iterations", "network_weight"}  # options of their own
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in SETTINGS or key in taken:
            raise SystemExit(
                f"--option {pair!r}: expected KEY=VALUE with KEY one of "
                f"{sorted(set(SETTINGS) - taken)}"
            )
        kind = type(getattr(defaults, key))
        try:
            out[key] = kind(value)
        except ValueError:
            raise SystemExit(f"--option {pair!r}: {key} takes a {kind.__name__}") from None
    return out


def option_words(settings: dict) -> str:
    """', key value' for each --option a run was given (empty without)."""
    options = settings.get("options") or {}
    return "".join(f", {k} {v}" for k, v in options.items())


def _network_words(settings: dict) -> str:
    weight = settings.get("network_weight", 0.0)
    if not weight:
        return ""
    return (
        f", networks' term weight {weight} (row lr_only: the same distillation without it, "
        "in the same run)"
    )


def _acc(result: dict, method: str, kind: str) -> float | None:
    r = result["results"].get(method)
    return None if r is None else r["classifiers"][kind]["accuracy"]["mean"]


def _summary(result: dict) -> str:
    shown = [m for m in ("distilled", "lr_only", "class_mean", "random") if m in result["results"]]
    return ", ".join(f"{m} LR {_acc(result, m, 'logreg'):.3f}" for m in shown)


def markdown(res: dict) -> str:
    kinds = list(CLASSIFIER_NAMES)
    m = res["machine"]
    lines = [
        f"# Distillation on {res['settings']['data']}",
        "",
        f"{res['date']}, {m['cpu']} ({m['cores']} cores, {res['settings']['threads']} torch "
        f"threads), load {m['load_average_1_5_15_min']}. Bundle `{res['settings']['bundle']}`, "
        f"match {res['settings']['match']} through {res['settings'].get('generator', 'scdg')}, "
        f"{res['settings']['iterations'] or 'default'} iterations"
        f"{option_words(res['settings'])}{_network_words(res['settings'])}; accuracy on the real "
        f"held-out split, mean ± sd over {res['settings']['seeds']} seeds.",
        "",
        "| task | SPC | method | " + " | ".join(CLASSIFIER_NAMES[k] for k in kinds) + " |",
        "|---|---:|---|" + "---:|" * len(kinds),
    ]
    for run in res["runs"]:
        for method in ROWS:
            r = run["results"].get(method)
            if r is None:
                continue
            cells = []
            for k in kinds:
                s = r["classifiers"][k]["accuracy"]
                cells.append(f"{s['mean']:.3f} ± {s['sd']:.3f}")
            name = f"**{method}**" if method == "distilled" else method
            lines.append(f"| {run['label']} | {run['spc']} | {name} | " + " | ".join(cells) + " |")
    through = res["settings"].get("generator", "scdg")  # files before 'none' was the default
    lines += ["", f"Distillation time (through {through}, the set only, data loaded):", ""]
    lines += [f"- {r['label']} SPC={r['spc']}: {r['distill_seconds']} s" for r in res["runs"]]
    lines += ["", "Goals:", ""]
    for run in res["runs"]:
        lr = _acc(run, "distilled", "logreg")
        peers = [a for m in ("class_mean", "kmeans") if (a := _acc(run, m, "logreg")) is not None]
        if peers:
            bar = max(peers)
            verdict = "met" if lr >= bar + MARGIN else "missed"
            lines.append(
                f"- {run['label']} SPC={run['spc']}: LR {lr:.3f} vs max(class_mean, kmeans) "
                f"{bar:.3f} (goal >= +{MARGIN}): {lr - bar:+.3f}, {verdict}"
            )
        else:
            lines.append(f"- {run['label']} SPC={run['spc']}: no class_mean or kmeans row, n/a")
        gaps = [lr - _acc(run, "distilled", k) for k in ("mlp", "transformer")]
        verdict = "met" if max(gaps) <= 0.03 else "missed"
        lines.append(
            f"- {run['label']} SPC={run['spc']}: LR - MLP {gaps[0]:+.3f}, LR - transformer "
            f"{gaps[1]:+.3f} (goal <= 0.03): {verdict}"
        )
    for label in dict.fromkeys(r["label"] for r in res["runs"]):
        runs = sorted((r for r in res["runs"] if r["label"] == label), key=lambda r: r["spc"])
        accs = [_acc(r, "distilled", "logreg") for r in runs]
        rising = all(b >= a for a, b in zip(accs, accs[1:], strict=False))
        shown = " / ".join(f"{a:.3f}" for a in accs)
        lines.append(
            f"- {label}: LR by SPC {shown} (goal: never falling): {'met' if rising else 'missed'}"
        )
    return "\n".join(lines) + "\n"


def figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(res["runs"]), figsize=(3.2 * len(res["runs"]), 3.8), sharey=True
    )
    for ax, run in zip(list(axes) if len(res["runs"]) > 1 else [axes], res["runs"], strict=True):
        methods = [mth for mth in ROWS if mth in run["results"]]
        values = [_acc(run, mth, "logreg") for mth in methods]
        colors = ["tab:red" if mth == "distilled" else "tab:gray" for mth in methods]
        ax.barh(methods[::-1], values[::-1], color=colors[::-1])
        ax.set_title(f"{run['label']} SPC={run['spc']}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("LR accuracy")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="kang-scdg")
    parser.add_argument("--data", default="kang")
    parser.add_argument("--labels", nargs="+", default=["cell_type", "stim"])
    parser.add_argument("--spc", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--match", default="lr", choices=["lr", "dm", "dc", "krr", "mmd"])
    parser.add_argument("--generator", default="none", choices=["none", "scdg", "decoder"])
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--network-weight", type=float, default=0.0, help="the networks' term (0: off)"
    )
    parser.add_argument(
        "--baselines", nargs="+", choices=ROWS[2:], default=None, help="default: all of them"
    )
    add_option_argument(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefix", default="distillation", help="name of the output files")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    args.options = parse_options(args.option)
    res = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.prefix}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{args.prefix}.md").write_text(markdown(res))
    figure(res, out / f"{args.prefix}.png")
    print(markdown(res))


if __name__ == "__main__":
    main()
