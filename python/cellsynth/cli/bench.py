"""``cellsynth bench``: latency and throughput of generation on this machine (no torch needed)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cellsynth.bench.plan import DEFAULT_BATCH_SIZES, DEFAULT_SCHEDULERS
    from cellsynth.bench.run import DEFAULT_BUDGET_S, DEFAULT_REPEATS

    p = sub.add_parser(
        "bench",
        help="time generation on this machine per engine, precision, scheduler and batch size",
        description="For every combination of the options: open the engine, warm it up, time "
        "whole batches from noise to cells (p50/p95/p99 over --repeats), split each step into "
        "model and scheduler time, and report cells/s, the time to the first cell and peak "
        "memory. Combinations that cannot run here are listed with the reason. With "
        "--fidelity the cells of each scheduler setting are scored against real cells. Writes "
        "bench.json, bench.md and PNGs to --out and prints the table.",
    )
    p.add_argument("bundle", help="bundle name (kang-dit, kang-scdg) or path")
    p.add_argument(
        "--engine",
        default="onnxruntime,torch,tensorrt",
        help="comma-separated engines (default: onnxruntime,torch,tensorrt)",
    )
    p.add_argument(
        "--scheduler",
        nargs="+",
        default=list(DEFAULT_SCHEDULERS),
        metavar="NAME:STEPS",
        help="scheduler specs NAME:STEPS[,STEPS...], NAME one of ddim, ddpm, dpmsolver++ "
        f"(default: {' '.join(DEFAULT_SCHEDULERS)})",
    )
    p.add_argument(
        "--batch-size",
        default=",".join(map(str, DEFAULT_BATCH_SIZES)),
        help="comma-separated batch sizes (default: 1,512)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        help="comma-separated precisions: fp32, fp16, int8 (onnxruntime, from the bundle's "
        "exports), fp16, bf16 (tensorrt) (default: fp32)",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help=f"timed runs per configuration (default: {DEFAULT_REPEATS})",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help="seconds per configuration; longer ones are timed over their first steps and "
        f"extrapolated, which the table says (default: {DEFAULT_BUDGET_S:g})",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument(
        "--fidelity",
        metavar="REAL",
        help="real cells (.h5ad or a built-in data set) to score each scheduler setting against",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of labels and noise (default: 0)")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument(
        "--overwrite", action="store_true", help="write into --out even if it is not empty"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from cellsynth.bench.plan import ENGINES, PRECISIONS, parse_ints, parse_list
    from cellsynth.bench.report import table
    from cellsynth.bench.run import bench, write_outputs
    from cellsynth.errors import DataError
    from cellsynth.files import check_output

    engines = parse_list(args.engine, "engine", ENGINES)
    precisions = parse_list(args.precision, "precision", PRECISIONS)
    batch_sizes = parse_ints(args.batch_size, "batch size")
    if args.threads is not None and args.threads < 1:
        raise DataError(f"--threads must be >= 1, got {args.threads}")
    check_output(args.out, args.overwrite, directory=True)
    result = bench(
        args.bundle,
        engines=engines,
        schedulers=args.scheduler,
        batch_sizes=batch_sizes,
        precisions=precisions,
        threads=args.threads,
        repeats=args.repeats,
        budget_s=args.budget_s,
        device=args.device,
        fidelity=args.fidelity,
        seed=args.seed,
    )
    files = write_outputs(result, args.out)
    print(table(result))
    print(f"took {result['seconds']} s; wrote " + ", ".join(str(f) for f in files.values()))
    failed = [row for row in result["rows"] if "failed" in row]
    if failed:
        from cellsynth.errors import CellsynthError

        raise CellsynthError(
            f"{len(failed)} configuration(s) failed (first: {failed[0]['engine']} "
            f"{failed[0]['precision']}: {failed[0]['failed']}); the others are in {args.out}"
        )
