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


def interrupted_train(*args, **kwargs):
    """Stop after the first epoch's checkpoint, as Ctrl-C between epochs would."""
    real_train(*args, **kwargs, callback=lambda row: row["epoch"] >= 1)
    raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adata = make_toy_adata(n_cells=160, n_genes=80)
    straight = pipeline.train_dit_bundle(adata, ["cell_type"], tmp_path / "straight", **OPTIONS)

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


def test_resume_keeps_the_checkpoints_gene_order_and_refuses_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adata = make_toy_adata(n_cells=160, n_genes=80)

    out = tmp_path / "b"
    monkeypatch.setattr(pipeline, "train", interrupted_train)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_dit_bundle(adata, ["cell_type"], out, **OPTIONS)  # gene_order cluster
    monkeypatch.setattr(pipeline, "train", real_train)
    with pytest.raises(ValueError, match="trained with gene_order 'cluster'"):
        pipeline.train_dit_bundle(adata, ["cell_type"], out, resume=True, gene_order="input",
                                  **OPTIONS)  # fmt: skip
    # The resumed run takes the order stored in the checkpoint rather than recomputing it.
    never = lambda *a, **k: pytest.fail("the order was recomputed")  # noqa: E731
    monkeypatch.setattr(pipeline, "correlated_gene_order", never)
    pipeline.train_dit_bundle(adata, ["cell_type"], out, resume=True, **OPTIONS)
    order = cellsynth.load_bundle(out).config["architecture"]["gene_order"]
    assert sorted(order) == list(range(50)) and order != list(range(50))


def _renamed(adata, n: int):
    other = adata.copy()
    other.var_names = [f"other{j}" if j < n else g for j, g in enumerate(adata.var_names)]
    return other


def _recounted(adata):
    other = adata.copy()  # (doubling every count would not do: normalisation undoes it)
    x = other.X.toarray()
    x[::2, :10] += 3
    other.X = type(adata.X)(x)
    return other


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: _renamed(a, 80), r"genes differ"),
        (_recounted, "the expression values differ"),
    ],
)
def test_resume_on_other_data_of_the_same_shape_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change, message
) -> None:
    adata = make_toy_adata(n_cells=160, n_genes=80)
    out = tmp_path / "b"
    monkeypatch.setattr(pipeline, "train", interrupted_train)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_dit_bundle(adata, ["cell_type"], out, gene_order="input", **OPTIONS)
    monkeypatch.setattr(pipeline, "train", real_train)
    with pytest.raises(ValueError, match=f"other data of the same shape.*{message}"):
        pipeline.train_dit_bundle(change(adata), ["cell_type"], out, resume=True,
                                  gene_order="input", **OPTIONS)  # fmt: skip
    assert not out.exists()


def test_bundle_records_training_provenance(tiny_bundle: Path) -> None:
    training = cellsynth.load_bundle(tiny_bundle).config["training"]
    assert training["epochs"] == 2 and training["seed"] == 0
    assert len(training["history"]) == 2
    assert training["n_train_cells"] + training["n_test_cells"] <= 240
    assert training["n_test_cells"] > 0


def test_existing_output_is_not_overwritten(tiny_bundle: Path) -> None:
    with pytest.raises(FileExistsError, match="already exists"):
        pipeline.train_dit_bundle(make_toy_adata(), ["cell_type"], tiny_bundle, **OPTIONS)


def test_bundle_keeps_its_validation_and_report_files(tiny_bundle: Path) -> None:
    training = cellsynth.load_bundle(tiny_bundle).config["training"]
    assert training["validation"] and training["best"]["step"] == training["steps"]
    best = training["best"]
    assert 0.0 <= best["knn_auc"] <= 1.0 and 0.0 <= best["label_accuracy"] <= 1.0
    assert best["knn_auc_floor"] < 0.75 and best["n_cells"] == training["n_validation_cells"]
    assert training["n_validation_cells"] == 20  # held back from the training split
    assert "verdict" in training and training["split_and_qc"]["n_test"] > 0
    assert (tiny_bundle / "training.json").is_file() and (tiny_bundle / "training.png").is_file()


def test_training_without_validation_keeps_the_last_weights(tmp_path: Path) -> None:
    adata = make_toy_adata(n_cells=80, n_genes=60)
    out = pipeline.train_dit_bundle(adata, ["cell_type"], tmp_path / "b", validate=False,
                                    **dict(OPTIONS, n_top_genes=40))  # fmt: skip
    training = cellsynth.load_bundle(out).config["training"]
    assert "validation" not in training and training["verdict"] is None


def test_too_few_held_out_cells_skip_validation(tmp_path: Path, capsys) -> None:
    adata = make_toy_adata(n_cells=60, n_genes=60)
    options = dict(OPTIONS, n_top_genes=40, prepare_options=dict(min_genes_per_cell=10,
                                                                 test_fraction=0.1))  # fmt: skip
    out = pipeline.train_dit_bundle(adata, ["cell_type"], tmp_path / "b", **options)
    err = capsys.readouterr().err
    assert "without validation" in err
    training = cellsynth.load_bundle(out).config["training"]
    assert "validation" not in training
    # ... and the end of training, the bundle and `cellsynth info` say the model is unchecked
    assert "never compared with real cells" in training["verdict"]
    assert f"{training['n_train_cells']} training cells" in training["verdict"]
    assert "warning: this model was never compared" in err


def test_verdict_names_what_is_wrong() -> None:
    from cellsynth.training.validation import verdict

    good = {"knn_auc": 0.58, "knn_auc_floor": 0.5, "label_accuracy": 0.9,
            "label_accuracy_floor": 0.95}  # fmt: skip
    assert verdict(good) is None and verdict(None) is None
    assert verdict(good, unvalidated_cells=None) is None
    unchecked = verdict(None, unvalidated_cells=57)
    assert "57 training cells" in unchecked and "100 needed" in unchecked
    far = verdict({**good, "knn_auc": 0.93})
    assert "easy to tell" in far and "0.93" in far and "--time-budget" in far
    wrong = verdict({**good, "label_accuracy": 0.40})
    assert "labels are often wrong" in wrong and "40%" in wrong


def test_auto_config_sizes_patches_to_the_genes() -> None:
    from cellsynth.training.dit import auto_config

    assert auto_config(2000)["patch_size"] == 50 and auto_config(2000)["hidden_size"] == 128
    assert auto_config(100)["patch_size"] == 3 and auto_config(30)["patch_size"] == 1
    assert auto_config(2000, "cuda:0")["hidden_size"] == 384


def test_time_budget_parsing() -> None:
    from cellsynth.cli.train import parse_duration

    assert parse_duration("900") == 900 and parse_duration("15m") == 900
    assert parse_duration("1.5h") == 5400 and parse_duration("none") is None
    for bad in ("fast", "-3m", "m"):
        with pytest.raises(ValueError, match="time-budget"):
            parse_duration(bad)
