"""Write a stage's outputs so that a failure leaves the previous outputs as they were.

Every output is first written beside its final path under a temporary name; only when the whole stage
has succeeded are they moved into place, each with a rename.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any


class StagedOutputs:
    """Context manager: `out.path(final)` gives a temporary path; all are committed on a clean exit."""

    def __init__(self) -> None:
        self._token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._staged: dict[Path, Path] = {}

    def path(self, final: Path, *, directory: bool = False) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        # The suffix stays last: writers such as matplotlib pick the format from it.
        tmp = final.with_name(f".{final.stem}.tmp-{self._token}{final.suffix}")
        if directory:
            tmp.mkdir()
        self._staged[final] = tmp
        return tmp

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._commit()
        else:
            self._discard()

    def _commit(self) -> None:
        missing = [str(final) for final, tmp in self._staged.items() if not tmp.exists()]
        if missing:
            self._discard()
            raise RuntimeError(f"outputs were declared but never written: {', '.join(missing)}")
        for final, tmp in self._staged.items():
            if tmp.is_dir():
                _replace_dir(tmp, final)
            else:
                os.replace(tmp, final)

    def _discard(self) -> None:
        for tmp in self._staged.values():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def _replace_dir(new: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON with a stable layout (sorted keys are not used: order is meaningful in reports)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing), held across processes until the block ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
