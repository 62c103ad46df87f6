"""Write outputs under a temporary name and rename them only when complete; hash files.

A crash, a full disk or Ctrl-C then leaves either the previous file or nothing under the final
name, never half an output that a later step would read as whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import anndata


def _temporary_sibling(final: Path) -> Path:
    # Same directory as the target so os.replace stays a rename on one file system; the suffix is
    # kept because some writers (anndata) look at it.
    return final.with_name(f".{final.stem}.partial-{uuid.uuid4().hex[:8]}{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path; on success it is renamed to ``final``, on error removed."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``final``, on error it is removed.

    Directories cannot be swapped in one system call, so an existing ``final`` is first moved
    aside and deleted only after the new directory is in place.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (choose another --out or remove it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large weights do not sit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def write_h5ad(adata: anndata.AnnData, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``adata`` to ``path`` through a temporary file, compressed, and return the path."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
    return Path(path)
