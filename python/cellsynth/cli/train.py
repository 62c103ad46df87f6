"""``cellsynth train dit|autoencoder|scdg``: train a model and write a bundle."""

from __future__ import annotations

import argparse

from cellsynth.scheduler import PREDICTION_TYPES
from cellsynth.torch_entry import torch_module


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
        "--config",
        default="auto",
        help="model size: auto (default: sized to the genes and the device), kang, small or "
        "paper (the scRDiT paper's; its memory grows with the batch: ~6.6 GB to train at "
        "--batch-size 128, ~3 GB at 32)",
    )
    _add_length(dit)
    dit.add_argument(
        "--max-cells", type=int, default=None, help="stratified subsample of this many cells"
    )
    dit.add_argument("--seed", type=int, default=0)
    dit.add_argument("--batch-size", type=int, default=128)
    dit.add_argument("--learning-rate", type=float, default=2e-3)
    dit.add_argument(
        "--prediction-type",
        default="sample",
        choices=PREDICTION_TYPES,
        help="what the network predicts (default: sample, i.e. x0)",
    )
    dit.add_argument(
        "--zero-value",
        type=float,
        default=-1.0,
        help="silent genes are set to this negative value for training (default -1; the "
        "scRDiT paper's -10 needs a larger model and longer training)",
    )
    dit.add_argument(
        "--validate-every",
        type=int,
        default=500,
        help="sample and score cells against validation cells every this many steps (default "
        "500; 0: only at the end)",
    )
    dit.add_argument(
        "--no-validate",
        action="store_true",
        help="no validation while training (the last weights are kept)",
    )
    dit.add_argument(
        "--gene-order",
        default="cluster",
        choices=["input", "cluster"],
        help="cluster: each patch of genes holds genes that vary together; input: patches follow "
        "the genes' order (default: cluster)",
    )
    dit.add_argument(
        "--depth-bins",
        type=int,
        default=8,
        help="condition the model on each cell's library-size bin too (this many quantile bins; "
        "generation draws each cell's depth from its labels' training cells); 0: off "
        "(default: 8)",
    )
    dit.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    dit.add_argument("--n-top-genes", type=int, default=2000)
    dit.add_argument("--gene-selection", default="seurat", choices=["seurat", "variance", "cv"])
    dit.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    _add_split_and_qc(dit)
    dit.add_argument(
        "--resume",
        action="store_true",
        help="continue after an interruption from the checkpoint kept in OUT.checkpoint/",
    )
    dit.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    dit.add_argument("--out", required=True, help="bundle directory to write")
    dit.set_defaults(run=run_dit)
    _add_autoencoder(models)
    _add_scdg(models)


def _add_length(parser: argparse.ArgumentParser) -> None:
    """How long to train: a time budget (default), a number of steps or epochs."""
    parser.add_argument(
        "--time-budget",
        default="15m",
        help="stop after this long, e.g. 900s, 15m, 1.5h (default 15m; 'none' for no limit)",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument(
        "--epochs", type=int, default=None, help="stop after this many passes over the data"
    )


def parse_duration(text: str) -> float | None:
    """Seconds of '900', '900s', '15m', '1.5h'; None for 'none'."""
    value = text.strip().lower()
    if value == "none":
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    scale = units.get(value[-1], None)
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError as err:
        raise ValueError(
            f"--time-budget expects a duration such as 900s, 15m or 1.5h, got {text!r}"
        ) from err
    if not seconds > 0:
        raise ValueError(f"--time-budget must be positive, got {text!r}")
    return seconds


def _length(args: argparse.Namespace) -> dict[str, object]:
    for name in ("epochs", "max_steps"):
        if getattr(args, name) is not None:
            _positive(args, name)
    budget = parse_duration(args.time_budget)
    if budget is None and args.epochs is None and args.max_steps is None:
        raise ValueError("with --time-budget none, give --epochs or --max-steps")
    return {"epochs": args.epochs, "max_steps": args.max_steps, "time_budget_s": budget}


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        _positive(args, "threads")
        import torch

        torch.set_num_threads(args.threads)


def _add_split_and_qc(parser: argparse.ArgumentParser) -> None:
    """--test-fraction and the QC thresholds: the user's to set, and reported after training."""
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of cells held out (stratified on the labels), never trained on (default 0.2)",
    )
    parser.add_argument(
        "--min-genes-per-cell",
        type=int,
        default=200,
        help="QC: drop cells with fewer detected genes (default 200)",
    )
    parser.add_argument(
        "--min-cells-per-gene",
        type=int,
        default=3,
        help="QC: drop genes detected in fewer cells (default 3)",
    )


