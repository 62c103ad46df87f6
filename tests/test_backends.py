"""Engines: 'auto' picks the fastest available, and every backend gives the same cells.

The measured choice on the CPU (calibration and its cache) is tested in test_calibration.py."""

from __future__ import annotations

import numpy as np
import pytest

import cellsynth
from cellsynth.backends import choose_engine, load_denoiser
from cellsynth.errors import CellsynthError

KW = dict(n_cells=21, steps=6, seed=4, batch_size=8, progress=False)


def test_auto_prefers_onnxruntime_on_the_cpu_when_exported(tiny_bundle, tiny_onnx_bundle):
    b = cellsynth.load_bundle(tiny_onnx_bundle)
    assert choose_engine(b, "cpu")[:2] == ("onnxruntime", "cpu")
    assert choose_engine(cellsynth.load_bundle(tiny_bundle), "cpu")[:2] == ("torch", "cpu")
    denoiser, why = load_denoiser(b, "auto", "cpu")
    assert denoiser.name == "onnxruntime" and "ONNX" in why


def test_auto_with_a_gpu_asked_for_and_none_present_is_a_clear_error(tiny_onnx_bundle):
    from cellsynth import _core

    if _core.cuda_compiled and _core.cuda_device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(CellsynthError, match="no NVIDIA GPU"):
        load_denoiser(cellsynth.load_bundle(tiny_onnx_bundle), "auto", "cuda:0")


@pytest.mark.parametrize(
    "options",
    [
        dict(scheduler="ddim", eta=1.0),
        dict(scheduler="dpmsolver++", guidance=2.0),
        dict(scheduler="ddpm", timestep_spacing="trailing"),
    ],
)
def test_torch_and_onnxruntime_give_the_same_cells(tiny_onnx_bundle, options):
    a = cellsynth.generate(tiny_onnx_bundle, engine="torch", device="cpu", **KW, **options)
    b = cellsynth.generate(tiny_onnx_bundle, engine="onnxruntime", **KW, **options)
    x, y = a.X.toarray(), b.X.toarray()
    assert x.any()
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4 * np.abs(x).max())
    # Truncation agrees except for values within float noise of zero.
    assert ((x == 0) != (y == 0)).mean() < 1e-3
    assert a.uns["cellsynth"]["backend"]["engine"] == "torch"
    assert b.uns["cellsynth"]["backend"]["engine"] == "onnxruntime"
    assert b.uns["cellsynth"]["backend"]["precision"] == "fp32"


def test_auto_choice_is_printed_and_recorded(tiny_onnx_bundle, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(tmp_path))  # no measurement of other tests
    adata = cellsynth.generate(
        tiny_onnx_bundle, engine="auto", device="cpu", **{**KW, "progress": True}
    )
    why = "CPU, onnxruntime (not measured: 21 cells x 6 steps is too small a run to calibrate)"
    assert f"engine onnxruntime on cpu (auto: {why})" in capsys.readouterr().err
    assert adata.uns["cellsynth"]["engine_choice"] == why
    record = adata.uns["cellsynth"]["backend"]["engine_calibration"]
    assert record["engine"] == "onnxruntime" and not record["calibrated"]


@pytest.mark.parametrize(
    "device, message",
    [("tpu", "unknown device 'tpu'"), ("cuda:x", "unknown device"), ("cuda", "no NVIDIA GPU")],
)
def test_devices_are_named_clearly(tiny_bundle, device: str, message: str) -> None:
    with pytest.raises(CellsynthError, match=message):
        choose_engine(cellsynth.load_bundle(tiny_bundle), device)
