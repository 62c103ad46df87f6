"""Generation on a Ray cluster: one run cut into shards, run by Ray actors that keep their engine
loaded, cells identical to a single-process run.

``generate(bundle, n_cells, out, ...)`` cuts the run into shards on the batch grid (the shard
logic of ``cellsynth sample --shard k/N``: every shard's batches are the whole run's batches, so
each cell is denoised in the same batch at the same row with the same keyed noise). One actor per
worker (:mod:`cellsynth.generation.ray_workers`) runs shard after shard with its engine kept
open, each shard into its own .h5ad under ``out`` through the chunked, resumable writer of
:func:`cellsynth.generate`; the workers report their cells done per batch and one progress bar
shows the total. An actor whose process dies (a killed process, a lost node) is restarted by Ray
and its shard run again (``max_retries``), resuming from the chunks its first attempt finished;
each chunk proves its settings and cells, and what the dead process half-wrote is removed, so a
retried shard is still bit-identical. An error in the work itself (bad input) is not retried: it
stops the run and is reported naming the shard.

Two outputs, the user's choice:

- ``out`` ending in ``.h5ad``: the shards are merged into one file in bounded memory (row blocks
  streamed from the shard files; obs is held whole), then removed;
- a directory: ``part-KKKKK-of-NNNNN.h5ad`` files and ``manifest.json`` (settings, cells of each
  shard). :func:`read` reads either back with one call.

Every worker must see ``out`` and the bundle at the same paths (a shared file system on a
cluster; any local folder on one machine), and a composition given as a path.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthError, DataError, MissingDependencyError
from cellsynth.files import atomic_path, check_output
from cellsynth.generation.options import (
    RuntimeOptions,
    SamplingOptions,
    flat_options,
    group_options,
)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "cellsynth-shards"
#: Cells per shard when the number of shards is not given: small enough that a retry costs
#: little and the bar of finished shards moves, large enough that per-shard work (a file, its
#: chunk folder, the merge) is negligible.
SHARD_CELLS = 100_000
MERGE_ROWS = 8192

__all__ = ["generate", "read"]


def generate(
    bundle: str | os.PathLike,
    n_cells: int,
    out: str | os.PathLike,
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    shards: int | None = None,
    max_retries: int = 3,
    overwrite: bool = False,
    progress: bool = True,
    sampling: SamplingOptions | None = None,
    runtime: RuntimeOptions | None = None,
    **options: Any,
) -> Path:
    """Generate ``n_cells`` on Ray and write them to ``out`` (.h5ad file or shard directory).

    Parameters
    ----------
    bundle : bundle name or path (every worker must be able to load it)
    n_cells : cells of the whole run
    out : ``*.h5ad`` (one merged file) or a directory (shard files and manifest.json)
    address : Ray address of an existing cluster ('auto', 'ray://host:10001', ...); None starts
        (or joins, if one is running in this process) a local one
    workers : shards run at once, one Ray actor each (default: the cluster's CPUs / threads per
        worker, and no more than its GPUs / ``gpus_per_worker``)
    gpus_per_worker : GPUs each worker reserves for the whole run (fractions share one GPU)
    shards : number of shards (default: enough for about 100,000 cells each, at least 2 per
        worker); a shard holds whole batches
    max_retries : times a shard is run again after its worker died (Ray restarts the worker)
    overwrite : replace an existing ``out`` (otherwise an existing output is an error; an
        unfinished run of the same settings is resumed)
    sampling, runtime : the options of :func:`cellsynth.generate` as groups, or
    options : the same as flat keywords (steps, scheduler, seed, conditions, composition as a
        path, batch_size, engine, device, precision, threads, counts, mean, guidance, eta,
        chunk_size, ...); ``threads`` defaults to the CPUs of a task

    Returns
    -------
    Path of the output (read it with :func:`read`).
    """
    ray = _require_ray()
    from cellsynth.bundle.load import load_bundle

    forbidden = {"out", "shard", "resume", "overwrite", "progress", "on_progress", "n_cells"}
    forbidden &= set(options)
    if forbidden:
        raise DataError(f"distributed.generate sets {sorted(forbidden)} itself; drop them")
    # Bad options and a bad bundle fail here, not in every worker.
    sampling, runtime, output = group_options(options, sampling, runtime)
    options = {**flat_options(sampling, runtime), "chunk_size": output.chunk_size}
    b = load_bundle(bundle)
    if not (isinstance(n_cells, int) and n_cells >= 1):
        raise DataError(f"n_cells must be a whole number >= 1, got {n_cells!r}")
    batch = sampling.batch_size
    out = Path(out)
    merged = out.suffix == ".h5ad"
    parts_dir = out.with_name(out.name + ".shards") if merged else out
    started_before = (parts_dir / MANIFEST).is_file()
    if not started_before or overwrite:
        check_output(out, overwrite, directory=not merged)
    if overwrite and parts_dir.exists() and merged:
        _remove_parts(parts_dir)
    _connect(ray, address)
    workers, cpus = _workers(ray, workers, options.get("threads"), gpus_per_worker)
    options = {**options, "threads": int(options.get("threads") or cpus)}
    if options.get("engine", "auto") == "auto":
        # Chosen once here, so that every shard runs the same engine (the cells are the
        # engine's): a per-shard measurement, with the other shards busy on the same cores,
        # could choose differently from shard to shard.
        from cellsynth.backends import choose_engine

        engine, device, _ = choose_engine(b, options.get("device", "auto"))
        options.update(engine=engine, device=device)
    n_batches = -(-n_cells // batch)
    if shards is None:
        shards = max(2 * workers, math.ceil(n_cells / SHARD_CELLS))
    shards = int(min(shards, n_batches))
    if shards < 1:
        raise DataError(f"shards must be >= 1, got {shards}")
    plan = _plan(b, n_cells, shards, batch, options)
    manifest = _manifest(b, n_cells, plan, options)
    _start_or_resume(parts_dir, manifest, overwrite)

    todo = [p for p in plan if not (parts_dir / p["file"]).is_file()]
    done_cells = sum(p["cells"][1] - p["cells"][0] for p in plan if p not in todo)
    from tqdm.auto import tqdm

    from cellsynth.generation.ray_workers import run_shards

    if progress:  # before the bar, so the line is not written over it
        print(
            f"cellsynth: {shards} shards of ~{n_cells // shards} cells on Ray ({workers} at "
            f"once, {cpus} CPU and {gpus_per_worker:g} GPU each, {options['threads']} threads); "
            f"{shards - len(todo)} already done",
            file=sys.stderr,
            flush=True,
        )
    bar = tqdm(total=n_cells, initial=done_cells, desc="sampling on ray", unit="cell",
               disable=not progress, file=sys.stderr)  # fmt: skip
    started = time.perf_counter()
    submit = {"bundle": str(b.path), "n_cells": n_cells, "shards": shards, "options": options}
    resources = {"workers": workers, "cpus": cpus, "gpus": gpus_per_worker,
                 "max_retries": max_retries}  # fmt: skip
    try:
        run_shards(ray, todo, submit, resources, parts_dir, bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    manifest["seconds"] = round(seconds, 3)
    manifest["workers"] = workers
    _write_json(parts_dir / MANIFEST, manifest)
    if merged:
        _merge(parts_dir, manifest, out, overwrite)
        _remove_parts(parts_dir)
    return out


def _workers(
    ray: Any, workers: int | None, threads: int | None, gpus_per_worker: float
) -> tuple[int, int]:
    """(workers, CPUs each): by default as many as the cluster's CPUs hold at ``threads`` each
    and, with GPUs asked for, no more than its GPUs hold (one that fits nowhere waits for ever)."""
    resources = ray.cluster_resources()
    cluster_cpus = int(resources.get("CPU", 1))
    if workers is None:
        workers = max(1, cluster_cpus // int(threads or 1)) if threads else cluster_cpus
        if gpus_per_worker > 0:
            cluster_gpus = float(resources.get("GPU", 0))
            if cluster_gpus < gpus_per_worker:
                raise DataError(
                    f"each worker asks for {gpus_per_worker:g} GPU(s), but the Ray cluster has "
                    f"{cluster_gpus:g}"
                )
            workers = min(workers, int(cluster_gpus // gpus_per_worker))
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    return workers, max(1, cluster_cpus // workers)


def _connect(ray: Any, address: str | None) -> None:
    """Join the cluster at ``address``, or start (or join, in this process) a local one."""
    if ray.is_initialized():
        return
    if address is None:  # a local cluster of this machine
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)


def read(path: str | os.PathLike, backed: bool = False) -> Any:
    """An output of :func:`generate`: the merged .h5ad (``backed`` opens it read-only on disk),
    or a shard directory's files concatenated in cell order (in memory) with the manifest's
    provenance in ``uns['cellsynth']``."""
    import anndata as ad

    path = Path(path)
    if path.is_file():
        return ad.read_h5ad(path, backed="r" if backed else None)
    manifest = _read_manifest(path)
    if manifest is None:
        raise DataError(f"{path} is neither an .h5ad file nor a shard directory with {MANIFEST}")
    missing = [s["file"] for s in manifest["shards"] if not (path / s["file"]).is_file()]
    if missing:
        raise DataError(f"{path} is incomplete: {len(missing)} shard files missing ({missing[0]})")
    parts = [ad.read_h5ad(path / s["file"]) for s in manifest["shards"]]
    whole = ad.concat(parts, join="outer", merge="first")
    whole.uns["cellsynth"] = _merged_provenance(parts[0].uns.get("cellsynth", {}), manifest)
    return whole


# --------------------------------------------------------------------------------- the plan


def _plan(b: Any, n_cells: int, shards: int, batch: int, options: Mapping[str, Any]) -> list:
    width = len(str(shards))
    plan = []
    for k in range(shards):
        lo, hi = _cells_of(n_cells, k, shards, batch)
        if lo == hi:  # boundaries fall on whole batches, so a small run leaves some shards empty
            continue
        name = f"part-{k:0{max(5, width)}d}-of-{shards:0{max(5, width)}d}.h5ad"
        plan.append({"index": k, "file": name, "cells": [lo, hi]})
    return plan


def _cells_of(n_cells: int, k: int, shards: int, batch: int) -> tuple[int, int]:
    """Cells [lo, hi) of shard k of ``shards``: ``--shard k/N``'s, or an empty range."""
    from cellsynth.generation.shards import shard_range

    try:
        return shard_range(n_cells, (k, shards), align=batch)
    except DataError:  # "shard k/N is empty"
        return 0, 0


