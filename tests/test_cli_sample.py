"""``cellsynth sample`` bulk options: engine, shards, counts, composition, resume, and bad usage."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from cellsynth.cli.main import main

BASE = ["--n-cells", "30", "--steps", "3", "--seed", "2", "--batch-size", "5"]
BASE += ["--engine", "torch", "--device", "cpu"]


def test_shards_with_counts_join_into_the_unsharded_run(tiny_bundle: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole.h5ad"
    assert main(["sample", str(tiny_bundle), *BASE, "--counts", "--out", str(whole)]) == 0
    parts = []
    for k in range(3):
        out = tmp_path / f"part{k}.h5ad"
        args = ["sample", str(tiny_bundle), *BASE, "--counts", "--shard", f"{k}/3"]
        assert main([*args, "--out", str(out)]) == 0
        parts.append(anndata.read_h5ad(out))
    ref = anndata.read_h5ad(whole)
    joined = anndata.concat(parts)
    assert [p.n_obs for p in parts] == [10, 10, 10]
    np.testing.assert_array_equal(joined.X.toarray(), ref.X.toarray())
    np.testing.assert_array_equal(joined.layers["counts"].toarray(), ref.layers["counts"].toarray())
    assert parts[1].uns["cellsynth"]["cells"].tolist() == [10, 20]


def test_composition_file_sets_the_label_mix(tiny_bundle: Path, tmp_path: Path) -> None:
    real = anndata.AnnData(
        obs=pd.DataFrame(
            {"cell_type": ["beta"] * 3 + ["gamma"], "batch": ["b1"] * 4},
            index=[f"c{i}" for i in range(4)],
        )
    )
    real.write_h5ad(tmp_path / "real.h5ad")
    out = tmp_path / "mix.h5ad"
    args = ["sample", str(tiny_bundle), *BASE, "--composition", str(tmp_path / "real.h5ad")]
    assert main([*args, "--out", str(out)]) == 0
    got = anndata.read_h5ad(out).obs["cell_type"].value_counts().to_dict()
    # 22.5 and 7.5: the tied remainder goes to the more common combination
    assert got["beta"] == 23 and got["gamma"] == 7 and got["alpha"] == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shard", "3/3"], "k/N"),
        (["--engine", "tensorrt"], "GPU"),
        (["--composition", "missing.h5ad"], "does not exist"),
        (["--guidance", "1e30"], "guidance must be between 0"),
        (["--guidance", "-1"], "guidance must be between 0"),
        (["--eta", "2"], "eta must be between 0"),
        (["--threads", "0"], "threads must be"),
        (["--seed", "-1"], "seed must be"),
    ],
)
def test_bad_bulk_options_are_one_line_errors(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra, message
) -> None:
    args = ["sample", str(tiny_bundle), *BASE, *extra, "--out", str(tmp_path / "x.h5ad")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "x.h5ad").exists()


def test_unknown_engine_is_a_usage_error(tiny_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(tiny_bundle), "--n-cells", "3", "--engine", "warp", "--out", "x.h5ad"])
    assert exc.value.code == 1 and "invalid choice: 'warp'" in capsys.readouterr().err


def test_garbage_values_are_refused_not_written(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    import importlib

    gen_module = importlib.import_module("cellsynth.generation.open_engines")
    real_load = gen_module.load_engine

    def exploding(*args, **kwargs):
        denoiser, decoder, why = real_load(*args, **kwargs)
        denoise = denoiser.denoise
        denoiser.denoise = lambda *a, **k: denoise(*a, **k) * np.float32(1e20)
        return denoiser, decoder, why

    monkeypatch.setattr(gen_module, "load_engine", exploding)
    out = tmp_path / "x.h5ad"
    assert main(["sample", str(tiny_bundle), *BASE, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cells 0..4 hold log-normalised values up to" in err and "broken" in err
    assert not out.exists()


def test_a_dash_value_is_explained(tiny_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["sample", str(tiny_bundle), "--n-cells", "3", "--shard", "-1/2", "--out", "x.h5ad"])
    err = capsys.readouterr().err
    assert "expected one argument" in err and "--option=VALUE" in err
    args = ["sample", str(tiny_bundle), "--n-cells", "3", "--shard=-1/2", "--out", "x.h5ad"]
    assert main(args) == 1
    assert "--shard expects k/N with 0 <= k < N" in capsys.readouterr().err


def test_even_gives_each_allowed_combination_the_same_cells(tiny_bundle: Path, tmp_path: Path):
    out = tmp_path / "even.h5ad"
    args = ["sample", str(tiny_bundle), *BASE, "--condition", "cell_type=alpha"]
    assert main([*args, "--condition", "cell_type=gamma", "--even", "--out", str(out)]) == 0
    adata = anndata.read_h5ad(out)
    groups = adata.obs.groupby(["cell_type", "batch"], observed=True).size()
    assert set(adata.obs["cell_type"]) == {"alpha", "gamma"}
    assert groups.sum() == 30 and groups.max() - groups.min() <= 1
    assert adata.uns["cellsynth"]["split"] == "even"
