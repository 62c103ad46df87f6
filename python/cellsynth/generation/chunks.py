"""Finished chunks of a generation run, kept on disk so an interrupted run can resume.

A run writing ``OUT.h5ad`` keeps ``.OUT.h5ad.chunks/`` beside it:

    run.json                    the settings that determine the values (checked on resume)
    cells-000000000000.npz      one file per chunk, named by the global index of its first cell,
    ...                         each written under a temporary name and renamed when complete;
                                each carries the digest of the settings and its cell range

When every chunk is there, the chunks are streamed into the final .h5ad (under a temporary name,
then renamed) and the directory is removed. Chunk boundaries are global cell indices, and every
cell's values depend only on its global index, so a resumed run equals an uninterrupted one.

Resuming trusts nothing it cannot check: a directory without its run.json is refused, and a
chunk that cannot be read, was made with other settings or holds other cells or genes is named
and computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellsynth.errors import CellsynthError
from cellsynth.files import atomic_path, remove_orphans_in

RUN_FILE = "run.json"


def chunk_dir_for(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.chunks")


def started_settings(out: str | os.PathLike) -> dict[str, Any] | None:
    """The settings an interrupted run into ``out`` was started with (its run.json), or None."""
    run_file = chunk_dir_for(out) / RUN_FILE
    try:
        settings = json.loads(run_file.read_text())
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) else None


class ChunkStore:
    """The chunk directory of one run (see the module docstring).

    Parameters
    ----------
    out : path
        The final output file.
    settings : dict
        JSON-able settings that determine the values; a resumed run must match them exactly.
    resume : bool
        Continue from chunks left by an interrupted run with the same settings. Without it, a
        leftover chunk directory is an error (nothing is deleted behind the user's back).
    """

    def __init__(self, out: str | os.PathLike, settings: Mapping[str, Any], resume: bool) -> None:
        self.path = chunk_dir_for(out)
        self.settings = json.loads(json.dumps(dict(settings)))  # normalise tuples etc.
        run_file = self.path / RUN_FILE
        if self.path.exists() and not resume:
            raise CellsynthError(
                f"an interrupted run left {self.path}; pass --resume (resume=True) to continue it "
                "or delete that directory to start over"
            )
        if self.path.exists():
            # Half-written chunks of a killed earlier run (its process is gone) are never read.
            remove_orphans_in(self.path, r"cells-\d{12}", r"\.npz")
        if self.path.exists() and not run_file.is_file():
            raise CellsynthError(
                f"cannot resume {self.path}: its {RUN_FILE} is missing, so nothing proves its "
                "chunks were made with these settings; delete that directory to start over"
            )
        self.digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()
        if self.path.exists():
            previous = json.loads(run_file.read_text())
            differ = sorted(
                k
                for k in set(previous) | set(self.settings)
                if previous.get(k) != self.settings.get(k)
            )
            if differ:
                raise CellsynthError(
                    f"cannot resume {self.path}: it was started with other settings "
                    f"({', '.join(f'{k}: {previous.get(k)!r} then, {self.settings.get(k)!r} now' for k in differ)})"  # noqa: E501
                )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = self.path / f".{RUN_FILE}.tmp"
            tmp.write_text(json.dumps(self.settings, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, run_file)

    def _file(self, start: int) -> Path:
        return self.path / f"cells-{start:012d}.npz"

    def has(self, start: int, stop: int, shapes: Mapping[str, int]) -> bool:
        """Whether a sound chunk of cells [start, stop) is stored; an unsound one is removed.

        ``shapes`` maps each matrix the chunk must hold to its number of columns.
        """
        path = self._file(start)
        if not path.is_file():
            return False
        problem = self._problem(start, stop, shapes)
        if problem is None:
            return True
        print(f"cellsynth: {path} {problem}; computing it again", file=sys.stderr)
        path.unlink()
        return False

    def _problem(self, start: int, stop: int, shapes: Mapping[str, int]) -> str | None:
        try:
            with np.load(self._file(start)) as z:
                if "meta.settings" not in z.files or str(z["meta.settings"]) != self.digest:
                    return "was made with other settings"
                if z["meta.cells"].tolist() != [start, stop]:
                    return f"holds cells {z['meta.cells'].tolist()}, not [{start}, {stop}]"
            matrices = self.load(start)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            return f"cannot be read ({type(exc).__name__}: {exc})"
        for name, width in shapes.items():
            if name not in matrices:
                return f"has no {name!r}"
            if matrices[name].shape != (stop - start, width):
                return f"has {name!r} of shape {matrices[name].shape}, not {(stop - start, width)}"
        return None

    def save(self, start: int, stop: int, matrices: Mapping[str, sp.csr_matrix]) -> None:
        """Store a finished chunk's CSR matrices (e.g. 'X', 'counts') atomically."""
        arrays: dict[str, np.ndarray] = {
            "meta.settings": np.array(self.digest),
            "meta.cells": np.array([start, stop], dtype=np.int64),
        }
        for name, m in matrices.items():
            m = sp.csr_matrix(m)
            arrays.update(
                {
                    f"{name}.data": m.data,
                    f"{name}.indices": m.indices,
                    f"{name}.indptr": m.indptr,
                    f"{name}.shape": np.asarray(m.shape),
                }
            )
        with atomic_path(self._file(start), sweep=False) as tmp:
            np.savez(tmp, **arrays)

    def load(self, start: int) -> dict[str, sp.csr_matrix]:
        with np.load(self._file(start)) as z:
            names = {k.split(".")[0] for k in z.files} - {"meta"}
            return {
                n: sp.csr_matrix(
                    (z[f"{n}.data"], z[f"{n}.indices"], z[f"{n}.indptr"]),
                    shape=tuple(z[f"{n}.shape"]),
                )
                for n in names
            }

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
