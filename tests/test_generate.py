"""cellsynth.generate: the AnnData it returns, its labels, reproducibility and bad options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import cellsynth
from cellsynth.errors import DataError


def test_generate_returns_expression_with_genes_labels_and_provenance(tiny_bundle: Path) -> None:
    b = cellsynth.load_bundle(tiny_bundle)
    adata = cellsynth.generate(
        tiny_bundle, n_cells=37, steps=5, seed=3, batch_size=16, progress=False
    )
    assert adata.shape == (37, 100)
    assert list(adata.var_names) == b.genes
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32
    values = adata.X.toarray()
    assert np.isfinite(values).all() and (values >= 0).all()
    # Zero-negation truncation leaves exact zeros (the tiny model is barely trained, so only the
    # presence of both zeros and expressed values is checked here, not their scale).
    assert 0.05 < (values == 0).mean() < 0.999
    assert list(adata.obs.columns) == ["cell_type", "batch"]
    assert list(adata.obs["cell_type"].cat.categories) == ["alpha", "beta", "gamma"]
    prov = adata.uns["cellsynth"]
    assert prov["bundle_hash"] == b.hash
    assert (prov["steps"], prov["eta"], prov["seed"], prov["n_cells"]) == (5, 0.0, 3, 37)
    assert (prov["scheduler"], prov["timestep_spacing"]) == ("ddim", "leading")
    assert prov["noise"] == "philox4x32-10"
    assert prov["cellsynth_version"] == cellsynth.__version__


def test_conditions_fix_the_labels(tiny_bundle: Path) -> None:
    adata = cellsynth.generate(
        tiny_bundle,
        n_cells=12,
        steps=3,
        conditions={"cell_type": "beta", "batch": "b2"},
        progress=False,
    )
    assert set(adata.obs["cell_type"]) == {"beta"} and set(adata.obs["batch"]) == {"b2"}


def test_same_seed_same_cells_other_seed_other_cells(tiny_bundle: Path) -> None:
    kw = dict(n_cells=8, steps=4, eta=1.0, progress=False)
    a = cellsynth.generate(tiny_bundle, seed=11, **kw).X.toarray()
    b = cellsynth.generate(tiny_bundle, seed=11, **kw).X.toarray()
    c = cellsynth.generate(tiny_bundle, seed=12, **kw).X.toarray()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "scheduler, eta, spacing",
    [("ddim", 1.0, "trailing"), ("ddpm", 0.0, "leading"), ("dpmsolver++", 0.0, "quadratic")],
)
def test_cells_do_not_depend_on_batch_size(
    tiny_bundle: Path, scheduler: str, eta: float, spacing: str
) -> None:
    """Noise is keyed by the global cell index: batches of 4 and of 16 give the same cells."""
    kw = dict(
        n_cells=11,
        steps=6,
        eta=eta,
        seed=7,
        guidance=1.5,
        scheduler=scheduler,
        timestep_spacing=spacing,
        progress=False,
    )
    small = cellsynth.generate(tiny_bundle, batch_size=4, **kw)
    large = cellsynth.generate(tiny_bundle, batch_size=16, **kw)
    # The model is the same network on different batch shapes: its float32 sums may round
    # differently, so the cells agree to float rounding, not bit for bit.
    np.testing.assert_allclose(small.X.toarray(), large.X.toarray(), rtol=1e-5, atol=1e-5)
    assert small.obs.equals(large.obs)
    assert small.uns["cellsynth"]["scheduler"] == scheduler


@pytest.mark.parametrize("scheduler", ["ddpm", "dpmsolver++"])
def test_other_schedulers_and_guidance_run(tiny_bundle: Path, scheduler: str) -> None:
    adata = cellsynth.generate(
        tiny_bundle, n_cells=6, steps=10, scheduler=scheduler, guidance=2.0, progress=False
    )
    x = adata.X.toarray()
    assert np.isfinite(x).all() and (x >= 0).all() and (x > 0).any()
    assert adata.uns["cellsynth"]["scheduler"] == scheduler


def test_generate_matches_the_scheduler_loop(tiny_bundle: Path) -> None:
    """generate = init_noise + (guided model, scheduler step) per step, with cell offsets."""
    import torch

    from cellsynth.generation.depth import depth_conditioning
    from cellsynth.scheduler import scheduler_for_bundle

    b = cellsynth.load_bundle(tiny_bundle)
    adata = cellsynth.generate(
        b,
        n_cells=5,
        steps=4,
        eta=0.5,
        seed=2,
        guidance=2.0,
        batch_size=3,
        device="cpu",
        progress=False,
    )
    model = b.to_torch(weights="ema", device="cpu").eval()
    codes = np.stack([adata.obs[k].cat.codes.to_numpy() for k in b.labels.keys], 1)
    # + each cell's depth bin, drawn keyed by (seed, cell) from its labels' library sizes
    codes = torch.from_numpy(depth_conditioning(b.config).draw(codes, 2, 0)[1])
    sched = scheduler_for_bundle(b, "ddim", truncate_final=True, seed=2)
    blocks = []
    for start in (0, 3):
        labels = codes[start : start + 3].long()
        sched.set_timesteps(4)
        x = sched.init_noise(len(labels), len(b.genes), cell_offset=start)
        for t in sched.timesteps.tolist():
            with torch.no_grad():
                tb = torch.full((len(labels),), t, dtype=torch.long)
                xt = torch.from_numpy(x)
                cond = model(xt, tb, labels)
                uncond = model(xt, tb, model.null_labels(len(labels)))
            out = (uncond + 2.0 * (cond - uncond)).numpy()
            x = sched.step(out, t, x, eta=0.5, cell_offset=start)
        blocks.append(x)
    np.testing.assert_allclose(adata.X.toarray(), np.concatenate(blocks), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps must be between 1 and the 1000"),
        (dict(steps=1001), "steps must be between 1 and the 1000"),
        (dict(scheduler="euler"), "scheduler must be one of"),
        (dict(eta=-1.0), "eta must be between 0"),
        (dict(guidance=float("nan")), "guidance must be between 0"),
        (dict(batch_size=0), "batch_size must be at least 1"),
        (dict(scheduler="ddpm", eta=0.5), "eta applies to the ddim scheduler only"),
        (dict(scheduler="dpmsolver++", eta=1.0), "eta applies to the ddim scheduler only"),
        (dict(timestep_spacing="uniform"), "timestep_spacing must be one of"),
        (dict(n_cells=0), "n_cells must be at least 1"),
        (dict(conditions={"cell_type": "delta"}), r"unknown value\(s\) \['delta'\]"),
    ],
)
def test_bad_options_are_named(tiny_bundle: Path, kwargs: dict, message: str) -> None:
    opts = dict(n_cells=4, steps=2, progress=False) | kwargs
    with pytest.raises(DataError, match=message):
        cellsynth.generate(tiny_bundle, **opts)


def test_grouped_options_and_flat_keywords_make_the_same_cells(tiny_bundle: Path) -> None:
    from cellsynth.generation.options import OutputOptions, RuntimeOptions, SamplingOptions

    flat = cellsynth.generate(
        tiny_bundle, 20, steps=4, seed=5, scheduler="dpmsolver++", batch_size=8,
        engine="torch", progress=False,
    )  # fmt: skip
    grouped = cellsynth.generate(
        tiny_bundle,
        20,
        sampling=SamplingOptions(steps=4, seed=5, scheduler="dpmsolver++", batch_size=8),
        runtime=RuntimeOptions(engine="torch"),
        output=OutputOptions(progress=False),
    )
    np.testing.assert_array_equal(flat.X.toarray(), grouped.X.toarray())
    # a flat keyword overrides its group's field
    other = cellsynth.generate(
        tiny_bundle, 20, sampling=SamplingOptions(steps=4, seed=5, batch_size=8), seed=6,
        engine="torch", progress=False,
    )  # fmt: skip
    assert other.uns["cellsynth"]["seed"] == 6


def test_option_groups_refuse_bad_values_before_any_work() -> None:
    from cellsynth.generation.options import OutputOptions, RuntimeOptions, SamplingOptions

    with pytest.raises(DataError, match="eta applies to the ddim scheduler only"):
        SamplingOptions(scheduler="ddpm", eta=0.5)
    with pytest.raises(DataError, match="threads must be a whole number"):
        RuntimeOptions(threads=0)
    with pytest.raises(DataError, match="resume needs an output file"):
        OutputOptions(resume=True)
    assert OutputOptions(chunk_size=10).chunk_cells(batch_size=8) == 16
    with pytest.raises(TypeError, match=r"unexpected options \['stepz'\]"):
        cellsynth.generate("no-such-bundle", 10, stepz=3)
