"""``cellsynth sample``: generate synthetic cells from a bundle into an .h5ad file."""

from __future__ import annotations

import argparse

from cellsynth.scheduler import SCHEDULER_NAMES, TIMESTEP_SPACINGS


def add_parser(sub: argparse._SubParsersAction) -> None:
    # Long because: one add_argument per option of `cellsynth sample`, in --help's order.
    p = sub.add_parser("sample", help="generate synthetic cells from a bundle")
    p.add_argument(
        "bundle",
        help="bundle directory or shipped name (kang-dit); a latent-diffusion (SCDG) bundle's "
        "cells are decoded by its autoencoder",
    )
    p.add_argument("--n-cells", type=int, required=True, help="cells of the whole run")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    p.add_argument(
        "--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like (ddim only)"
    )
    p.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: off)"
    )
    p.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="label value to generate, e.g. cell_type=B; repeat for more keys or values",
    )
    p.add_argument(
        "--scheduler",
        default="ddim",
        choices=SCHEDULER_NAMES,
        help="update rule (default: ddim); dpmsolver++ needs only 10-20 steps",
    )
    p.add_argument(
        "--timestep-spacing",
        default="leading",
        choices=TIMESTEP_SPACINGS,
        help="which training timesteps the steps visit (default: leading)",
    )
    p.add_argument(
        "--even",
        action="store_true",
        help="the same number of cells for every label combination --condition allows (default: "
        "their training proportions)",
    )
    p.add_argument(
        "--composition",
        metavar="REAL.h5ad",
        help="match the joint label mix of these real cells (instead of --condition)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--weights", default="ema", choices=["ema", "model"])
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "torch", "onnxruntime", "tensorrt"],
        help="denoiser backend (default: auto, the fastest available; the choice is printed)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        help="onnxruntime: fp32 (default), fp16, int8; tensorrt: fp16 (default); of the "
        "denoiser (a latent bundle's decoder runs in fp32)",
    )
    p.add_argument("--threads", type=int, help="CPU threads of the engine")
    p.add_argument(
        "--shard",
        metavar="k/N",
        help="generate only shard k (0-based) of N, with the values an unsharded run gives them",
    )
    p.add_argument(
        "--counts",
        action="store_true",
        help="also write integer counts to layers['counts'] (library sizes drawn from training); "
        "count models (latent bundles on a negative-binomial autoencoder) always do",
    )
    p.add_argument(
        "--mean",
        action="store_true",
        help="count models: write the decoder's expected expression instead of sampled counts",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run with the same settings"
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        help="cells per chunk kept on disk as they finish (the unit of --resume; default: 8192, "
        "rounded up to whole batches)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run the shards on Ray workers (pip install 'cellsynth[ray]'): on a local Ray "
        "cluster, or the one at ADDRESS ('auto', 'ray://host:10001'); the cells are the same as "
        "one process's. --out: an .h5ad (shards merged) or a directory (shard files and "
        "manifest.json); running the same command again resumes",
    )
    p.add_argument(
        "--workers", type=int, help="with --ray: shards at once (default: the cluster's CPUs)"
    )
    p.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="with --ray: GPUs each worker reserves"
    )
    p.add_argument(
        "--shards", type=int, help="with --ray: number of shards (default: ~100,000 cells each)"
    )
    p.add_argument(
        "--out",
        required=True,
        help="output .h5ad (written to a temporary name, then renamed); with --ray, or a directory",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from cellsynth.generation.options import OutputOptions
    from cellsynth.generation.run import run_generation
    from cellsynth.generation.shards import parse_shard

    ray_only = {"--workers": args.workers, "--shards": args.shards}
    if args.ray is None and (any(v is not None for v in ray_only.values()) or args.gpus_per_worker):
        raise ValueError("--workers, --shards and --gpus-per-worker go with --ray")
    if args.ray is not None:
        return _run_on_ray(args)
    if not args.out.endswith(".h5ad"):
        raise ValueError(f"--out must end in .h5ad, got {args.out!r}")
    output = OutputOptions(
        out=args.out,
        resume=args.resume,
        chunk_size=args.chunk_size,
        overwrite=args.overwrite,
        shard=parse_shard(args.shard) if args.shard else None,
    )
    adata = run_generation(args.bundle, args.n_cells, *_options(args), output)
    info = adata.uns["cellsynth"]
    print(
        f"wrote {adata.n_obs} cells x {adata.n_vars} genes to {args.out} "
        f"({info['backend']['engine']} on {info['backend']['device']}, {info['seconds']:.1f} s)"
    )
    adata.file.close()


def _options(args: argparse.Namespace) -> tuple:
    """(SamplingOptions, RuntimeOptions): which cells and how they are computed (a --ray run
    passes them on to every shard)."""
    from cellsynth.generation.conditions import parse_condition_args
    from cellsynth.generation.options import RuntimeOptions, SamplingOptions

    sampling = SamplingOptions(
        steps=args.steps,
        eta=args.eta,
        seed=args.seed,
        conditions=parse_condition_args(args.condition),
        guidance=args.guidance,
        scheduler=args.scheduler,
        timestep_spacing=args.timestep_spacing,
        batch_size=args.batch_size,
        composition=args.composition,
        split="even" if args.even else "training",
        counts=args.counts,
        mean=args.mean,
    )
    runtime = RuntimeOptions(
        engine=args.engine,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        weights=args.weights,
    )
    return sampling, runtime


def _run_on_ray(args: argparse.Namespace) -> None:
    from cellsynth.generation import distributed

    if args.shard or args.resume:
        raise ValueError(
            "--ray makes the shards itself and resumes by itself (run the same command again); "
            "drop --shard / --resume"
        )
    sampling, runtime = _options(args)
    out = distributed.generate(
        args.bundle,
        args.n_cells,
        args.out,
        address=None if args.ray == "local" else args.ray,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        shards=args.shards,
        overwrite=args.overwrite,
        sampling=sampling,
        runtime=runtime,
        chunk_size=args.chunk_size,
    )
    what = "merged into" if out.suffix == ".h5ad" else "as shard files and manifest.json in"
    print(f"wrote {args.n_cells} cells on Ray, {what} {out}")
