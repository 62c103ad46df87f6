"""How realistic are cellsynth's cells next to the peers a scRNA-seq user would use instead?

For each data set (Kang: cell_type x stim; PBMC 3k: celltype; wu2020: source), in one run:

1. cellsynth's own preprocessing and stratified split (:func:`cellsynth.data.prepare`, the same
   call a bundle trained on the data makes): the benchmark's genes, training and held-out cells.
2. Every generator learns from the training cells only and then makes as many cells as there are
   reference cells (the held-out cells, at most ``--cells``), with exactly their label mix:
   - the peers of ``peers.py``: scVI (scvi-tools, its defaults, early stopping) and an
     independent negative binomial per gene and label combination (the floor);
   - the shipped cellsynth bundles (Kang only), and cellsynth trained on the data set by the
     documented default commands (``cellsynth train ...``, run as a user runs them), sampled with
     DPM-Solver++ in 20 steps.
3. One representation for all: counts (or cellsynth's log-normalised values, turned back into
   relative counts by expm1) normalised over the benchmark's genes to 10,000 per cell, log1p.
   This is a per-cell function of a cell's own values, applied to real cells alike, so a
   generator that matches real cells in any of these spaces matches them here.
4. One metric function, :func:`cellsynth.metrics.compute_metrics` (what ``cellsynth evaluate``
   runs): PCA (30 components) fitted on training cells, the reference = held-out cells, the
   floor = as many other training cells with the same label mix (the "real vs real" row);
   kNN two-sample AUC (k = 15, 5 folds) overall and per label combination, PCA-MMD² (one RBF
   bandwidth for every row), W2 on the PCA, r of per-gene means / variances / zero fractions,
   RMSE of per-gene variances, agreement of within-class gene-gene correlations (200 most variable
   genes), and the accuracy on real held-out cells of a logistic regression trained on each
   generator's cells (on the PCA scores). Plus training seconds and cells/s on one thread.

Writes, per data set, ``DATASET.json``, ``DATASET.md`` and ``DATASET.png`` (real held-out cells
and each generator's on the first two principal components), and ``fidelity_peers.md`` with every
table. Models trained here are kept in ``--work`` and reused with ``--reuse``.

    python benchmarks/fidelity_peers.py --datasets kang pbmc3k wu2020 --threads 2 \
        --out benchmarks/results/fidelity_peers
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from _machine import machine
from peers import IndependentNBPeer, ScviPeer, combination

import cellsynth
from cellsynth.data import extract_counts, prepare, renormalize_log1p
from cellsynth.files import strict_json
from cellsynth.metrics import compute_metrics

#: label keys and held-out fraction per data set (wu2020 has 200 cells: half are held out so the
#: comparison has 100 cells a side).
DATASETS: dict[str, dict[str, object]] = {
    "kang": {"labels": ["cell_type", "stim"], "test_fraction": 0.2},
    "pbmc3k": {"labels": ["celltype"], "test_fraction": 0.2},
    "wu2020": {"labels": ["source"], "test_fraction": 0.5},
}
SHIPPED = {"kang": ["kang-dit", "kang-scdg"]}
TARGET_SUM = 1e4
SAMPLER = {"scheduler": "dpmsolver++", "steps": 20}


# ------------------------------------------------------------------------------------ data


class Split:
    """The benchmark's view of one data set: genes, counts and labels of each part."""

    def __init__(self, name: str, max_ref: int, seed: int) -> None:
        spec = DATASETS[name]
        self.name, self.keys = name, list(spec["labels"])
        self.test_fraction = float(spec["test_fraction"])
        self.adata = cellsynth.datasets.load(name)
        prepared = prepare(self.adata, self.keys, test_fraction=self.test_fraction, seed=0)
        self.genes = list(prepared.genes)
        counts, genes, _ = extract_counts(self.adata, "auto")
        counts = sp.csr_matrix(counts)[:, pd.Index(genes).get_indexer(self.genes)]
        rows = pd.Index(self.adata.obs_names)
        self.train_counts = counts[rows.get_indexer(prepared.obs_train.index)]
        self.train_obs = prepared.obs_train.astype(str)
        test_counts = counts[rows.get_indexer(prepared.obs_test.index)]
        test_obs = prepared.obs_test.astype(str)
        self.test_index = list(prepared.obs_test.index)
        rng = np.random.default_rng(seed)
        # Reference: the held-out cells (a random subset of max_ref when there are more).
        ref = np.sort(rng.choice(len(test_obs), min(max_ref, len(test_obs)), replace=False))
        self.ref_counts, self.ref_obs = test_counts[ref], test_obs.iloc[ref]
        self.ref_groups = combination(self.ref_obs, self.keys)
        # Floor: training cells with the reference's label mix; PCA: other training cells. A
        # small data set (wu2020) has too few training cells for both: each label's training
        # cells are then halved, one half for the floor, the other for the PCA (a PCA fitted on
        # the floor's own cells makes the floor look unlike held-out cells: AUC 0.80).
        train_groups = combination(self.train_obs, self.keys)
        self.small = len(train_groups) - len(self.ref_obs) < 200
        floor = []
        for g, n in pd.Series(self.ref_groups).value_counts().items():
            pool = np.flatnonzero(train_groups == g)
            take = min(n, len(pool) // 2 if self.small else len(pool))
            floor += list(rng.choice(pool, take, replace=False))
        floor = np.sort(np.asarray(floor, dtype=np.int64))
        rest = np.setdiff1d(np.arange(len(train_groups)), floor)
        pca = np.sort(rng.choice(rest, min(3000, len(rest)), replace=False))
        self.floor_counts, self.floor_obs = self.train_counts[floor], self.train_obs.iloc[floor]
        self.pca_counts = self.train_counts[pca]

    def describe(self) -> dict[str, object]:
        return {
            "labels": self.keys,
            "test_fraction": self.test_fraction,
            "n_genes": len(self.genes),
            "n_train": int(self.train_counts.shape[0]),
            "n_held_out": len(self.test_index),
            "n_reference": int(self.ref_counts.shape[0]),
            "n_floor": int(self.floor_counts.shape[0]),
            "n_pca": int(self.pca_counts.shape[0]),
            "floor_and_pca_halves": bool(self.small),
        }


def representation(kind: str, x: sp.spmatrix) -> np.ndarray:
    """Log1p of counts normalised to 10,000 over the benchmark's genes, dense float32 [n, G].

    ``kind`` 'counts': integer counts; 'lognorm': cellsynth's log1p-normalised values, whose
    expm1 is proportional to the counts (:func:`cellsynth.data.renormalize_log1p`).
    """
    x = sp.csr_matrix(x, dtype=np.float64)
    if kind == "counts":
        x = x.copy()
        x.data = np.log1p(x.data)  # expm1 of it gives the counts back
    return renormalize_log1p(x, TARGET_SUM)


# ------------------------------------------------------------------------------ generators


class PeerGenerator:
    """Adapter: a peer of peers.py as a benchmark row."""

    def __init__(self, peer) -> None:
        self.peer, self.name = peer, peer.name

    def fit(self, split: Split, args) -> float:
        return self.peer.fit(split.train_counts, split.train_obs, split.keys, args.threads)

    def sample(self, split: Split, seed: int) -> tuple[str, sp.spmatrix, pd.DataFrame, float]:
        """(kind, cells, obs, seconds of the sampling alone)."""
        started = time.perf_counter()
        counts = self.peer.sample(split.ref_groups, seed)
        return "counts", counts, split.ref_obs, time.perf_counter() - started

    @property
    def info(self) -> dict[str, object]:
        return dict(self.peer.info)


class BundleGenerator:
    """A cellsynth bundle: shipped (by name) or trained here by the documented CLI commands."""

    def __init__(
        self,
        name: str,
        bundle: str,
        commands: list[list[str]] | None = None,
        steps: int = 20,
        precision: str | None = None,
    ) -> None:
        self.name, self.bundle, self.commands = name, bundle, commands or []
        self.sampler = {**SAMPLER, "steps": int(steps)}
        if precision is not None:  # the denoiser's ONNX export (e.g. int8), for speed
            self.sampler["precision"] = precision
        self.info: dict[str, object] = {"sampler": self.sampler}

    def fit(self, split: Split, args) -> float:
        if not self.commands:  # shipped: trained by its recipe; report the recorded time
            b = cellsynth.load_bundle(self.bundle)
            seconds = float(b.config.get("training", {}).get("seconds", float("nan")))
            if b.kind == "latent_diffusion":  # its autoencoder's training too
                seconds += float(b.autoencoder.config.get("training", {}).get("seconds", 0.0))
            self.info.update({"bundle": self.bundle, "recorded_training_seconds": seconds})
            return seconds
        done = Path(self.bundle) / "config.json"
        if args.reuse and done.is_file():
            seconds = json.loads((Path(self.bundle) / "benchmark_fit.json").read_text())["seconds"]
            self.info.update({"commands": [" ".join(c) for c in self.commands], "reused": True})
            return seconds
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        started = time.perf_counter()
        for cmd in self.commands:
            print("  $", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, env=env)
        seconds = time.perf_counter() - started
        (Path(self.bundle) / "benchmark_fit.json").write_text(json.dumps({"seconds": seconds}))
        self.info.update({"commands": [" ".join(c) for c in self.commands], "reused": False})
        return seconds

    def sample(self, split: Split, seed: int) -> tuple[str, sp.spmatrix, pd.DataFrame, float]:
        """(kind, cells, obs, seconds of generate() alone: not the split check before it)."""
        b = cellsynth.load_bundle(self.bundle)
        _check_same_split(b, split)
        started = time.perf_counter()
        out = cellsynth.generate(
            b,
            n_cells=len(split.ref_obs),
            composition=anndata.AnnData(obs=split.ref_obs.copy()),
            engine="auto",
            threads=1,
            seed=seed,
            progress=False,
            **self.sampler,
        )
        seconds = time.perf_counter() - started
        obs = out.obs.astype(str)
        if "counts" in out.layers:
            return "counts", out.layers["counts"], obs, seconds
        return "lognorm", out.X, obs, seconds


def _check_same_split(bundle, split: Split) -> None:
    """The bundle must have been trained on the benchmark's training cells and genes."""
    from cellsynth.bundle.heldout import held_out_cells

    if list(bundle.genes) != split.genes:
        raise SystemExit(f"{bundle.path}: its genes are not the benchmark's genes")
    _, obs = held_out_cells(bundle, split.adata)
    if list(obs.index) != split.test_index:
        raise SystemExit(f"{bundle.path}: its held-out cells are not the benchmark's")


def cli_generators(split: Split, work: Path) -> dict[str, BundleGenerator]:
    """cellsynth trained by the README's default commands on this data set (and one variant)."""
    labels = [a for k in split.keys for a in ("--label", k)]
    common = ["--data", split.name, *labels, "--test-fraction", str(split.test_fraction)]
    exe = [sys.executable, "-m", "cellsynth.cli.main"]
    dit, by_input = work / f"{split.name}-dit", work / f"{split.name}-dit-input"
    ae, latent = work / f"{split.name}-autoencoder", work / f"{split.name}-latent"
    return {
        "cli-dit": BundleGenerator(
            "cellsynth DiT (default command)",
            str(dit),
            [[*exe, "train", "dit", *common, "--overwrite", "--out", str(dit)]],
        ),
        "cli-dit-input": BundleGenerator(
            "cellsynth DiT, --gene-order input",
            str(by_input),
            [
                [*exe, "train", "dit", *common, "--gene-order", "input"]
                + ["--overwrite", "--out", str(by_input)]
            ],
        ),
        "cli-latent": BundleGenerator(
            "cellsynth latent NB (default commands)",
            str(latent),
            [
                [*exe, "train", "autoencoder", *common, "--overwrite", "--out", str(ae)],
                [*exe, "train", "scdg", "--autoencoder", str(ae), "--data", split.name]
                + [*labels, "--overwrite", "--out", str(latent)],
            ],
        ),
    }


def generators_for(split: Split, args) -> list:
    chosen = []
    for name in args.generators:
        if name == "scvi":
            save = Path(args.work) / f"{split.name}-scvi"
            peer = ScviPeer(args.seed, args.scvi_max_epochs, save, args.reuse)
            chosen.append(PeerGenerator(peer))
        elif name == "nb":
            chosen.append(PeerGenerator(IndependentNBPeer(args.seed)))
        elif name == "shipped":
            chosen += [BundleGenerator(b, b) for b in SHIPPED.get(split.name, [])]
        elif name == "cli":
            every = cli_generators(split, Path(args.work))
            chosen += [every["cli-dit"], every["cli-latent"]]
        elif name.startswith("cli-"):
            chosen.append(cli_generators(split, Path(args.work))[name])
        elif "@" in name:  # a shipped bundle at other steps (and precision): kang-scdg@10:int8
            bundle, _, rest = name.partition("@")
            steps, _, precision = rest.partition(":")
            if not any(bundle in names for names in SHIPPED.values()) or not steps.isdigit():
                raise SystemExit(f"unknown generator {name!r} (a shipped bundle @ steps)")
            if bundle in SHIPPED.get(split.name, []):  # a row on the data set it was trained on
                label = f"{bundle}, DPM-Solver++ {steps}" + (f", {precision}" if precision else "")
                chosen.append(BundleGenerator(label, bundle, steps=int(steps),
                                              precision=precision or None))  # fmt: skip
        else:
            raise SystemExit(f"unknown generator {name!r}")
    return chosen


# -------------------------------------------------------------------------------- metrics


def score(split: Split, synthetic: np.ndarray, syn_obs: pd.DataFrame, seed: int) -> dict:
    """compute_metrics of one generator's cells against the reference, with the shared floor."""
    keys = split.keys
    real_labels = {k: split.ref_obs[k].to_numpy() for k in keys}
    syn_labels = {k: syn_obs[k].to_numpy() for k in keys}
    floor_labels = {k: split.floor_obs[k].to_numpy() for k in keys}
    if len(keys) > 1:
        real_labels["combination"] = split.ref_groups
        syn_labels["combination"] = combination(syn_obs, keys)
        floor_labels["combination"] = combination(split.floor_obs, keys)
    small = len(split.ref_obs) < 500
    return compute_metrics(
        representation("counts", split.ref_counts),
        synthetic,
        real_labels,
        syn_labels,
        seed=seed,
        floor_real=representation("counts", split.floor_counts),
        floor_labels=floor_labels,
        pca_real=representation("counts", split.pca_counts),
        families=("distribution", "genes", "structure"),
        class_metrics=("knn_auc",),
        n_components=30,
        pca_cells=3000,
        knn_k=15,
        mmd_bandwidth="floor",
        corr_min_cells=10 if small else 20,
        min_cells=15 if small else 30,
    )


# ------------------------------------------------------------------------------- outputs

COLUMNS = [
    ("knn_auc", "kNN AUC", "{:.3f}"),
    ("mmd2_rbf_pca", "PCA-MMD²", "{:.5f}"),
    ("w2_pca", "W2 (PCA)", "{:.2f}"),
    ("gene_mean_pearson", "r means", "{:.3f}"),
    ("gene_var_pearson", "r variances", "{:.3f}"),
    ("gene_var_rmse", "variance RMSE", "{:.3f}"),
    ("gene_zero_fraction_pearson", "r zero fractions", "{:.3f}"),
    ("corr_agreement", "within-class corr.", "{:.2f}"),
]


def _fmt(fmt: str, v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else fmt.format(v)


def markdown(name: str, result: dict) -> str:
    rows = result["rows"]
    keys = list(next(iter(rows.values()))["metrics"]["label_transfer"]) if rows else []
    head = ["generator", *[c[1] for c in COLUMNS], *[f"label acc. {k}" for k in keys],
            "worst class kNN AUC", "training s", "cells/s (1 thread)"]  # fmt: skip
    lines = [
        f"### {name}",
        "",
        f"{result['data']['n_reference']} held-out cells against as many generated ones; floor: "
        f"{result['data']['n_floor']} training cells of the same label mix; PCA on "
        f"{result['data']['n_pca']} other training cells; {result['data']['n_genes']} genes.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    first = next(iter(rows.values()), None)
    if first is not None:
        m, lt = first["metrics"]["metrics"], first["metrics"]["label_transfer"]
        cells = [_fmt(f, m[k]["floor"]) for k, _, f in COLUMNS]
        cells += [_fmt("{:.3f}", lt[k]["floor"]) for k in keys]
        lines.append("| real vs real (floor) | " + " | ".join(cells) + " | - | - | - |")
    for gen, row in rows.items():
        m, lt = row["metrics"]["metrics"], row["metrics"]["label_transfer"]
        cells = [_fmt(f, m[k]["value"]) for k, _, f in COLUMNS]
        cells += [_fmt("{:.3f}", lt[k]["value"]) for k in keys]
        cells += [_fmt("{:.3f}", row["worst_class_knn_auc"]), _fmt("{:.0f}", row["train_seconds"]),
                  _fmt("{:.0f}", row["cells_per_s"])]  # fmt: skip
        lines.append(f"| {gen} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def worst_class(metrics: dict) -> float:
    """The highest per-class kNN AUC of the finest breakdown (the label combination)."""
    by = metrics.get("by_label", {})
    key = "combination" if "combination" in by else next(iter(by), None)
    if key is None:
        return float("nan")
    values = [c["metrics"]["knn_auc"]["value"] for c in by[key]["classes"].values()]
    return float(max(values)) if values else float("nan")


def plot(split: Split, samples: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cellsynth.metrics.sound import fit_pca_randomized, project

    mean, comps = fit_pca_randomized(representation("counts", split.pca_counts), 2, seed=0)
    real = project(representation("counts", split.ref_counts), mean, comps)
    key = split.keys[0]
    classes = sorted(split.ref_obs[key].unique())
    colours = {c: plt.cm.tab10(i % 10) for i, c in enumerate(classes)}
    panels = [("real held-out", real, split.ref_obs[key].to_numpy())]
    panels += [(n, project(x, mean, comps), lab) for n, (x, lab) in samples.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, pc, lab) in zip(axes[0], panels, strict=True):
        ax.scatter(real[:, 0], real[:, 1], s=3, c="0.85", linewidths=0)
        for c in classes:
            sel = lab == c
            ax.scatter(pc[sel, 0], pc[sel, 1], s=3, color=colours[c], linewidths=0, label=c)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].set_ylabel(f"{split.name}: PC 2 (grey: real held-out)", fontsize=8)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[c], label=c) for c in classes]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(classes), 8), fontsize=7,
               title=key, title_fontsize=7)  # fmt: skip
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------------- run


