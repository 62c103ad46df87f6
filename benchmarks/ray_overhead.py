"""What Ray costs: one run on Ray's local workers against the same run in one process, same cores.

Both generate the same ``--cells`` of a bundle (default kang-dit, DPM-Solver++ 10 steps, batch 512,
seed 0) and write them to an .h5ad: one process with ``--threads`` threads, and
``cellsynth.generation.distributed.generate`` on a local Ray cluster of ``--threads`` CPUs
with ``--workers`` workers of ``threads / workers`` threads each (shards merged into one file).
It checks that the two files hold the same cells (bit for bit) and reports the wall times, the
overhead of Ray and the cost per million cells. Writes ray_overhead.json and ray_overhead.md.

    python benchmarks/ray_overhead.py --cells 100000 --workers 2 --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

import anndata as ad
import ray
from _machine import machine

import cellsynth
from cellsynth.generation import distributed

GOAL_OVERHEAD = 0.10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="kang-dit")
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--scheduler", default="dpmsolver++")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    options = dict(scheduler=args.scheduler, steps=args.steps, batch_size=args.batch_size, seed=0,
                   engine="onnxruntime")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cellsynth-ray-") as tmp:
        one_file, ray_file = Path(tmp) / "one.h5ad", Path(tmp) / "ray.h5ad"
        start = time.perf_counter()
        cellsynth.generate(args.bundle, n_cells=args.cells, threads=args.threads, out=one_file,
                           progress=False, **options).file.close()  # fmt: skip
        one_s = time.perf_counter() - start
        ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
        start_up = time.perf_counter()
        ray.get(ray.remote(lambda: None).remote())  # a worker process exists
        start_up = time.perf_counter() - start_up
        start = time.perf_counter()
        distributed.generate(args.bundle, args.cells, ray_file, workers=args.workers,
                             progress=False, **options)  # fmt: skip
        ray_s = time.perf_counter() - start
        ray.shutdown()
        a, b = ad.read_h5ad(one_file), ad.read_h5ad(ray_file)
        same = a.shape == b.shape and (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
        shards = b.uns["cellsynth"]["distributed"]["shards"]
    overhead = ray_s / one_s - 1
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "bundle": args.bundle,
        "cells": args.cells,
        "settings": {**options, "threads": args.threads, "workers": args.workers, "shards": shards},
        "one_process_s": round(one_s, 2),
        "ray_s": round(ray_s, 2),
        "ray_cluster_start_s": round(start_up, 2),
        "overhead": round(overhead, 4),
        "identical_cells": bool(same),
        "seconds_per_million_cells": {
            "one_process": round(one_s / args.cells * 1e6, 1),
            "ray": round(ray_s / args.cells * 1e6, 1),
        },
        "goal": f"overhead < {GOAL_OVERHEAD:.0%}: "
        + ("met" if overhead < GOAL_OVERHEAD else "NOT met"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    md = (
        f"Measured {result['date']} on {result['machine']['cpu']} ({result['machine']['cores']} "
        f"cores), {args.bundle}, {args.cells} cells, {args.scheduler} {args.steps} steps, batch "
        f"{args.batch_size}, onnxruntime fp32.\n\n"
        "| run | seconds | s per million cells |\n|---|---:|---:|\n"
        f"| one process, {args.threads} threads | {one_s:.1f} | "
        f"{result['seconds_per_million_cells']['one_process']:.0f} |\n"
        f"| Ray, {args.workers} workers x {args.threads // args.workers} threads, {shards} shards "
        f"(merged) | {ray_s:.1f} | {result['seconds_per_million_cells']['ray']:.0f} |\n\n"
        f"Ray overhead {100 * overhead:+.1f}% ({result['goal']}); identical cells: {same}; "
        f"starting the local cluster took {start_up:.1f} s more (not counted).\n"
    )
    (out / "ray_overhead.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