def _prepare_options(args: argparse.Namespace) -> dict[str, object]:
    if not 0.0 <= args.test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    if args.min_genes_per_cell < 0 or args.min_cells_per_gene < 0:
        raise ValueError("--min-genes-per-cell and --min-cells-per-gene must be >= 0")
    return {
        "test_fraction": args.test_fraction,
        "min_genes_per_cell": args.min_genes_per_cell,
        "min_cells_per_gene": args.min_cells_per_gene,
    }


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
        "--likelihood",
        default="nb",
        choices=["nb", "zinb", "mse"],
        help="nb (default) / zinb: the decoder models the counts (negative binomial), for "
        "generation; mse: scDD's encoder/decoder over log-normalised expression",
    )
    ae.add_argument(
        "--config",
        default=None,
        help="nb/zinb: default (256 x 2, latent 32), large (1024, 512; latent 64) or tiny; "
        "mse: paper (1024 x 3, latent 128), kang (256 x 2) or tiny",
    )
    ae.add_argument("--latent-dim", type=int, default=None, help="override the latent width")
    ae.add_argument(
        "--kl-weight",
        type=float,
        default=1e-3,
        help="nb/zinb: weight of the KL term of the variational encoder (0: deterministic)",
    )
    ae.add_argument(
        "--no-normalize-latent", action="store_true", help="do not L2-normalise latent codes"
    )
    ae.add_argument(
        "--triplet-weight", type=float, default=0.0, help="weight of the label triplet term"
    )
    ae.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: 150 (nb/zinb; early stopping), 30 (mse); nb/zinb always take at least "
        "2,000 steps (more epochs on a small data set; it says so)",
    )
    ae.add_argument(
        "--batch-size", type=int, default=None, help="default: 128 (nb/zinb), 256 (mse)"
    )
    ae.add_argument("--learning-rate", type=float, default=1e-3)
    ae.add_argument("--n-top-genes", type=int, default=2000)
    ae.add_argument("--gene-selection", default="seurat", choices=["seurat", "variance", "cv"])
    ae.add_argument("--max-cells", type=int, default=None)
    _add_split_and_qc(ae)
    ae.add_argument("--seed", type=int, default=0)
    ae.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
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
    scdg.add_argument(
        "--config",
        default="default",
        help="default (hidden 192, 2 blocks), small (512, 4: slower, no better on Kang), tiny",
    )
    scdg.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: 100 epochs, more on a small data set so that a default run takes at "
        "least 3,000 steps; a given --epochs is used as given",
    )
    scdg.add_argument("--batch-size", type=int, default=256)
    scdg.add_argument("--learning-rate", type=float, default=1e-3)
    scdg.add_argument("--seed", type=int, default=0)
    scdg.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    scdg.add_argument("--device", default="auto")
    scdg.add_argument("--overwrite", action="store_true")
    scdg.add_argument("--out", required=True, help="bundle directory to write")
    scdg.set_defaults(run=run_scdg)


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")


def run_autoencoder(args: argparse.Namespace) -> None:
    _positive(args, "n_top_genes")
    for name in ("epochs", "batch_size", "latent_dim"):
        if getattr(args, name) is not None:
            _positive(args, name)
    if not args.kl_weight >= 0:
        raise ValueError(f"--kl-weight must be >= 0, got {args.kl_weight}")
    _set_threads(args)
    path = torch_module("training.train_autoencoder").train_autoencoder_bundle(
        args.data,
        args.out,
        label_keys=args.label,
        likelihood=args.likelihood,
        config=args.config,
        latent_dim=args.latent_dim,
        kl_weight=args.kl_weight,
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
        prepare_options=_prepare_options(args),
        overwrite=args.overwrite,
    )
    print(f"wrote autoencoder bundle {path}")


def run_scdg(args: argparse.Namespace) -> None:
    _positive(args, "batch_size")
    if args.epochs is not None:
        _positive(args, "epochs")
    _set_threads(args)
    path = torch_module("training.train_scdg").train_scdg_bundle(
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
    _report(path)


def run_dit(args: argparse.Namespace) -> None:
    train_dit_bundle = torch_module("training.train_dit").train_dit_bundle
    _positive(args, "batch_size", "n_top_genes")
    if args.validate_every < 0:
        raise ValueError("--validate-every must be >= 0 (0: validate only at the end)")
    if not args.zero_value < 0:
        raise ValueError(f"--zero-value must be negative, got {args.zero_value}")
    _set_threads(args)
    path = train_dit_bundle(
        args.data,
        args.label,
        args.out,
        config=args.config,
        **_length(args),
        max_cells=args.max_cells,
        seed=args.seed,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        prediction_type=args.prediction_type,
        zero_value=args.zero_value,
        gene_order=args.gene_order,
        depth_bins=args.depth_bins,
        validate=not args.no_validate,
        validate_every=args.validate_every,
        n_top_genes=args.n_top_genes,
        gene_selection=args.gene_selection,
        device=args.device,
        prepare_options=_prepare_options(args),
        resume=args.resume,
        overwrite=args.overwrite,
    )
    print(f"wrote bundle {path}")
    _report(path)


def _report(path: object) -> None:
    """The split, the QC and the validation of a freshly trained bundle, in a few lines."""
    import json
    from pathlib import Path

    training = json.loads((Path(str(path)) / "config.json").read_text()).get("training", {})
    qc = training.get("split_and_qc")
    if qc:
        print(
            f"  split: {qc['n_train']} training + {qc.get('n_validation', 0)} validation / "
            f"{qc['n_test']} held-out cells (test fraction {qc['test_fraction']}); QC (>= "
            f"{qc['min_genes_per_cell']} genes per cell, genes in >= "
            f"{qc['min_cells_per_gene']} cells) removed {qc['cells_removed_by_qc']} of "
            f"{qc['cells_in']} cells"
        )
    best = training.get("best")
    if best:
        print(f"  validation (step {best.get('step')} of {training.get('steps')}, the weights "
              f"kept): {validation_summary(best)}")  # fmt: skip


def validation_summary(best: dict) -> str:
    """'kNN AUC 0.58 (real cells 0.50), label accuracy ...' of a validation row."""

    def number(key: str) -> str:
        value = best.get(key)
        return "n/a" if not isinstance(value, int | float) else f"{value:.3f}"

    text = f"kNN AUC {number('knn_auc')} (real cells {number('knn_auc_floor')})"
    if best.get("label_accuracy") is not None:
        text += (
            f", label accuracy {number('label_accuracy')} "
            f"(real cells {number('label_accuracy_floor')})"
        )
    return text
