"""Depth conditioning: library-size bins as the model's last label column, drawn per cell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import cellsynth
from cellsynth.errors import BundleError
from cellsynth.generation.conditions import assign_label_runs
from cellsynth.generation.depth import DepthConditioning, depth_conditioning
from cellsynth.generation.options import SamplingOptions
from cellsynth.generation.sampling import ChunkSampler


def fitted(n: int = 4000, n_bins: int = 8, seed: int = 0) -> tuple[DepthConditioning, np.ndarray]:
    """Two classes of different depth (log-normal, means log 1500 and log 4000)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2, (n, 1))
    library = np.exp(rng.normal(np.where(codes[:, 0] == 0, np.log(1500), np.log(4000)), 0.4))
    return DepthConditioning.fit(library, codes, ["cell_type"], n_bins), codes


def test_bins_are_quantiles_of_the_training_depths() -> None:
    rng = np.random.default_rng(1)
    library = np.exp(rng.normal(7.5, 0.5, 5000))
    depth = DepthConditioning.fit(library, np.zeros((5000, 0), np.int64), [], 10)
    assert depth.n_bins == 10 and len(depth.edges) == 9
    counts = np.bincount(depth.bins(library), minlength=10)
    assert counts.min() >= 495 and counts.max() <= 505  # ~500 cells a bin
    np.testing.assert_allclose(depth.edges, np.quantile(np.log(library), np.arange(1, 10) / 10))
    assert depth.bins(np.array([1e-3, 1e9])).tolist() == [0, 9]


def test_draw_follows_each_combinations_depth_and_adds_its_bin() -> None:
    depth, _ = fitted()
    codes = np.repeat(np.array([[0], [1]]), 5000, axis=0)
    library, model_codes = depth.draw(codes, seed=3, cell_offset=0)
    assert model_codes.shape == (10_000, 2) and model_codes.dtype == np.int64
    np.testing.assert_array_equal(model_codes[:, 0], codes[:, 0])
    np.testing.assert_array_equal(model_codes[:, 1], depth.bins(library))
    logs = np.log(library)
    assert abs(logs[:5000].mean() - np.log(1500)) < 0.03
    assert abs(logs[5000:].mean() - np.log(4000)) < 0.03
    assert abs(logs[:5000].std() - 0.4) < 0.03
    # the deeper class sits in the higher bins
    assert model_codes[5000:, 1].mean() > model_codes[:5000, 1].mean() + 2


def test_draw_is_keyed_per_cell_not_per_batch() -> None:
    depth, codes = fitted()
    whole_library, whole_codes = depth.draw(codes[:300], seed=9, cell_offset=0)
    for a, b in ((0, 1), (1, 128), (128, 300)):
        part_library, part_codes = depth.draw(codes[a:b], seed=9, cell_offset=a)
        np.testing.assert_array_equal(part_library, whole_library[a:b])
        np.testing.assert_array_equal(part_codes, whole_codes[a:b])
    other, _ = depth.draw(codes[:300], seed=10, cell_offset=0)
    assert not np.array_equal(other, whole_library)


def test_round_trip_and_bad_settings() -> None:
    depth, _ = fitted()
    again = DepthConditioning.from_dict(json.loads(json.dumps(depth.to_dict())))
    np.testing.assert_array_equal(again.edges, depth.edges)
    codes = np.array([[0], [1], [1]])
    for x, y in zip(again.draw(codes, 1, 5), depth.draw(codes, 1, 5), strict=True):
        np.testing.assert_array_equal(x, y)
    assert depth_conditioning({}) is None
    with pytest.raises(ValueError, match="at least 2 bins"):
        DepthConditioning.fit(np.ones(10), np.zeros((10, 0)), [], 1)
    with pytest.raises(ValueError, match="non-decreasing"):
        DepthConditioning([2.0, 1.0], depth.library)


def test_a_trained_dit_bundle_is_depth_conditioned(tiny_bundle: Path) -> None:
    b = cellsynth.load_bundle(tiny_bundle)
    depth = depth_conditioning(b.config)
    assert depth is not None and depth.n_bins == 8  # train_dit_bundle's default
    assert b.model_label_sizes == [*b.labels.sizes, 8]
    assert b.architecture["label_sizes"] == b.model_label_sizes
    assert "depth" not in b.labels.keys  # never a label the user names


class RecordingDenoiser:
    """Returns x_T as the cells and keeps the labels and null codes it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def denoise(self, sched, x_T, labels, null, guidance, start, options, **extra):
        self.calls.append((np.array(labels), np.array(null)))
        return np.zeros_like(x_T)


def test_generation_conditions_each_cell_on_its_drawn_depth(tiny_bundle: Path) -> None:
    b = cellsynth.load_bundle(tiny_bundle)
    depth = depth_conditioning(b.config)
    denoiser = RecordingDenoiser()
    sampling = SamplingOptions(steps=2, seed=4, batch_size=50)
    sampler = ChunkSampler(b, denoiser, None, sampling)
    runs = assign_label_runs(b.labels, 120, seed=4)
    sampler.chunk(runs, 0, 120, counts=False)
    labels = np.concatenate([lab for lab, _ in denoiser.calls])
    np.testing.assert_array_equal(labels, depth.draw(runs[0:120], 4, 0)[1])
    null = denoiser.calls[0][1]
    assert null.shape[1] == len(b.labels.keys) + 1
    assert (null == np.asarray(b.model_label_sizes)).all()  # every column's null class


def test_counts_use_the_library_sizes_the_cells_were_conditioned_on(tiny_bundle: Path) -> None:
    b = cellsynth.load_bundle(tiny_bundle)
    depth = depth_conditioning(b.config)
    out = cellsynth.generate(b, n_cells=40, steps=3, seed=2, counts=True, progress=False)
    runs = assign_label_runs(b.labels, 40, seed=2)
    library = depth.draw(runs[0:40], 2, 0)[0]
    counts = out.layers["counts"].toarray().astype(np.float64)
    x = np.asarray(out.X.todense(), dtype=np.float64)
    expressed = counts > 0
    # counts = round(expm1(x) * L / target_sum) with each cell's own L
    want = np.rint(np.expm1(x) * (library[:, None] / b.preprocessing.target_sum))
    cap = np.rint(library)[:, None]  # no gene holds more than the whole library
    np.testing.assert_array_equal(counts[expressed], np.minimum(want, cap)[expressed])


def test_a_bundle_whose_depth_bins_disagree_with_the_model_is_refused(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    root = tmp_path / "b"
    shutil.copytree(tiny_bundle, root)
    cfg = json.loads((root / "config.json").read_text())
    cfg["depth"]["edges_log"] = cfg["depth"]["edges_log"][:-1]  # 7 bins, the model has 8
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="depth bins"):
        cellsynth.load_bundle(root)
