"""Bulk generation: streaming to disk, resume, shards, composition and counts give exact values."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

import cellsynth
from cellsynth.errors import CellsynthError, DataError
from cellsynth.generation.chunks import chunk_dir_for

KW = dict(
    n_cells=45, steps=4, eta=1.0, seed=5, batch_size=5, engine="torch", device="cpu", progress=False
)


@pytest.fixture(scope="module")
def reference(tiny_bundle: Path) -> anndata.AnnData:
    """The whole run in memory."""
    return cellsynth.generate(tiny_bundle, **KW)


def _dense(adata: anndata.AnnData) -> np.ndarray:
    return adata.X[:].toarray() if hasattr(adata.X[:], "toarray") else np.asarray(adata.X[:])


def test_streamed_file_equals_the_in_memory_run(tiny_bundle, reference, tmp_path) -> None:
    out = tmp_path / "cells.h5ad"
    got = cellsynth.generate(tiny_bundle, out=out, chunk_size=10, **KW)
    assert got.isbacked and out.is_file() and not chunk_dir_for(out).exists()
    got = anndata.read_h5ad(out)  # a plain read of the finished file
    np.testing.assert_array_equal(got.X.toarray(), reference.X.toarray())
    pd.testing.assert_frame_equal(got.obs, reference.obs)
    assert list(got.var_names) == list(reference.var_names)
    assert got.uns["cellsynth"]["bundle_hash"] == reference.uns["cellsynth"]["bundle_hash"]
    assert not list(tmp_path.glob(".*partial*"))  # no temporary file left behind


def test_resume_after_an_interruption_gives_the_same_values(
    tiny_bundle, reference, tmp_path, monkeypatch
) -> None:
    import importlib

    gen_module = importlib.import_module("cellsynth.generation.sampling")

    out = tmp_path / "cells.h5ad"
    calls = {"n": 0}
    original = gen_module.ChunkSampler.chunk

    def dies_on_third_chunk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(gen_module.ChunkSampler, "chunk", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        cellsynth.generate(tiny_bundle, out=out, chunk_size=10, **KW)
    assert not out.exists()
    assert len(list(chunk_dir_for(out).glob("cells-*.npz"))) == 2
    with pytest.raises(CellsynthError, match="--resume"):
        cellsynth.generate(tiny_bundle, out=out, chunk_size=10, **KW)
    with pytest.raises(CellsynthError, match="seed"):
        cellsynth.generate(tiny_bundle, out=out, chunk_size=10, resume=True, **{**KW, "seed": 6})

    calls["n"] = -100  # no more interruptions
    got = cellsynth.generate(tiny_bundle, out=out, chunk_size=10, resume=True, **KW)
    assert calls["n"] == -100 + 3  # only the 3 missing chunks were generated
    np.testing.assert_array_equal(_dense(got), reference.X.toarray())
    prov = got.uns["cellsynth"]
    assert prov["command"] == "sample" and prov["batch_size"] == 5
    assert list(prov["resumed_chunks"]) == [2, 5]  # the resumed run says what it reused


def _interrupted_run(tiny_bundle, out, monkeypatch, after_chunks: int, **kw) -> None:
    import importlib

    gen_module = importlib.import_module("cellsynth.generation.sampling")
    original, calls = gen_module.ChunkSampler.chunk, {"n": 0}

    def dies(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after_chunks:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(gen_module.ChunkSampler, "chunk", dies)
        with pytest.raises(KeyboardInterrupt):
            cellsynth.generate(tiny_bundle, out=out, chunk_size=10, **{**KW, **kw})


def test_resume_refuses_chunks_it_cannot_prove_are_its_own(
    tiny_bundle, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "cells.h5ad"
    _interrupted_run(tiny_bundle, out, monkeypatch, after_chunks=2, seed=3)
    (chunk_dir_for(out) / "run.json").unlink()
    with pytest.raises(CellsynthError, match="run.json is missing"):
        cellsynth.generate(tiny_bundle, out=out, chunk_size=10, resume=True, **{**KW, "seed": 4})


def test_a_chunk_of_other_settings_is_computed_again(
    tiny_bundle, reference, tmp_path, monkeypatch, capsys
) -> None:
    # Chunks of a seed-3 run moved under a seed-5 run's directory (run.json agrees, the chunks
    # do not): every one is named and computed again, none is mixed in.
    theirs, ours = tmp_path / "theirs.h5ad", tmp_path / "ours.h5ad"
    _interrupted_run(tiny_bundle, theirs, monkeypatch, after_chunks=2, seed=3)
    _interrupted_run(tiny_bundle, ours, monkeypatch, after_chunks=1)
    for f in chunk_dir_for(theirs).glob("cells-*.npz"):
        f.replace(chunk_dir_for(ours) / f.name)
    got = cellsynth.generate(tiny_bundle, out=ours, chunk_size=10, resume=True, **KW)
    np.testing.assert_array_equal(_dense(got), reference.X.toarray())
    err = capsys.readouterr().err
    assert err.count("was made with other settings; computing it again") == 2


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), "cannot be read"),
        (lambda f: f.write_bytes(b""), "cannot be read"),
    ],
)
def test_a_damaged_chunk_is_named_and_computed_again(
    tiny_bundle, reference, tmp_path, monkeypatch, capsys, damage, problem
) -> None:
    out = tmp_path / "cells.h5ad"
    _interrupted_run(tiny_bundle, out, monkeypatch, after_chunks=2)
    bad = chunk_dir_for(out) / "cells-000000000010.npz"
    damage(bad)
    got = cellsynth.generate(tiny_bundle, out=out, chunk_size=10, resume=True, **KW)
    np.testing.assert_array_equal(_dense(got), reference.X.toarray())
    err = capsys.readouterr().err
    assert f"{bad} {problem}" in err and "computing it again" in err


def test_a_chunk_of_the_wrong_width_is_computed_again(
    tiny_bundle, reference, tmp_path, monkeypatch, capsys
) -> None:
    import scipy.sparse as sp

    from cellsynth.generation.chunks import ChunkStore

    out = tmp_path / "cells.h5ad"
    _interrupted_run(tiny_bundle, out, monkeypatch, after_chunks=2)
    store = ChunkStore.__new__(ChunkStore)
    store.path, store.digest = chunk_dir_for(out), None
    with np.load(store.path / "cells-000000000000.npz") as z:
        store.digest = str(z["meta.settings"])
    store.save(0, 10, {"X": sp.csr_matrix(np.ones((10, 99), dtype=np.float32))})
    got = cellsynth.generate(tiny_bundle, out=out, chunk_size=10, resume=True, **KW)
    np.testing.assert_array_equal(_dense(got), reference.X.toarray())
    assert "has 'X' of shape (10, 99), not (10, 100)" in capsys.readouterr().err


@pytest.mark.parametrize("n_shards", [2, 3])
def test_shards_hold_exactly_the_unsharded_cells(tiny_bundle, reference, n_shards) -> None:
    parts = [cellsynth.generate(tiny_bundle, shard=(k, n_shards), **KW) for k in range(n_shards)]
    assert sum(p.n_obs for p in parts) == KW["n_cells"]
    joined = anndata.concat(parts)
    assert list(joined.obs_names) == list(reference.obs_names)
    np.testing.assert_array_equal(joined.X.toarray(), reference.X.toarray())
    np.testing.assert_array_equal(
        joined.obs["cell_type"].to_numpy(), reference.obs["cell_type"].to_numpy()
    )


def test_another_batch_size_agrees_to_float_rounding(tiny_bundle, reference) -> None:
    got = cellsynth.generate(tiny_bundle, **{**KW, "batch_size": 16}).X.toarray()
    want = reference.X.toarray()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_shard_boundaries_lie_on_the_batch_grid() -> None:
    from cellsynth.generation.shards import chunk_bounds, shard_range

    assert [shard_range(45, (k, 3), align=5) for k in range(3)] == [(0, 15), (15, 30), (30, 45)]
    assert [shard_range(45, (k, 2), align=8) for k in range(2)] == [(0, 16), (16, 45)]
    assert chunk_bounds(16, 45, 10) == [(16, 20), (20, 30), (30, 40), (40, 45)]
    with pytest.raises(DataError, match="empty"):
        shard_range(10, (0, 3), align=8)


def test_bad_shards_are_refused(tiny_bundle) -> None:
    from cellsynth.generation.shards import parse_shard

    for shard in [(2, 2), (-1, 2), (0, 0)]:
        with pytest.raises(DataError, match="shard"):
            cellsynth.generate(tiny_bundle, shard=shard, **KW)
    assert parse_shard("1/4") == (1, 4)
    for text in ["4/4", "1-4", "a/b"]:
        with pytest.raises(DataError, match="k/N"):
            parse_shard(text)


def test_composition_matches_the_real_label_mix(tiny_bundle) -> None:
    real = pd.DataFrame(
        {
            "cell_type": ["alpha"] * 6 + ["beta"] * 3 + ["gamma"] * 1,
            "batch": ["b1"] * 5 + ["b2"] * 5,
        },
        index=[f"real-{i}" for i in range(10)],
    )
    adata = cellsynth.generate(
        tiny_bundle, composition=anndata.AnnData(obs=real), **{**KW, "n_cells": 20}
    )
    got = adata.obs.groupby(["cell_type", "batch"], observed=True).size().to_dict()
    assert got == {("alpha", "b1"): 10, ("alpha", "b2"): 2, ("beta", "b2"): 6, ("gamma", "b2"): 2}
    bad = real.assign(cell_type=["delta"] + list(real["cell_type"][1:]))
    with pytest.raises(DataError, match="delta"):
        cellsynth.generate(tiny_bundle, composition=anndata.AnnData(obs=bad), **KW)
    with pytest.raises(DataError, match="batch"):
        cellsynth.generate(tiny_bundle, composition=anndata.AnnData(obs=real[["cell_type"]]), **KW)


def test_counts_invert_the_normalisation(tiny_bundle_without_depth) -> None:
    """A model without depth conditioning: library sizes from the training cells' quantiles."""
    from cellsynth.generation.counts import draw_library_sizes

    reference = cellsynth.generate(tiny_bundle_without_depth, **KW)
    adata = cellsynth.generate(tiny_bundle_without_depth, counts=True, **KW)
    counts = adata.layers["counts"]
    assert counts.dtype == np.int32 and (counts.data > 0).all()
    b = cellsynth.load_bundle(tiny_bundle_without_depth)
    assert b.model_label_sizes == b.labels.sizes
    record = b.preprocessing
    sizes = draw_library_sizes(record.library_size, KW["n_cells"], KW["seed"], 0)
    expected = np.rint(np.expm1(reference.X.toarray().astype(np.float64)) * sizes[:, None] / 1e4)
    expected = np.minimum(expected, np.rint(sizes)[:, None])  # capped at the library size
    np.testing.assert_array_equal(counts.toarray(), expected)
    # Library sizes follow the recorded training distribution and depend on the cell index only.
    q = record.library_size.quantiles_log
    logs = np.log(draw_library_sizes(record.library_size, 4000, 1, 0))
    assert abs(np.median(logs) - q["0.5"]) < 0.1
    np.testing.assert_array_equal(
        draw_library_sizes(record.library_size, 10, 1, 5)[3:],
        draw_library_sizes(record.library_size, 7, 1, 8),
    )


def test_output_must_be_h5ad_and_resume_needs_it(tiny_bundle, tmp_path) -> None:
    with pytest.raises(DataError, match=".h5ad"):
        cellsynth.generate(tiny_bundle, out=tmp_path / "x.csv", **KW)
    with pytest.raises(DataError, match="resume"):
        cellsynth.generate(tiny_bundle, resume=True, **KW)
