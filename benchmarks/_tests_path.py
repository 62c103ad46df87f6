"""Put tests/ on sys.path: the PyTorch reference sampler is a test oracle
(tests/reference_sampler.py), not part of the package, and one benchmark times it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
