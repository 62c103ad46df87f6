"""Every public entry point of the C++ core survives fuzzed arguments (tests/fuzz_core.py).

The fuzzing runs in a subprocess so that a crash (segfault, abort) is a test failure with its
signal, not the end of the test session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("fuzz_core.py")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_core_entry_points_survive_fuzzed_arguments(seed: int) -> None:
    # 13 entry points x 800 examples: over 10,000 calls, about 20 s on one core.
    examples = int(os.environ.get("CELLSYNTH_FUZZ_EXAMPLES", "800"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", str(SCRIPT), str(examples), str(seed)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, (
        f"exit {done.returncode} (negative: killed by that signal)\n{done.stdout}\n{done.stderr}"
    )
    assert done.stdout.count(f": {examples} calls") == 13
