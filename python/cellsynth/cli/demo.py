"""``cellsynth demo``: generate cells with the default bundle and compare them with real ones."""

from __future__ import annotations

import argparse

from cellsynth.scheduler import SCHEDULER_NAMES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="generate every Kang cell type in both conditions with the shipped model and "
        "compare with real held-out cells",
    )
    p.add_argument("--out", default="cellsynth-demo", help="output directory")
    p.add_argument(
        "--overwrite", action="store_true", help="write into --out even if it is not empty"
    )
    p.add_argument("--bundle", default="kang-dit", help="bundle path or shipped name")
    p.add_argument(
        "--n-cells",
        type=int,
        default=4000,
        help="synthetic cells, with the label mix of the real held-out cells (default: 4000)",
    )
    p.add_argument(
        "--cells-per-group",
        type=int,
        help="a balanced set instead: this many cells of every label combination",
    )
    p.add_argument("--scheduler", default="dpmsolver++", choices=SCHEDULER_NAMES)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"])
    p.add_argument("--threads", type=int, help="CPU threads of the engine and the C++ loops")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from cellsynth.files import check_output
    from cellsynth.generation.demo import run_demo

    check_output(args.out, args.overwrite, directory=True)
    result = run_demo(
        out=args.out,
        bundle=args.bundle,
        n_cells=args.n_cells,
        cells_per_group=args.cells_per_group,
        scheduler=args.scheduler,
        steps=args.steps,
        seed=args.seed,
        engine=args.engine,
        threads=args.threads,
    )
    s = result["summary"]
    keys = [k[: -len("_agreement")] for k in s if k.endswith("_agreement")]
    print(
        f"generated {int(s['n_synthetic'])} cells in {s['sampling_seconds']} s "
        f"({s['cells_per_second']} cells/s, {s['engine']}, {s['scheduler']} {s['steps']} steps)"
    )
    print(f"compared with {int(s['n_real'])} real held-out cells ({s['label_mix']}):")
    print(
        f"  mean expression  real {s['mean_expression_real']:.3f}  "
        f"synthetic {s['mean_expression_synthetic']:.3f}"
    )
    print(
        f"  zero fraction    real {s['zero_fraction_real']:.3f}  "
        f"synthetic {s['zero_fraction_synthetic']:.3f}"
    )
    print(
        f"  r(gene means) {s['r_gene_means']:.3f}   "
        f"r(gene zero fractions) {s['r_gene_zero_fractions']:.3f}"
    )
    for k in keys:
        print(
            f"  {k} agreement (nearest real centroid) {s[k + '_agreement']:.3f} "
            f"(real cells: {s[k + '_agreement_real']:.3f})"
        )
    print(f"cells:    {result['h5ad']}")
    print(f"figure:   {result['png']}")
    print(f"summary:  {result['fidelity']}")
