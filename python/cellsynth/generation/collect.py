"""Collect a run's chunks: into one AnnData in memory, or into an .h5ad through a chunk store.

Into a file, every finished chunk is kept on disk (:mod:`cellsynth.generation.chunks`), so an
interrupted run resumes from the chunks it can prove are its own; the file is then assembled in
bounded memory (:mod:`cellsynth.generation.h5ad_stream`) under a temporary name and renamed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellsynth.errors import DataError
from cellsynth.files import atomic_path
from cellsynth.generation.chunks import ChunkStore
from cellsynth.generation.conditions import LabelRuns
from cellsynth.generation.h5ad_stream import StreamingH5ADWriter
from cellsynth.generation.options import OutputOptions
from cellsynth.generation.sampling import ChunkSampler


class ChunkCollector:
    """The chunks of one run, made in order and collected in memory or into a resumable file."""

    def __init__(
        self,
        sampler: ChunkSampler,
        codes: LabelRuns,
        chunks: list[tuple[int, int]],
        obs: pd.DataFrame,
        var: pd.DataFrame,
        counts: bool,
        provenance: dict[str, Any],
        reached: Callable[[float], None],
    ) -> None:
        self.sampler, self.codes, self.chunks = sampler, codes, chunks
        self.obs, self.var, self.counts = obs, var, counts
        self.provenance, self.reached = provenance, reached
        self.started = time.perf_counter()

    def _chunk(self, start: int, stop: int) -> dict[str, Any]:
        return self.sampler.chunk(self.codes, start, stop, self.counts)

    def in_memory(self) -> anndata.AnnData:
        blocks = []
        for start, stop in self.chunks:
            blocks.append(self._chunk(start, stop))
            self.reached(stop)
        self.provenance["seconds"] = round(time.perf_counter() - self.started, 3)
        X = sp.vstack([c["X"] for c in blocks], format="csr").astype(np.float32)
        layers = None
        if self.counts:
            layers = {"counts": sp.vstack([c["counts"] for c in blocks], format="csr")}
        return anndata.AnnData(
            X=X, obs=self.obs, var=self.var, layers=layers, uns={"cellsynth": self.provenance}
        )

    def to_file(
        self, output: OutputOptions, settings: Mapping[str, Any], n_genes: int
    ) -> anndata.AnnData:
        store = ChunkStore(output.out, settings, resume=output.resume)
        shapes = {"X": n_genes, **({"counts": n_genes} if self.counts else {})}
        reused = 0
        for start, stop in self.chunks:
            if store.has(start, stop, shapes):
                reused += 1
            else:
                store.save(start, stop, self._chunk(start, stop))
            self.reached(stop)
        self.provenance["seconds"] = round(time.perf_counter() - self.started, 3)
        # A resumed run says so: its seconds cover only the chunks made this time.
        self.provenance["resumed_chunks"] = [int(reused), len(self.chunks)]
        _assemble(output.out, store, self.chunks, self.obs, self.var, self.counts, self.provenance)
        store.remove()
        return anndata.read_h5ad(output.out, backed="r")


def _assemble(
    out: str | os.PathLike,
    store: ChunkStore,
    chunks: list[tuple[int, int]],
    obs: pd.DataFrame,
    var: pd.DataFrame,
    counts: bool,
    provenance: Mapping[str, Any],
) -> None:
    """Stream the stored chunks, in order, into ``out`` (temporary name, then renamed)."""
    with atomic_path(out) as tmp:
        writer = StreamingH5ADWriter(tmp, var, layers={"counts": np.int32} if counts else None)
        try:
            for start, stop in chunks:
                chunk = store.load(start)
                if chunk["X"].shape[0] != stop - start:
                    raise DataError(f"chunk at cell {start} in {store.path} is incomplete")
                writer.append(chunk["X"], {"counts": chunk["counts"]} if counts else None)
            writer.finish(obs, {"cellsynth": dict(provenance)})
        except BaseException:
            writer.abort()
            raise
