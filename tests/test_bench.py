"""cellsynth bench: the grid, the timing loop, skipped configurations and the report."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from cellsynth.bench import plan
from cellsynth.bench.run import bench
from cellsynth.bench.timing import PeakMemory
from cellsynth.cli.main import main
from cellsynth.errors import DataError

FAST = dict(repeats=2, budget_s=30.0, threads=1, progress=False)


def test_scheduler_specs_and_lists_parse():
    assert plan.parse_schedulers(["ddim:100,50", "dpmsolver++:10", "ddpm"], 1000) == [
        ("ddim", 100),
        ("ddim", 50),
        ("dpmsolver++", 10),
        ("ddpm", 1000),
    ]
    assert plan.parse_ints("1,64,64", "batch size") == [1, 64]
    assert plan.parse_list("torch,onnxruntime", "engine", plan.ENGINES) == ["torch", "onnxruntime"]
    for bad, message in [
        (lambda: plan.parse_schedulers(["euler:10"], 1000), "unknown scheduler 'euler'"),
        (lambda: plan.parse_schedulers(["ddim:2000"], 1000), "trained with 1000 timesteps"),
        (lambda: plan.parse_schedulers(["ddim:0"], 1000), "whole numbers >= 1"),
        (lambda: plan.parse_ints("1,,2", "batch size"), "comma-separated list"),
        (lambda: plan.parse_ints("1.5", "batch size"), "whole numbers >= 1"),
        (lambda: plan.parse_list("onnx", "engine", plan.ENGINES), "unknown engine 'onnx'"),
    ]:
        with pytest.raises(DataError, match=message):
            bad()


def test_static_skips_name_the_reason():
    cfg = plan.Config("torch", "int8", "ddim", 10, 4)
    assert "fp32 module only" in plan.static_skip(cfg)
    assert plan.static_skip(plan.Config("onnxruntime", "int8", "ddim", 10, 4)) is None


def test_bench_times_every_configuration_or_says_why_not(tiny_onnx_bundle, tmp_path):
    result = bench(
        tiny_onnx_bundle,
        engines=["onnxruntime", "torch", "tensorrt"],
        schedulers=["ddim:20,5", "dpmsolver++:5"],
        batch_sizes=[1, 16],
        precisions=["fp32", "int8"],
        **FAST,
    )
    rows = result["rows"]
    assert len(rows) == 3 * 2 * 2 * 3
    ran = [r for r in rows if "skipped" not in r]
    # fp32 on onnxruntime and torch ran; int8 has no export in this bundle; no GPU here.
    assert {(r["engine"], r["precision"]) for r in ran} == {
        ("onnxruntime", "fp32"),
        ("torch", "fp32"),
    }
    skipped = {(r["engine"], r["precision"]): r["skipped"] for r in rows if "skipped" in r}
    assert "int8" in skipped[("onnxruntime", "int8")]
    assert "fp32 module only" in skipped[("torch", "int8")]
    assert skipped[("tensorrt", "fp32")]
    for r in ran:
        assert 0 < r["latency_p50_s"] <= r["latency_p95_s"] <= r["latency_p99_s"]
        assert r["cells_per_s"] == pytest.approx(r["batch_size"] / r["latency_p50_s"])
        # The model and the scheduler account for the loop (the rest is loop overhead).
        per_step = r["latency_p50_s"] / r["steps"]
        parts = (r["model_ms_per_step"] + r["scheduler_ms_per_step"]) / 1e3
        assert 0.3 * per_step < parts <= 1.5 * per_step
        assert r["first_cell_s"] >= r["load_s"] > 0 and r["peak_rss_mb"] > 10
        assert r["repeats"] == 2 and not r["extrapolated"] and r["timed_steps"] == r["steps"]
        assert r["rate"] == pytest.approx(1000 / r["steps"])
    # More steps cost more.
    ort = {(r["steps"], r["batch_size"]): r for r in ran if r["engine"] == "onnxruntime"}
    assert ort[(20, 16)]["latency_p50_s"] > ort[(5, 16)]["latency_p50_s"]
    assert result["machine"]["cores"] and "onnxruntime" in result["machine"]["versions"]


def test_budget_extrapolates_and_says_so(tiny_onnx_bundle):
    result = bench(
        tiny_onnx_bundle,
        engines=["onnxruntime"],
        schedulers=["ddim:200"],
        batch_sizes=[8],
        repeats=2,
        budget_s=1e-4,
        threads=1,
        progress=False,
    )
    (row,) = result["rows"]
    assert row["extrapolated"] and row["timed_steps"] == 3 and row["steps"] == 200
    from cellsynth.bench.report import note

    assert note(row) == "extrapolated from 3 of 200 steps"
    assert row["device"] == "cpu"
    # Fewer steps than the minimum timed: all of them, never more.
    short = bench(tiny_onnx_bundle, engines=["onnxruntime"], schedulers=["ddim:2"],
                  batch_sizes=[8], repeats=2, budget_s=1e-4, threads=1, progress=False)  # fmt: skip
    (row,) = short["rows"]
    assert row["timed_steps"] == 2 and not row["extrapolated"]


def test_fidelity_scores_each_setting_once(tiny_onnx_bundle, tmp_path):
    from conftest import make_toy_adata

    real = make_toy_adata(n_cells=240, n_genes=150, seed=5)
    result = bench(
        tiny_onnx_bundle,
        engines=["onnxruntime", "torch"],
        schedulers=["ddim:5"],
        batch_sizes=[8, 16],
        fidelity=real,
        **FAST,
    )
    (f,) = result["fidelity"]
    assert (f["scheduler"], f["steps"], f["engine"], f["cells"]) == ("ddim", 5, "onnxruntime", 240)
    auc = f["metrics"]["knn_auc"]
    assert 0.5 <= auc["value"] <= 1.0 and 0.3 < auc["floor"] < 0.7


def test_cli_writes_report_table_and_plots(tiny_onnx_bundle, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = [
        "bench", str(tiny_onnx_bundle), "--engine", "onnxruntime,tensorrt", "--scheduler",
        "ddim:10,5", "--batch-size", "1,8", "--repeats", "2", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "p50 ms" in printed and "skipped:" in printed and "bench.json" in printed
    result = json.loads((out / "bench.json").read_text())
    assert len(result["rows"]) == 8 and result["command"] == "bench"
    md = (out / "bench.md").read_text()
    assert md.count("| onnxruntime |") == 4 and "skipped" in md
    for name in ("latency.png", "throughput.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # An existing report is not replaced without --overwrite.
    assert main(argv) == 1 and "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--engine", "onnx"], "unknown engine 'onnx'"),
        (["--batch-size", "0"], "whole numbers >= 1"),
        (["--scheduler", "ddim:x"], "whole numbers >= 1"),
        (["--precision", "fp8"], "unknown precision 'fp8'"),
    ],
)
def test_cli_bad_options_are_one_line(tiny_onnx_bundle, tmp_path, capsys, extra, message):
    assert main(["bench", str(tiny_onnx_bundle), "--out", str(tmp_path / "o"), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_bench_runs_without_torch(tiny_onnx_bundle, tmp_path):
    """The runtime path: torch is listed as skipped, onnxruntime measured, torch never loaded."""
    import subprocess

    code = f"""