def run_dataset(name: str, args) -> dict:
    print(f"== {name}", flush=True)
    split = Split(name, args.cells, args.seed)
    result = {"data": split.describe(), "rows": {}}
    samples = {}
    for gen in generators_for(split, args):
        print(f"-- {gen.name}: training", flush=True)
        train_seconds = gen.fit(split, args)
        print(f"-- {gen.name}: sampling {len(split.ref_obs)} cells", flush=True)
        kind, x, syn_obs, seconds = gen.sample(split, args.seed)
        synthetic = representation(kind, x)
        metrics = score(split, synthetic, syn_obs, args.seed)
        result["rows"][gen.name] = {
            "train_seconds": train_seconds,
            "sample_seconds": seconds,
            "cells_per_s": len(syn_obs) / seconds,
            "output": kind,
            "info": gen.info,
            "worst_class_knn_auc": worst_class(metrics),
            "metrics": metrics,
        }
        samples[gen.name] = (synthetic, syn_obs[split.keys[0]].to_numpy())
        m = metrics["metrics"]
        print(
            f"   kNN AUC {m['knn_auc']['value']:.3f} (floor {m['knn_auc']['floor']:.3f}), "
            f"corr {m['corr_agreement']['value']:.2f} (floor {m['corr_agreement']['floor']:.2f}), "
            f"{len(syn_obs) / seconds:.0f} cells/s",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(split, samples, out / f"{name}.png")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument(
        "--generators",
        nargs="+",
        default=["scvi", "nb", "shipped", "cli"],
        help="scvi, nb, shipped, cli (= cli-dit + cli-latent), cli-dit-input, or a shipped "
        "bundle at other steps and precision (kang-scdg@10, kang-scdg@10:int8)",
    )
    parser.add_argument("--cells", type=int, default=2000, help="most reference cells per side")
    parser.add_argument("--threads", type=int, default=2, help="threads for training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scvi-max-epochs", type=int, default=None)
    parser.add_argument("--work", default="runs/fidelity_peers", help="where trained models go")
    parser.add_argument("--reuse", action="store_true", help="reuse models trained in --work")
    parser.add_argument("--out", default="benchmarks/results/fidelity_peers")
    args = parser.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        result = run_dataset(name, args)
        result["machine"] = machine()
        result["date"] = dt.date.today().isoformat()
        result["settings"] = {**vars(args), "sampler": SAMPLER}
        (out / f"{name}.json").write_text(json.dumps(strict_json(result), indent=1) + "\n")
        header = (
            f"{result['date']}, {result['machine']['cpu']}, {os.cpu_count()} cores; training on "
            f"{args.threads} threads, sampling on 1: `python benchmarks/fidelity_peers.py "
            + " ".join(sys.argv[1:])
            + "`\n\n"
        )
        table = markdown(name, result)
        (out / f"{name}.md").write_text(table + "\n" + header)
        print(table, flush=True)
    # Every data set's table in one file (those of earlier runs into the same folder included).
    tables = [(out / f"{n}.md").read_text() for n in DATASETS if (out / f"{n}.md").is_file()]
    (out / "fidelity_peers.md").write_text("# Fidelity against peers\n\n" + "\n".join(tables))


if __name__ == "__main__":
    main()
