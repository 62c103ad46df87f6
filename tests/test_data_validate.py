"""validate_counts and validate_labels: every bad input gets an actionable DataError."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellsynth.data import validate_counts, validate_labels
from cellsynth.errors import DataError

GENES = ["CD3E", "MS4A1", "LYZ", "NKG7"]
CELLS = ["c0", "c1", "c2"]


def _counts() -> np.ndarray:
    return np.array([[1, 0, 3, 0], [0, 2, 0, 5], [4, 0, 0, 1]], dtype=np.float32)


def _with(value: float, cell: int = 1, gene: int = 3) -> np.ndarray:
    m = _counts()
    m[cell, gene] = value
    return m


@pytest.fixture(params=["dense", "csr"])
def fmt(request):
    """Run a test on a dense array and on a CSR matrix."""
    return (lambda m: m) if request.param == "dense" else sp.csr_matrix


def test_valid_counts_pass(fmt):
    validate_counts(fmt(_counts()), GENES)
    validate_counts(fmt(_counts().astype(np.int64)), GENES)


@pytest.mark.parametrize(
    ("value", "words"),
    [(np.nan, ["1 non-finite", "1 NaN"]), (np.inf, ["1 non-finite", "1 infinite"])],
)
def test_non_finite_names_count_cell_and_gene(fmt, value, words):
    with pytest.raises(DataError) as err:
        validate_counts(fmt(_with(value)), GENES, cell_names=CELLS)
    msg = str(err.value)
    for w in words:
        assert w in msg
    assert "cell 1 ('c1')" in msg and "'NKG7'" in msg


def test_nan_count_and_first_position(fmt):
    m = _counts()
    m[2, 0] = m[1, 1] = m[2, 3] = np.nan
    with pytest.raises(DataError, match=r"3 non-finite entries \(3 NaN.*cell 1, gene 'MS4A1'"):
        validate_counts(fmt(m), GENES)


def test_negative_counts(fmt):
    with pytest.raises(
        DataError, match=r"1 negative entries; first at cell 1, gene 'NKG7': value -2"
    ):
        validate_counts(fmt(_with(-2.0)), GENES)


def test_non_integer_counts_and_opt_out(fmt):
    m = fmt(_with(0.5, cell=2, gene=2))
    with pytest.raises(
        DataError, match=r"1 non-integer entries; first at cell 2, gene 'LYZ': value 0.5"
    ):
        validate_counts(m, GENES)
    validate_counts(m, GENES, require_integer=False)


def test_duplicate_gene_names_are_listed():
    with pytest.raises(DataError, match=r"2 gene name\(s\) occur more than once: 'CD3E', 'LYZ'"):
        validate_counts(_counts(), ["CD3E", "CD3E", "LYZ", "LYZ"])


def test_empty_and_mismatched_shapes():
    with pytest.raises(DataError, match="empty"):
        validate_counts(np.zeros((0, 4), np.float32), GENES)
    with pytest.raises(DataError, match="empty"):
        validate_counts(sp.csr_matrix((3, 0), dtype=np.float32), [])
    with pytest.raises(DataError, match="4 genes .* 3 gene names"):
        validate_counts(_counts(), GENES[:3])
    with pytest.raises(DataError, match="numbers"):
        validate_counts(_counts().astype(str), GENES)


def _obs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical(["B", "T", "T", "NK"]),
            "stim": ["ctrl", "stim", "ctrl", "stim"],
            "score": [0.1, 0.2, 0.3, 0.4],
        },
        index=["a", "b", "c", "d"],
    )


def test_good_labels_pass_silently():
    obs = pd.concat([_obs()] * 5)  # five cells of the rarest class: not warned about
    obs.index = [f"c{i}" for i in range(len(obs))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_labels(obs, ["cell_type", "stim"])
        validate_labels(obs, [])
        validate_labels(obs, "stim")


def test_missing_label_column_lists_available():
    with pytest.raises(DataError) as err:
        validate_labels(_obs(), ["cell_type", "celltype"])
    msg = str(err.value)
    assert "'celltype'" in msg and "'cell_type', 'stim', 'score'" in msg


@pytest.mark.parametrize("copy_on_write", [False, True])
@pytest.mark.parametrize("bad", [np.nan, None, "", "  "])
def test_missing_labels_counted(bad, copy_on_write):
    """Also with pandas' copy-on-write (the default from pandas 3), whose arrays are read-only:
    validation once failed there with 'output array is read-only'."""
    obs = _obs()
    obs["stim"] = obs["stim"].astype(object)
    obs.loc["c", "stim"] = bad
    with (
        pd.option_context("mode.copy_on_write", copy_on_write),
        pytest.raises(
            DataError,
            match=r"'stim' has 1 missing \(NaN or empty\) label\(s\), first at cell 'c'",
        ),
    ):
        validate_labels(obs, ["stim"])


def test_nan_in_categorical_labels():
    obs = _obs()
    obs["cell_type"] = pd.Categorical(["B", None, None, "NK"])
    with pytest.raises(DataError, match="'cell_type' has 2 missing.*cell 'b'"):
        validate_labels(obs, ["cell_type"])


def test_single_class_warns_but_passes():
    obs = _obs().assign(tissue="blood")
    with pytest.warns(UserWarning, match="'tissue' has a single class"):
        validate_labels(obs, ["tissue"])


def test_continuous_column_warns_and_duplicate_keys_fail():
    obs = pd.DataFrame({"x": np.arange(200) / 7})
    with pytest.warns(UserWarning, match="continuous"):
        validate_labels(obs, ["x"])
    with pytest.raises(DataError, match="distinct"):
        validate_labels(_obs(), ["stim", "stim"])


def test_implausible_counts_and_tiny_classes_are_warned_about() -> None:
    counts = sp.csr_matrix(np.array([[1.0, 2.0], [3.0, 1e12]]))
    with pytest.warns(UserWarning, match=r"1 entries above 1e\+09.*cell 1, gene 'b'"):
        validate_counts(counts, ["a", "b"])
    obs = pd.DataFrame({"cell_type": ["T"] * 20 + ["B"] * 20 + ["pDC"] * 3})
    with pytest.warns(UserWarning, match=r"1 class\(es\) with fewer than 5 cells \('pDC': 3\)"):
        validate_labels(obs, ["cell_type"])
