"""A version in BentoML's model store, and the check that registry, pointer and store agree."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from loopline.registry import BENTO_MODEL_NAME, STORE_FILES, Registry, RegistryError, Version

log = logging.getLogger(__name__)


def store_differences(version: Version) -> list[str] | None:
    """The files of BentoML's copy of a version that differ from the registry's (missing ones too);
    None when the store has no copy."""
    import bentoml

    try:
        stored = bentoml.models.get(f"{BENTO_MODEL_NAME}:{version.id}")
    except bentoml.exceptions.NotFound:
        return None
    differ = []
    for name in STORE_FILES:
        copy = Path(stored.path_of(name))
        if not copy.is_file() or copy.read_bytes() != version.file(name).read_bytes():
            differ.append(name)
    return differ


def save_to_bentoml(version: Version) -> str:
    """The version in BentoML's model store as loopline:<version>, for `bentoml build` and serving. A
    store copy that differs from the registry's bytes (altered, truncated, half-written) is saved again."""
    import bentoml

    tag = f"{BENTO_MODEL_NAME}:{version.id}"
    differ = store_differences(version)
    if differ == []:
        return tag
    if differ:
        log.warning("BentoML's store copy of %s differs from the registry in %s: saving it again", version.id, differ)
        bentoml.models.delete(tag)
    meta = version.metadata
    with bentoml.models.create(
        tag,
        labels={"schema": meta["schema"], "task": meta["task"]},
        metadata={"sha256": meta["sha256"], "gate_passed": meta["gate"]["passed"]},
    ) as model:
        for name in STORE_FILES:
            Path(model.path_of(name)).write_bytes(version.file(name).read_bytes())
    return tag


@dataclass
class VerifyReport:
    problems: list[str]
    """What is wrong and could not be repaired (a registry file altered, a pointer to nothing)."""
    repaired: list[str]
    checked: int

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_release(registry: Registry) -> VerifyReport:
    """Registry, production pointer and BentoML's store agree: every version's file matches its hash,
    the pointer and its rollback stack name intact versions, and the store's copy of each of those is
    byte-identical to the registry's, re-saved from the registry where it is not."""
    problems: list[str] = []
    repaired: list[str] = []
    intact: dict[str, Version] = {}
    versions = registry.list()
    for version in versions:
        try:
            registry.verify_hash(version)
            intact[version.id] = version
        except RegistryError as exc:
            problems.append(str(exc))
    state = registry.pointer_state()
    servable = [v for v in [state.get("version"), *state.get("previous", [])] if v]
    for version_id in servable:
        if version_id not in intact:
            known = any(v.id == version_id for v in versions)
            problems.append(
                f"{registry.pointer}: names {version_id}, which is "
                f"{'altered in the registry (see above)' if known else 'not in the registry'}"
            )
            continue
        differ = store_differences(intact[version_id])
        if differ is None:
            continue  # not in the store yet: promotion or rollback saves it
        if differ:
            with registry.locked():
                save_to_bentoml(intact[version_id])
            repaired.append(
                f"{BENTO_MODEL_NAME}:{version_id}: store copy differed in {', '.join(differ)}; "
                "saved again from the registry"
            )
    return VerifyReport(problems, repaired, len(versions))
