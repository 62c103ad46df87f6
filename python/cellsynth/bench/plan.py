"""What ``cellsynth bench`` measures: the grid of configurations, parsed from its options.

A configuration is one engine, precision, scheduler, step count and batch size. Options are
comma-separated lists (``--engine onnxruntime,torch``, ``--batch-size 1,512``,
``--precision fp32,int8``) and scheduler specs ``NAME:STEPS[,STEPS...]``
(``ddim:100,50,20 dpmsolver++:20,10``). Combinations that cannot apply are kept in the grid and
reported as skipped with the reason (torch has one precision; a precision needs its export; a
TensorRT engine needs a GPU), so the table says what was not measured and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cellsynth.errors import DataError
from cellsynth.scheduler import SCHEDULER_NAMES

# 'torch-eager' is the torch engine without CUDA-graph capture (the same as 'torch' on a CPU).
ENGINES = ("onnxruntime", "torch", "torch-eager", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_SCHEDULERS = ("ddim:100,50,20,10", "dpmsolver++:20,10")
DEFAULT_BATCH_SIZES = (1, 512)


@dataclass(frozen=True)
class Config:
    """One measured configuration."""

    engine: str
    precision: str
    scheduler: str
    steps: int
    batch_size: int

    @property
    def label(self) -> str:
        return (
            f"{self.engine} {self.precision}, {self.scheduler} {self.steps}, "
            f"batch {self.batch_size}"
        )


def parse_list(text: str, what: str, allowed: Sequence[str] | None = None) -> list[str]:
    """``'a,b'`` -> ['a', 'b'], refusing empty items and (with ``allowed``) unknown ones."""
    items = [item.strip() for item in str(text).split(",")]
    if not items or any(not item for item in items):
        raise DataError(f"{what} must be a comma-separated list, got {text!r}")
    if allowed is not None:
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise DataError(f"unknown {what} {unknown[0]!r}: choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def parse_ints(text: str, what: str) -> list[int]:
    """``'1,64,512'`` -> [1, 64, 512], each a whole number >= 1."""
    out = []
    for item in parse_list(text, what):
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value < 1 or str(value) != item.lstrip("+"):
            raise DataError(f"{what} must be whole numbers >= 1, got {item!r}")
        out.append(value)
    return list(dict.fromkeys(out))


def parse_schedulers(specs: Sequence[str], max_steps: int) -> list[tuple[str, int]]:
    """``['ddim:100,50', 'dpmsolver++:10']`` -> [('ddim', 100), ('ddim', 50), ('dpmsolver++', 10)].

    Steps must lie in [1, ``max_steps``] (the bundle's training timesteps); 'ddpm' alone means all
    of them.
    """
    out: list[tuple[str, int]] = []
    for spec in specs:
        name, _, steps = str(spec).partition(":")
        if name not in SCHEDULER_NAMES:
            raise DataError(
                f"unknown scheduler {name!r} in {spec!r}: use NAME:STEPS[,STEPS...] with NAME "
                f"one of {', '.join(SCHEDULER_NAMES)} (e.g. ddim:100,50 dpmsolver++:20,10)"
            )
        counts = parse_ints(steps, f"steps of {name}") if steps else [max_steps]
        for n in counts:
            if n > max_steps:
                raise DataError(f"{name}:{n}: the model was trained with {max_steps} timesteps")
            out.append((name, n))
    return list(dict.fromkeys(out))


def grid(
    engines: Sequence[str],
    precisions: Sequence[str],
    schedulers: Sequence[tuple[str, int]],
    batch_sizes: Sequence[int],
) -> list[Config]:
    """Every combination, engines outermost (one engine is loaded once per precision and
    batch-size sweep)."""
    return [
        Config(engine, precision, name, steps, batch)
        for engine in engines
        for precision in precisions
        for batch in batch_sizes
        for name, steps in schedulers
    ]


def static_skip(config: Config) -> str | None:
    """Why ``config`` cannot apply, known without loading anything; None if it may."""
    if config.engine.startswith("torch") and config.precision != "fp32":
        return "the torch engine runs the bundle's fp32 module only"
    if config.engine == "onnxruntime" and config.precision == "bf16":
        return "no bf16 ONNX export (onnxruntime precisions: fp32, fp16, int8)"
    if config.engine == "tensorrt" and config.precision == "int8":
        return "TensorRT engines are built at fp32, fp16 or bf16"
    return None
