"""``cellsynth train dit|autoencoder|scdg``: train a model and write a bundle."""

from __future__ import annotations

import argparse

from cellsynth.cli import training_module


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
    _add_autoencoder(models)
    _add_scdg(models)


def _add_autoencoder(models: argparse._SubParsersAction) -> None:
    ae = models.add_parser(
        "autoencoder", help="encoder/decoder over expression (scDD's foundation model)"
    )
    ae.add_argument("--data", required=True, help="an .h5ad file or a built-in data set")
    ae.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY",
        help="obs column stratifying the train/test split (the first also labels the triplet "
        "term); repeat for several",
    )
    ae.add_argument(
        "--config", default="paper", help="paper (1024 x 3, latent 128), kang (256 x 2) or tiny"
    )
    ae.add_argument(
        "--no-normalize-latent", action="store_true", help="do not L2-normalise latent codes"
    )
    ae.add_argument(
        "--triplet-weight", type=float, default=0.0, help="weight of the label triplet term"
    )
    ae.add_argument("--epochs", type=int, default=30)
    ae.add_argument("--batch-size", type=int, default=256)
    ae.add_argument("--learning-rate", type=float, default=1e-3)
    ae.add_argument("--n-top-genes", type=int, default=2000)
    ae.add_argument("--gene-selection", default="seurat", choices=["seurat", "variance", "cv"])
    ae.add_argument("--max-cells", type=int, default=None)
    ae.add_argument("--seed", type=int, default=0)
    ae.add_argument("--device", default="auto")
    ae.add_argument("--overwrite", action="store_true")
    ae.add_argument("--out", required=True, help="bundle directory to write")
    ae.set_defaults(run=run_autoencoder)


def _add_scdg(models: argparse._SubParsersAction) -> None:
    scdg = models.add_parser("scdg", help="conditional latent diffusion (SCDG) on an autoencoder")
    scdg.add_argument("--autoencoder", required=True, help="autoencoder bundle directory")
    scdg.add_argument("--data", required=True, help="the counts the autoencoder was trained on")
    scdg.add_argument(
        "--label", action="append", default=[], metavar="KEY", help="condition; repeat for several"
    )
    scdg.add_argument("--config", default="small", help="small, kang or tiny")
    scdg.add_argument("--epochs", type=int, default=100)
    scdg.add_argument("--batch-size", type=int, default=256)
    scdg.add_argument("--learning-rate", type=float, default=1e-3)
    scdg.add_argument("--seed", type=int, default=0)
    scdg.add_argument("--device", default="auto")
    scdg.add_argument("--overwrite", action="store_true")
    scdg.add_argument("--out", required=True, help="bundle directory to write")
    scdg.set_defaults(run=run_scdg)


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")


def run_autoencoder(args: argparse.Namespace) -> None:
    _positive(args, "epochs", "batch_size", "n_top_genes")
    path = training_module("train_autoencoder").train_autoencoder_bundle(
        args.data,
        args.out,
        label_keys=args.label,
        config=args.config,
        normalize_latent=not args.no_normalize_latent,
        triplet_weight=args.triplet_weight,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        n_top_genes=args.n_top_genes,
        gene_selection=args.gene_selection,
        max_cells=args.max_cells,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"wrote autoencoder bundle {path}")


def run_scdg(args: argparse.Namespace) -> None:
    _positive(args, "epochs", "batch_size")
    path = training_module("train_scdg").train_scdg_bundle(
        args.autoencoder,
        args.data,
        args.label,
        args.out,
        config=args.config,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"wrote SCDG bundle {path}")


def run_dit(args: argparse.Namespace) -> None:
    train_dit_bundle = training_module("train_dit").train_dit_bundle
    _positive(args, "epochs", "batch_size", "n_top_genes")
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
