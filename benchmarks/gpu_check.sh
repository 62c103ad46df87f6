#!/usr/bin/env bash
# One GPU check anyone can run in one go, on a machine with an NVIDIA GPU and no network:
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default: benchmarks/results/gpu)
# 1. builds cellsynth with its CUDA kernels (CELLSYNTH_CUDA=ON, no build isolation, offline),
# 2. runs the GPU tests (CUDA kernels vs the CPU path, TensorRT fp32/fp16 vs onnxruntime, the
#    captured CUDA-graph loop vs the plain loop, onnxruntime-CUDA vs CPU),
# 3. runs `cellsynth bench` on kang-dit and on the scRDiT paper config (random weights): torch
#    eager vs torch with CUDA graphs vs onnxruntime-CUDA vs TensorRT fp16 (captured loop), batch
#    256-4096, DDIM 50 and DPM-Solver++ 20,
# and writes every log, table and figure to OUT_DIR (summary.md first). A missing TensorRT or
# onnxruntime-gpu is not a failure: those rows are listed as skipped with the reason. It takes
# no input and is sized for under 8 minutes on an H100-class GPU. Python packages the machine
# lacks may be supplied as wheels in .whl/ (installed to /tmp/site first). For an image with
# Python 3.12, torch, onnxruntime, h5py, pandas, scipy, scikit-build-core and pybind11 but no
# anndata or POT (the lent H200 image), make them where pip works with:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl anndata==0.12.19 zarr==3.1.6 numcodecs==0.16.6 \
#     scverse-misc==0.0.3 session-info2 donfig==0.8.1.post1 google-crc32c==1.9.0 \
#     legacy-api-wrap==1.5 array-api-compat==1.16.0 natsort==8.4.0 POT==0.9.7.post1   (~43 MB)
# (without POT the tiny test bundle cannot be trained and six error-path tests error at setup).
# CMAKE_ARGS=-DCMAKE_CUDA_ARCHITECTURES=90 builds for Hopper (H100/H200) alone, in ~20 s.
# On a lent device machine, whose output folder returns at most 8 files, pack the folder:
#   bash benchmarks/gpu_check.sh /tmp/gpu; tar czf "$OUT/gpu.tgz" -C /tmp gpu
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks/results/gpu}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0
step() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT_DIR/summary.log"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  step "installing the carried wheels into /tmp/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >"$OUT_DIR/wheels.log" 2>&1 || status=1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step "machine"
{
  nvidia-smi || echo "nvidia-smi failed"
  "$PY" -c 'import sys; print(sys.version)'
  "$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|onnxruntime|onnxruntime-gpu|tensorrt|numpy|anndata) "
} >"$OUT_DIR/machine.txt" 2>&1

step "build with CUDA"
if CELLSYNTH_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-8} \
  "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . \
  -Ceditable.mode=redirect -Cbuild-dir=build/gpu >"$OUT_DIR/build.log" 2>&1; then
  "$PY" -c 'from cellsynth import _core; print("cuda compiled:", _core.cuda_compiled,
"devices:", _core.cuda_device_count(), _core.cuda_device_name(0) if _core.cuda_device_count() else "")' \
    | tee -a "$OUT_DIR/summary.log"
else
  step "BUILD FAILED (see build.log)"; status=1
fi

step "GPU tests"
# Whole files: the CUDA step and count kernels' tests skip by themselves without a device.
# With pytest-xdist, a test that crashes the interpreter fails alone instead of ending the run.
PARALLEL=()
"$PY" -c "import xdist" 2>/dev/null && PARALLEL=(-n 4)
# ${a[@]+...}: an empty array is "unbound" under set -u in bash before 4.4.
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -o addopts="-ra" ${PARALLEL[@]+"${PARALLEL[@]}"} \
  --junitxml="$OUT_DIR/gpu_tests.xml" tests/test_gpu_engines.py tests/test_core_step.py \
  tests/test_core_counts.py tests/test_core_symbols.py >"$OUT_DIR/gpu_tests.log" 2>&1 || status=1
tail -n 3 "$OUT_DIR/gpu_tests.log" | tee -a "$OUT_DIR/summary.log"

BENCH=(--engine torch-eager,torch,onnxruntime,tensorrt --device cuda --precision fp32,fp16
       --scheduler ddim:50 dpmsolver++:20 --repeats 5 --overwrite)
step "bench kang-dit"
timeout 150 "$PY" -m cellsynth.cli.main bench kang-dit "${BENCH[@]}" --batch-size 256,1024,4096 \
  --budget-s 4 --out "$OUT_DIR/kang-dit" >"$OUT_DIR/bench-kang-dit.log" 2>&1 || status=1

step "bench paper config"
PAPER=$(mktemp -d)/bundles
if "$PY" benchmarks/gpu/paper_bundle.py "$PAPER" >"$OUT_DIR/paper-bundle.log" 2>&1; then
  timeout 180 "$PY" -m cellsynth.cli.main bench "$PAPER/paper" "${BENCH[@]}" \
    --batch-size 256,1024 --budget-s 6 --out "$OUT_DIR/paper" >"$OUT_DIR/bench-paper.log" 2>&1 \
    || status=1
else
  step "paper bundle could not be made (see paper-bundle.log)"; status=1
fi

step "summary"
{
  echo "# GPU check, $(date -u +%Y-%m-%d)"
  echo
  echo '```'; cat "$OUT_DIR/machine.txt"; echo '```'
  echo; echo "## Steps"; echo; echo '```'; cat "$OUT_DIR/summary.log"; echo '```'
  for b in kang-dit paper; do
    [ -f "$OUT_DIR/$b/bench.md" ] && { echo; sed 's/^# /## /' "$OUT_DIR/$b/bench.md"; }
  done
} >"$OUT_DIR/summary.md"
echo "exit status $status; everything is in $OUT_DIR (summary.md first)"
exit $status
