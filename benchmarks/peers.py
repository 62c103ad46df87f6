"""The peer generators of the fidelity benchmark: scVI (scvi-tools) and an independent NB per gene.

Both learn from raw counts of the training cells on the benchmark's genes and draw integer counts
for a requested label mix; the benchmark normalises every generator's output the same way.

- :class:`ScviPeer`: scVI as a user of scvi-tools would train it (its defaults: ZINB likelihood,
  10-d latent, one hidden layer of 128; its own default number of epochs with early stopping on
  the validation ELBO). scVI is not class-conditional, so cells of a label combination are drawn
  honestly from what it learned: a Gaussian fitted to the combination's part of scVI's aggregate
  posterior (mean and covariance of the training cells' latent means, plus their mean posterior
  variance), decoded, a library size drawn from a log-normal fitted to
  the combination's training library sizes, counts sampled from the ZINB likelihood.
- :class:`IndependentNBPeer`: each gene of each label combination an independent negative
  binomial fitted by moments to the training counts (Poisson where the counts are not
  over-dispersed). Right marginals, no gene-gene structure at all: the floor a generator must beat.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp


def combination(obs: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """The joint label of each cell, 'a|b', as strings [n]."""
    out = obs[keys[0]].astype(str).to_numpy().astype(object)
    for k in keys[1:]:
        out = out + "|" + obs[k].astype(str).to_numpy().astype(object)
    return out.astype(str)


def _log_library_fit(counts: sp.csr_matrix, groups: np.ndarray) -> dict[str, tuple[float, float]]:
    """{group: (mean, sd)} of log library sizes (total counts over the modelled genes)."""
    logs = np.log(np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1.0))
    return {
        g: (float(logs[groups == g].mean()), float(logs[groups == g].std())) for g in set(groups)
    }


class ScviPeer:
    """scVI trained by scvi-tools' defaults; class Gaussians in its latent; ZINB counts."""

    name = "scVI"

    def __init__(
        self,
        seed: int = 0,
        max_epochs: int | None = None,
        save_dir: Path | None = None,
        reuse: bool = False,
    ) -> None:
        self.seed, self.max_epochs = seed, max_epochs
        self.save_dir, self.reuse = save_dir, reuse
        self.info: dict[str, object] = {}

    def fit(self, counts: sp.csr_matrix, obs: pd.DataFrame, keys: list[str], threads: int) -> float:
        import anndata
        import scvi
        import torch

        torch.set_num_threads(threads)
        scvi.settings.seed = self.seed
        scvi.settings.dl_num_workers = 0
        adata = anndata.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=obs[keys].copy())
        scvi.model.SCVI.setup_anndata(adata)
        record = self.save_dir / "benchmark_fit.json" if self.save_dir is not None else None
        if self.reuse and record is not None and record.is_file():  # trained by an earlier run
            self.model = scvi.model.SCVI.load(str(self.save_dir), adata=adata, accelerator="cpu")
            self.info = {**json.loads(record.read_text()), "reused": True}
            seconds = float(self.info["seconds"])
        else:
            started = time.perf_counter()
            self.model = scvi.model.SCVI(adata)  # n_latent 10, ZINB, 1 x 128 hidden: defaults
            self.model.train(
                max_epochs=self.max_epochs,  # None: scvi-tools' own heuristic (<= 400)
                accelerator="cpu",
                early_stopping=True,  # on the validation ELBO, patience 45 (scvi's default)
                enable_progress_bar=False,
            )
            seconds = time.perf_counter() - started
            history = self.model.history
            self.info = {
                "epochs": int(len(history["elbo_train"])),
                "max_epochs": self.max_epochs or "scvi-tools default",
                "early_stopping": True,
                "final_validation_elbo": float(history["elbo_validation"].iloc[-1, 0])
                if "elbo_validation" in history
                else None,
                "n_latent": int(self.model.module.n_latent),
                "gene_likelihood": self.model.module.gene_likelihood,
                "seconds": seconds,
            }
            if record is not None:
                self.model.save(str(self.save_dir), overwrite=True)
                record.write_text(json.dumps(self.info))
        # The class's share of scVI's aggregate posterior, as a Gaussian: the spread of the
        # cells' posterior means plus the mean posterior variance (fitting the means alone
        # would make scVI's cells too alike).
        latent = self.model.get_latent_representation()  # [n, 10] posterior means
        qz = self.model.get_latent_representation(return_dist=True)
        variance = np.asarray(qz[1], dtype=np.float64)  # [n, 10] posterior variances
        groups = combination(obs, keys)
        self.gaussians = {}
        for g in set(groups):
            z = latent[groups == g].astype(np.float64)
            cov = np.cov(z, rowvar=False) if len(z) > 1 else np.zeros((z.shape[1],) * 2)
            cov = cov + np.diag(variance[groups == g].mean(axis=0))
            self.gaussians[g] = (z.mean(axis=0), cov + 1e-6 * np.eye(z.shape[1]))
        self.library = _log_library_fit(counts, groups)
        return seconds

    def sample(self, groups: np.ndarray, seed: int) -> sp.csr_matrix:
        """Counts CSR [n, G] for cells of the given joint labels [n]."""
        import torch

        torch.set_num_threads(1)  # cells/s are reported for one thread
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        n = len(groups)
        z = np.empty((n, len(next(iter(self.gaussians.values()))[0])), dtype=np.float32)
        log_lib = np.empty((n, 1), dtype=np.float32)
        for g in np.unique(groups):  # sorted: a set's order changes with each process's hash seed
            rows = np.flatnonzero(groups == g)
            mean, cov = self.gaussians[g]
            z[rows] = rng.multivariate_normal(mean, cov, size=len(rows))
            mu, sd = self.library[g]
            log_lib[rows, 0] = rng.normal(mu, sd, size=len(rows))
        module = self.model.module.eval()
        out = []
        with torch.no_grad():
            for s in range(0, n, 1024):
                zb = torch.from_numpy(z[s : s + 1024])
                px = module.generative(
                    zb,
                    torch.from_numpy(log_lib[s : s + 1024]),
                    torch.zeros(len(zb), 1, dtype=torch.long),
                )["px"]
                out.append(sp.csr_matrix(px.sample().numpy().astype(np.float32)))
        return sp.vstack(out, format="csr")