def _manifest(b: Any, n_cells: int, plan: list, options: Mapping[str, Any]) -> dict[str, Any]:
    from cellsynth._version import __version__

    return {
        "format": MANIFEST_FORMAT,
        "cellsynth_version": __version__,
        "bundle": str(b.path),
        "bundle_hash": b.hash,
        "n_cells": int(n_cells),
        # The settings that determine the cells; a resumed run must match them.
        "options": _plain({k: v for k, v in options.items() if k != "threads"}),
        "shards": plan,
    }


def _start_or_resume(parts_dir: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Write the manifest of a new run, or check that an unfinished one is this run."""
    previous = _read_manifest(parts_dir)
    keys = ("bundle_hash", "n_cells", "options", "shards")
    if previous is not None and not overwrite:
        differ = [k for k in keys if previous.get(k) != manifest.get(k)]
        if differ:
            raise CellsynthError(
                f"{parts_dir} holds a run with other settings ({', '.join(differ)} differ); "
                "pass overwrite=True (--overwrite) to start over"
            )
        return
    if overwrite and parts_dir.is_dir():
        import shutil

        # Shard files, their chunk folders (with run.json) and temporary files of an earlier run.
        for p in [*parts_dir.glob("part-*"), *parts_dir.glob(".part-*")]:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    parts_dir.mkdir(parents=True, exist_ok=True)
    _write_json(parts_dir / MANIFEST, manifest)


# ------------------------------------------------------------------------------------ merge


def _merge(parts_dir: Path, manifest: dict[str, Any], out: Path, overwrite: bool) -> None:
    """Stream the shard files' rows into one .h5ad (bounded memory: one block of rows at a time,
    and the obs table)."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import read_elem

    from cellsynth.generation.h5ad_stream import StreamingH5ADWriter

    files = [parts_dir / s["file"] for s in manifest["shards"]]
    with h5py.File(files[0], "r") as first:
        var = read_elem(first["var"])
        layers = {name: first["layers"][name]["data"].dtype for name in first["layers"]}
        x_dtype = first["X"]["data"].dtype
        uns = read_elem(first["uns"])
    obs = []
    with atomic_path(out, overwrite=overwrite) as tmp:
        writer = StreamingH5ADWriter(tmp, var, x_dtype=x_dtype, layers=layers)
        try:
            for path in files:
                with h5py.File(path, "r") as f:
                    rows = int(f["X"]["indptr"].shape[0] - 1)
                    for a in range(0, rows, MERGE_ROWS):
                        b = min(rows, a + MERGE_ROWS)
                        writer.append(
                            _csr_rows(f["X"], a, b),
                            {name: _csr_rows(f["layers"][name], a, b) for name in layers},
                        )
                    obs.append(read_elem(f["obs"]))
            provenance = _merged_provenance(uns.get("cellsynth", {}), manifest)
            writer.finish(pd.concat(obs), {**uns, "cellsynth": provenance})
        except BaseException:
            writer.abort()
            raise
    ad.read_h5ad(out, backed="r").file.close()  # it reads back before the shards go


