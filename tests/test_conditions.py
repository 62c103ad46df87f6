"""Label requests -> one label combination per generated cell."""

from __future__ import annotations

import numpy as np
import pytest

from cellsynth.bundle.format import LabelSpec
from cellsynth.errors import DataError
from cellsynth.generation.conditions import assign_labels, parse_condition_args

SPEC = LabelSpec(
    keys=["cell_type", "stim"],
    vocabularies={"cell_type": ["B", "NK", "T"], "stim": ["CTRL", "STIM"]},
    # NK cells were only seen in CTRL; T cells dominate.
    combinations=[((0, 0), 100), ((0, 1), 100), ((1, 0), 50), ((2, 0), 600), ((2, 1), 150)],
)


def test_parse_condition_args_collects_repeated_keys() -> None:
    assert parse_condition_args(["cell_type=B", "stim=STIM", "cell_type=NK"]) == {
        "cell_type": ["B", "NK"],
        "stim": ["STIM"],
    }
    for bad in ["cell_type", "=B", "cell_type="]:
        with pytest.raises(DataError, match="KEY=VALUE"):
            parse_condition_args([bad])


def test_no_conditions_follows_training_mix() -> None:
    codes = assign_labels(SPEC, 100_000, seed=1)
    assert codes.shape == (100_000, 2) and codes.dtype == np.int64
    uniq, counts = np.unique(codes, axis=0, return_counts=True)
    expected = {c: n / 1000 for c, n in SPEC.combinations}
    for row, n in zip(uniq, counts, strict=True):
        assert n / 100_000 == pytest.approx(expected[tuple(row)], abs=0.01)


def test_named_label_fixes_it_and_open_label_keeps_its_conditional_mix() -> None:
    codes = assign_labels(SPEC, 20_000, {"cell_type": "T"}, seed=2)
    assert (codes[:, 0] == 2).all()
    assert (codes[:, 1] == 1).mean() == pytest.approx(150 / 750, abs=0.02)


def test_several_values_and_both_keys() -> None:
    codes = assign_labels(SPEC, 1000, {"cell_type": ["B", "NK"], "stim": "CTRL"}, seed=3)
    assert set(map(tuple, codes)) == {(0, 0), (1, 0)}


def test_same_seed_same_labels() -> None:
    a = assign_labels(SPEC, 500, {"stim": "STIM"}, seed=7)
    b = assign_labels(SPEC, 500, {"stim": "STIM"}, seed=7)
    np.testing.assert_array_equal(a, b)


def test_unseen_full_combination_warns_but_works() -> None:
    with pytest.warns(UserWarning, match="never occurs in the training data"):
        codes = assign_labels(SPEC, 10, {"cell_type": "NK", "stim": "STIM"})
    assert (codes == [1, 1]).all()


def test_unseen_partial_combination_is_an_error() -> None:
    spec = LabelSpec(SPEC.keys, SPEC.vocabularies, [((1, 0), 5)])
    with pytest.raises(DataError, match="no training cells have .*name every label"):
        assign_labels(spec, 10, {"cell_type": "B"})


@pytest.mark.parametrize(
    "conditions, message",
    [
        ({"tissue": "blood"}, "unknown label 'tissue'; this model's labels are: cell_type, stim"),
        (
            {"cell_type": "Mono"},
            r"unknown value\(s\) \['Mono'\] for label 'cell_type'; known values",
        ),
    ],
)
def test_bad_conditions_are_named(conditions: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        assign_labels(SPEC, 10, conditions)


def test_unconditional_model() -> None:
    spec = LabelSpec([], {}, [])
    assert assign_labels(spec, 5).shape == (5, 0)
    with pytest.raises(DataError, match="unconditional"):
        assign_labels(spec, 5, {"cell_type": "B"})
    with pytest.raises(DataError, match="at least 1"):
        assign_labels(spec, 0)


def test_label_runs_make_only_the_cells_asked_for() -> None:
    from cellsynth.generation.conditions import assign_label_runs

    runs = assign_label_runs(SPEC, 10**12, seed=4)  # a trillion cells: nothing per cell yet
    assert runs.shape == (10**12, 2)
    shard = runs[5 * 10**11 : 5 * 10**11 + 1000]
    assert shard.shape == (1000, 2) and shard.dtype == np.int64
    small = assign_label_runs(SPEC, 5000, seed=4)
    whole = small[:]
    np.testing.assert_array_equal(whole, assign_labels(SPEC, 5000, seed=4))
    for a, b in [(0, 1), (17, 2500), (4999, 5000), (1234, 1234), (0, 5000)]:
        np.testing.assert_array_equal(small[a:b], whole[a:b])
    assert small.digest() == assign_label_runs(SPEC, 5000, seed=4).digest()
    assert small.digest() != assign_label_runs(SPEC, 5000, seed=5).digest()


def test_an_even_split_gives_every_allowed_combination_the_same_cells() -> None:
    from cellsynth.generation.conditions import assign_label_runs

    runs = assign_label_runs(SPEC, 1001, {"cell_type": ["B", "T"]}, seed=1, split="even")
    counts = sorted(runs.counts.tolist())
    assert sum(counts) == 1001 and counts[-1] - counts[0] <= 1
    assert len(counts) == len(
        [c for c, _ in SPEC.combinations if SPEC.vocabularies["cell_type"][c[0]] in ("B", "T")]
    )
    trained = assign_label_runs(SPEC, 1001, {"cell_type": ["B", "T"]}, seed=1)
    assert trained.counts.tolist() != runs.counts.tolist()  # the training mix is not even
    with pytest.raises(DataError, match="split must be one of"):
        assign_label_runs(SPEC, 10, split="uniform")
