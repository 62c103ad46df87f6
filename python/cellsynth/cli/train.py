"""``cellsynth train dit``: train a conditional Diffusion Transformer and write a bundle."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model and write a bundle")
    models = train.add_subparsers(dest="model", required=True, parser_class=type(train))
    dit = models.add_parser("dit", help="class-conditional scRDiT Diffusion Transformer")
    dit.add_argument(
        "--data", required=True, help="an .h5ad file or a built-in data set (kang, pbmc3k, wu2020)"
    )
    dit.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY",
        help="obs column to condition on; repeat for several (none: unconditional)",
    )
    dit.add_argument(
        "--config", default="small", help="named model size: small or paper (default: small)"
    )
    dit.add_argument("--epochs", type=int, default=10)
    dit.add_argument(
        "--max-cells", type=int, default=None, help="stratified subsample of this many cells"
    )
    dit.add_argument("--seed", type=int, default=0)
    dit.add_argument("--batch-size", type=int, default=128)
    dit.add_argument("--learning-rate", type=float, default=3e-4)
    dit.add_argument(
        "--prediction-type", default="epsilon", choices=["epsilon", "sample", "v_prediction"]
    )
    dit.add_argument("--n-top-genes", type=int, default=2000)
    dit.add_argument("--gene-selection", default="seurat", choices=["seurat", "variance", "cv"])
    dit.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    dit.add_argument(
        "--resume", action="store_true", help="continue from OUT.checkpoint after an interruption"
    )
    dit.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    dit.add_argument("--out", required=True, help="bundle directory to write")
    dit.set_defaults(run=run_dit)


def run_dit(args: argparse.Namespace) -> None:
    try:
        from cellsynth.training.train_dit import train_dit_bundle
    except ImportError as exc:
        from cellsynth.errors import MissingDependencyError

        raise MissingDependencyError(
            f"training needs PyTorch ({exc}): "
            "pip install torch==2.13.0 && pip install 'cellsynth[train]'"
        ) from exc
    for name in ("epochs", "batch_size", "n_top_genes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    path = train_dit_bundle(
        args.data,
        args.label,
        args.out,
        config=args.config,
        epochs=args.epochs,
        max_cells=args.max_cells,
        seed=args.seed,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        prediction_type=args.prediction_type,
        n_top_genes=args.n_top_genes,
        gene_selection=args.gene_selection,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    print(f"wrote bundle {path}")