def _csr_rows(group: Any, a: int, b: int) -> Any:
    """Rows [a, b) of a CSR matrix stored in an HDF5 group, read from disk alone."""
    import scipy.sparse as sp

    indptr = group["indptr"][a : b + 1].astype(np.int64)
    lo, hi = int(indptr[0]), int(indptr[-1])
    n_cols = int(group.attrs["shape"][1])
    return sp.csr_matrix(
        (group["data"][lo:hi], group["indices"][lo:hi], indptr - lo), shape=(b - a, n_cols)
    )


def _merged_provenance(first: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Shard 0's provenance made the whole run's: all cells, no shard, how it was distributed."""
    merged = dict(first)
    merged.update(
        shard=None,
        cells=[0, int(manifest["n_cells"])],
        n_cells=int(manifest["n_cells"]),
        seconds=manifest.get("seconds"),
        distributed={
            "on": "ray",
            "shards": len(manifest["shards"]),
            "workers": manifest.get("workers"),
        },
    )
    return merged


# ---------------------------------------------------------------------------------- helpers


def _require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            "generation on Ray needs the ray package: pip install 'cellsynth[ray]' (after "
            "pip install torch==2.13.0 where torch is wanted)"
        ) from exc
    return ray


def _read_manifest(parts_dir: Path) -> dict[str, Any] | None:
    path = parts_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is corrupt: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path} is not a cellsynth shard manifest")
    return manifest


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _remove_parts(parts_dir: Path) -> None:
    import shutil

    if parts_dir.is_dir():
        shutil.rmtree(parts_dir)


def _plain(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))
