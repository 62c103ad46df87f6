"""Make the scRDiT paper config (random weights, kang-dit's genes and labels) with an fp32 ONNX
export, for benchmarks/gpu_check.sh: ``python benchmarks/gpu/paper_bundle.py OUT_DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import paper_bundle  # noqa: E402

import cellsynth  # noqa: E402
from cellsynth.export.onnx import export_onnx  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    bundle = paper_bundle(cellsynth.load_bundle("kang-dit"), out, seed=0)
    export_onnx(bundle, progress=False)
    print(bundle.path)


if __name__ == "__main__":
    main()
