"""The networks' distillation term: the unrolled AdamW step is torch's, its gradient is right,
its draws are seeded."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from cellsynth.errors import DataError
from cellsynth.training.classifiers import MLP, GeneTokenTransformer
from cellsynth.training.distill import DistillConfig
from cellsynth.training.distill_networks import (
    NetworkTerm,
    adamw_unroll,
    build_network,
    parse_networks,
)


def _data(n: int, genes: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, genes, generator=g, dtype=torch.float64) * 3
    x[torch.rand(n, genes, generator=g) < 0.4] = 0  # expression-like zeros
    y = torch.arange(n) % classes
    return x, y


def _tiny_net(kind: str, genes: int, classes: int, seed: int) -> torch.nn.Module:
    """A small float64 MLP or gene-token transformer (tokens of genes // 2), no dropout."""
    torch.manual_seed(seed)
    if kind == "mlp":
        return MLP(genes, classes, hidden=6, dropout=0.0).double()
    return GeneTokenTransformer(genes, classes, genes_per_token=max(genes // 2, 1), d_model=8,
                                n_heads=2, dim_feedforward=16, dropout=0.0).double()  # fmt: skip


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_adamw_unroll_equals_torch_adamw(kind: str) -> None:
    net = _tiny_net(kind, 9, 3, seed=11)
    x, y = _data(12, 9, 3, seed=5)
    start = {k: w.detach().clone() for k, w in net.named_parameters()}
    reference = copy.deepcopy(net)
    opt = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.01, eps=1e-6)
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        opt.step()
    with sdpa_kernel(SDPBackend.MATH):
        params = {k: w.requires_grad_(True) for k, w in start.items()}
        unrolled = adamw_unroll(net, params, x, y, steps=4, lr=0.01, eps=1e-6)
    for name, w in reference.named_parameters():
        torch.testing.assert_close(unrolled[name].detach(), w.detach(), rtol=1e-9, atol=1e-12)
        assert not torch.equal(unrolled[name].detach(), start[name])  # it did move


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_unrolled_gradient_matches_finite_differences(kind: str) -> None:
    net = _tiny_net(kind, 6, 2, seed=3)
    start = {k: w.detach().requires_grad_(True) for k, w in net.named_parameters()}
    cells, labels = _data(4, 6, 2, seed=1)
    cells = cells + 0.5  # no exact zeros: every entry of the synthetic cells is checked
    real, real_labels = _data(10, 6, 2, seed=2)

    def held_out_loss(syn: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            trained = adamw_unroll(net, start, syn, labels, steps=3, lr=0.05)
            return F.cross_entropy(functional_call(net, trained, (real,)), real_labels)

    assert torch.autograd.gradcheck(
        held_out_loss, (cells.clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_network_term_is_seeded_and_leaves_the_global_rng_alone() -> None:
    x, y = _data(40, 10, 3, seed=7)
    syn, syn_labels = _data(6, 10, 3, seed=8)
    values = []
    for _ in range(2):
        term = NetworkTerm(("mlp", "transformer"), 10, 3, steps=2, learning_rate=0.003,
                           real_cells=16, generator=torch.Generator().manual_seed(4))  # fmt: skip
        state = torch.random.get_rng_state()
        cells = syn.float().requires_grad_(True)
        value = term.draw(x.float(), y, syn_labels)(cells)
        (grad,) = torch.autograd.grad(value, cells)
        assert torch.equal(torch.random.get_rng_state(), state)
        assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
        assert term.history == [float(value.detach())]
        values.append((float(value.detach()), grad))
    assert values[0][0] == values[1][0]
    torch.testing.assert_close(values[0][1], values[1][1], rtol=0, atol=0)
    # a later draw is a different network and different real cells
    again = term.draw(x.float(), y, syn_labels)(syn.float())
    assert float(again.detach()) != values[1][0]


def test_networks_are_checked() -> None:
    assert parse_networks("transformer, mlp,mlp") == ("transformer", "mlp")
    assert parse_networks(["mlp"]) == ("mlp",)
    with pytest.raises(DataError, match="networks must name some of"):
        parse_networks("cnn")
    with pytest.raises(DataError, match="networks must name some of"):
        parse_networks(" , ")
    with pytest.raises(DataError, match="unknown network"):
        build_network("cnn", 5, 2)
    assert DistillConfig(networks="transformer ,mlp").networks == "transformer,mlp"
    with pytest.raises(DataError, match="network_weight"):
        DistillConfig(network_weight=-0.1)
    with pytest.raises(DataError, match="unroll_steps"):
        DistillConfig(unroll_steps=0)
    with pytest.raises(DataError, match="unroll_learning_rate"):
        DistillConfig(unroll_learning_rate=0)
    with pytest.raises(DataError, match="networks"):
        DistillConfig(networks="rnn")
    with pytest.raises(DataError, match="networks must name some of"):
        parse_networks(None)
    with pytest.raises(DataError, match="network_weight"):
        DistillConfig(network_weight=float("inf"))
    with pytest.raises(DataError, match="unroll_learning_rate"):
        DistillConfig(unroll_learning_rate=float("nan"))
