"""Where a run's cells fall: shards of a run and chunks of a shard, on one global grid.

Every boundary is a multiple of the batch size (a run's last cell excepted), so every cell is
denoised in the same batch at the same row whether the run is whole, sharded or chunked.
"""

from __future__ import annotations

from cellsynth.errors import DataError


def shard_range(n_cells: int, shard: tuple[int, int] | None, align: int = 1) -> tuple[int, int]:
    """Global cell indices [lo, hi) of shard ``(k, N)`` (0-based k); all cells when None.

    Boundaries ``k * n_cells // N`` are rounded down to multiples of ``align`` (the batch size),
    so a shard's batches are the unsharded run's batches.
    """
    if shard is None:
        return 0, n_cells
    try:
        k, n = (int(v) for v in shard)
    except (TypeError, ValueError) as exc:
        raise DataError(f"shard must be (k, N) with 0 <= k < N, got {shard!r}") from exc
    if not 0 <= k < n:
        raise DataError(f"shard must be (k, N) with 0 <= k < N, got {shard!r}")

    def boundary(i: int) -> int:
        return n_cells if i == n else (i * n_cells // n) // align * align

    lo, hi = boundary(k), boundary(k + 1)
    if lo == hi:
        raise DataError(
            f"shard {k}/{n} is empty: {n_cells} cells in batches of {align} do not fill {n} "
            "shards; use fewer shards or a smaller batch size"
        )
    return lo, hi


def chunk_bounds(lo: int, hi: int, chunk_size: int) -> list[tuple[int, int]]:
    """Chunks [start, stop) covering [lo, hi), cut at global multiples of ``chunk_size``."""
    cuts = [lo, *range((lo // chunk_size + 1) * chunk_size, hi, chunk_size), hi]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def parse_shard(text: str) -> tuple[int, int]:
    """Parse the CLI's ``k/N``."""
    k, sep, n = text.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise DataError(f"--shard expects k/N with 0 <= k < N (e.g. 0/4), got {text!r}")
    if not int(k) < int(n):
        raise DataError(f"--shard expects k/N with 0 <= k < N (e.g. 0/4), got {text!r}")
    return int(k), int(n)
