"""The typical hand-written endpoint the serving benchmark shows beside the strong one
(strong_fastapi.py): FastAPI + uvicorn, a synchronous POST /predict taking a list of records validated
by the same schema-derived model, a DataFrame per request through the same feature encoding, then either
the same ONNX Runtime session or the trained PyTorch module in eager mode. No request log, no metrics, no
tracing: what most people write.

    LOOPLINE_BENCH_MODEL=registry/versions/<version> LOOPLINE_BENCH_RUNTIME=onnx \
        uvicorn benchmarks.servers.plain_fastapi:app --host 127.0.0.1 --port 3100
    LOOPLINE_BENCH_MODEL=artifacts/model LOOPLINE_BENCH_RUNTIME=torch \
        uvicorn benchmarks.servers.plain_fastapi:app --host 127.0.0.1 --port 3100
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from fastapi import Body, FastAPI
from pydantic import Field

from loopline.features import decode_predictions
from loopline.request_model import record_model
from loopline.runtime import onnx_session, predict_frame
from loopline.schema import load_schema

MODEL_DIR = Path(os.environ["LOOPLINE_BENCH_MODEL"])
RUNTIME = os.environ.get("LOOPLINE_BENCH_RUNTIME", "onnx")
schema = load_schema(MODEL_DIR / "schema.json")
Record = record_model(schema)

if RUNTIME == "onnx":
    session = onnx_session(MODEL_DIR / "model.onnx")

    def predict(frame: pd.DataFrame) -> Any:
        return predict_frame(session, frame, schema)
else:
    from models.torch_predict import load_model
    from models.torch_predict import predict as torch_predict

    torch_model, _ = load_model(MODEL_DIR)

    def predict(frame: pd.DataFrame) -> Any:
        return torch_predict(torch_model, frame, schema)


app = FastAPI()


@app.post("/predict")
def predict_endpoint(
    records: Annotated[list[Record], Body(embed=True), Field(min_length=1, max_length=1024)],  # type: ignore[valid-type]
) -> dict[str, Any]:
    frame = pd.DataFrame([r.model_dump() for r in records], columns=[c.name for c in schema.features])
    return {"request_id": uuid.uuid4().hex, **decode_predictions(predict(frame), schema)}
