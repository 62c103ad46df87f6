"""Exponential moving average (EMA) of a model's weights, the weights diffusion models sample with.

After each optimiser step, ``update(model)`` does, for every floating-point parameter ``p``::

    shadow = d * shadow + (1 - d) * p

with ``d = decay``, or with warm-up ``d = min(decay, (1 + n) / (10 + n))`` where n is the number of
updates already made (the schedule of TensorFlow's ExponentialMovingAverage ``num_updates`` and
diffusers' ``EMAModel``). Warm-up lets the average follow the fast early changes of a short run
instead of staying anchored to the random initial weights (with decay 0.999 and no warm-up, the
initial weights still carry ``0.999^n`` of the weight after n steps: 37% after 1000 steps).
Buffers and non-floating entries are copied, not averaged. The shadow starts as a copy of the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Shadow copy of ``model.state_dict()`` updated as an exponential moving average.

    Parameters
    ----------
    model : nn.Module
        The model whose weights are averaged; the shadow starts as a copy of its weights.
    decay : float
        Target decay in [0, 1).
    warmup : bool
        Use ``min(decay, (1 + n) / (10 + n))`` at update n (see the module docstring).

    Attributes
    ----------
    averaged : dict[str, Tensor]
        Shadow parameters and buffers, keyed like ``model.state_dict()``, on the model's device.
    num_updates : int
        Number of ``update`` calls so far.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.averaged: dict[str, torch.Tensor] = {
            k: v.detach().clone() for k, v in model.state_dict().items()
        }
        self._param_names = {name for name, _ in model.named_parameters()}

    def current_decay(self) -> float:
        """The decay the next ``update`` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after each optimiser step)."""
        d = self.current_decay()
        state = model.state_dict()
        if state.keys() != self.averaged.keys():
            raise ValueError("EMA.update: the model's state_dict keys differ from the EMA's")
        for k, v in state.items():
            shadow = self.averaged[k]
            if k in self._param_names and shadow.dtype.is_floating_point:
                shadow.lerp_(v.detach().to(shadow.dtype), 1.0 - d)  # shadow += (1-d)(v - shadow)
            else:
                shadow.copy_(v)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters and buffers with the averaged ones."""
        model.load_state_dict(self.averaged)

    def state_dict(self) -> dict[str, Any]:
        """Decay, warm-up flag, update count and the averaged tensors (torch.save-able)."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "averaged": {k: v.clone() for k, v in self.averaged.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the tensors keep this EMA's devices."""
        averaged = state["averaged"]
        if averaged.keys() != self.averaged.keys():
            missing = sorted(self.averaged.keys() - averaged.keys())
            extra = sorted(averaged.keys() - self.averaged.keys())
            raise ValueError(
                f"EMA state does not fit this model (missing {missing}, extra {extra})"
            )
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for k, v in averaged.items():
            self.averaged[k].copy_(v)