class IndependentNBPeer:
    """One negative binomial per gene and label combination, fitted by moments."""

    name = "independent NB"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.info: dict[str, object] = {}

    def fit(self, counts: sp.csr_matrix, obs: pd.DataFrame, keys: list[str], threads: int) -> float:
        started = time.perf_counter()
        groups = combination(obs, keys)
        self.params = {}
        for g in set(groups):
            x = counts[groups == g]
            mean = np.asarray(x.mean(axis=0), dtype=np.float64).ravel()
            sq = np.asarray(x.multiply(x).mean(axis=0), dtype=np.float64).ravel()
            var = sq - mean**2
            with np.errstate(divide="ignore", invalid="ignore"):
                theta = np.where(var > mean, mean**2 / (var - mean), np.inf)  # inf: Poisson
            self.params[g] = (mean, theta)
        self.info = {"fit": "method of moments per gene and label combination"}
        return time.perf_counter() - started

    def sample(self, groups: np.ndarray, seed: int) -> sp.csr_matrix:
        rng = np.random.default_rng(seed)
        out = np.zeros((len(groups), len(next(iter(self.params.values()))[0])), dtype=np.float32)
        for g in np.unique(groups):  # sorted: a set's order changes with each process's hash seed
            rows = np.flatnonzero(groups == g)
            mean, theta = self.params[g]
            nb = np.isfinite(theta) & (theta > 0)
            block = np.empty((len(rows), len(mean)))
            block[:, ~nb] = rng.poisson(mean[~nb], size=(len(rows), int((~nb).sum())))
            t, m = theta[nb], mean[nb]
            block[:, nb] = rng.negative_binomial(t, t / (t + m), size=(len(rows), int(nb.sum())))
            out[rows] = block
        return sp.csr_matrix(out)
