"""match_label_mix: the same cells per label combination on both sides, drawn without repeats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellsynth.metrics.label_mix import match_label_mix


def _frame(a: list[str], b: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"type": a, "cond": b})


@settings(max_examples=60, deadline=None)
@given(
    real=st.lists(st.tuples(st.sampled_from("xyz"), st.sampled_from("ab")), max_size=60),
    syn=st.lists(st.tuples(st.sampled_from("xyw"), st.sampled_from("ab")), max_size=60),
    seed=st.integers(0, 2**32 - 1),
)
def test_both_sides_get_the_same_count_of_every_shared_combination(real, syn, seed):
    r = _frame([t for t, _ in real], [c for _, c in real])
    s = _frame([t for t, _ in syn], [c for _, c in syn])
    m = match_label_mix(r, s, ["type", "cond"], seed)
    assert len(np.unique(m.real_rows)) == len(m.real_rows)  # no cell twice
    assert len(np.unique(m.synthetic_rows)) == len(m.synthetic_rows)
    kept_r = r.iloc[m.real_rows].value_counts().to_dict()
    assert kept_r == s.iloc[m.synthetic_rows].value_counts().to_dict()
    all_r, all_s = r.value_counts(), s.value_counts()
    for combo, n in kept_r.items():
        assert n == min(all_r[combo], all_s[combo])  # as many as the scarcer side has
    shared = set(all_r.index) & set(all_s.index)
    assert m.combinations == len(shared)
    assert m.dropped_synthetic == int(sum(n for c, n in all_s.items() if c not in shared))


def test_the_choice_is_seeded_and_random():
    r = _frame(["x"] * 100, ["a"] * 100)
    s = _frame(["x"] * 10, ["a"] * 10)
    first = match_label_mix(r, s, ["type"], seed=1).real_rows
    np.testing.assert_array_equal(first, match_label_mix(r, s, ["type"], seed=1).real_rows)
    assert not np.array_equal(first, match_label_mix(r, s, ["type"], seed=2).real_rows)
    assert len(first) == 10


def test_keys_are_required():
    with pytest.raises(ValueError, match="at least one label key"):
        match_label_mix(_frame([], []), _frame([], []), [])
