"""The HTTP service: BentoML over an ONNX Runtime session serving the registry's production model.

    bentoml serve serving.service:Predictor --host 127.0.0.1 --port 3000

The model comes from BentoML's model store as `loopline:<version>`, where `loopline promote` put it:
the registry's production version, or $LOOPLINE_MODEL_TAG when set. Inside a built Bento, where no
registry travels, it is the Loopline model packaged with it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Annotated, Any

import bentoml
import pandas as pd
from fastapi import FastAPI
from pydantic import Field

from loopline.features import decode_predictions, encode_features
from loopline.paths import project_root
from loopline.registry import BENTO_MODEL_NAME, Registry
from loopline.request_model import record_model
from loopline.runtime import onnx_session
from loopline.schema import schema_from_dict
from serving.guards import RequestGuard
from serving.request_log import RequestLog


def production_model_tag() -> str:
    if os.environ.get("LOOPLINE_MODEL_TAG"):
        return os.environ["LOOPLINE_MODEL_TAG"]
    registry = Registry.for_project(project_root())
    if registry.pointer.is_file():
        version = registry.production()
        if version:
            return f"{BENTO_MODEL_NAME}:{version}"
    packaged = bentoml.models.list(BENTO_MODEL_NAME)
    if len(packaged) == 1:  # a built Bento carries exactly the model it was built with
        return str(packaged[0].tag)
    raise RuntimeError(f"no production model: run `loopline promote` (registry {registry.root}), "
                       "or set LOOPLINE_MODEL_TAG to a model in BentoML's store")


MODEL_TAG = production_model_tag()
SCHEMA = schema_from_dict(json.loads(Path(bentoml.models.get(MODEL_TAG).path_of("schema.json")).read_text()),
                          source=f"{MODEL_TAG}/schema.json")
MAX_RECORDS = int(os.environ.get("LOOPLINE_MAX_RECORDS", "1024"))
MAX_BODY_BYTES = int(os.environ.get("LOOPLINE_MAX_BODY_BYTES", str(4 * 2**20)))
Record = record_model(SCHEMA)  # the request body's records: types, ranges, categories, no unknown fields


info = FastAPI(title="Loopline model information")  # GET routes; BentoML's own APIs are POST


@bentoml.asgi_app(info, path="/")
@bentoml.service(traffic={"timeout": 30})
class Predictor:
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.schema = SCHEMA
        self.session = onnx_session(self.model.path_of("model.onnx"))
        self.version = str(self.model.tag.version)
        log_dir = os.environ.get("LOOPLINE_REQUEST_LOG", str(project_root() / "data" / "requests"))
        self.request_log = None if log_dir == "off" else RequestLog(
            Path(log_dir), flush_seconds=float(os.environ.get("LOOPLINE_REQUEST_LOG_FLUSH_SECONDS", "5")))
        record = Path(self.model.path_of("version.json"))  # the registry's lineage record, packaged on promotion
        self.model_info = json.loads(record.read_text()) if record.is_file() else dict(
            bentoml.models.get(MODEL_TAG).info.metadata)

    @bentoml.api
    def predict(
        self, records: Annotated[list[Record], Field(min_length=1, max_length=MAX_RECORDS)],  # type: ignore[valid-type]
        ctx: bentoml.Context,
    ) -> dict[str, Any]:
        """Predictions for 1 to LOOPLINE_MAX_RECORDS records of raw feature values; classification adds
        each class's probability. An X-Request-ID header is echoed, otherwise one is made."""
        request_id = ctx.request.headers.get("x-request-id") or uuid.uuid4().hex
        ctx.response.headers["x-request-id"] = request_id
        frame = pd.DataFrame([r.model_dump() for r in records], columns=[c.name for c in self.schema.features])
        enc = encode_features(frame, self.schema)
        out = self.session.run(None, {"numeric": enc.numeric, "categorical": enc.categorical})[0]
        decoded = decode_predictions(out, self.schema)
        if self.request_log is not None:
            self.request_log.record(request_id, self.version, frame, decoded)
        return {"model_version": self.version, "request_id": request_id, **decoded}

    @bentoml.on_shutdown
    def close_request_log(self) -> None:
        if self.request_log is not None:
            self.request_log.close()

    @info.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        """The model version, the ONNX Runtime providers really in use, the model's registry record
        (lineage, metrics, gate) when packaged with it, and the feature schema."""
        return {"model_version": self.version, "providers": self.session.get_providers(),
                "model": self.model_info, "schema": self.schema.to_dict()}


Predictor.add_asgi_middleware(RequestGuard, api_key=os.environ.get("LOOPLINE_API_KEY") or None,
                              max_body_bytes=MAX_BODY_BYTES)
