"""``cellsynth sample``: generate synthetic cells from a bundle into an .h5ad file."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate synthetic cells from a bundle")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--n-cells", type=int, required=True)
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
        choices=["ddim", "ddpm", "dpmsolver++"],
        help="update rule (default: ddim); dpmsolver++ needs only 10-20 steps",
    )
    p.add_argument(
        "--timestep-spacing",
        default="leading",
        choices=["leading", "trailing", "linspace", "quadratic"],
        help="which training timesteps the steps visit (default: leading)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--weights", default="ema", choices=["ema", "model"])
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--out", required=True, help="output .h5ad (written to a temporary name, then renamed)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from cellsynth.conditions import parse_condition_args
    from cellsynth.files import write_h5ad
    from cellsynth.generate import generate

    if not args.out.endswith(".h5ad"):
        raise ValueError(f"--out must end in .h5ad, got {args.out!r}")
    adata = generate(
        args.bundle,
        n_cells=args.n_cells,
        steps=args.steps,
        eta=args.eta,
        seed=args.seed,
        conditions=parse_condition_args(args.condition),
        guidance=args.guidance,
        scheduler=args.scheduler,
        timestep_spacing=args.timestep_spacing,
        batch_size=args.batch_size,
        weights=args.weights,
        device=args.device,
    )
    path = write_h5ad(adata, args.out)
    print(f"wrote {adata.n_obs} cells x {adata.n_vars} genes to {path}")
