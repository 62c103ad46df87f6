"""``cellsynth distill``: condense labelled data into a few synthetic cells per class (scDD)."""

from __future__ import annotations

import argparse

from cellsynth.torch_entry import torch_module


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a labelled data set into SPC synthetic cells per class",
        description="Dataset distillation: synthetic cells that train classifiers almost as "
        "well as the whole data set (bilevel logistic regression by default; scDD's latent-code "
        "distribution matching with --match dm --generator scdg).",
    )
    p.add_argument(
        "bundle", help="SCDG or autoencoder bundle directory, or shipped name (kang-scdg)"
    )
    p.add_argument("--data", required=True, help="the counts the bundle was trained on")
    p.add_argument("--label", required=True, help="obs column defining the classes")
    p.add_argument("--spc", type=int, required=True, help="synthetic cells per class")
    p.add_argument(
        "--match",
        default="lr",
        choices=["lr", "dm", "dc", "krr", "mmd"],
        help="lr: logistic regression fitted on the synthetic cells, scored on the real ones "
        "and differentiated through the fit (default); dm: distribution matching; dc: gradient "
        "matching; krr: kernel ridge regression in place of logistic regression; mmd: each "
        "class's synthetic and real features matched by a multi-kernel MMD",
    )
    p.add_argument(
        "--generator",
        default="none",
        choices=["none", "scdg", "decoder"],
        help="none: optimise expression directly (default); scdg: codes through SCDG and the "
        "decoder (scDD); decoder: codes through the decoder only",
    )
    p.add_argument(
        "--init",
        default="kmeans",
        choices=["kmeans", "random"],
        help="start from SPC k-means centroids per class, each matched to its own cluster "
        "(default), or from SPC random cells matched to the class mean (the scDD paper's)",
    )
    p.add_argument("--iterations", type=int, default=None, help="optimiser steps (default 200)")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--t-star", type=int, default=None, help="SCDG single-step timestep")
    _add_objective_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(run=run)


def _add_objective_options(p: argparse.ArgumentParser) -> None:
    """The settings of the objectives: each names the --match (or term) it belongs to."""
    p.add_argument(
        "--ridge", type=float, default=None, help="--match krr: relative ridge (default 0.001)"
    )
    p.add_argument(
        "--anchor",
        type=float,
        default=None,
        help="--match lr: weight of each cell's squared distance to its start (default 0.01; "
        "0 lets cells drift where only logistic regression gains)",
    )
    p.add_argument(
        "--network-weight",
        type=float,
        default=None,
        help="weight of a term that trains fresh networks (--networks) on the synthetic cells "
        "for a few differentiable AdamW steps and scores them on real cells (default 0: off; "
        "0.3 measured; several times slower)",
    )
    p.add_argument(
        "--networks",
        default=None,
        help="networks of that term, comma-separated: mlp, transformer (default both)",
    )
    p.add_argument(
        "--features",
        default=None,
        choices=["encoder", "random"],
        help="--match dm / mmd: features of the frozen encoder (default) or of a random ReLU "
        "network drawn afresh each iteration",
    )
    p.add_argument(
        "--dc-steps",
        type=int,
        default=None,
        help="--match dc: match gradients at the fresh head and after each of N - 1 steps of "
        "it on the synthetic cells (DC's inner loop; default 1)",
    )
    p.add_argument(
        "--covariance",
        type=float,
        default=None,
        help="--match dm: weight of matching each class's feature covariance too (default 0)",
    )
    p.add_argument(
        "--separation",
        type=float,
        default=None,
        help="weight of a repulsion between synthetic cells of different classes (default 0)",
    )


def run(args: argparse.Namespace) -> None:
    from cellsynth.errors import DataError

    if not args.out.endswith(".h5ad"):
        raise DataError(f"--out must be an .h5ad file, got {args.out}")
    from cellsynth.files import check_output

    if args.networks is not None and not args.network_weight:
        raise DataError("--networks needs --network-weight above 0 (the networks' term is off)")
    check_output(args.out, args.overwrite)
    distill = torch_module("training.distill", "distillation").distill
    import torch

    from cellsynth.files import write_h5ad

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    given = {
        "learning_rate": args.learning_rate,
        "t_star": args.t_star,
        "ridge": args.ridge,
        "anchor": args.anchor,
        "network_weight": args.network_weight,
        "networks": args.networks,
        "features": args.features,
        "dc_steps": args.dc_steps,
        "covariance": args.covariance,
        "separation": args.separation,
    }
    options = {k: v for k, v in given.items() if v is not None}
    result = distill(
        args.bundle,
        args.data,
        args.label,
        args.spc,
        match=args.match,
        generator=args.generator,
        init=args.init,
        iterations=args.iterations,
        seed=args.seed,
        **options,
    )
    write_h5ad(result, args.out, overwrite=args.overwrite)
    info = result.uns["cellsynth"]
    print(
        f"wrote {result.n_obs} synthetic cells ({args.spc} per class of {args.label!r}) to "
        f"{args.out}; loss {info['initial_loss']:.4g} -> {info['final_loss']:.4g} "
        f"in {info['seconds']:.0f} s"
    )
