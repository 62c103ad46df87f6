"""Autoencoder, SCDG and their bundles: shapes, eval-mode use, training and validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cellsynth.bundle.load import load_bundle
from cellsynth.errors import BundleError, DataError
from cellsynth.training.autoencoder import (
    AutoEncoder,
    AutoEncoderTraining,
    decode,
    encode,
    train_autoencoder,
    triplet_loss,
    zero_threshold,
)
from cellsynth.training.scdg import SCDG, single_step
from cellsynth.training.train_autoencoder import train_autoencoder_bundle
from cellsynth.training.train_scdg import latent_scale, train_scdg_bundle


@pytest.fixture(scope="module")
def latent_bundles(tmp_path_factory, wu2020_adata):
    root = tmp_path_factory.mktemp("latent")
    ae = train_autoencoder_bundle(
        wu2020_adata, root / "ae", label_keys=["source"], likelihood="mse", config="tiny", epochs=3,
        n_top_genes=200, triplet_weight=0.5, progress=False,
    )  # fmt: skip
    scdg = train_scdg_bundle(
        ae, wu2020_adata, ["source", "patient"], root / "scdg", config="tiny", epochs=3,
        progress=False,
    )  # fmt: skip
    return ae, scdg


def test_autoencoder_shapes_and_unit_latent() -> None:
    torch.manual_seed(0)
    model = AutoEncoder(30, latent_dim=4, hidden=(16, 8), dropout=0.1).eval()
    x = torch.rand(5, 30)
    z, recon = model(x)
    assert z.shape == (5, 4) and recon.shape == (5, 30)
    np.testing.assert_allclose(z.norm(dim=1).detach().numpy(), 1.0, rtol=1e-5)
    # the decoder normalises any code it is given: scaling a code changes nothing
    np.testing.assert_allclose(
        model.decode(3 * z).detach().numpy(), model.decode(z).detach().numpy(), atol=1e-5
    )
    plain = AutoEncoder(30, latent_dim=4, hidden=(16,), normalize_latent=False).eval()
    assert not np.allclose(plain.encode(x).norm(dim=1).detach().numpy(), 1.0)


def test_encode_decode_use_eval_mode() -> None:
    """BatchNorm running statistics and no dropout: a cell's code does not depend on its batch."""
    torch.manual_seed(0)
    model = AutoEncoder(20, latent_dim=3, hidden=(8,), dropout=0.5)
    x = np.random.default_rng(0).random((6, 20)).astype(np.float32)
    model.train()
    alone = encode(model, x[:1])
    together = encode(model, x)
    assert not model.training
    np.testing.assert_allclose(alone, together[:1], atol=1e-6)
    np.testing.assert_array_equal(encode(model, x), encode(model, x))  # no dropout noise
    out = decode(model, together, zero_threshold=0.1)
    assert out.shape == (6, 20) and (out[out != 0] >= 0.1).all()


def test_zero_threshold_matches_the_real_zero_fraction() -> None:
    rng = np.random.default_rng(1)
    real = np.where(rng.random((200, 50)) < 0.8, 0.0, 2.0)
    recon = rng.random((200, 50))
    thr = zero_threshold(recon, real)
    assert abs((recon < thr).mean() - (real == 0).mean()) < 0.01


def test_triplet_loss_against_a_hand_computed_case() -> None:
    # class 0 = {0, 1}, class 1 = {3}: every anchor's positive and negative are unique;
    # the class-1 cell has no positive and is left out.
    z = torch.tensor([[0.0], [1.0], [3.0]])
    y = torch.tensor([0, 0, 1])
    g = torch.Generator().manual_seed(0)
    # anchor 0: relu(1 - 3 + 1.5) = 0; anchor 1: relu(1 - 2 + 1.5) = 0.5 -> mean 0.25
    assert float(triplet_loss(z, y, 1.5, g)) == pytest.approx(0.25)
    assert float(triplet_loss(z, torch.tensor([0, 1, 2]), 1.5, g)) == 0.0  # no positives


