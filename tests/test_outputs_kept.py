"""Outputs are never lost: no silent overwrite, output paths checked before any work, SIGTERM
unwound like Ctrl-C, orphans of killed runs removed (only provable ones), shipped bundles
read-only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata
import pytest

from cellsynth.cli.main import main
from cellsynth.files import _host, atomic_path, remove_orphans

SAMPLE = ["--n-cells", "20", "--steps", "2", "--batch-size", "10", "--engine", "torch"]
SAMPLE += ["--device", "cpu"]


def _writers(bundle: Path, tmp_path: Path) -> dict[str, tuple[list[str], bool]]:
    """Every command that writes: its arguments before ``--out`` and whether --out is a folder.

    The inputs other than the bundle need not exist: the output is checked before them.
    """
    missing = str(tmp_path / "missing.h5ad")
    return {
        "sample": (["sample", str(bundle), *SAMPLE], False),
        "subsample": (["subsample", missing, "--strategy", "random", "--n", "5"], False),
        "distill": (
            ["distill", str(bundle), "--data", missing, "--label", "cell_type", "--spc", "1"],
            False,
        ),
        "evaluate": (["evaluate", "--real", missing, "--synthetic", missing], True),
        "distill-eval": (
            ["distill-eval", "--synthetic", missing, "--data", missing, "--label", "cell_type"],
            True,
        ),
        "demo": (["demo"], True),
        "export": (["export", str(bundle), "--format", "onnx"], True),
    }


@pytest.mark.parametrize(
    "command", ["sample", "subsample", "distill", "evaluate", "distill-eval", "demo", "export"]
)
def test_every_writing_command_refuses_to_replace_an_output(
    command: str, tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args, folder = _writers(tiny_bundle, tmp_path)[command]
    out = tmp_path / ("out" if folder else "out.h5ad")
    kept = (out / "report.md") if folder else out
    if folder:
        out.mkdir()
    kept.write_text("earlier results")
    assert main([*args, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and "\n" not in err, err
    assert kept.read_text() == "earlier results"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # nothing else was written


def test_sample_overwrite_replaces_the_file(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "cells.h5ad"
    out.write_text("earlier results")
    assert main(["sample", str(tiny_bundle), *SAMPLE, "--out", str(out), "--overwrite"]) == 0
    assert anndata.read_h5ad(out).n_obs == 20


def test_an_output_that_is_a_directory_is_refused_before_any_work(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cells.h5ad"
    out.mkdir()
    assert main(["sample", str(tiny_bundle), *SAMPLE, "--out", str(out)]) == 1
    assert "is a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]  # no chunk folder


def test_created_folders_and_rounded_chunks_are_said(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "new" / "deeper" / "cells.h5ad"
    args = ["sample", str(tiny_bundle), *SAMPLE, "--chunk-size", "4", "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"created the folder {tmp_path / 'new'}" in err
    assert "chunk size 4 rounded up to 10" in err
    assert anndata.read_h5ad(out).n_obs == 20


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_provable_orphans_are_removed(tmp_path: Path) -> None:
    final = tmp_path / "cells.h5ad"
    dead, alive = _dead_pid(), os.getppid()
    orphan = tmp_path / f".cells.partial-{dead}@{_host()}-0123abcd.h5ad"
    orphan_dir = tmp_path / f".cells.partial-{dead}@{_host()}-4567abcd.h5ad"
    live = tmp_path / f".cells.partial-{alive}@{_host()}-89abcdef.h5ad"
    elsewhere = tmp_path / f".cells.partial-{dead}@another_host-0123abcd.h5ad"
    older_scheme = tmp_path / ".cells.partial-0123abcd.h5ad"
    other_output = tmp_path / f".other.partial-{dead}@{_host()}-0123abcd.h5ad"
    for p in (orphan, live, elsewhere, older_scheme, other_output):
        p.write_text("x")
    orphan_dir.mkdir()
    (orphan_dir / "inside").write_text("x")
    assert sorted(remove_orphans(final, quiet=True)) == sorted([orphan, orphan_dir])
    assert all(p.exists() for p in (live, elsewhere, older_scheme, other_output))


def test_a_write_removes_the_orphans_of_killed_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    orphan = tmp_path / f".report.partial-{_dead_pid()}@{_host()}-0123abcd.md"
    orphan.write_text("half")
    with atomic_path(tmp_path / "report.md") as tmp:
        tmp.write_text("whole")
    assert not orphan.exists() and (tmp_path / "report.md").read_text() == "whole"
    assert "left by an interrupted run" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_stops_sample_cleanly_and_resume_finishes(tiny_bundle: Path, tmp_path: Path):
    out = tmp_path / "cells.h5ad"
    args = ["sample", str(tiny_bundle), "--n-cells", "4000", "--steps", "200", "--batch-size"]
    args += ["100", "--chunk-size", "100", "--engine", "torch", "--device", "cpu", "--seed", "1"]
    args += ["--out", str(out)]
    cmd = [sys.executable, "-m", "cellsynth.cli.main", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    chunks = tmp_path / ".cells.h5ad.chunks"
    deadline = time.monotonic() + 120
    while not list(chunks.glob("cells-*.npz")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "--resume" in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [chunks.name]  # chunks kept, nothing partial
    assert not list(chunks.glob(".*"))  # no half-written chunk

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert anndata.read_h5ad(out, backed="r").n_obs == 4000


def test_a_shipped_bundle_is_read_only_to_export(capsys: pytest.CaptureFixture) -> None:
    from cellsynth.bundle.format import SHIPPED_DIR

    before = {p: p.stat().st_mtime_ns for p in (SHIPPED_DIR / "kang-dit").rglob("*")}
    assert main(["export", "kang-dit", "--format", "onnx"]) == 1
    err = capsys.readouterr().err
    assert "shipped with cellsynth" in err and "--out my-kang-dit" in err
    assert {p: p.stat().st_mtime_ns for p in (SHIPPED_DIR / "kang-dit").rglob("*")} == before


def test_export_into_a_copy_leaves_the_source_alone(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = sorted(p.relative_to(tiny_bundle) for p in tiny_bundle.rglob("*"))
    out = tmp_path / "copy"
    assert main(["export", str(tiny_bundle), "--format", "onnx", "--out", str(out)]) == 0
    assert f"exported {out}/onnx/model.fp32.onnx" in capsys.readouterr().out
    assert (out / "onnx" / "model.fp32.onnx").is_file()
    assert sorted(p.relative_to(tiny_bundle) for p in tiny_bundle.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]


def _wait_for(paths, proc, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not any(p() for p in paths) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)


@pytest.mark.slow
def test_sample_killed_hard_resumes_and_leaves_no_orphans(tiny_bundle: Path, tmp_path: Path):
    out = tmp_path / "cells.h5ad"
    args = ["sample", str(tiny_bundle), "--n-cells", "4000", "--steps", "200", "--batch-size"]
    args += ["100", "--chunk-size", "100", "--engine", "torch", "--device", "cpu", "--seed", "2"]
    cmd = [sys.executable, "-m", "cellsynth.cli.main", *args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=env)
    chunks = tmp_path / ".cells.h5ad.chunks"
    _wait_for([lambda: len(list(chunks.glob("cells-*.npz"))) >= 2], proc)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.wait()
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no chunk folder, no partials
    assert anndata.read_h5ad(out, backed="r").n_obs == 4000


@pytest.mark.slow
def test_sigterm_stops_training_cleanly_and_resume_finishes(tmp_path: Path) -> None:
    from conftest import make_toy_adata

    make_toy_adata(n_cells=300, n_genes=120).write_h5ad(tmp_path / "toy.h5ad")
    out = tmp_path / "bundle"
    args = ["train", "dit", "--data", str(tmp_path / "toy.h5ad"), "--label", "cell_type"]
    args += ["--config", "small", "--epochs", "40", "--batch-size", "32", "--no-validate"]
    args += ["--min-genes-per-cell", "10", "--n-top-genes", "100", "--threads", "1"]
    cmd = [sys.executable, "-m", "cellsynth.cli.main", *args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    checkpoint = tmp_path / "bundle.checkpoint"
    _wait_for([lambda: any(checkpoint.glob("*.pt"))], proc, seconds=300)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "--resume" in err
    assert not out.exists() and checkpoint.is_dir()
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "toy.h5ad"]
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]