import sys
sys.modules['torch'] = None  # importing torch now fails, as where it is not installed
from cellsynth.bench.run import bench
r = bench({str(tiny_onnx_bundle)!r}, engines=['onnxruntime', 'torch'], schedulers=['ddim:3'],
          batch_sizes=[4], repeats=1, threads=1, progress=False)
rows = {{row['engine']: row for row in r['rows']}}
assert 'skipped' not in rows['onnxruntime'], rows['onnxruntime']
assert 'skipped' in rows['torch'], rows['torch']
print('ok', rows['torch']['skipped'])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


def test_peak_memory_sees_an_allocation():
    with PeakMemory() as before:
        pass
    with PeakMemory() as during:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block.sum()
    assert during.peak_mb >= before.peak_mb + 50
    del block


def test_a_latent_bundle_counts_its_decoder():
    """kang-scdg (SCDG over a count autoencoder's codes): every engine adds its decoder call."""
    result = bench(
        "kang-scdg",
        engines=["onnxruntime", "torch"],
        schedulers=["dpmsolver++:3"],
        batch_sizes=[16],
        precisions=["fp32", "int8"],
        **FAST,
    )
    rows = {(r["engine"], r["precision"]): r for r in result["rows"]}
    assert "skipped" in rows[("torch", "int8")]
    for key in [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("torch", "fp32")]:
        row = rows[key]
        assert "skipped" not in row, row
        assert row["decode_ms"] > 0
        assert row["latency_p50_s"] >= row["decode_ms"] / 1e3


