"""The HTTP service: BentoML over an ONNX Runtime session serving the registry's production model.

    bentoml serve serving.service:Predictor --host 127.0.0.1 --port 3000

The model comes from BentoML's model store as `loopline:<version>`, where `loopline promote` put it:
the registry's production version, or $LOOPLINE_MODEL_TAG when set. Inside a built Bento, where no
registry travels, it is the Loopline model packaged with it.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import bentoml
import orjson
import pandas as pd
from fastapi import FastAPI
from pydantic import Field, ValidationError
from starlette.responses import Response

from loopline.features import RecordEncoder, decode_predictions, prediction_columns
from loopline.paths import ProjectPaths, project_root
from loopline.registry import (
    BENTO_MODEL_NAME,
    METADATA_FILE,
    MODEL_FILE,
    SCHEMA_FILE,
    Registry,
    RegistryError,
    verify_model_file,
)
from loopline.request_model import label_model, record_model, request_model, response_model
from loopline.runtime import onnx_session, reproduces_golden, run_encoded
from loopline.schema import FeatureSchema, load_schema
from loopline.settings import Settings
from serving import bentoml_fixes
from serving.arrow import (
    ARROW_STREAM,
    ArrowBodyError,
    arrow_answer,
    is_arrow,
    read_table,
    type_problems,
    validate_and_encode,
)
from serving.batching import MicroBatcher
from serving.guards import RequestGuard, quiet_validation_errors
from serving.request_log import ParquetWindows, RequestLog, logged_request_ids

log = logging.getLogger(__name__)
SETTINGS = Settings.from_env()  # every LOOPLINE_* variable (loopline/settings.py)
# BentoML shows its own loggers' INFO lines only; the service's (model swaps, clients gone mid-body) too.
logging.getLogger("serving").setLevel(logging.INFO)


def production_model_tag() -> str:
    if SETTINGS.model_tag:
        return SETTINGS.model_tag
    registry = Registry.for_project(project_root())
    if registry.pointer.is_file():
        version = registry.production()
        if version:
            return f"{BENTO_MODEL_NAME}:{version}"
    packaged = bentoml.models.list(BENTO_MODEL_NAME)
    if len(packaged) == 1:  # a built Bento carries exactly the model it was built with
        return str(packaged[0].tag)
    raise RuntimeError(
        f"no production model: run `loopline promote` (registry {registry.root}), "
        "or set LOOPLINE_MODEL_TAG to a model in BentoML's store"
    )


@dataclass(frozen=True)
class Served:
    """One loaded model: what a request uses from start to finish, even if a swap happens meanwhile."""

    version: str
    session: Any
    schema: FeatureSchema
    info: dict[str, Any]
    encode: RecordEncoder


def load_served(tag: str) -> Served:
    """Load a model from BentoML's store and check it: its file is the one its version is named after
    (SHA-256), it runs, and it reproduces its golden batch."""
    model = bentoml.models.get(tag)
    record = Path(model.path_of(METADATA_FILE))  # the registry's lineage record, packaged on promotion
    info = json.loads(record.read_text()) if record.is_file() else dict(model.info.metadata)
    try:
        verify_model_file(Path(model.path_of(MODEL_FILE)), str(model.tag.version), info.get("sha256"))
    except RegistryError as exc:
        raise RegistryError(f"{exc}; `loopline verify` repairs BentoML's store from the registry") from None
    schema = load_schema(Path(model.path_of(SCHEMA_FILE)))
    session = onnx_session(model.path_of(MODEL_FILE), threads=ORT_THREADS)
    if reproduces_golden(session, Path(model.path), schema) is False:
        raise ValueError(f"{tag}: predictions on its golden batch differ from the recorded ones")
    return Served(str(model.tag.version), session, schema, info, RecordEncoder(schema))


def same_inputs(a: FeatureSchema, b: FeatureSchema) -> bool:
    return (
        [c.to_dict() | {"name": c.name} for c in a.features] == [c.to_dict() | {"name": c.name} for c in b.features]
        and a.task == b.task
        and a.classes == b.classes
    )


class ProductionWatcher(threading.Thread):
    """Polls the registry's production pointer and hands each new version to `on_change`, which says
    whether it now serves it. A version that failed is tried again every `retry_seconds` (a store copy
    repaired by `loopline verify` is picked up without a restart)."""

    def __init__(
        self,
        registry: Registry,
        current: str,
        on_change: Callable[[str], bool],
        poll_seconds: float,
        retry_seconds: float = 30.0,
        on_shadow: Callable[[list[str]], None] | None = None,
    ) -> None:
        super().__init__(name="loopline-production-watcher", daemon=True)
        self.on_shadow = on_shadow
        self.registry, self.seen, self.on_change, self.poll_seconds = registry, current, on_change, poll_seconds
        self.retry_seconds = retry_seconds
        self.failed_at: float | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.poll_seconds):
            try:
                state = self.registry.pointer_state()
            except Exception:  # a pointer being replaced or unreadable: look again at the next poll
                log.warning("production pointer unreadable; looking again in %.1f s", self.poll_seconds, exc_info=True)
                continue
            version = state.get("version")
            retry = self.failed_at is not None and time.monotonic() - self.failed_at >= self.retry_seconds
            if version and (version != self.seen or retry):
                self.seen = version
                self.failed_at = None if self.on_change(version) else time.monotonic()
            if self.on_shadow is not None:
                self.on_shadow(sorted(state.get("shadow", {})))


class RecentIds:
    """The request ids this worker logged lately (bounded): /feedback checks them before the files."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit, self.ids = limit, dict[str, None]()

    def add(self, request_id: str) -> None:
        self.ids[request_id] = None
        if len(self.ids) > self.limit:
            del self.ids[next(iter(self.ids))]

    def found(self, wanted: set[str]) -> set[str]:
        return {i for i in wanted if i in self.ids}


