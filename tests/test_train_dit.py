"""The train-to-bundle pipeline: resume after an interruption, checkpoints, provenance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAINING, make_toy_adata

import cellsynth
from cellsynth.training import train_dit as pipeline
from cellsynth.training.trainer import train as real_train

OPTIONS = dict(TINY_TRAINING, n_top_genes=50)


def test_interrupted_run_resumes_to_the_same_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adata = make_toy_adata(n_cells=160, n_genes=80)
    straight = pipeline.train_dit_bundle(adata, ["cell_type"], tmp_path / "straight", **OPTIONS)

    def interrupted_train(*args, **kwargs):
        # Stop after the first epoch's checkpoint, as Ctrl-C between epochs would.
        real_train(*args, **kwargs, callback=lambda row: row["epoch"] >= 1)
        raise KeyboardInterrupt

    out = tmp_path / "resumed"
    monkeypatch.setattr(pipeline, "train", interrupted_train)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_dit_bundle(adata, ["cell_type"], out, **OPTIONS)
    assert not out.exists()  # no half-written bundle under the final name
    assert (tmp_path / "resumed.checkpoint").is_dir()

    monkeypatch.setattr(pipeline, "train", real_train)
    pipeline.train_dit_bundle(adata, ["cell_type"], out, resume=True, **OPTIONS)
    assert not (tmp_path / "resumed.checkpoint").exists()  # removed once the bundle is whole

    a, b = cellsynth.load_bundle(straight), cellsynth.load_bundle(out)
    for which in ("model", "ema"):
        sa, sb = a.to_torch(which).state_dict(), b.to_torch(which).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (
        a.config["training"]["history"][-1]["loss"] == b.config["training"]["history"][-1]["loss"]
    )


def test_bundle_records_training_provenance(tiny_bundle: Path) -> None:
    training = cellsynth.load_bundle(tiny_bundle).config["training"]
    assert training["epochs"] == 2 and training["seed"] == 0
    assert len(training["history"]) == 2
    assert training["n_train_cells"] + training["n_test_cells"] <= 240
    assert training["n_test_cells"] > 0


def test_existing_output_is_not_overwritten(tiny_bundle: Path) -> None:
    with pytest.raises(FileExistsError, match="already exists"):
        pipeline.train_dit_bundle(make_toy_adata(), ["cell_type"], tiny_bundle, **OPTIONS)
