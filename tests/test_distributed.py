"""Generation on Ray: the same cells as one process, a killed worker retried, resumable output.

One local Ray cluster (2 CPUs) serves the whole module and is shut down after it.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import anndata as ad
import pytest

import cellsynth
from cellsynth.cli.main import main
from cellsynth.errors import CellsynthError
from cellsynth.generation import distributed

ray = pytest.importorskip("ray")  # a dev dependency: present in CI, so never skipped there

RUN = dict(steps=6, scheduler="dpmsolver++", batch_size=8, seed=3)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_onnx_bundle):
    """The 200 cells of one single-process run."""
    return cellsynth.generate(tiny_onnx_bundle, n_cells=200, progress=False, threads=1, **RUN)


def _same(a, b):
    assert a.shape == b.shape
    assert (a.X != b.X).nnz == 0  # bit-identical
    assert a.obs.reset_index(drop=True).equals(b.obs.reset_index(drop=True))


@pytest.mark.slow
def test_merged_and_sharded_outputs_equal_one_process(
    local_ray, tiny_onnx_bundle, reference, tmp_path
):
    merged = distributed.generate(
        tiny_onnx_bundle, 200, tmp_path / "all.h5ad", workers=2, shards=5, progress=False, **RUN
    )
    got = distributed.read(merged)
    _same(got, reference)
    info = got.uns["cellsynth"]
    assert info["distributed"] == {"on": "ray", "shards": 5, "workers": 2}
    assert list(info["cells"]) == [0, 200] and info["shard"] is None
    assert not (tmp_path / "all.h5ad.shards").exists()  # merged, then removed

    folder = distributed.generate(
        tiny_onnx_bundle, 200, tmp_path / "parts", workers=2, shards=3, progress=False, **RUN
    )
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["manifest.json", *(f"part-{k:05d}-of-00003.h5ad" for k in range(3))]
    _same(distributed.read(folder), reference)
    # Shards hold whole batches of 8: the boundaries of `cellsynth sample --shard k/3`.
    sizes = [ad.read_h5ad(folder / n).n_obs for n in names[1:]]
    assert sizes == [64, 64, 72]


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_cells_are_unchanged(
    local_ray, tiny_onnx_bundle, tmp_path
):
    """SIGKILL the worker process of a shard after it finished a chunk: Ray runs the shard
    again, it resumes from its finished chunks, and the cells equal one process's."""
    # 2 shards of 24 chunks of 8 cells, 1000 steps each: long enough to be caught mid-run.
    options = dict(RUN, steps=1000, chunk_size=8)
    out = tmp_path / "parts"
    result: dict = {}

    def run():
        try:
            result["out"] = distributed.generate(
                tiny_onnx_bundle, 384, out, workers=2, shards=2, progress=False, **options
            )
        except BaseException as exc:  # reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        for chunk_dir in out.glob("*.chunks"):
            finished = list(chunk_dir.glob("cells-*.npz"))
            writing = [m for f in chunk_dir.iterdir()
                       if (m := re.search(r"partial-(\d+)@", f.name))]  # fmt: skip
            if finished and writing:
                pid = int(writing[0].group(1))
                assert pid != os.getpid()
                os.kill(pid, signal.SIGKILL)
                killed = chunk_dir
                break
        time.sleep(0.002)
    # Generous: on a loaded 2-core machine the retried shard's 1000-step chunks take minutes.
    thread.join(timeout=900)
    assert not thread.is_alive(), "the run with a killed worker did not finish in 15 minutes"
    assert "error" not in result, result.get("error")
    assert killed is not None, "no shard was caught mid-run"
    reference = cellsynth.generate(tiny_onnx_bundle, n_cells=384, progress=False, **options)
    _same(distributed.read(result["out"]), reference)
    # The killed shard resumed: its file says some chunks were reused from the first attempt.
    shard_file = killed.parent / killed.name.removeprefix(".").removesuffix(".chunks")
    resumed = ad.read_h5ad(shard_file).uns["cellsynth"]["resumed_chunks"]
    assert resumed[0] >= 1 and resumed[1] == 24


@pytest.mark.slow
def test_rerun_resumes_only_what_is_missing_and_refuses_other_settings(
    local_ray, tiny_onnx_bundle, reference, tmp_path
):
    out = tmp_path / "parts"
    distributed.generate(tiny_onnx_bundle, 200, out, workers=2, shards=4, progress=False, **RUN)
    kept = out / "part-00002-of-00004.h5ad"
    (out / "part-00001-of-00004.h5ad").unlink()
    before = kept.stat().st_mtime_ns
    distributed.generate(tiny_onnx_bundle, 200, out, workers=2, shards=4, progress=False, **RUN)
    assert kept.stat().st_mtime_ns == before  # finished shards are not redone
    _same(distributed.read(out), reference)
    with pytest.raises(CellsynthError, match="other settings"):
        distributed.generate(
            tiny_onnx_bundle, 200, out, workers=2, shards=4, progress=False, **{**RUN, "seed": 4}
        )


@pytest.mark.slow
def test_a_failing_shard_is_named_and_not_retried(local_ray, tiny_onnx_bundle, tmp_path):
    with pytest.raises(CellsynthError, match=r"shard \d+ \(cells .*\) failed: .*no-such"):
        distributed.generate(
            tiny_onnx_bundle, 40, tmp_path / "x.h5ad", workers=2, shards=2, progress=False,
            composition=str(tmp_path / "no-such.h5ad"), **RUN,
        )  # fmt: skip


