"""The real cells of a distillation task: a bundle's train/test split and one categorical label.

Distillation and its evaluation must never touch cells the autoencoder or SCDG saw at test time,
so the split is the bundle's own, rebuilt from its preprocessing record (and checked by its genes).
Any obs column can be the task label; the SCDG's own label columns are looked up for every cell so a
synthetic code can be conditioned like the real cell it started from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import anndata
import numpy as np

from cellsynth.bundle.heldout import obs_labels, prepare_like
from cellsynth.bundle.load import Bundle, load_bundle
from cellsynth.data import datasets
from cellsynth.errors import DataError


@dataclass
class Task:
    """A labelled train/test split in the bundle's genes.

    Attributes
    ----------
    bundle : Bundle
        The bundle whose preprocessing (and split) this is.
    label : str
        The task's obs column.
    classes : list of str
        Sorted class names; ``y`` codes index into them.
    genes : list of str
    x_train, x_test : float32 [n_train, G], [n_test, G]
        Log-normalised expression.
    y_train, y_test : int64 [n_train], [n_test]
    cond_train : int64 [n_train, K]
        The SCDG's label codes of each training cell (K = 0 for other bundle kinds); a class the
        SCDG never saw maps to its null code.
    cell_names : object [n_train]
        obs_names of the training cells.
    """

    bundle: Bundle
    label: str
    classes: list[str]
    genes: list[str]
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    cond_train: np.ndarray
    cell_names: np.ndarray

    def class_indices(self, c: int) -> np.ndarray:
        """Training-cell indices of class ``c``."""
        return np.flatnonzero(self.y_train == c)

    def record(self, data: object) -> dict:
        """What a report says of the task: bundle, its hash, data, label, classes and sizes."""
        sizes = np.bincount(self.y_train, minlength=len(self.classes))
        return {
            "bundle": str(self.bundle.path),
            "bundle_hash": self.bundle.hash,
            "data": str(data) if isinstance(data, str | os.PathLike) else "AnnData",
            "label": self.label,
            "classes": list(self.classes),
            "class_sizes": {c: int(n) for c, n in zip(self.classes, sizes, strict=True)},
            "n_train": int(len(self.y_train)),
            "n_test": int(len(self.y_test)),
            "n_genes": int(len(self.genes)),
        }


def load_task(
    bundle: str | os.PathLike | Bundle, data: str | os.PathLike | anndata.AnnData, label: str
) -> Task:
    """The task ``label`` on ``data`` in the split of ``bundle`` (SCDG or autoencoder bundle).

    Raises
    ------
    DataError
        Unknown label column, a label with fewer than two classes, or counts that are not the
        bundle's training data.
    BundleError
        A bundle without an autoencoder (e.g. a DiT bundle).
    """
    b = load_bundle(bundle)
    b.autoencoder  # noqa: B018 - raises a clear BundleError for bundles without one
    adata = data if isinstance(data, anndata.AnnData) else datasets.load(data)
    if label not in adata.obs.columns:
        raise DataError(
            f"label column {label!r} not found in obs; available: {list(adata.obs.columns)}"
        )
    prepared = prepare_like(b.preprocessing, adata, str(b.path))
    train_obs = obs_labels(adata, prepared.obs_train.index, [label])[label].to_numpy()
    test_obs = obs_labels(adata, prepared.obs_test.index, [label])[label].to_numpy()
    classes = sorted(set(train_obs.tolist()))
    if len(classes) < 2:
        raise DataError(f"label {label!r} has {len(classes)} class in the training cells; need 2+")
    unseen = sorted(set(test_obs.tolist()) - set(classes))
    if unseen:
        keep = ~np.isin(test_obs, unseen)  # a class without training cells cannot be learned
        test_obs, x_test = test_obs[keep], prepared.x_test[keep]
    else:
        x_test = prepared.x_test
    spec = b.labels
    cond = np.zeros((len(train_obs), len(spec.keys)), dtype=np.int64)
    if spec.keys:
        obs = obs_labels(adata, prepared.obs_train.index, spec.keys)
        for j, key in enumerate(spec.keys):
            vocab = {v: i for i, v in enumerate(spec.vocabularies[key])}
            null = len(spec.vocabularies[key])
            cond[:, j] = [vocab.get(v, null) for v in obs[key].to_numpy()]
    index = {c: i for i, c in enumerate(classes)}
    return Task(
        bundle=b,
        label=label,
        classes=classes,
        genes=b.genes,
        x_train=prepared.x_train,
        x_test=x_test,
        y_train=np.array([index[v] for v in train_obs], dtype=np.int64),
        y_test=np.array([index[v] for v in test_obs], dtype=np.int64),
        cond_train=cond,
        cell_names=np.asarray(prepared.obs_train.index, dtype=object),
    )
