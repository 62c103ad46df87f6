"""Opened engines kept for the next run in the same process (``keep_engines``).

Opening an engine costs from a tenth of a second (an onnxruntime session) to minutes (a TensorRT
build on a cold cache). A process that runs many generations of the same bundle, a Ray actor
running shard after shard, keeps them open: inside ``with keep_engines():`` every
:func:`cellsynth.generate` that names its engine (not 'auto', whose choice depends on the run)
reuses the engine an earlier run opened with the same bundle, engine, device, weights,
precision and threads, and leaves it open for the next; they are closed when the block ends.
Outside the block each run opens and closes its own, as always. An engine holds no state from
one batch to the next that changes the cells (sessions, weights, captured graphs keyed by their
shapes), so reuse gives the same cells.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_pool: dict[tuple, tuple[Any, Any, str]] | None = None


@contextmanager
def keep_engines() -> Iterator[None]:
    """Reuse engines across the generations run inside the block; close them at its end."""
    global _pool
    outer, _pool = _pool, {} if _pool is None else _pool
    try:
        yield
    finally:
        if outer is None:
            opened, _pool = _pool, None
            for denoiser, decoder, _ in opened.values():
                release(denoiser, decoder, force=True)


def load(loader: Callable[..., tuple[Any, Any, str]], bundle: Any, **how: Any) -> tuple:
    """``loader(bundle, **how)``, or the engine an earlier run in the block opened that way."""
    if _pool is None or how.get("engine") == "auto":
        return loader(bundle, **how)
    key = (
        bundle.hash,
        str(bundle.path),
        *(str(how.get(k)) for k in ("engine", "device", "weights", "precision", "threads")),
    )
    if key not in _pool:
        _pool[key] = loader(bundle, **how)
    return _pool[key]


def release(denoiser: Any, decoder: Any, force: bool = False) -> None:
    """Close a run's engine, unless the pool keeps it for the next run."""
    if not force and _pool is not None and any(e[0] is denoiser for e in _pool.values()):
        return
    denoiser.close()
    if decoder is not None:
        decoder.close()
