"""engine='auto' on the CPU: the engine measured fastest, cached per bundle, machine and run."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import cellsynth
from cellsynth.backends import calibration
from cellsynth.backends.base import Denoiser

RUN = dict(n_cells=400, steps=50, seed=1, batch_size=64, progress=False, threads=1)


class _Sleepy(Denoiser):
    """A denoiser whose every call takes ``seconds`` per cell (for the choice, not the cells)."""

    def __init__(self, name: str, seconds: float, calls: list) -> None:
        super().__init__()
        self.name, self.seconds, self.calls = name, seconds, calls

    def __call__(self, x_t, timesteps, labels):
        self.calls.append(self.name)
        time.sleep(self.seconds * len(x_t))
        return np.zeros_like(x_t)


def _choose(bundle, speeds, batch_size=64, n_cells=1000, steps=50, **where):
    calls: list[str] = []

    def load(name):
        return _Sleepy(name, speeds[name], calls), None

    engine, why, record = calibration.choose_by_speed(
        bundle, list(speeds), load, batch_size, steps, n_cells, threads=1, **where
    )
    return engine, why, record, calls


def test_the_faster_engine_wins_and_the_answer_is_cached(tiny_onnx_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(tmp_path))
    bundle = cellsynth.load_bundle(tiny_onnx_bundle)
    engine, why, record, calls = _choose(bundle, {"onnxruntime": 2e-4, "torch": 2e-5})
    assert engine == "torch" and record["calibrated"] and not record["cached"]
    assert record["cells"] == 64 and record["steps"] == 50
    per_cell = record["seconds_per_cell"]
    assert per_cell["torch"] < per_cell["onnxruntime"]
    assert 50 * 2e-4 <= per_cell["onnxruntime"] < 50 * 2e-3  # steps x the model's cost per cell
    # One warm-up and three timed runs of the denoising loop per engine.
    loops = (1 + calibration.TIMED_CALLS) * calibration.CALIBRATION_STEPS
    assert calls.count("torch") == calls.count("onnxruntime") == loops
    assert why.startswith("measured fastest on this CPU: torch ") and "64 cells timed now" in why
    # Same bundle, machine and run: the cache answers, nothing is timed again, even if the
    # engines would now compare the other way.
    engine, why, record, calls = _choose(bundle, {"onnxruntime": 0.0, "torch": 1e-3})
    assert engine == "torch" and record["cached"] and calls == [] and why.endswith("(cached)")
    # The cache keeps call times: another step count is decided from them without timing.
    _, _, record, calls = _choose(bundle, {"onnxruntime": 0.0, "torch": 1e-3}, steps=10)
    assert calls == [] and record["cached"] and record["steps"] == 10
    assert record["seconds_per_cell"]["torch"] == pytest.approx(per_cell["torch"] / 5)
    # Another batch size is another question.
    engine, _, record, calls = _choose(bundle, {"onnxruntime": 0.0, "torch": 1e-3}, batch_size=32)
    assert engine == "onnxruntime" and not record["cached"] and record["cells"] == 32


def test_guidance_is_timed_and_cached_apart(tiny_onnx_bundle, tmp_path, monkeypatch):
    """Guidance doubles the rows of every model call: a guided run is measured as such."""
    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(tmp_path))
    bundle = cellsynth.load_bundle(tiny_onnx_bundle)
    speeds = {"onnxruntime": 1e-4, "torch": 3e-4}
    _, _, plain, _ = _choose(bundle, speeds)
    _, _, guided, calls = _choose(bundle, speeds, guidance=2.0)
    assert calls and not guided["cached"]  # not the unguided answer from the cache
    ratio = guided["seconds_per_cell"]["torch"] / plain["seconds_per_cell"]["torch"]
    assert 1.6 < ratio < 2.4
    _, _, again, calls = _choose(bundle, speeds, guidance=3.0)
    assert again["cached"] and calls == []  # any guidance != 1 doubles the rows alike


def test_on_a_gpu_the_gpu_engines_are_measured(tiny_onnx_bundle, tmp_path, monkeypatch):
    """On a GPU auto measures TensorRT, onnxruntime-gpu and torch CUDA (where each is present)."""
    import cellsynth.backends as backends

    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(tmp_path))
    bundle = cellsynth.load_bundle(tiny_onnx_bundle)
    monkeypatch.setattr(backends, "_has_module", lambda name: True)
    monkeypatch.setattr(backends, "_ort_cuda", lambda: True)
    monkeypatch.setattr(backends, "_torch_cuda", lambda: True)
    monkeypatch.setattr(backends, "_cuda_device_count", lambda: 1)
    assert backends.engine_candidates(bundle, "cuda:0") == ["tensorrt", "onnxruntime", "torch"]
    assert backends.engine_candidates(bundle, "cpu") == ["onnxruntime", "torch"]
    monkeypatch.setattr(backends, "_ort_cuda", lambda: False)
    assert backends.engine_candidates(bundle, "cuda:0") == ["tensorrt", "torch"]
    # A core built without CUDA: only torch can use the GPU, as choose_engine says.
    monkeypatch.setattr(backends, "_cuda_device_count", lambda: 0)
    assert backends.engine_candidates(bundle, "cuda:0") == ["torch"]
    assert backends.choose_engine(bundle, "auto")[0] == "torch"
    speeds = {"tensorrt": 2e-6, "torch": 1e-6}
    engine, why, record, _ = _choose(
        bundle, speeds, batch_size=4096, n_cells=100_000, device="cuda:0"
    )
    assert engine == "torch" and record["cells"] == calibration.GPU_CALIBRATION_CELLS
    assert why.startswith("measured fastest on this GPU: torch ")
    # Too small a run for a GPU (50,000 cell-steps): the fixed order's first, said as such.
    engine, why, _, calls = _choose(bundle, speeds, n_cells=1000, device="cuda:1")
    assert engine == "tensorrt" and calls == [] and why.startswith("GPU, tensorrt (not measured")


def test_small_runs_are_not_calibrated(tiny_onnx_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(tmp_path))
    bundle = cellsynth.load_bundle(tiny_onnx_bundle)
    engine, why, record, calls = _choose(bundle, {"onnxruntime": 1e-3, "torch": 0.0}, n_cells=10)
    assert engine == "onnxruntime" and calls == [] and not record["calibrated"]
    assert "10 cells x 50 steps is too small a run to calibrate" in why
    assert not (tmp_path / calibration.CACHE_FILE).exists()


@pytest.mark.parametrize("content", ["{not json", '{"format": 99, "entries": {}}', "[1, 2]"])
def test_a_damaged_cache_is_ignored_and_rewritten(tiny_onnx_bundle, tmp_path, monkeypatch, content):
    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(tmp_path))
    (tmp_path / calibration.CACHE_FILE).write_text(content)
    bundle = cellsynth.load_bundle(tiny_onnx_bundle)
    engine, _, record, _ = _choose(bundle, {"onnxruntime": 0.0, "torch": 1e-4})
    assert engine == "onnxruntime" and not record["cached"]
    data = json.loads((tmp_path / calibration.CACHE_FILE).read_text())
    assert data["format"] == calibration.CACHE_FORMAT and len(data["entries"]) == 1


def test_an_unwritable_cache_costs_only_the_measurement(tiny_onnx_bundle, tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(blocked / "cache"))
    bundle = cellsynth.load_bundle(tiny_onnx_bundle)
    engine, _, record, _ = _choose(bundle, {"onnxruntime": 0.0, "torch": 1e-4})
    assert engine == "onnxruntime" and record["calibrated"]


def test_generate_auto_measures_records_and_reuses(tiny_onnx_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(tmp_path))
    first = cellsynth.generate(tiny_onnx_bundle, engine="auto", device="cpu", **RUN)
    record = first.uns["cellsynth"]["backend"]["engine_calibration"]
    assert record["calibrated"] and not record["cached"]
    assert set(record["seconds_per_cell"]) == {"onnxruntime", "torch"}
    fastest = min(record["seconds_per_cell"], key=record["seconds_per_cell"].get)
    assert first.uns["cellsynth"]["engine"] == fastest == record["engine"]
    assert first.uns["cellsynth"]["engine_choice"].startswith("measured fastest on this CPU")
    again = cellsynth.generate(tiny_onnx_bundle, engine="auto", device="cpu", **RUN)
    assert again.uns["cellsynth"]["backend"]["engine_calibration"]["cached"]
    assert again.uns["cellsynth"]["engine"] == fastest
    # The cells are the engine's: the same as asking for that engine by name.
    named = cellsynth.generate(tiny_onnx_bundle, engine=fastest, device="cpu", **RUN)
    assert np.array_equal(named.X.toarray(), again.X.toarray())


def test_an_explicit_precision_is_not_second_guessed(tiny_onnx_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(tmp_path))
    adata = cellsynth.generate(
        tiny_onnx_bundle, engine="auto", device="cpu", precision="fp32", **RUN
    )
    assert adata.uns["cellsynth"]["engine"] == "onnxruntime"
    assert "engine_calibration" not in adata.uns["cellsynth"]["backend"]


def test_step_threads_are_restored():
    from cellsynth import _core
    from cellsynth.backends.base import step_threads

    before = _core.get_num_threads()
    with step_threads(1):
        assert _core.get_num_threads() == 1
    assert _core.get_num_threads() == before
    with pytest.raises(RuntimeError), step_threads(1):
        raise RuntimeError
    assert _core.get_num_threads() == before


RESUMABLE = dict(n_cells=40, steps=5, batch_size=8, chunk_size=8, progress=False, threads=1)


def _interrupted(bundle, out, engine: str, chunks: int, monkeypatch) -> None:
    """A run into ``out`` on ``engine`` (CPU) stopped after ``chunks`` of its 5 chunks."""
    import importlib

    gen_module = importlib.import_module("cellsynth.generation.sampling")
    original, calls = gen_module.ChunkSampler.chunk, {"n": 0}

    def dies(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > chunks:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(gen_module.ChunkSampler, "chunk", dies)
        with pytest.raises(KeyboardInterrupt):
            cellsynth.generate(bundle, engine=engine, device="cpu", out=out, **RESUMABLE)


def test_resume_keeps_the_engine_of_the_interrupted_run(tiny_onnx_bundle, tmp_path, monkeypatch):
    """A resumed auto run uses the engine its kept chunks were made with, not a new measurement."""
    out = tmp_path / "cells.h5ad"
    _interrupted(tiny_onnx_bundle, out, "torch", 2, monkeypatch)
    got = cellsynth.generate(tiny_onnx_bundle, engine="auto", device="cpu", out=out, resume=True,
                             **RESUMABLE)  # fmt: skip
    info = got.uns["cellsynth"]
    assert info["engine"] == "torch"
    assert info["engine_choice"] == "torch, the engine of the run being resumed"
    assert list(info["resumed_chunks"]) == [2, 5]
    got.file.close()


def test_resume_refuses_a_run_made_on_another_device(tiny_onnx_bundle, tmp_path, monkeypatch):
    """Chunks made on a GPU cannot be continued on the CPU (their rounding differs): one line."""
    import json as json_module

    from cellsynth.errors import DataError
    from cellsynth.generation.chunks import RUN_FILE, chunk_dir_for

    out = tmp_path / "cells.h5ad"
    _interrupted(tiny_onnx_bundle, out, "onnxruntime", 1, monkeypatch)
    run_file = chunk_dir_for(out) / RUN_FILE
    settings = json_module.loads(run_file.read_text())
    run_file.write_text(json_module.dumps({**settings, "device": "cuda"}))  # as a GPU run has
    with pytest.raises(DataError, match="was made with onnxruntime on a GPU, which this run"):
        cellsynth.generate(tiny_onnx_bundle, engine="auto", device="cpu", out=out, resume=True,
                           **RESUMABLE)  # fmt: skip
