"""The model registry: immutable versions named by their ONNX file's content hash, and a production
pointer that changes atomically.

Layout (under `registry/` in the project, or $LOOPLINE_REGISTRY):

    versions/<version>/model.onnx      the exported model; <version> = first 16 hex digits of its SHA-256
    versions/<version>/version.json    lineage: data version, params, seed, git commit, packages,
                                       metrics, gate report, skipped checks
    versions/<version>/card.md         the model card
    versions/<version>/...             what re-checking needs: schema, golden batch, test rows; and
                                       reference.parquet, the training rows monitoring compares with
    production.json                    {"version": ..., "previous": [...]}: replaced atomically
    events.jsonl                       every registration, promotion and rollback, with reasons
    .lock                              serialises pointer changes (fcntl)

A version directory is assembled under a temporary name and renamed into place, so it exists whole or
not at all; once there it is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loopline.atomic import file_lock
from loopline.errors import LooplineError
from loopline.settings import Settings

VERSION_DIGITS = 16
BENTO_MODEL_NAME = "loopline"
"""A promoted version is saved to BentoML's model store as loopline:<version>."""

# A version's files: every name once, here.
MODEL_FILE = "model.onnx"
METADATA_FILE = "version.json"
CARD_FILE = "card.md"
SCHEMA_FILE = "schema.json"
"""The feature schema the model was trained with, learned fills included."""
GOLDEN_FILE = "golden.json"
"""Rows the exported model must reproduce (see models.export)."""
EXPECTED_FILE = "golden_expected.json"
"""The trained model's predictions on them, with the tolerance: {"predictions", "atol", "rtol"}."""
TEST_ROWS_FILE = "test.parquet"
"""The test split it was judged on, so that it can be judged again against a later champion."""
TEST_PREDICTIONS_FILE = "test_predictions.parquet"
"""The judged network's outputs on those rows (with train.refit: all, the holdout network's: the served
model learned the test rows): the gate's paired comparisons and monitoring's normal error."""
REFERENCE_FILE = "reference.parquet"
"""The training split it learned from: monitoring's reference for drift."""
STORE_FILES = (MODEL_FILE, SCHEMA_FILE, CARD_FILE, METADATA_FILE, GOLDEN_FILE, EXPECTED_FILE)
"""What a version takes into BentoML's model store: what serving loads and checks."""


