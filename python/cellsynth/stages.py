"""One line on stderr per stage a user waits on, so no long step of a command is a silent one."""

from __future__ import annotations

import sys


def say_stage(what: str, show: bool = True) -> None:
    """Print ``cellsynth: WHAT ...`` to stderr (flushed at once); nothing when ``show`` is False."""
    if show:
        print(f"cellsynth: {what} ...", file=sys.stderr, flush=True)
