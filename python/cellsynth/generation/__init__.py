"""Generation: from a bundle and a label request to cells on disk.

The run loop (:mod:`.run`, behind :func:`cellsynth.generate`), the label combination of every cell
(:mod:`.conditions`), integer counts (:mod:`.counts`), finished chunks an interrupted run resumes
from (:mod:`.chunks`), the streaming .h5ad writer (:mod:`.h5ad_stream`), shards on Ray workers
(:mod:`.distributed`, :mod:`.ray_workers`), engines kept across runs (:mod:`.engine_pool`) and
the demo (:mod:`.demo`). Empty on purpose: importing a submodule does not
load the others.
"""