class RegistryError(LooplineError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_model_file(path: Path, version_id: str, recorded_sha256: str | None = None) -> None:
    """The file's SHA-256 must be the one its version is named after (and the one recorded at
    registration, when given); otherwise a RegistryError names the file and both hashes."""
    actual = sha256_file(path)
    expected = recorded_sha256 or version_id
    if not actual.startswith(version_id) or (recorded_sha256 and actual != recorded_sha256):
        raise RegistryError(
            f"{path}: SHA-256 {actual} does not match version {version_id} (expected "
            f"{expected}{'' if recorded_sha256 else '...'}): the file was altered"
        )


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Version:
    id: str
    path: Path

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads((self.path / METADATA_FILE).read_text())

    def file(self, name: str) -> Path:
        return self.path / name


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer = self.root / "production.json"
        self.events = self.root / "events.jsonl"

    @classmethod
    def for_project(cls, project_root: Path) -> "Registry":
        return cls(Settings.from_env().registry or Path(project_root) / "registry")

    # ------------------------------------------------------------------------------------ versions
    def register(
        self, onnx_file: Path, files: dict[str, Path], metadata: dict[str, Any], card: str
    ) -> tuple[Version, bool]:
        """Add a version (or find the identical one); returns (version, created)."""
        sha = sha256_file(onnx_file)
        version_id = sha[:VERSION_DIGITS]
        final = self.versions_dir / version_id
        if final.exists():
            existing = Version(version_id, final)
            if sha256_file(existing.model) != sha:
                raise RegistryError(f"{existing.model}: stored file does not match its version hash {version_id}")
            return existing, False
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.versions_dir / f".{version_id}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            shutil.copy2(onnx_file, tmp / MODEL_FILE)
            for name, source in files.items():
                shutil.copy2(source, tmp / name)
            record = {**metadata, "version": version_id, "sha256": sha, "registered_at": now()}
            (tmp / METADATA_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
            (tmp / CARD_FILE).write_text(card)
            try:
                os.rename(tmp, final)
            except OSError:  # registered concurrently by another process: theirs is identical
                shutil.rmtree(tmp, ignore_errors=True)
                return Version(version_id, final), False
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._event(
            {"event": "registered", "version": version_id, "gate_passed": metadata.get("gate", {}).get("passed")}
        )
        return Version(version_id, final), True

    def get(self, version_id: str) -> Version:
        matches = (
            [p for p in self.versions_dir.glob(f"{version_id}*") if p.is_dir() and not p.name.startswith(".")]
            if self.versions_dir.is_dir() and version_id
            else []
        )
        if not matches:
            raise RegistryError(f"no model version {version_id!r} in {self.versions_dir}")
        if len(matches) > 1:
            raise RegistryError(f"{version_id!r} matches {len(matches)} versions: {sorted(p.name for p in matches)}")
        return Version(matches[0].name, matches[0])

    def list(self) -> list[Version]:
        if not self.versions_dir.is_dir():
            return []
        found = [Version(p.name, p) for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(found, key=lambda v: v.metadata.get("registered_at", ""))

    def verify_hash(self, version: Version) -> None:
        verify_model_file(version.model, version.id, version.metadata["sha256"])

    # ---------------------------------------------------------------------------- the pointer
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry lock: pointer changes happen one at a time, across processes."""
        with file_lock(self.root / ".lock"):
            yield

    def pointer_state(self) -> dict[str, Any]:
        if not self.pointer.is_file():
            return {"version": None, "previous": []}
        try:
            return json.loads(self.pointer.read_text())
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{self.pointer}: not valid JSON ({exc}); restore it from {self.events}") from exc

    def production(self) -> str | None:
        return self.pointer_state().get("version")

    def set_production(self, version_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """Point production at a version; call with the lock held. The old one goes on the rollback stack."""
        state = self.pointer_state()
        previous = list(state.get("previous", []))
        if state.get("version") and state["version"] != version_id:
            previous.append(state["version"])
        new = {"version": version_id, "since": now(), "previous": previous, "shadow": state.get("shadow", {})}
        self._write_pointer(new)
        self._event({**event, "version": version_id, "replaced": state.get("version")})
        return new

    def shadows(self) -> dict[str, str]:
        """Versions scored in shadow beside production: version -> role ("challenger": a candidate that
        must prove itself on live traffic; "previous": the model production replaced, watched for a
        rollback)."""
        return dict(self.pointer_state().get("shadow", {}))

    def set_shadow(self, version_id: str, role: str | None, event: dict[str, Any]) -> None:
        """Score a version in shadow in `role`, or stop (role None); call with the lock held."""
        state = self.pointer_state()
        shadow = dict(state.get("shadow", {}))
        if role is None:
            if shadow.pop(version_id, None) is None:
                return
        else:
            shadow[version_id] = role
        self._write_pointer({**state, "shadow": shadow})
        self._event({**event, "version": version_id, "shadow_role": role})

    def rollback(self, reason: str) -> tuple[str, str]:
        """Production goes back to the version it replaced; returns (from, to). Call with the lock held."""
        state = self.pointer_state()
        previous = list(state.get("previous", []))
        if not state.get("version") or not previous:
            raise RegistryError("nothing to roll back to: production has no previous version")
        target = previous.pop()
        shadow = {v: r for v, r in state.get("shadow", {}).items() if v != target}
        self._write_pointer({"version": target, "since": now(), "previous": previous, "shadow": shadow})
        self._event({"event": "rollback", "version": target, "replaced": state["version"], "reason": reason})
        return state["version"], target

    def history(self) -> list[dict[str, Any]]:
        if not self.events.is_file():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.strip()]

    def _write_pointer(self, state: dict[str, Any]) -> None:
        tmp = self.pointer.with_name(f".production.json.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        with open(tmp, "w") as fh:
            fh.write(json.dumps(state, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.pointer)

    def _event(self, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"at": now(), **record}, default=str) + "\n"
        with open(self.events, "a") as fh:  # one write per line: appends from several processes stay whole
            fh.write(line)
