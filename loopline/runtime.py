"""ONNX Runtime sessions, shared by the export check, the registry and the HTTP service."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def onnx_session(path: str | Path, device: str = "auto") -> Any:
    """A session on CUDA when asked for ("cuda"), or allowed ("auto") and really usable; CPU otherwise.

    onnxruntime-gpu lists the CUDA provider even on a machine without CUDA's libraries and then falls
    back to the CPU; `session.get_providers()` says what is really in use.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # a missing CUDA library would otherwise log an error per session
    providers = ["CPUExecutionProvider"]
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), providers=providers)
