"""onnxruntime's transformer fusions applied to an exported graph, saved beside the portable one.

The exporter writes standard ONNX ops only, so the attention of a DiT block arrives as a chain of
Reshape / Transpose / MatMul / Softmax over [B, H, N, d] tensors and the tanh GELU as seven
element-wise ops. onnxruntime has fused kernels for both (``com.microsoft.MultiHeadAttention``,
``FastGelu``) but its session-time optimiser does not recognise the exporter's attention pattern;
the ONNX project's rewriter (``onnxscript.rewriter.ort_fusions``, installed with the exporter)
does. The fused graph runs only on onnxruntime (TensorRT and other runtimes do not know the
``com.microsoft`` ops), so it is an extra file: ``onnx/model.fp32.onnx`` stays the portable export
and ``onnx/model.fp32.onnxruntime.onnx`` is what the onnxruntime CPU engine loads.

Which fusions applied is recorded in exports.json (``onnxruntime_graph.fusions``): an
architecture without attention (the latent SCDG's MLP) gets none, and then no extra file.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import onnx

#: Ops of the ``com.microsoft`` domain that count as a fusion in the report.
FUSED_OPS = (
    "MultiHeadAttention",
    "Attention",
    "FastGelu",
    "Gelu",
    "BiasGelu",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
)


def fuse_for_onnxruntime(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """Write ``src`` with onnxruntime's fusions applied to ``dst``; return what fused.

    Returns
    -------
    dict
        ``fusions``: the rewriter's non-zero rule counts (e.g. ``{'sdpa_via_mha': 3, 'gelu': 3}``);
        ``fused_ops``: the fused op types in the result with their counts;
        ``ops_before`` / ``ops_after``: node counts. The metadata of ``src`` is kept.
    """
    import onnx_ir as ir
    from onnxscript.rewriter import ort_fusions

    model = ir.load(str(src))
    fused, stats = ort_fusions.optimize_for_ort(model)
    ir.save(fused, str(dst))
    before = onnx.load(str(src), load_external_data=False)
    after = onnx.load(str(dst), load_external_data=False)
    # The rewriter rebuilds the model; carry the provenance over so the file still says what it is.
    del after.metadata_props[:]
    after.metadata_props.extend(before.metadata_props)
    after.doc_string = before.doc_string
    onnx.save(after, str(dst))
    ops = Counter(node.op_type for node in after.graph.node)
    return {
        "fusions": {k: int(v) for k, v in sorted(stats.items()) if v},
        "fused_ops": {op: int(ops[op]) for op in FUSED_OPS if ops[op]},
        "ops_before": len(before.graph.node),
        "ops_after": len(after.graph.node),
    }
