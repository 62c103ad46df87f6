"""Reduced-precision variants of the exported denoiser: fp16 weights, int8 dynamic quantisation.

fp16: the PyTorch model is cast to half precision and exported behind float32 inputs and outputs.
The sinusoidal timestep embedding stays float32 (``timestep_embedding`` builds it in float32 and
``TimestepEmbedder`` casts only its result to the weights' dtype): its arguments t * f reach 999
radians, where float16's spacing (0.5) would scramble the sines. onnxruntime's CPU provider runs
the graph, inserting casts around operators it has no float16 kernel for.

int8: onnxruntime's dynamic quantisation (int8 weights, activations quantised per batch at run
time) of the linear layers only. Embedding tables and the patchify convolution stay float32: they
are a small share of the compute, and the label embeddings are what conditioning hinges on.
Per-tensor scales: per-channel measured worse on the DiT (adaLN outputs mix very different rows).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

INT8_OPS = ["MatMul", "Gemm"]


class HalfPrecision(nn.Module):
    """Runs a module in float16 behind float32 x [B, G] in and float32 [B, G] out."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).half()

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.module(x.half(), t, labels).float()  # [B, G]


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Any:
    """Write the int8 dynamically quantised version of ONNX file ``src`` to ``dst``."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs a pre-processing suggestion at WARNING on every call; it does not
    # apply to a graph that the exporter has already optimised.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=INT8_OPS,
            per_channel=False,
            weight_type=QuantType.QInt8,
        )
    finally:
        root.setLevel(level)
