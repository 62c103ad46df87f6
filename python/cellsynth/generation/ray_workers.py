"""The Ray side of :mod:`cellsynth.generation.distributed`: shard workers that keep their engine
loaded, and progress reported per batch.

One actor per worker runs shard after shard (a Ray task per shard would open the engine for each
one: an onnxruntime session in a fraction of a second, a TensorRT engine in much longer) inside
:func:`cellsynth.generation.engine_pool.keep_engines`. A killed actor process is restarted by Ray
(``max_restarts``) and the shard it was running is run again (``max_task_retries``), resuming
from the chunks its first attempt finished. Each worker reports the cells of its shard done so
far to a small progress actor at most every ``REPORT_S`` seconds (after every denoising step
otherwise, far too often to send); the driver reads the total while it waits, so the one bar
moves within batches, not only when a shard ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cellsynth.errors import CellsynthError

REPORT_S = 0.5
WAIT_S = 0.5
#: Seconds without any worker started after which the driver says the cluster may be too small.
START_WARNING_S = 60.0


class ShardWorker:
    """A Ray actor (made remote by :func:`run_shards`) that runs shards with its engines kept."""

    def __init__(self) -> None:
        from cellsynth.generation.engine_pool import keep_engines

        self._keep = keep_engines()  # held for the actor's life; its engines die with it
        self._keep.__enter__()

    def ready(self) -> bool:
        """Answers once the actor runs: only then is it given a shard."""
        return True

    def run(
        self,
        bundle: str,
        n_cells: int,
        k: int,
        n: int,
        path: str,
        options: Mapping[str, Any],
        progress: Any,
    ) -> int:
        """Shard ``k`` of ``n`` into ``path`` (the chunked, resumable single-process writer);
        its cells done so far are sent to ``progress`` (a :class:`Progress` actor) while it
        runs; the driver reports the finished shard itself."""
        import anndata as ad

        import cellsynth

        if Path(path).is_file():  # a retry of an attempt that died after finishing its file
            return int(ad.read_h5ad(path, backed="r").n_obs)
        adata = cellsynth.generate(
            bundle,
            n_cells=n_cells,
            shard=(k, n),
            out=path,
            resume=True,
            progress=False,
            on_progress=_throttled(lambda done: progress.report.remote(k, done)),
            **options,
        )
        rows = adata.n_obs
        adata.file.close()
        return rows


class Progress:
    """A Ray actor: the most cells each shard has reported done."""

    def __init__(self) -> None:
        self.done: dict[int, int] = {}

    def report(self, shard: int, cells: int) -> None:
        self.done[shard] = max(self.done.get(shard, 0), int(cells))

    def total(self) -> int:
        return sum(self.done.values())


def _throttled(send: Callable[[int], Any]) -> Callable[[int], None]:
    last = [0.0]

    def report(done: int) -> None:
        now = time.monotonic()
        if now - last[0] >= REPORT_S:
            last[0] = now
            send(done)

    return report


def run_shards(
    ray: Any,
    todo: list[dict[str, Any]],
    submit: dict[str, Any],
    resources: dict[str, Any],
    parts_dir: Path,
    bar: Any,
) -> None:
    """Run the shards of ``todo`` on up to ``resources['workers']`` actors, one shard at a time
    each, moving ``bar`` (already at the cells of finished shards) as cells are done.

    ``submit`` holds the arguments every shard shares (bundle, n_cells, shards, options);
    ``resources`` the workers and each one's CPUs, GPUs and retries. A worker is given a shard
    only once it has started, so a worker the cluster has no room for never holds one (the
    others do all the shards). The first failure stops the others and says how to resume.
    """
    worker_class = ray.remote(
        num_cpus=resources["cpus"],
        num_gpus=resources["gpus"],
        max_restarts=-1,  # a dead worker is always restarted; its shard is rerun max_retries times
        max_task_retries=resources["max_retries"],
    )(ShardWorker)
    # The bar is cosmetic: its actor is restarted wherever Ray likes and never fails the run.
    progress = ray.remote(num_cpus=0, max_restarts=-1)(Progress).remote()
    workers = [worker_class.remote() for _ in range(min(resources["workers"], len(todo)))]
    starting = {w.ready.remote(): w for w in workers}
    queue, pending = list(todo), {}
    start, finished, asked = bar.n, 0, time.monotonic()

    def give(worker: Any) -> None:
        shard = queue.pop(0)
        path = str(parts_dir / shard["file"])
        ref = worker.run.remote(submit["bundle"], submit["n_cells"], shard["index"],
                                submit["shards"], path, submit["options"], progress)  # fmt: skip
        pending[ref] = (shard, worker)

    try:
        while pending or queue:
            waiting = [*pending, *starting]
            ready, _ = ray.wait(waiting, num_returns=1, timeout=WAIT_S)
            for ref in ready:
                if ref in starting:
                    worker = starting.pop(ref)
                    _started(ray, ref)
                else:
                    shard, worker = pending.pop(ref)
                    cells = _result(ray, ref, shard, parts_dir)
                    finished += cells
                    progress.report.remote(shard["index"], cells)  # ordered before total()
                if queue:
                    give(worker)
            if pending:
                asked = None
            elif asked is not None and time.monotonic() - asked > START_WARNING_S:
                _say_no_worker(resources)
                asked = None
            bar.update(max(0, start + _total(ray, progress, finished) - bar.n))
    finally:
        # Killing an actor stops the shard it is running (actor tasks cannot be force-cancelled)
        # and frees its engine.
        for actor in [*workers, progress]:
            ray.kill(actor)


def _started(ray: Any, ref: Any) -> None:
    try:
        ray.get(ref)
    except Exception as exc:
        raise CellsynthError(f"a Ray worker failed to start: {_one_line(exc)}") from exc


def _total(ray: Any, progress: Any, finished: int) -> int:
    """Cells done as the workers reported them (at least those of finished shards)."""
    try:
        return max(finished, int(ray.get(progress.total.remote(), timeout=10)))
    except Exception:  # the progress actor lost or restarting: count finished shards
        return finished


def _say_no_worker(resources: dict[str, Any]) -> None:
    print(
        f"cellsynth: no Ray worker has started after {START_WARNING_S:.0f} s: the cluster may "
        f"not have the {resources['cpus']} CPU(s) and {resources['gpus']:g} GPU(s) one worker "
        "reserves (see `ray status`); still waiting",
        file=sys.stderr,
        flush=True,
    )


def _result(ray: Any, ref: Any, shard: dict[str, Any], parts_dir: Path) -> int:
    try:
        return int(ray.get(ref))
    except Exception as exc:  # a RayTaskError wraps the worker's exception
        raise CellsynthError(
            f"shard {shard['index']} (cells {shard['cells'][0]}..{shard['cells'][1] - 1}) "
            f"failed: {_one_line(exc)}; the finished shards are kept in {parts_dir}: run "
            "the same command again to resume"
        ) from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[-400:] if len(text) > 400 else text
