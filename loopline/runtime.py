"""ONNX Runtime: sessions, predictions on raw rows and the golden-batch check, shared by the export
check, promotion and the HTTP service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.features import EncodedFeatures, encode_features
from loopline.registry import EXPECTED_FILE, GOLDEN_FILE
from loopline.schema import FeatureSchema


def onnx_session(path: str | Path, device: str = "auto", threads: int | None = None) -> Any:
    """A session on CUDA when asked for ("cuda"), or allowed ("auto") and really usable; CPU otherwise.
    `threads` caps the CPU threads one call uses (ONNX Runtime's default: one per core).

    onnxruntime-gpu lists the CUDA provider even on a machine without CUDA's libraries and then falls
    back to the CPU; `session.get_providers()` says what is really in use.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # a missing CUDA library would otherwise log an error per session
    providers = ["CPUExecutionProvider"]
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def predict_frame(session: Any, frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    """Raw rows through an ONNX model: the schema's encoding (loopline.features), then the graph."""
    return run_encoded(session, encode_features(frame, schema))


def run_encoded(session: Any, enc: EncodedFeatures) -> np.ndarray:
    """The graph on inputs already encoded (loopline.features): its first output."""
    return session.run(None, {"numeric": enc.numeric, "categorical": enc.categorical})[0]


def read_golden(path: Path) -> pd.DataFrame:
    return pd.DataFrame.from_records(json.loads(Path(path).read_text()))


def reproduces_golden(session: Any, directory: Path, schema: FeatureSchema) -> bool | None:
    """Whether the model reproduces the golden batch stored in `directory`; None when none is stored."""
    golden, expected = Path(directory) / GOLDEN_FILE, Path(directory) / EXPECTED_FILE
    if not (golden.is_file() and expected.is_file()):
        return None
    got = predict_frame(session, read_golden(golden), schema)
    spec = json.loads(expected.read_text())
    want = np.asarray(spec["predictions"], dtype=np.float64)
    return got.shape == want.shape and bool(np.allclose(got, want, atol=spec["atol"], rtol=spec["rtol"]))