MAX_RECORDS = SETTINGS.max_records
WORKERS = SETTINGS.workers
# One thread a session by default: the model runs inline on the event loop's thread, ONNX Runtime's
# intra-op threads do not make the small tabular graphs faster (benchmarks/README.md) and only contend
# for the cores with the request path, the request log's writer and the other workers.
ORT_THREADS = max(1, SETTINGS.ort_threads)
MODEL_TAG = production_model_tag()
try:
    FIRST = load_served(MODEL_TAG)
except RegistryError as exc:  # a tampered or corrupted file: one line, no traceback, nothing served
    sys.stderr.write(f"loopline serve: not serving {MODEL_TAG}: {exc}\n")
    raise SystemExit(3) from None
Record = record_model(FIRST.schema)  # the request body's records: types, ranges, categories, no unknown fields
PredictRequest = request_model(FIRST.schema, MAX_RECORDS)  # the whole body, for /predict's fast path
Label = label_model(FIRST.schema)  # ground truth for served records, by request id
Prediction = response_model(FIRST.schema)  # documents the response; the body itself is serialised by orjson
quiet_validation_errors()
bentoml_fixes.apply()


info = FastAPI(title="Loopline model information")  # GET routes; BentoML's own APIs are POST


@bentoml.asgi_app(info, path="/")
@bentoml.service(
    workers=WORKERS,
    traffic={"timeout": 30},
    # BentoML's access log (a line per request) costs ~8% of throughput on small requests; the request
    # log already keeps every served record, so it is opt-in: LOOPLINE_ACCESS_LOG=1.
    logging={
        "access": {
            "enabled": SETTINGS.access_log,
            "request_content_length": True,
            "request_content_type": True,
            "response_content_length": True,
            "response_content_type": True,
            "skip_paths": ["/metrics", "/healthz", "/livez", "/readyz"],
            "format": {"trace_id": "032x", "span_id": "016x"},
        }
    },
)
class Predictor:
    model = bentoml.models.BentoModel(MODEL_TAG)  # what `bentoml build` packages

    def __init__(self) -> None:
        self.served = FIRST
        paths = ProjectPaths(project_root())
        flush = SETTINGS.request_log_flush_seconds
        self.request_log = (
            None
            if SETTINGS.request_log == "off"
            else RequestLog(paths.request_log_dir, FIRST.schema, flush_seconds=flush)
        )
        self.recent_ids = RecentIds()
        self.batcher = MicroBatcher(MAX_RECORDS, SETTINGS.batch_max_wait_ms) if SETTINGS.batching else None
        self.ground_truth = ParquetWindows(paths.ground_truth_dir, flush_seconds=flush)
        registry = Registry.for_project(project_root())
        self.watcher = None
        self.shadows: dict[str, Served] = {}
        self.shadow_failed: dict[str, float] = {}
        if not SETTINGS.model_tag and registry.pointer.is_file():
            self.set_shadows(sorted(registry.shadows()))
            self.watcher = ProductionWatcher(
                registry, self.served.version, self.swap_to, SETTINGS.swap_poll_seconds, on_shadow=self.set_shadows
            )
            self.watcher.start()
        _PREDICTORS.append(self)
        gc.collect()
        gc.freeze()

    def swap_to(self, version: str) -> bool:
        """Load and check the new production model beside the one serving, then swap in one assignment;
        requests in flight finish on the model they started with. On any failure the old one stays."""
        old = self.served
        try:
            new = load_served(f"{BENTO_MODEL_NAME}:{version}")
            if not same_inputs(old.schema, new.schema):
                raise ValueError(
                    "it takes other inputs than the request model this service was started with; "
                    "restart the service to serve it"
                )
        except Exception as exc:
            log.error("still serving %s: production model %s failed to load or check: %s", old.version, version, exc)
            return False
        self.served = new
        log.info("now serving %s (was %s)", new.version, old.version)
        return True

    def set_shadows(self, versions: list[str], retry_seconds: float = 30.0) -> None:
        """Score exactly `versions` in shadow: load and check the new ones (a version that fails is logged
        and tried again after `retry_seconds`), drop the others; one assignment swaps the set."""
        wanted = [v for v in versions if v != self.served.version]
        if sorted(self.shadows) == wanted:
            return
        current = {v: s for v, s in self.shadows.items() if v in wanted}
        for version in wanted:
            if version in current or time.monotonic() - self.shadow_failed.get(version, -1e9) < retry_seconds:
                continue
            try:
                candidate = load_served(f"{BENTO_MODEL_NAME}:{version}")
                if not same_inputs(self.served.schema, candidate.schema):
                    raise ValueError("it takes other inputs than the model in production")
            except Exception as exc:
                log.error("not scoring %s in shadow: it failed to load or check: %s", version, exc)
                self.shadow_failed[version] = time.monotonic()
                continue
            current[version] = candidate
            log.info("scoring %s in shadow beside %s", version, self.served.version)
        self.shadows = current

    @bentoml.api
    async def predict(
        self,
        records: Annotated[list[Record], Field(min_length=1, max_length=MAX_RECORDS)],  # type: ignore[valid-type]
        ctx: bentoml.Context,
    ) -> Prediction:  # type: ignore[valid-type]
        """Predictions for 1 to LOOPLINE_MAX_RECORDS records of raw feature values; classification adds
        each class's probability. An X-Request-ID header is echoed, otherwise one is made."""
        request_id = ctx.request.headers.get("x-request-id") or uuid.uuid4().hex
        ctx.response.headers["x-request-id"] = request_id
        answer = await self.answer(records, request_id)
        return Response(answer, media_type="application/json")  # type: ignore[return-value]

    async def predict_json(self, body: bytes, headers: dict[bytes, bytes]) -> tuple[int, bytes, str, list] | None:
        """/predict's fast path (serving.guards): a JSON body validated in one call against the same
        request model, answered as `predict` answers it; None for a body that does not validate, which
        BentoML's API then answers with its 400."""
        try:
            request = PredictRequest.model_validate_json(body)
        except ValidationError:
            return None
        request_id = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex
        try:
            answer = await self.answer(request.records, request_id)
        except Exception:  # BentoML's API answers a failure its own way (a 5xx with its error body)
            log.exception("the fast path failed on a valid body; BentoML's API answers it")
            return None
        return 200, answer, "application/json", [(b"x-request-id", request_id.encode("latin-1"))]

    async def answer(self, records: list[Any], request_id: str) -> bytes:
        """The JSON answer for validated records: the model's outputs (adaptive batching permitting, with
        other requests'), the request log, the shadow models' outputs."""
        served = self.served  # this request's model, whatever a swap does meanwhile
        features = served.encode([record.__dict__ for record in records])  # validated values; absent = None
        if self.batcher is None:
            outputs = run_encoded(served.session, features)
        else:  # with the other requests that arrived meanwhile, in one call of the model
            outputs = await self.batcher.run(served.session, features)
        if self.request_log is not None:
            time_column = served.schema.time_column
            event_times = [getattr(record, time_column) for record in records] if time_column else None
            self.log_request(served, request_id, features, outputs, event_times)
        body = {"model_version": served.version, "request_id": request_id, **decode_predictions(outputs, served.schema)}
        return orjson.dumps(body)

    def log_request(
        self, served: Served, request_id: str, features: Any, outputs: Any, event_times: list[Any] | None
    ) -> None:
        """The request log's record of a served request (the log is on): the shadow models see the same
        encoded records; their outputs are logged, never returned."""
        shadow = {v: run_encoded(s.session, features) for v, s in self.shadows.items() if v != served.version}
        self.request_log.record(request_id, served.version, features, outputs, event_times, shadow)  # type: ignore[union-attr]
        self.recent_ids.add(request_id)

    def predict_arrow(self, body: bytes, headers: dict[bytes, bytes]) -> tuple[int, bytes, str, list]:
        """/predict with an Arrow IPC stream body (serving.arrow): the same model, encoding, request log
        and answer as the JSON path; the answer is Arrow when the Accept header asks for it."""
        request_id = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex
        echo = [(b"x-request-id", request_id.encode("latin-1"))]
        served = self.served
        schema = served.schema
        try:
            table = read_table(body)
            problems = type_problems(table, schema)
            if problems:
                words = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
                raise ArrowBodyError(f"invalid request: {words}", problems)
            if not 1 <= table.num_rows <= MAX_RECORDS:
                raise ArrowBodyError(f"invalid request: {table.num_rows} records; send 1 to {MAX_RECORDS} a request")
            checked, features, times = validate_and_encode(table, schema)
            if checked.problems:
                words = "; ".join(p.describe() for p in checked.problems)
                raise ArrowBodyError(f"invalid request: {words}", [p.to_dict() for p in checked.problems])
        except ArrowBodyError as exc:
            return 400, orjson.dumps({"error": str(exc), "problems": exc.problems}), "application/json", echo
        outputs = run_encoded(served.session, features)
        if self.request_log is not None:
            self.log_request(served, request_id, features, outputs, times)
        if is_arrow(headers.get(b"accept")):
            payload = arrow_answer(prediction_columns(outputs, schema), served.version, request_id)
            return 200, payload, ARROW_STREAM, echo
        answer = {"model_version": served.version, "request_id": request_id, **decode_predictions(outputs, schema)}
        return 200, orjson.dumps(answer), "application/json", echo

    @bentoml.api(route="/feedback")
    def feedback(
        self,
        labels: Annotated[list[Label], Field(min_length=1, max_length=MAX_RECORDS)],  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        """Ground truth for records served earlier, joined to the request log by request id and record."""
        target = self.served.schema.target
        frame = pd.DataFrame([label.model_dump() for label in labels]).rename(columns={"value": target})
        frame["received_at"] = pd.Timestamp.now(tz="UTC")
        self.ground_truth.put(frame)
        # Kept either way (another worker's records may not be written yet), but never silently: the
        # answer names the ids the request log does not hold; the harvest quarantines labels still unmatched.
        unmatched = set(frame["request_id"]) - self.recent_ids.found(set(frame["request_id"]))
        if unmatched and self.request_log is not None:
            unmatched -= logged_request_ids(self.request_log.directory, unmatched)
        if unmatched:
            log.warning(
                "/feedback: %d label(s) name request ids not in the request log: %s",
                int(frame["request_id"].isin(unmatched).sum()),
                sorted(unmatched)[:5],
            )
        return {"accepted": len(frame), "unmatched_request_ids": sorted(unmatched)}

    @bentoml.on_shutdown
    def shut_down(self) -> None:
        if self.watcher is not None:
            self.watcher.stopped.set()
        self.ground_truth.close()
        if self.request_log is not None:
            self.request_log.close()
        if _refusals is not None:
            _refusals.close()

    @info.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        """The model version, the ONNX Runtime providers really in use, adaptive batching's counts (this
        worker's), the model's registry record (lineage, metrics, gate) when packaged with it, and the
        feature schema."""
        served = self.served
        batcher = self.batcher
        return {
            "model_version": served.version,
            "shadow_versions": sorted(self.shadows),
            "providers": served.session.get_providers(),
            "batching": None
            if batcher is None
            else {
                "max_wait_ms": SETTINGS.batch_max_wait_ms,
                "requests": batcher.requests,
                "model_calls": batcher.batches,
            },
            "model": served.info,
            "schema": served.schema.to_dict(),
        }


_refusals: ParquetWindows | None = None
_PREDICTORS: list[Predictor] = []
"""This worker's service instance (one), for the Arrow route in front of BentoML's."""


async def answer_json(body: bytes, headers: dict[bytes, bytes]) -> tuple[int, bytes, str, list] | None:
    if not _PREDICTORS:
        return None  # BentoML's API answers while the service starts
    return await _PREDICTORS[-1].predict_json(body, headers)


def answer_arrow(body: bytes, headers: dict[bytes, bytes]) -> tuple[int, bytes, str, list]:
    if not _PREDICTORS:
        return 503, orjson.dumps({"error": "the service is starting"}), "application/json", []
    return _PREDICTORS[-1].predict_arrow(body, headers)


def record_refusal(path: str, body: dict[str, Any]) -> None:
    """A request to /predict answered 400: when, and the fields named (monitoring's refused share)."""
    global _refusals
    if path != "/predict" or SETTINGS.request_log == "off":
        return
    if _refusals is None:
        _refusals = ParquetWindows(
            ProjectPaths(project_root()).refused_log_dir, flush_seconds=SETTINGS.request_log_flush_seconds
        )
    problems = body.get("problems") or []
    fields = sorted({field_column(p.get("field", "")) for p in problems} - {""})
    _refusals.put(
        pd.DataFrame(
            {
                "refused_at": [pd.Timestamp.now(tz="UTC")],
                "columns": [",".join(fields)],
                "problem": [(problems[0].get("problem", "") if problems else body.get("error", ""))[:300]],
                "records_named": [len({p.get("field", "").split(".")[0] for p in problems})],
            }
        )
    )


def field_column(field: str) -> str:
    """'records[3].hum' -> 'hum'; '' for a field that names no column."""
    head, _, column = field.partition(".")
    return column.split(".")[0] if head.startswith("records[") else ""


Predictor.add_asgi_middleware(
    RequestGuard,
    api_key=SETTINGS.api_key,
    max_body_bytes=SETTINGS.max_body_bytes,
    on_refused=record_refusal,
    arrow=answer_arrow,
    fast_json=answer_json,
)
