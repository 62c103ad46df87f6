"""Finished chunks of a generation run, kept on disk so an interrupted run can resume.

A run writing ``OUT.h5ad`` keeps ``.OUT.h5ad.chunks/`` beside it:

    run.json                    the settings that determine the values (checked on resume)
    cells-000000000000.npz      one file per chunk, named by the global index of its first cell,
    ...                         each written under a temporary name and renamed when complete

When every chunk is there, the chunks are streamed into the final .h5ad (under a temporary name,
then renamed) and the directory is removed. Chunk boundaries are global cell indices, and every
cell's values depend only on its global index, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellsynth.errors import CellsynthError

RUN_FILE = "run.json"


def chunk_dir_for(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.chunks")


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
        if self.path.exists() and run_file.is_file():
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

    def has(self, start: int) -> bool:
        return self._file(start).is_file()

    def save(self, start: int, matrices: Mapping[str, sp.csr_matrix]) -> None:
        """Store a finished chunk's CSR matrices (e.g. 'X', 'counts') atomically."""
        arrays: dict[str, np.ndarray] = {}
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
        tmp = self.path / f".cells-{start:012d}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self._file(start))

    def load(self, start: int) -> dict[str, sp.csr_matrix]:
        with np.load(self._file(start)) as z:
            names = {k.split(".")[0] for k in z.files}
            return {
                n: sp.csr_matrix(
                    (z[f"{n}.data"], z[f"{n}.indices"], z[f"{n}.indptr"]),
                    shape=tuple(z[f"{n}.shape"]),
                )
                for n in names
            }

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
