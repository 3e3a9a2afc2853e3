"""The strongest reasonable hand-written endpoint, the serving benchmark's reference: what a careful
engineer writes for one small model. FastAPI on uvicorn, an `async` POST /predict that validates the raw
body in one call of pydantic-core's JSON parser against the same schema-derived request model as
Loopline's service (`request_model`), encodes the records straight into arrays with the same
`RecordEncoder`, runs the same ONNX Runtime session inline, with the service's session settings (one
thread unless LOOPLINE_ORT_THREADS says more; a sub-millisecond call: a thread hop would cost more) and
answers with orjson. No request log, no metrics, no tracing.

    LOOPLINE_BENCH_MODEL=registry/versions/<version> \
        uvicorn benchmarks.servers.strong_fastapi:app --host 127.0.0.1 --port 3100
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import orjson
from fastapi import FastAPI, Request, Response
from pydantic import ValidationError

from loopline.features import RecordEncoder, decode_predictions
from loopline.request_model import request_model
from loopline.runtime import onnx_session, run_encoded
from loopline.schema import load_schema
from loopline.settings import Settings

MODEL_DIR = Path(os.environ["LOOPLINE_BENCH_MODEL"])
schema = load_schema(MODEL_DIR / "schema.json")
PredictBody = request_model(schema, max_records=1024)
session = onnx_session(MODEL_DIR / "model.onnx", threads=Settings.from_env().ort_threads)
encode = RecordEncoder(schema)

app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> Response:
    try:
        body = PredictBody.model_validate_json(await request.body())
    except ValidationError as exc:
        return Response(orjson.dumps({"detail": exc.errors(include_url=False, include_context=False)}), 422,
                        media_type="application/json")  # fmt: skip
    out = run_encoded(session, encode([record.__dict__ for record in body.records]))
    answer = {"request_id": uuid.uuid4().hex, **decode_predictions(out, schema)}
    return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
