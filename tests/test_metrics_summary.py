"""The demo's quick fidelity summary on cases with known answers."""

from __future__ import annotations

import numpy as np

from cellsynth.metrics import fit_pca, quick_summary


def _clusters(rng, n_per: int, shift: float = 0.0):
    centres = np.zeros((3, 40))
    for k in range(3):
        centres[k, k * 10 : k * 10 + 10] = 3.0
    x = np.concatenate([c + rng.normal(0, 0.3, (n_per, 40)) for c in centres]) + shift
    labels = np.repeat(np.array(["a", "b", "c"]), n_per)
    return np.clip(x, 0, None), labels


def test_identical_sets_agree_perfectly() -> None:
    rng = np.random.default_rng(0)
    x, lab = _clusters(rng, 50)
    s = quick_summary(x, x, {"type": lab}, {"type": lab})
    assert s["r_gene_means"] == 1.0 and s["r_gene_zero_fractions"] == 1.0
    assert s["mean_expression_real"] == s["mean_expression_synthetic"]
    assert s["type_agreement"] == 1.0 == s["type_agreement_real"]


def test_swapped_labels_are_caught() -> None:
    rng = np.random.default_rng(1)
    real, lab = _clusters(rng, 50)
    syn, syn_lab = _clusters(rng, 30)
    wrong = np.roll(syn_lab, 30)  # every synthetic cell carries another cluster's label
    s = quick_summary(real, syn, {"type": lab}, {"type": wrong})
    assert s["type_agreement"] == 0.0
    assert quick_summary(real, syn, {"type": lab}, {"type": syn_lab})["type_agreement"] == 1.0


def test_zero_fraction_and_mean_are_plain_averages() -> None:
    real = np.array([[0.0, 1.0], [0.0, 3.0]])
    syn = np.array([[0.0, 0.0], [2.0, 2.0]])
    s = quick_summary(real, syn)
    assert s["zero_fraction_real"] == 0.5 and s["zero_fraction_synthetic"] == 0.5
    assert s["mean_expression_real"] == 1.0 and s["mean_expression_synthetic"] == 1.0


def test_pca_components_are_orthonormal_and_capture_the_main_axis() -> None:
    rng = np.random.default_rng(2)
    t = rng.normal(size=(500, 1))
    x = t @ np.array([[3.0, 4.0, 0.0]]) / 5 + rng.normal(0, 0.01, (500, 3))
    mean, comps = fit_pca(x, 2)
    np.testing.assert_allclose(comps @ comps.T, np.eye(2), atol=1e-10)
    np.testing.assert_allclose(np.abs(comps[0]), [0.6, 0.8, 0.0], atol=1e-2)
