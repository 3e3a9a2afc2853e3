"""`export` stage: the trained model as one ONNX file, proven equal to the PyTorch model.

The graph takes the schema's model inputs (see loopline.features: raw numeric values with NaN for
missing, each categorical value's position in the schema's category list or -1) with a dynamic batch
axis, and returns predictions on the target's own scale: the normalisation, embeddings' vocabularies
and the target transform are inside it. The file is self-contained (no external weight files) and
`onnx.checker` clean.

Parity: a golden batch (held-out rows plus rows built to reach every weight: missing values, both ends
of each numeric range, every category and a value outside the category list) goes through both
models; the export fails when any prediction differs by more than export.parity_atol + parity_rtol x
|prediction| (params.yaml). The golden batch and the PyTorch model's predictions on it are stored next
to the ONNX file, so that the registry and the service can re-check the file later without torch.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from loopline import runtime
from loopline.atomic import StagedOutputs, write_json
from loopline.config import load_params
from loopline.errors import LooplineError
from loopline.paths import ProjectPaths
from loopline.registry import sha256_file
from loopline.schema import FeatureSchema
from loopline.stage import run_stage
from models.network import EnsembleNet, TabularNet
from models.torch_predict import load_model, predict

log = logging.getLogger(__name__)

INPUT_NAMES = ("numeric", "categorical")
OUTPUT_NAME = "prediction"
GOLDEN_HELD_OUT_ROWS = 64


class ExportError(LooplineError):
    """The model could not be exported, or the export does not reproduce the model."""


@dataclass(frozen=True)
class ParityReport:
    rows: int
    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float
    rows_out_of_tolerance: int
    passed: bool
    batch_sizes: tuple[int, ...]
    onnx_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def golden_batch(held_out: pd.DataFrame, schema: FeatureSchema, seen: pd.DataFrame) -> pd.DataFrame:
    """Held-out rows plus edge rows, so that every weight the model has is used by some golden row:
    per numeric feature both ends of its range (the schema's bounds, else the training data's) and its
    missing value (if nullable); per categorical feature every listed category (each has its own
    embedding row, seen in training or not), a value outside the list, and a missing value."""
    base = held_out.head(GOLDEN_HELD_OUT_ROWS).reset_index(drop=True)
    if base.empty:
        raise ExportError("the test split is empty: no rows for the golden batch")
    template = base.iloc[[0]]
    edges = []

    def variant(column: str, value: object) -> None:
        row = template.copy()
        row[column] = pd.Series([value], index=row.index, dtype=object)
        edges.append(row)

    for col in schema.numeric_features:
        if col.nullable:
            variant(col.name, None)
        observed = (
            pd.to_numeric(seen[col.name], errors="coerce").dropna() if col.name in seen else pd.Series(dtype=float)
        )
        low = col.min if col.min is not None else (observed.min() if len(observed) else None)
        high = col.max if col.max is not None else (observed.max() if len(observed) else None)
        for bound in (low, high):
            if bound is not None:
                variant(col.name, float(bound))
    for col in schema.categorical_features:
        for category in col.categories:
            variant(col.name, category)
        variant(col.name, "__not_a_category__")
        if col.nullable:
            variant(col.name, None)
    frame = pd.concat([base.astype(object), *edges], ignore_index=True) if edges else base
    keep = [c.name for c in schema.features]
    return frame[keep]


def golden_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready rows (a golden column mixes types, e.g. numbers and an unknown category's text)."""
    return [{k: (None if _is_missing(v) else v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


def export_onnx(model: TabularNet | EnsembleNet, path: Path, n_numeric: int, n_categorical: int) -> None:
    model = model.cpu().eval()
    example = (torch.zeros(2, n_numeric), torch.zeros(2, n_categorical, dtype=torch.int64))
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            external_data=False,
            verbose=False,
            dynamic_shapes=({0: batch}, {0: batch}),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
    strip_source_locations(path)


def strip_source_locations(path: Path) -> None:
    """Drop the exporter's debugging metadata (Python stack traces with absolute file paths, FX node
    names): the file's bytes, and so its registry version, must not depend on where the code lives."""
    import onnx

    proto = onnx.load(str(path))
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        for item in (*graph.node, *graph.value_info, *graph.input, *graph.output, *graph.initializer):
            del item.metadata_props[:]
            if hasattr(item, "doc_string"):
                item.doc_string = ""
        graphs.extend(attr.g for node in graph.node for attr in node.attribute if attr.HasField("g"))
    onnx.save(proto, str(path))


def check_onnx_file(path: Path) -> None:
    """onnx.checker clean, and every weight inside the one file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises several checker error types
        raise ExportError(f"{path}: onnx.checker rejects the graph: {exc}") from exc
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(f"{path}: weights stored outside the file: {external[:5]}")
    names = [i.name for i in proto.graph.input]
    if names != list(INPUT_NAMES):
        raise ExportError(f"{path}: inputs are {names}, expected {list(INPUT_NAMES)}")


def load_exported(path: Path, device: str = "cpu"):
    """The exported file in an ONNX Runtime session (`loopline.runtime.onnx_session`, on the CPU by
    default); a file it cannot load is an ExportError naming it."""
    try:
        return runtime.onnx_session(path, device)
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise ExportError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc


def check_parity(
    expected: np.ndarray,
    session,
    golden: pd.DataFrame,
    schema: FeatureSchema,
    atol: float,
    rtol: float,
    onnx_sha256: str,
) -> ParityReport:
    """The PyTorch model's predictions on the golden batch against ONNX Runtime's, whole and in small
    batches (the batch axis is dynamic)."""
    expected = np.asarray(expected, dtype=np.float64)
    sizes = (len(golden), 1, 7)
    got = {
        size: np.concatenate(
            [runtime.predict_frame(session, golden.iloc[s : s + size], schema) for s in range(0, len(golden), size)]
        ).astype(np.float64)
        for size in sizes
    }
    diffs = np.stack([np.abs(g - expected) for g in got.values()])  # [sizes, rows(, classes)]
    diffs = np.where(np.isnan(diffs), np.inf, diffs)
    allowed = atol + rtol * np.abs(expected)
    outside = (diffs > allowed).any(axis=0)
    if outside.ndim > 1:
        outside = outside.any(axis=tuple(range(1, outside.ndim)))
    rel = diffs / np.maximum(np.abs(expected), np.finfo(np.float32).tiny)
    return ParityReport(
        rows=len(golden),
        max_abs_diff=float(diffs.max()),
        max_rel_diff=float(rel.max()),
        atol=atol,
        rtol=rtol,
        rows_out_of_tolerance=int(outside.sum()),
        passed=not outside.any(),
        batch_sizes=sizes,
        onnx_sha256=onnx_sha256,
    )


def quiet_exporter_logs() -> None:
    """The exporter logs every graph rewrite at INFO; keep the stage's log to what a user acts on."""
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch._export", "torch.export"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_export(paths: ProjectPaths | None = None) -> ParityReport:
    paths = paths or ProjectPaths.here()
    quiet_exporter_logs()
    params = load_params(paths.params)
    model, schema = load_model(paths.model_dir)
    test = pd.read_parquet(paths.split("test"))
    train = pd.read_parquet(paths.split("train"))
    golden = golden_batch(test, schema, train)
    n_num, n_cat = len(schema.numeric_features), len(schema.categorical_features)

    with StagedOutputs() as out:
        onnx_dir = out.path(paths.onnx_dir, directory=True)
        onnx_file = onnx_dir / paths.onnx_file.name
        export_onnx(model, onnx_file, n_num, n_cat)
        check_onnx_file(onnx_file)
        write_json(onnx_dir / paths.golden_batch.name, golden_records(golden))
        expected = predict(model, golden, schema)
        # Written once here: registration and serving re-check the ONNX file against these, without torch.
        write_json(
            onnx_dir / paths.golden_expected.name,
            {"predictions": expected.tolist(), "atol": params.export.parity_atol, "rtol": params.export.parity_rtol},
        )
        report = check_parity(
            expected,
            load_exported(onnx_file),
            golden,
            schema,
            params.export.parity_atol,
            params.export.parity_rtol,
            sha256_file(onnx_file),
        )
        write_json(out.path(paths.export_report), report.to_dict())
        if not report.passed:
            raise ExportError(
                f"ONNX parity failed on {report.rows_out_of_tolerance} of {report.rows} golden rows: max "
                f"|torch - onnxruntime| = {report.max_abs_diff:.3g} (relative {report.max_rel_diff:.3g}), allowed "
                f"{report.atol:g} + {report.rtol:g} x |prediction|; the export was not kept"
            )
    log.info(
        "wrote %s: %d golden rows, max |torch - onnxruntime| %.3g (relative %.3g), all within %g + %g x |y|",
        paths.onnx_file,
        report.rows,
        report.max_abs_diff,
        report.max_rel_diff,
        report.atol,
        report.rtol,
    )
    return report


def main() -> int:
    return run_stage("export", run_export)


if __name__ == "__main__":
    raise SystemExit(main())
