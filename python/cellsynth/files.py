"""Write outputs under a temporary name and rename them only when complete; hash files.

A crash, a full disk or Ctrl-C then leaves either the previous file or nothing under the final
name, never half an output that a later step would read as whole.

A temporary name carries the process and host that made it (``.NAME.partial-PID@HOST-RANDOM``),
so what kill -9 leaves behind can be proven an orphan later: the next write to the same name on
the same host removes partial files whose process is gone, and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata
import numpy as np

from cellsynth.errors import CellsynthError


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _temporary_sibling(final: Path) -> Path:
    # Same directory as the target so os.replace stays a rename on one file system; the suffix is
    # kept because some writers (anndata) look at it.
    owner = f"{os.getpid()}@{_host()}"
    return final.with_name(f".{final.stem}.partial-{owner}-{uuid.uuid4().hex[:8]}{final.suffix}")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_orphans(final: str | os.PathLike, quiet: bool = False) -> list[Path]:
    """Remove the partial files of ``final`` left by processes of this host that no longer run.

    Only names this module makes are considered, and only when their process is provably gone
    (same host, no such pid); a partial file of a live writer, of another host or of an older
    naming scheme is left alone. Returns what was removed (and says so on stderr unless quiet).
    """
    final = Path(final)
    return remove_orphans_in(final.parent, re.escape(final.stem), re.escape(final.suffix), quiet)


def remove_orphans_in(
    folder: str | os.PathLike, stem: str, suffix: str, quiet: bool = False
) -> list[Path]:
    """:func:`remove_orphans` for every output in ``folder`` whose stem and suffix match the
    regular expressions ``stem`` and ``suffix`` (one sweep for many files, e.g. chunks)."""
    folder = Path(folder)
    pattern = re.compile(
        rf"^\.(?:{stem})\.partial-(\d+)@([A-Za-z0-9_]+)-[0-9a-f]{{8}}(?:{suffix})$"
    )
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for sibling in folder.iterdir():
        m = pattern.match(sibling.name)
        if m is None or m.group(2) != _host() or _process_alive(int(m.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
        if not quiet:
            print(
                f"cellsynth: removed {sibling}, left by an interrupted run (process "
                f"{m.group(1)} is gone)",
                file=sys.stderr,
            )
    return removed


def check_output(
    path: str | os.PathLike, overwrite: bool, directory: bool = False, flag: str = "--out"
) -> Path:
    """Check an output path before any work is done; create missing parent folders, saying so.

    A file output must not be a directory; an existing output (for a directory: one that is not
    empty) is replaced only with ``overwrite``.
    """
    path = Path(path)
    if path.is_dir() and not directory:
        raise CellsynthError(f"{flag} {path} is a directory; name the output file inside it")
    if path.exists() and directory and not path.is_dir():
        raise CellsynthError(f"{flag} {path} is a file; name a directory for the outputs")
    occupied = path.exists() and (not directory or any(path.iterdir()))
    if occupied and not overwrite:
        what = "is not empty" if directory else "already exists"
        raise FileExistsError(f"{flag} {path} {what}; pass --overwrite to replace it")
    missing = path.parent
    if not missing.exists():
        while not missing.parent.exists():
            missing = missing.parent
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"cellsynth: created the folder {missing} for {flag}", file=sys.stderr)
    return path


@contextlib.contextmanager
def atomic_path(
    final: str | os.PathLike, overwrite: bool = True, sweep: bool = True
) -> Iterator[Path]:
    """Yield a temporary file path; on success it is renamed to ``final``, on error removed.

    ``sweep`` first removes the orphans of ``final`` (:func:`remove_orphans`); a writer of many
    files in one folder sweeps once itself and passes False.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        remove_orphans(final)
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
    remove_orphans(final)
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


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them.

    For writes that a Python exception must not cut in the middle (torch.save turns one raised
    inside its C++ writer into an unrelated RuntimeError): the signal takes effect right after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum, frame in caught[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif signum == signal.SIGINT and handler == signal.default_int_handler:
                raise KeyboardInterrupt


def default_file_mode() -> int:
    """The mode a plain new file gets here (0666 less the umask), for files written 0600."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


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


def strict_json(obj: Any) -> Any:
    """obj with NaN / inf -> None and numpy scalars / arrays / paths as plain Python."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (NaN / inf as null, see :func:`strict_json`), atomically."""
    import json

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(strict_json(obj), indent=1, allow_nan=False) + "\n")
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically (a reader never sees half a report)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