@pytest.mark.slow
def test_cli_sample_on_ray(local_ray, tiny_onnx_bundle, reference, tmp_path, capsys):
    out = tmp_path / "cli.h5ad"
    argv = ["sample", str(tiny_onnx_bundle), "--n-cells", "200", "--steps", "6", "--scheduler",
            "dpmsolver++", "--batch-size", "8", "--seed", "3", "--ray", "--workers", "2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "wrote 200 cells on Ray, merged into" in capsys.readouterr().out
    _same(distributed.read(out), reference)
    assert main(argv) == 1 and "--overwrite" in capsys.readouterr().err


def test_ray_options_need_ray(tiny_onnx_bundle, tmp_path, capsys):
    argv = ["sample", str(tiny_onnx_bundle), "--n-cells", "5", "--workers", "2", "--out",
            str(tmp_path / "x.h5ad")]  # fmt: skip
    assert main(argv) == 1
    assert "go with --ray" in capsys.readouterr().err
    with pytest.raises(Exception, match="neither an .h5ad file nor a shard directory"):
        distributed.read(tmp_path)


@pytest.mark.slow
def test_small_runs_leave_no_empty_shard_and_overwrite_starts_clean(
    local_ray, tiny_onnx_bundle, tmp_path
):
    # 20 cells in batches of 8: of 4 requested shards only 2 can hold whole batches.
    run = dict(RUN, batch_size=8)
    out = tmp_path / "parts"
    distributed.generate(tiny_onnx_bundle, 20, out, workers=2, shards=4, progress=False, **run)
    one = cellsynth.generate(tiny_onnx_bundle, n_cells=20, progress=False, **run)
    _same(distributed.read(out), one)
    # --overwrite with other settings: the earlier run's shard files and chunk folders go.
    again = dict(run, seed=9)
    distributed.generate(tiny_onnx_bundle, 20, out, workers=2, shards=4, progress=False,
                         overwrite=True, **again)  # fmt: skip
    _same(distributed.read(out),
          cellsynth.generate(tiny_onnx_bundle, n_cells=20, progress=False, **again))  # fmt: skip


def test_kept_engines_are_reused_and_change_no_cell(tiny_onnx_bundle, monkeypatch):
    """keep_engines (what a Ray worker runs its shards in): one engine for many runs."""
    import cellsynth.generation.open_engines as engines_module
    from cellsynth.generation import engine_pool

    opened = []
    real = engines_module.load_engine

    def counting(*args, **kwargs):
        opened.append(kwargs.get("engine"))
        return real(*args, **kwargs)

    monkeypatch.setattr(engines_module, "load_engine", counting)
    run = dict(RUN, engine="onnxruntime", device="cpu", threads=1, progress=False)
    alone = [cellsynth.generate(tiny_onnx_bundle, n_cells=24, shard=(k, 2), **run) for k in (0, 1)]
    assert len(opened) == 2
    with engine_pool.keep_engines():
        kept = [cellsynth.generate(tiny_onnx_bundle, n_cells=24, shard=(k, 2), **run)
                for k in (0, 1)]  # fmt: skip
        ((denoiser, _, _),) = engine_pool._pool.values()
        # 'auto' depends on the run: never taken from the pool.
        cellsynth.generate(tiny_onnx_bundle, n_cells=8, **{**run, "engine": "auto"})
    assert opened == ["onnxruntime", "onnxruntime", "onnxruntime", "auto"]
    assert engine_pool._pool is None and denoiser.session is None  # closed with the block
    for a, b in zip(alone, kept, strict=True):
        _same(a, b)


def test_progress_is_reported_within_batches(tiny_onnx_bundle):
    from cellsynth.generation import ray_workers

    seen: list[int] = []
    cellsynth.generate(tiny_onnx_bundle, n_cells=20, progress=False, on_progress=seen.append,
                       **RUN)  # fmt: skip
    assert seen == sorted(seen) and seen[-1] == 20
    assert any(v % RUN["batch_size"] for v in seen)  # moved within a batch, not only at its end
    board = ray_workers.Progress()
    for shard, cells in [(0, 8), (1, 5), (0, 4), (0, 16)]:
        board.report(shard, cells)  # a retried shard reports less again: the most is kept
    assert board.total() == 21
    sent: list[int] = []
    report = ray_workers._throttled(sent.append)
    for done in range(100):
        report(done)
    assert sent == [0]  # at most one message per REPORT_S


@pytest.mark.slow
def test_workers_the_cluster_cannot_hold_get_no_shard(
    local_ray, tiny_onnx_bundle, reference, tmp_path
):
    """3 one-CPU workers on 2 CPUs: the third never starts, the other two do every shard."""
    out = distributed.generate(tiny_onnx_bundle, 200, tmp_path / "w.h5ad", workers=3, shards=5,
                               threads=1, progress=False, **RUN)  # fmt: skip
    _same(distributed.read(out), reference)
    with pytest.raises(CellsynthError, match=r"asks for 1 GPU\(s\), but the Ray cluster has 0"):
        distributed.generate(tiny_onnx_bundle, 200, tmp_path / "g.h5ad", gpus_per_worker=1,
                             progress=False, **RUN)  # fmt: skip
