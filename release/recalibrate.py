"""A level correction of a registered model: the same network with its output moved by a steady factor.

When the labelled live traffic sits above or below production's predictions by a steady amount
(monitoring.decide.judge_level), the monitoring check registers production with that correction as a
new version and scores it in shadow as a challenger; like any candidate it replaces production only
when it beats it on the next labelled window. A retraining needs weeks of shifted labels before the
network's level moves; one parameter fitted on a week of them answers at the next check.

The network exports its target transform's shift as the initializer `target_shift` (one per member of
an ensemble): the prediction is expm1(out * scale + shift) for a log1p target, out * scale + shift for a
standardised one. Adding `offset` to every `target_shift` multiplies 1 + prediction by exp(offset), or
adds `offset`. Which of the two a file does is probed on its golden batch, not assumed, and the new
file is checked against the parent's golden predictions before it is registered.

The version keeps its parent's judged outputs on its test rows (its normal error and the gate's champion
comparisons are the network's) and its parent's gate report; version.json records the correction under
`recalibration` and the card says so.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from loopline.errors import LooplineError
from loopline.registry import (
    EXPECTED_FILE,
    GOLDEN_FILE,
    REFERENCE_FILE,
    SCHEMA_FILE,
    TEST_PREDICTIONS_FILE,
    TEST_ROWS_FILE,
    Registry,
    Version,
    sha256_file,
)
from loopline.runtime import onnx_session, predict_frame, read_golden
from loopline.schema import FeatureSchema

SHIFT, SCALE = "target_shift", "target_scale"
PROBE = 0.1


class RecalibrationError(LooplineError):
    pass


def _initializers(model: onnx.ModelProto, name: str) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.name.split(".")[-1] == name]


def shift_output(source: Path, destination: Path, offset: float) -> None:
    """Write `source` with `offset` added to every target_shift initializer."""
    model = onnx.load(str(source))
    shifts = _initializers(model, SHIFT)
    if not shifts:
        raise RecalibrationError(f"{source}: no `{SHIFT}` initializer; the model has no target transform to shift")
    for tensor in shifts:
        value = numpy_helper.to_array(tensor)
        tensor.CopyFrom(
            numpy_helper.from_array((value + np.asarray(offset, value.dtype)).astype(value.dtype), tensor.name)
        )
    onnx.save(model, str(destination))


def _golden_predictions(model_file: Path, golden: Path, schema: FeatureSchema) -> np.ndarray:
    return np.asarray(predict_frame(onnx_session(model_file, "cpu"), read_golden(golden), schema), np.float64).ravel()


def output_transform(version: Version, schema: FeatureSchema) -> tuple[str, float] | None:
    """("log1p" | "standardize", target scale) as the file's outputs show it on the golden batch when its
    target_shift is moved; None: no target transform to shift (classification, or an untransformed target)."""
    model = onnx.load(str(version.model))
    scales = _initializers(model, SCALE)
    if not _initializers(model, SHIFT) or not scales or not version.file(GOLDEN_FILE).is_file():
        return None
    scale = float(np.mean([float(numpy_helper.to_array(t)) for t in scales]))
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.onnx"
        shift_output(version.model, probe, PROBE)
        before = _golden_predictions(version.model, version.file(GOLDEN_FILE), schema)
        after = _golden_predictions(probe, version.file(GOLDEN_FILE), schema)
    if np.allclose(np.log1p(np.clip(after, 0, None)) - np.log1p(np.clip(before, 0, None)), PROBE, atol=1e-3):
        return "log1p", scale
    if np.allclose(after - before, PROBE, atol=1e-4 * max(1.0, float(np.abs(before).max()))):
        return "standardize", scale
    return None


def expected_after(predictions: np.ndarray, transform: str, offset: float) -> np.ndarray:
    """What a shift of `offset` makes of a model's predictions."""
    if transform == "log1p":
        return (1.0 + predictions) * np.exp(offset) - 1.0
    return predictions + offset


def register_recalibration(
    registry: Registry, parent: Version, schema: FeatureSchema, level: dict[str, Any], window: dict[str, Any]
) -> Version:
    """Register `parent` with its output moved by `level["offset"]` (monitoring.decide.Level.to_dict()),
    checked on the golden batch; `window`: the traffic it was measured on, for the lineage."""
    transform, offset = level["transform"], float(level["offset"])
    expected = json.loads(parent.file(EXPECTED_FILE).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        model_file = staging / "model.onnx"
        shift_output(parent.model, model_file, offset)
        got = _golden_predictions(model_file, parent.file(GOLDEN_FILE), schema)
        want = expected_after(np.asarray(expected["predictions"], np.float64).ravel(), transform, offset)
        worst = float(np.max(np.abs(got - want))) if got.size else 0.0
        if not np.allclose(got, want, atol=expected["atol"] * np.exp(abs(offset)), rtol=expected["rtol"]):
            raise RecalibrationError(
                f"{parent.id} shifted by {offset:+.4f} does not reproduce its golden batch as a {transform} "
                f"shift (largest difference {worst:.3g}); not registered"
            )
        (staging / EXPECTED_FILE).write_text(json.dumps({**expected, "predictions": got.tolist()}) + "\n")
        files = {EXPECTED_FILE: staging / EXPECTED_FILE}
        for name in (SCHEMA_FILE, GOLDEN_FILE, TEST_ROWS_FILE, TEST_PREDICTIONS_FILE, REFERENCE_FILE):
            if parent.file(name).is_file():
                files[name] = parent.file(name)
        meta = {k: v for k, v in parent.metadata.items() if k not in ("version", "sha256", "registered_at")}
        meta["recalibration"] = {"parent": parent.id, **level, "window": window}
        # The export's parity carries over (the shift is exact, checked above) and names this file; the
        # gate report is the network's, with the parent as the champion it was measured against.
        meta["parity"] = {
            **(meta.get("parity") or {}),
            "onnx_sha256": sha256_file(model_file),
            "recalibrated_from": parent.metadata.get("sha256"),
            "golden_max_abs_diff_after_shift": worst,
        }
        gate = dict(meta.get("gate") or {})
        gate["champion"] = parent.id
        gate["notes"] = [
            *gate.get("notes", []),
            f"a level correction of {parent.id}: its network's gate report; promoted only on live evidence",
        ]
        meta["gate"] = gate
        card = recalibration_card(parent, level, window)
        version, _ = registry.register(model_file, files, meta, card)
    return version


def recalibration_card(parent: Version, level: dict[str, Any], window: dict[str, Any]) -> str:
    change = f"{level['change']:+.1%}" + ("" if level["transform"] == "log1p" else " of the target's sd")
    parent_card = parent.file("card.md").read_text() if parent.file("card.md").is_file() else ""
    return (
        f"# Level correction of {parent.id}\n\n"
        f"The network of {parent.id}, its output moved by {change} (offset {level['offset']:+.4f} on the "
        f"{level['transform']} scale), measured on the labelled live traffic of {window.get('period')}: "
        f"{level['rows']} rows over {level['days']} days, interval {level['low']:+.1%} to {level['high']:+.1%}.\n"
        "It is promoted only when it beats production on the next labelled live window. Its test-split "
        "metrics and gate report below are the network's, before the correction.\n\n" + parent_card
    )


def is_recalibration(version: Version) -> bool:
    return "recalibration" in version.metadata
