"""The HTTP service: BentoML over an ONNX Runtime session serving the registry's production model."""