def test_training_lowers_reconstruction_error() -> None:
    rng = np.random.default_rng(0)
    # rank-3 structure the 4-d latent can capture
    x = np.maximum(rng.normal(size=(64, 3)) @ rng.normal(size=(3, 40)), 0).astype(np.float32)
    torch.manual_seed(0)
    model = AutoEncoder(40, latent_dim=4, hidden=(16,), dropout=0.0)
    before = float(np.mean((decode(model, encode(model, x)) - x) ** 2))
    hist = train_autoencoder(
        model,
        x,
        None,
        AutoEncoderTraining(epochs=60, batch_size=16, learning_rate=1e-2, progress=False),
    )
    after = float(np.mean((decode(model, encode(model, x)) - x) ** 2))
    assert after < 0.5 * before
    assert hist[-1]["mse"] < hist[0]["mse"]
    with pytest.raises(ValueError, match="NaN"):
        train_autoencoder(
            model, np.full((4, 40), np.nan, np.float32), None, AutoEncoderTraining(epochs=1)
        )


def test_scdg_starts_at_zero_and_single_step_is_differentiable() -> None:
    torch.manual_seed(0)
    model = SCDG(6, label_sizes=[3, 2], hidden_size=16, depth=2, frequency_embedding_size=8).eval()
    x = torch.randn(4, 6)
    t = torch.tensor([0, 10, 500, 999])
    labels = torch.tensor([[0, 1], [2, 0], [3, 2], [1, 1]])  # 3 and 2 are the null classes
    out = model(x, t, labels)
    assert out.shape == (4, 6)
    codes = torch.randn(4, 6, requires_grad=True)
    ac = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    y = single_step(model, codes, labels, torch.randn(4, 6), 50, ac)
    y.sum().backward()
    assert codes.grad is not None and codes.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="codes of shape"):
        model(torch.randn(4, 5), t, labels)


def test_latent_scale_gives_unit_rms() -> None:
    z = np.random.default_rng(0).normal(0, 0.1, (100, 8))
    assert np.sqrt(np.mean((z * latent_scale(z)) ** 2)) == pytest.approx(1.0)
    with pytest.raises(DataError, match="zero"):
        latent_scale(np.zeros((3, 2)))


def test_bundles_record_kind_link_and_settings(latent_bundles) -> None:
    ae_path, scdg_path = latent_bundles
    ae, scdg = load_bundle(ae_path), load_bundle(scdg_path)
    assert ae.kind == "autoencoder" and scdg.kind == "latent_diffusion"
    assert not (ae.path / "ema.safetensors").exists()
    assert scdg.width == ae.architecture["latent_dim"] == 8
    assert scdg.genes == ae.genes and len(ae.genes) == 200
    assert scdg.labels.keys == ["source", "patient"]
    assert scdg.prediction_type == "sample"
    assert scdg.config["latent"]["scale"] > 0
    assert ae.config["decode"]["zero_threshold"] >= 0
    assert ae.config["training"]["triplet_weight"] == 0.5
    assert scdg.autoencoder.hash == ae.hash
    assert isinstance(ae.to_torch(), AutoEncoder) and not ae.to_torch().training
    assert isinstance(scdg.to_torch(), SCDG)


def test_scdg_bundle_with_another_autoencoder_is_refused(latent_bundles, tmp_path) -> None:
    _, scdg_path = latent_bundles
    bad = tmp_path / "scdg"
    shutil.copytree(scdg_path, bad)
    cfg_path = bad / "autoencoder" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["training"]["note"] = "edited"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="not the autoencoder this bundle was trained with"):
        load_bundle(bad)
    shutil.rmtree(bad / "autoencoder")
    with pytest.raises(BundleError, match="autoencoder .* is missing"):
        load_bundle(bad)


def test_scdg_needs_the_autoencoders_data(latent_bundles, kang_small) -> None:
    ae_path, _ = latent_bundles
    with pytest.raises(DataError, match="not the data|not in obs"):
        train_scdg_bundle(ae_path, kang_small, ["cell_type"], Path("/nonexistent/x"), epochs=1)


def test_dit_bundle_has_no_autoencoder(tiny_bundle) -> None:
    with pytest.raises(BundleError, match="has no autoencoder"):
        load_bundle(tiny_bundle).autoencoder  # noqa: B018


def test_scdg_on_too_few_cells_warns_that_it_is_unchecked(tmp_path, capsys) -> None:
    from conftest import make_toy_adata, train_toy_scdg

    scdg = train_toy_scdg(make_toy_adata(n_cells=90, n_genes=80), tmp_path)
    training = load_bundle(scdg).config["training"]
    assert "validation" not in training and training["n_validation_cells"] == 0
    assert "never compared with real cells" in training["verdict"]
    assert "warning: this model was never compared" in capsys.readouterr().err
