"""DDPM training loop: learning, determinism, exact resume, EMA, LR schedule, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference_sampler import sample

from cellsynth import NoiseSchedule
from cellsynth.training.dit import DiT
from cellsynth.training.ema import EMA
from cellsynth.training.trainer import (
    CHECKPOINT_NAME,
    TrainConfig,
    TrainResult,
    _rng_state,
    _set_rng_state,
    load_checkpoint,
    lr_factor,
    train,
)

SCHEDULE = NoiseSchedule()
G = 40


def toy_data(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes in zero-negated space: class c expresses one half of the genes (~N(2, 0.5))."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = np.full((n, G), -10.0, dtype=np.float32)
    for i, c in enumerate(y):
        x[i, c * (G // 2) : (c + 1) * (G // 2)] = rng.normal(2.0, 0.5, size=G // 2)
    return x, y[:, None].astype(np.int64)


def tiny_dit(seed: int = 0, **kw) -> DiT:
    torch.manual_seed(seed)
    args = dict(patch_size=5, hidden_size=32, depth=1, num_heads=4, frequency_embedding_size=32)
    args.update(kw)
    return DiT(G, [2], **args)


def config(**kw) -> TrainConfig:
    args = dict(epochs=2, batch_size=32, learning_rate=1e-3, warmup_steps=5, progress=False)
    args.update(kw)
    return TrainConfig(**args)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def data():
    return toy_data()


def test_training_lowers_the_loss(data):
    x, y = data
    result = train(tiny_dit(), x, y, SCHEDULE, config(epochs=30, warmup_steps=20))
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 30 and result.steps == 30 * 8
    assert 0.9 < losses[0] < 1.1  # zero-initialised output: MSE against unit noise
    assert np.mean(losses[-5:]) < 0.4 * losses[0]
    assert all(h["seconds"] > 0 for h in result.history)
    assert [h["epoch"] for h in result.history] == list(range(1, 31))
    assert isinstance(result, TrainResult) and result.device == "cpu"
    assert not result.model.training
    assert all(p.device.type == "cpu" for p in result.model.parameters())


def test_train_then_sample_reproduces_the_classes():
    """End to end: a tiny v-prediction DiT learns which half of the genes each class expresses."""
    x, y = toy_data(512)
    cfg = config(epochs=40, batch_size=64, learning_rate=3e-3, prediction_type="v_prediction")
    result = train(tiny_dit(), x, y, SCHEDULE, cfg)
    model = result.model
    model.load_state_dict(result.ema_state)
    labels = torch.tensor([[0]] * 20 + [[1]] * 20)
    gen = torch.Generator().manual_seed(0)
    cells = sample(model, SCHEDULE.alphas_cumprod, labels, steps=25, prediction_type="v_prediction",
                   generator=gen)  # fmt: skip
    on = (cells > 0).float()
    half = G // 2
    assert on[:20, :half].mean() > 0.9 and on[20:, half:].mean() > 0.9  # expressed halves
    assert on[:20, half:].mean() < 0.05 and on[20:, :half].mean() < 0.05  # silent halves
    assert abs(cells[cells > 0].mean().item() - 2.0) < 0.5  # expressed level ~N(2, 0.5)


@pytest.mark.parametrize("kind", ["sample", "v_prediction"])
def test_other_prediction_types_train(data, kind):
    x, y = data
    result = train(tiny_dit(), x, y, SCHEDULE, config(epochs=6, prediction_type=kind))
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_same_seed_gives_bit_identical_weights(data):
    x, y = data
    a = train(tiny_dit(), x, y, SCHEDULE, config())
    b = train(tiny_dit(), x, y, SCHEDULE, config())
    assert same_weights(a.model.state_dict(), b.model.state_dict())
    assert same_weights(a.ema_state, b.ema_state)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    c = train(tiny_dit(), x, y, SCHEDULE, config(seed=1))
    assert not same_weights(a.model.state_dict(), c.model.state_dict())


def test_exact_resume(tmp_path, data):
    """2 epochs straight == 1 epoch, stop, resume to 2 (weights, EMA, history, counters)."""
    x, y = data
    straight = train(tiny_dit(), x, y, SCHEDULE, config(), tmp_path / "a")

    epochs_seen = []
    stopped = train(
        tiny_dit(),
        x,
        y,
        SCHEDULE,
        config(),
        tmp_path / "b",
        callback=lambda row: epochs_seen.append(row["epoch"]) or True,
    )
    assert epochs_seen == [1] and stopped.steps == 8 and len(stopped.history) == 1
    assert load_checkpoint(tmp_path / "b")["epoch"] == 1
    # different initial weights and global RNG: everything must come from the checkpoint
    torch.manual_seed(123)
    np.random.seed(5)
    resumed = train(tiny_dit(seed=7), x, y, SCHEDULE, config(), tmp_path / "b", resume=True)
    assert resumed.steps == straight.steps == 16
    assert same_weights(resumed.model.state_dict(), straight.model.state_dict())
    assert same_weights(resumed.ema_state, straight.ema_state)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == strip
    # resuming a finished run trains nothing more and returns the same weights
    again = train(tiny_dit(seed=8), x, y, SCHEDULE, config(), tmp_path / "b", resume=True)
    assert same_weights(again.model.state_dict(), straight.model.state_dict())


def test_resume_with_more_epochs_extends_the_run(tmp_path, data):
    x, y = data
    first = train(tiny_dit(), x, y, SCHEDULE, config(epochs=1), tmp_path)
    more = train(tiny_dit(), x, y, SCHEDULE, config(epochs=3), tmp_path, resume=True)
    assert more.steps == 24 and [h["epoch"] for h in more.history] == [1, 2, 3]
    assert more.history[0] == first.history[0]
    # the cosine schedule is recomputed over the new total (24 steps)
    assert more.history[1]["lr"] == pytest.approx(1e-3 * lr_factor(15, 5, 24))
    with pytest.raises(ValueError, match="already trained 3 epochs"):
        train(tiny_dit(), x, y, SCHEDULE, config(epochs=2), tmp_path, resume=True)


def test_checkpoint_is_atomic_and_weights_only(tmp_path, data):
    x, y = data
    result = train(
        tiny_dit(), x, y, SCHEDULE, config(epochs=3, checkpoint_every_epochs=2), tmp_path
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]  # no temp files
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["step"] == 24  # written at the end too
    assert same_weights(ckpt["model"], result.model.state_dict())
    assert same_weights(ckpt["ema"]["averaged"], result.ema_state)
    assert ckpt["train_config"] == config(epochs=3, checkpoint_every_epochs=2).to_dict()
    assert ckpt["model_config"] == result.model.config
    assert ckpt["data"]["n_cells"] == 256 and ckpt["data"]["n_genes"] == G
    assert set(ckpt["rng"]) >= {"torch", "data_gen", "noise_gen", "numpy", "python"}


def test_resume_mismatches_are_clear_errors(tmp_path, data):
    x, y = data
    train(tiny_dit(), x, y, SCHEDULE, config(epochs=1), tmp_path)
    with pytest.raises(ValueError, match="model config"):
        train(tiny_dit(hidden_size=16), x, y, SCHEDULE, config(), tmp_path, resume=True)
    with pytest.raises(ValueError, match="n_cells=256"):
        train(tiny_dit(), x[:200], y[:200], SCHEDULE, config(), tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"batch_size: 32 -> 64"):
        train(tiny_dit(), x, y, SCHEDULE, config(batch_size=64), tmp_path, resume=True)
    with pytest.raises(ValueError, match="noise schedule"):
        train(tiny_dit(), x, y, NoiseSchedule(beta_end=0.03), config(), tmp_path, resume=True)
    with pytest.raises(ValueError, match="needs a checkpoint_dir"):
        train(tiny_dit(), x, y, SCHEDULE, config(), None, resume=True)


def test_resume_without_checkpoint_starts_fresh(tmp_path, data):
    x, y = data
    fresh = train(tiny_dit(), x, y, SCHEDULE, config(epochs=1))
    resumed = train(tiny_dit(), x, y, SCHEDULE, config(epochs=1), tmp_path, resume=True)
    assert same_weights(fresh.model.state_dict(), resumed.model.state_dict())


def test_rng_states_round_trip():
    data_gen, noise_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    state = _rng_state(data_gen, noise_gen)
    draws = lambda: (  # noqa: E731
        torch.rand(3),
        torch.rand(3, generator=data_gen),
        torch.rand(3, generator=noise_gen),
        np.random.rand(3),
        __import__("random").random(),
    )
    first = draws()
    _set_rng_state(state, data_gen, noise_gen, reseed=0)
    second = draws()
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_ema_in_training(data):
    x, y = data
    result = train(tiny_dit(), x, y, SCHEDULE, config(epochs=1))
    raw = result.model.state_dict()
    assert result.ema_state.keys() == raw.keys()
    assert all(v.device.type == "cpu" for v in result.ema_state.values())
    assert not same_weights(result.ema_state, raw)
    # decay 0 makes the EMA the last weights exactly
    result0 = train(tiny_dit(), x, y, SCHEDULE, config(epochs=1, ema_decay=0.0))
    assert same_weights(result0.ema_state, result0.model.state_dict())


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_manual_average(warmup):
    model = torch.nn.Linear(3, 2)
    model.register_buffer("count", torch.zeros(()))
    ema = EMA(model, decay=0.9, warmup=warmup)
    manual = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.count += 1
        d = min(0.9, (1 + n) / (10 + n)) if warmup else 0.9
        assert ema.current_decay() == pytest.approx(d)
        ema.update(model)
        for name, p in model.named_parameters():
            manual[name] = d * manual[name] + (1 - d) * p.detach()
        manual["count"] = model.count.clone()
        for k in manual:
            torch.testing.assert_close(ema.averaged[k], manual[k], rtol=1e-6, atol=1e-6)
    assert ema.averaged["count"].item() == 4  # buffers are copied, not averaged
    # state_dict round trip and copy_to
    other = EMA(model, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 4 and other.decay == 0.9 and other.warmup == warmup
    target = torch.nn.Linear(3, 2)
    target.register_buffer("count", torch.zeros(()))
    ema.copy_to(target)
    assert same_weights(target.state_dict(), ema.averaged)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_lr_schedule_values():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(4, 10, 100) == pytest.approx(0.5)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)  # half-way through the decay
    assert lr_factor(99, 10, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)
    assert lr_factor(0, 0, 10) == pytest.approx(1.0)


def test_lr_in_training_history(data):
    x, y = data  # 8 steps per epoch, 3 epochs = 24 steps
    result = train(tiny_dit(), x, y, SCHEDULE, config(epochs=3, warmup_steps=10))
    lrs = [h["lr"] for h in result.history]  # LR of each epoch's last step (steps 7, 15, 23)
    expected = [1e-3 * lr_factor(s, 10, 24) for s in (7, 15, 23)]
    assert lrs == pytest.approx(expected)
    # warm-up is clipped to the total number of steps (8 here): the last step is at full LR
    short = train(tiny_dit(), x, y, SCHEDULE, config(epochs=1, warmup_steps=100))
    assert short.history[0]["lr"] == pytest.approx(1e-3)


def test_data_validation(data):
    x, y = data
    model = tiny_dit()
    cfg = config(epochs=1)
    with pytest.raises(ValueError, match="no cells"):
        train(model, x[:0], y[:0], SCHEDULE, cfg)
    bad = x.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values \(in 1 cells\)"):
        train(model, bad, y, SCHEDULE, cfg)
    with pytest.raises(ValueError, match="labels must have shape"):
        train(model, x, np.zeros((256, 2), dtype=np.int64), SCHEDULE, cfg)
    with pytest.raises(ValueError, match="labels must have shape"):
        train(model, x, y[:100], SCHEDULE, cfg)
    with pytest.raises(ValueError, match=r"class index 2, outside \[0, 1\]"):
        train(model, x, y + 1, SCHEDULE, cfg)
    with pytest.raises(ValueError, match="39 genes but the model was built for 40"):
        train(model, x[:, :39], y, SCHEDULE, cfg)
    with pytest.raises(ValueError, match="integer class indices"):
        train(model, x, y.astype(np.float32), SCHEDULE, cfg)


def test_unconditional_training_with_1d_free_labels(data):
    x, _ = data
    torch.manual_seed(0)
    model = DiT(G, [], patch_size=5, hidden_size=16, depth=1, num_heads=2)
    result = train(model, x, None, SCHEDULE, config(epochs=1))
    assert result.steps == 8 and math.isfinite(result.history[0]["loss"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(prediction_type="eps"), "prediction_type"),
        (dict(mixed_precision="fp8"), "mixed_precision"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(grad_clip_norm=0.0), "grad_clip_norm"),
    ],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        config(**kwargs)


def test_train_config_round_trip():
    cfg = config(seed=3, grad_clip_norm=None)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig options"):
        TrainConfig.from_dict({**cfg.to_dict(), "lr": 1.0})
    with pytest.raises(ValueError, match="unknown device"):
        train(tiny_dit(), *toy_data(8), SCHEDULE, config(device="tpu"))


# ------------------------------------------------------------- run length and validation


def test_max_steps_ends_the_run_mid_epoch(data):
    x, y = data
    result = train(tiny_dit(), x, y, SCHEDULE, config(epochs=None, max_steps=11))
    assert result.steps == 11  # 8 steps an epoch: ends 3 steps into the second
    assert [h["step"] for h in result.history] == [8, 11]
    # The LR schedule spans the 11 steps: the last step ran at the cosine's tail.
    assert result.history[-1]["lr"] == pytest.approx(1e-3 * lr_factor(10, 5, 11))


def test_time_budget_fits_the_schedule_to_the_budget(data):
    import time

    x, y = data
    started = time.perf_counter()
    result = train(tiny_dit(), x, y, SCHEDULE, config(epochs=None, time_budget_s=3.0))
    elapsed = time.perf_counter() - started
    assert result.steps > 22 and elapsed < 3.0 + 2.0  # timed after 22 steps, then fitted
    assert result.history[-1]["lr"] < 0.6 * 1e-3  # the cosine ran well past its middle


def test_a_run_needs_an_end():
    with pytest.raises(ValueError, match="epochs, max_steps or time_budget_s"):
        TrainConfig(epochs=None)


def test_validation_keeps_the_best_weights(data):
    x, y = data
    # A validator that likes the run's third validation best: those weights must come back.
    calls = []

    def validator(model):
        calls.append({k: v.clone() for k, v in model.state_dict().items()})
        score = abs(len(calls) - 3)
        return {"score": float(score), "knn_auc": 0.5 + score / 10}

    result = train(tiny_dit(), x, y, SCHEDULE, config(epochs=4, validate_every=5),
                   validator=validator)  # fmt: skip
    assert [v["step"] for v in result.validation] == [5, 10, 15, 20, 25, 30, 32]
    assert result.best["step"] == 15 and result.best["score"] == 0.0
    assert same_weights(result.ema_state, calls[2])  # the validator saw the EMA weights
    assert "knn_auc" in result.validation[0] and result.validation[0]["seconds"] >= 0


def test_validation_survives_a_resume(tmp_path, data):
    x, y = data
    scores = iter([3.0, 1.0, 2.0, 5.0, 4.0, 6.0, 7.0, 8.0])

    def validator(model):
        return {"score": next(scores)}

    train(tiny_dit(), x, y, SCHEDULE, config(epochs=2, validate_every=5), tmp_path,
          validator=validator)  # fmt: skip
    result = train(tiny_dit(), x, y, SCHEDULE, config(epochs=4, validate_every=5), tmp_path,
                   resume=True, validator=validator)  # fmt: skip
    assert result.best["step"] == 10 and result.best["score"] == 1.0
    assert [v["step"] for v in result.validation] == [5, 10, 15, 16, 20, 25, 30, 32]
