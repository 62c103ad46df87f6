"""Learning saturation of cellsynth's strategies: accuracy against budget, per task.

For each task (a bundle, its data and a label): the learning-saturation study of
:func:`cellsynth.training.saturation.saturation_curve` (random cells, re-weighting, geometric
sketching, k-means and distillation at SPC 1, 2, 5, 10, 20, 50 and 1 %, 10 %, 25 %, 50 %, 100 % of
the training set; logistic regression, MLP and transformer; held-out real cells), the same code
``cellsynth distill-eval --curve`` runs. Writes, per task, its own curve.json / curve.md /
curve.png in saturation/<task>/, then saturation.json and saturation.md (every task's saturation
points and the diversity at SPC 10) from every task in saturation/, so tasks can run as separate
processes (side by side, one thread each) and be summarised together; without --task it only
rebuilds the summary.

    python benchmarks/saturation.py --threads 2 --seeds 3 --out benchmarks/results \\
        --task kang-scdg:kang:cell_type --task kang-scdg:kang:stim \\
        --task runs/saturation/pbmc3k-latent:pbmc3k:celltype
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import torch
from _machine import machine

from cellsynth.errors import DataError
from cellsynth.files import write_json, write_text
from cellsynth.training.distill_eval import CLASSIFIER_NAMES
from cellsynth.training.saturation import STRATEGIES, merge_curves, saturation_curve
from cellsynth.training.saturation_report import remeasured_runs, write_report


def parse_task(text: str) -> tuple[str, str, str]:
    """BUNDLE:DATA:LABEL."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"a task is BUNDLE:DATA:LABEL, got {text!r}")
    return parts[0], parts[1], parts[2]


def run(args: argparse.Namespace) -> None:
    """Run every --task; each writes its own report in saturation/<data>_<label>/."""
    torch.set_num_threads(args.threads)
    for bundle, data, label in args.task or []:
        name = f"{data}_{label}"
        result = saturation_curve(
            bundle, data, label, seeds=args.seeds, classifiers=args.classifiers,
            strategies=args.strategies,
            distill_settings={"iterations": args.iterations} if args.iterations else {},
            progress=not args.quiet,
        )  # fmt: skip
        result.update(
            name=name, date=dt.date.today().isoformat(), machine=machine(), threads=args.threads
        )
        print(f"{name}: {result['seconds']:.0f} s")
        folder = Path(args.out) / "saturation" / name
        if set(args.strategies) != set(STRATEGIES) and (folder / "curve.json").exists():
            # Only some strategies re-measured: they replace their curves in the task's report.
            try:
                result = merge_curves(json.loads((folder / "curve.json").read_text()), result)
            except DataError as why:  # keep the run: it may have taken an hour
                folder = folder.parent / f"{name}.{'-'.join(args.strategies)}.{result['date']}"
                print(f"{name}: not merged ({why}); written on its own to {folder}")
            else:
                print(f"{name}: {', '.join(args.strategies)} replaced in {folder / 'curve.json'}")
        write_report(result, folder)


def collect(out: Path) -> dict:
    """Every task's curve.json in out/saturation/, by name."""
    tasks = []
    for path in sorted((out / "saturation").glob("*/curve.json")):
        result = json.loads(path.read_text())
        result.setdefault("name", path.parent.name)
        tasks.append(result)
    return {"tasks": tasks}


def remeasured(t: dict) -> list[str]:
    """A line naming the strategies measured by another run than the header's, if any."""
    later = remeasured_runs(t)
    if not later:
        return []
    said = "; ".join(
        f"{s} re-measured on {run.get('date')} ({run.get('seconds', 0) / 60:.0f} min"
        + (f", {run['machine'].get('cpu')}" if run.get("machine") else "")
        + (f", torch threads: {run['threads']}" if run.get("threads") else "")
        + f", distillation settings {run.get('distill_settings') or 'the defaults'})"
        for s, run in later.items()
    )
    return [said + ".", ""]


def markdown(res: dict) -> str:
    lines = [
        "# Learning saturation",
        "",
        "Mean accuracy on each bundle's held-out real cells. Saturation point: the smallest "
        "budget reaching 95% of the best mean accuracy of that strategy's curve; per task, the "
        "full tables and curve.png are in saturation/<task>/.",
        "",
    ]
    for t in res["tasks"]:
        kinds = t["classifiers"]
        m = t.get("machine", {})
        lines += [
            f"## {t['name']} ({t['task']['n_train']} training cells, "
            f"{len(t['task']['classes'])} classes)",
            "",
            f"{t.get('date', '?')}, {m.get('cpu', '?')} ({m.get('cores', '?')} cores, "
            f"torch threads: {t.get('threads', '?')}, load {m.get('load_average_1_5_15_min')}); "
            f"{len(t['seeds'])} seeds; {t['seconds'] / 60:.0f} min.",
            "",
            *remeasured(t),
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
    parser.add_argument(
        "--task",
        type=parse_task,
        action="append",
        help="BUNDLE:DATA:LABEL (repeat; none: only rebuild the summary)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--classifiers", nargs="+", default=list(CLASSIFIER_NAMES))
    parser.add_argument(
        "--strategies",
        nargs="+",
        choices=STRATEGIES,
        default=list(STRATEGIES),
        help="re-measure only these; they replace their curves in an existing report",
    )
    parser.add_argument("--iterations", type=int, default=None, help="distillation steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    run(args)
    out = Path(args.out)
    res = collect(out)
    keep = ("name", "date", "machine", "threads", "seeds", "seconds", "task", "saturation")
    keep += ("measured",)
    write_json(
        out / "saturation.json", {"tasks": [{k: t.get(k) for k in keep} for t in res["tasks"]]}
    )
    write_text(out / "saturation.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
