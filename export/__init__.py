"""cellsynth.export: export of bundles to ONNX and TensorRT (see the engine issue)."""
