"""Learning saturation of cellsynth's strategies: accuracy against budget, per task.

For each task (a bundle, its data and a label): the learning-saturation study of
:func:`cellsynth.training.saturation.saturation_curve` (random cells, re-weighting, geometric
sketching, k-means and distillation at SPC 1, 2, 5, 10, 20, 50 and 1 %, 10 %, 25 %, 50 %, 100 % of
the training set; logistic regression, MLP and transformer; held-out real cells), the same code
``cellsynth distill-eval --curve`` runs. Writes saturation.json, saturation.md (every task's
saturation points and the diversity at SPC 10) and, per task, its own curve.json / curve.md /
curve.png in saturation/<task>/.

    python benchmarks/saturation.py --threads 2 --seeds 3 --out benchmarks/results \\
        --task kang-scdg:kang:cell_type --task kang-scdg:kang:stim \\
        --task runs/saturation/pbmc3k-latent:pbmc3k:celltype
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import torch
from _machine import machine

from cellsynth.files import write_json, write_text
from cellsynth.training.distill_eval import CLASSIFIER_NAMES
from cellsynth.training.saturation import saturation_curve
from cellsynth.training.saturation_report import write_report


def parse_task(text: str) -> tuple[str, str, str]:
    """BUNDLE:DATA:LABEL."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"a task is BUNDLE:DATA:LABEL, got {text!r}")
    return parts[0], parts[1], parts[2]


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    tasks = []
    for bundle, data, label in args.task:
        name = f"{data}_{label}"
        result = saturation_curve(
            bundle, data, label, seeds=args.seeds, classifiers=args.classifiers,
            distill_settings={"iterations": args.iterations} if args.iterations else {},
            progress=not args.quiet,
        )  # fmt: skip
        write_report(result, Path(args.out) / "saturation" / name)
        tasks.append({"name": name, **result})
        print(f"{name}: {result['seconds']:.0f} s")
    return {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "quiet")},
        "tasks": tasks,
    }


def markdown(res: dict) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        "# Learning saturation",
        "",
        f"{res['date']}, {m['cpu']} ({m['cores']} cores, {s['threads']} torch threads), load "
        f"{m['load_average_1_5_15_min']}. Mean accuracy on each bundle's held-out real cells over "
        f"{s['seeds']} seeds. Saturation point: the smallest budget reaching 95% of the best "
        "mean accuracy of that strategy's curve; per task, the full tables and curve.png are in "
        "saturation/<task>/.",
        "",
    ]
    for t in res["tasks"]:
        kinds = t["classifiers"]
        lines += [
            f"## {t['name']} ({t['task']['n_train']} training cells, "
            f"{len(t['task']['classes'])} classes)",
            "",
            "| strategy | "
            + " | ".join(f"{CLASSIFIER_NAMES[k]} saturation (best)" for k in kinds)
            + " | LR at SPC 1 / 10 / 50 | Vendi at SPC 10 |",
            "|---|" + "---|" * len(kinds) + "---|---:|",
        ]
        for strategy in t["strategies"]:
            sat = t["saturation"][strategy]
            cells = [
                "n/a" if sat[k] is None else f"{sat[k]['budget']} ({sat[k]['best_accuracy']:.3f})"
                for k in kinds
            ]
            points = t["curves"][strategy]
            at = [points.get(f"SPC {n}", {}) for n in (1, 10, 50)]
            lr = " / ".join(
                f"{p['accuracy']['logreg']['mean']:.3f}" if p.get("status") == "ok" else "-"
                for p in at
            )
            vendi = at[1]["diversity"]["vendi"]["mean"] if at[1].get("status") == "ok" else None
            shown = "-" if vendi is None else f"{vendi:.1f}"
            lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {lr} | {shown} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", type=parse_task, action="append", required=True,
                        help="BUNDLE:DATA:LABEL (repeat)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--classifiers", nargs="+", default=list(CLASSIFIER_NAMES))
    parser.add_argument("--iterations", type=int, default=None, help="distillation steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    res = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "saturation.json", res)
    write_text(out / "saturation.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