def test_a_configuration_that_breaks_is_reported_and_the_rest_measured(
    tiny_onnx_bundle, tmp_path, capsys, monkeypatch
):
    import cellsynth.bench.run as run_module

    real = run_module.time_config

    def breaks_on_torch(bundle, config, *args, **kwargs):
        if config.engine == "torch":
            raise AssertionError("Torch not compiled with CUDA enabled")
        return real(bundle, config, *args, **kwargs)

    monkeypatch.setattr(run_module, "time_config", breaks_on_torch)
    out = tmp_path / "b"
    argv = ["bench", str(tiny_onnx_bundle), "--engine", "onnxruntime,torch", "--scheduler",
            "ddim:3", "--batch-size", "4", "--repeats", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "FAILED: AssertionError: Torch not compiled with CUDA enabled" in captured.out
    assert "1 configuration(s) failed (first: torch fp32" in captured.err
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert "latency_p50_s" in rows[0] and rows[1]["failed"].startswith("AssertionError")


def test_torch_on_a_gpu_without_one_is_a_clear_skip(tiny_onnx_bundle):
    from cellsynth import _core

    if _core.cuda_compiled and _core.cuda_device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    result = bench(tiny_onnx_bundle, engines=["torch", "torch-eager"], schedulers=["ddim:2"],
                   batch_sizes=[2], device="cuda", **FAST)  # fmt: skip
    for row in result["rows"]:
        assert "skipped" in row and ("CUDA" in row["skipped"] or "GPU" in row["skipped"])


def test_the_timer_hook_splits_the_loop_and_changes_no_cell(tiny_onnx_bundle):
    """denoise(timer=...) times the loop generation runs; the cells are those of a plain call."""
    from cellsynth.backends import load_denoiser
    from cellsynth.backends.base import StepTimes
    from cellsynth.bundle.load import load_bundle
    from cellsynth.scheduler import scheduler_for_bundle

    b = load_bundle(tiny_onnx_bundle)
    denoiser, _ = load_denoiser(b, "onnxruntime", "cpu", threads=1)
    labels = np.zeros((6, len(b.model_label_sizes)), dtype=np.int64)
    null = np.broadcast_to(np.asarray(b.model_label_sizes, dtype=np.int64), labels.shape).copy()
    cells = []
    for timer in (None, StepTimes()):
        sched = scheduler_for_bundle(b, "dpmsolver++", truncate_final=True, seed=3)
        sched.set_timesteps(5)
        x_T = sched.init_noise(6, b.width)
        cells.append(denoiser.denoise(sched, x_T, labels, null, 2.0, 0, {}, timer=timer))
    np.testing.assert_array_equal(cells[0], cells[1])
    assert timer.split and timer.model_s > 0 and timer.step_s > 0
    denoiser.close()


def test_measure_interleaves_extrapolates_and_keeps_fixed_parts():
    """The shared timing loop: probe, plan within the budget, rounds, extrapolation."""
    from cellsynth.bench import timing

    calls: list[tuple[str, int | None]] = []

    def method(name: str, per_step: float, fixed: float) -> timing.Method:
        def run(steps: int, limit: int | None) -> dict[str, float]:
            calls.append((name, limit))
            k = steps if limit is None else limit
            return {"seconds": per_step * k + fixed, "fixed_s": fixed}

        return timing.Method(name, run)

    fast, slow = method("fast", 0.001, 0.5), method("slow", 1.0, 0.5)
    out = timing.measure([fast, slow], steps=100, budget_s=20.0, repeats=2)
    assert fast.seconds_per_step == pytest.approx(0.001)
    assert out["fast"].timed_steps == 100 and not out["fast"].extrapolated
    # 2 whole runs of 100 s do not fit 20 s: 10 steps each, scaled up, fixed part kept once.
    assert out["slow"].timed_steps == 10 and out["slow"].extrapolated
    assert out["slow"].seconds() == pytest.approx([100.5, 100.5])
    assert slow.first_step_s == pytest.approx(1.0)  # the cold step without the fixed part
    assert out["fast"].seconds() == pytest.approx([0.6, 0.6])
    timed = [c for c in calls[4:] if c[1] != 1]  # after the probes, without warm-up steps
    assert timed == [("fast", None), ("slow", 10), ("fast", None), ("slow", 10)]
    assert timing.plan(float("nan"), 50, 1.0, 3) == 50
    assert timing.plan(1.0, 50, 1.0, 3) == timing.MIN_TIMED_STEPS
