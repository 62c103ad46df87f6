"""Write an .h5ad file whose matrices arrive as blocks of rows, in bounded memory.

anndata writes a whole in-memory object at once; a million synthetic cells should not have to fit
in memory first. This writer lays out the same on-disk format anndata reads (encoding-type
'anndata' 0.1.0, CSR matrices as groups of data / indices / indptr, obs and var through anndata's
own ``write_elem``) and appends each block of rows to resizable HDF5 datasets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import write_elem

_CHUNK_ELEMENTS = 1 << 16  # HDF5 chunk of the growing 1-D arrays
_COMPRESSION = {"compression": "gzip", "compression_opts": 4}


class _CSRAppender:
    """One CSR matrix in an HDF5 group, grown block by block."""

    def __init__(self, parent: h5py.Group, name: str, n_cols: int, dtype: Any) -> None:
        self.group = parent.create_group(name)
        self.group.attrs["encoding-type"] = "csr_matrix"
        self.group.attrs["encoding-version"] = "0.1.0"
        self.n_cols = n_cols
        self.n_rows = 0
        self.nnz = 0
        self.data = self.group.create_dataset(
            "data", (0,), dtype=dtype, maxshape=(None,), chunks=(_CHUNK_ELEMENTS,), **_COMPRESSION
        )
        self.indices = self.group.create_dataset(
            "indices", (0,), dtype=np.int32, maxshape=(None,), chunks=(_CHUNK_ELEMENTS,),
            **_COMPRESSION,
        )  # fmt: skip
        self.indptr = self.group.create_dataset(
            "indptr", (1,), dtype=np.int64, maxshape=(None,), chunks=(_CHUNK_ELEMENTS,)
        )
        self.indptr[0] = 0

    def append(self, block: sp.csr_matrix) -> None:
        if block.shape[1] != self.n_cols:
            raise ValueError(f"block has {block.shape[1]} columns, expected {self.n_cols}")
        block = sp.csr_matrix(block)
        block.sort_indices()
        n, nnz = block.shape[0], block.nnz
        self.data.resize((self.nnz + nnz,))
        self.indices.resize((self.nnz + nnz,))
        self.indptr.resize((self.n_rows + n + 1,))
        self.data[self.nnz :] = block.data.astype(self.data.dtype, copy=False)
        self.indices[self.nnz :] = block.indices.astype(np.int32, copy=False)
        self.indptr[self.n_rows + 1 :] = block.indptr[1:].astype(np.int64) + self.nnz
        self.n_rows += n
        self.nnz += nnz

    def close(self) -> None:
        self.group.attrs["shape"] = np.array([self.n_rows, self.n_cols], dtype=np.int64)


class StreamingH5ADWriter:
    """An .h5ad being written row block by row block.

    Parameters
    ----------
    path : path
        Where to write (give a temporary name; rename when :meth:`finish` returned).
    var : DataFrame [G, ...]
        Gene table; its index is var_names.
    x_dtype : dtype
        dtype of X.
    layers : dict of str to dtype
        Extra CSR layers that receive blocks alongside X.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        var: pd.DataFrame,
        x_dtype: Any = np.float32,
        layers: Mapping[str, Any] | None = None,
    ) -> None:
        self.file = h5py.File(path, "w")
        self.file.attrs["encoding-type"] = "anndata"
        self.file.attrs["encoding-version"] = "0.1.0"
        self.var = var
        n_genes = len(var)
        self.X = _CSRAppender(self.file, "X", n_genes, x_dtype)
        layer_group = self.file.create_group("layers")
        layer_group.attrs["encoding-type"] = "dict"
        layer_group.attrs["encoding-version"] = "0.1.0"
        self.layers = {
            name: _CSRAppender(layer_group, name, n_genes, dtype)
            for name, dtype in (layers or {}).items()
        }

    @property
    def n_rows(self) -> int:
        return self.X.n_rows

    def append(self, X: sp.csr_matrix, layers: Mapping[str, sp.csr_matrix] | None = None) -> None:
        """Append rows: X [n, G] and the same rows of every layer."""
        layers = dict(layers or {})
        if set(layers) != set(self.layers):
            raise ValueError(f"expected layers {sorted(self.layers)}, got {sorted(layers)}")
        self.X.append(X)
        for name, block in layers.items():
            if block.shape[0] != X.shape[0]:
                raise ValueError(f"layer {name!r} has {block.shape[0]} rows, X has {X.shape[0]}")
            self.layers[name].append(block)

    def finish(self, obs: pd.DataFrame, uns: Mapping[str, Any] | None = None) -> None:
        """Write obs (one row per appended row), var, uns and the empty slots; close the file."""
        if len(obs) != self.n_rows:
            raise ValueError(f"obs has {len(obs)} rows but {self.n_rows} rows were appended")
        for appender in (self.X, *self.layers.values()):
            appender.close()
        write_elem(self.file, "obs", obs)
        write_elem(self.file, "var", self.var)
        write_elem(self.file, "uns", dict(uns or {}))
        for slot in ("obsm", "varm", "obsp", "varp"):
            write_elem(self.file, slot, {})
        self.file.close()

    def abort(self) -> None:
        """Close without completing (the caller removes the file)."""
        if self.file.id.valid:
            self.file.close()
