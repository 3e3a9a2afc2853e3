"""params.yaml, read into typed settings. Every knob of the pipeline lives there, grouped by stage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loopline.errors import ConfigError
from loopline.paths import ProjectPaths
from loopline.schema import FeatureSchema, load_schema

BUILTIN_SOURCES = ("bike", "acs")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    source: str = "bike"
    """'bike' or 'acs' (bundled datasets), or 'file' for a CSV or Parquet file of your own."""
    path: str | None = None
    """With source 'file': the file, relative to the project root (keep it under data/external)."""
    schema_file: str | None = Field(default=None, alias="schema")
    """The schema to validate against; defaults to schemas/<source>.yaml."""
    as_of: str | int | None = None
    """Cut-off on the time column: only rows at or before it are known. A date alone means the whole day."""

    @model_validator(mode="after")
    def _file_source_needs_path_and_schema(self) -> "DataParams":
        if self.source == "file":
            if not self.path:
                raise ValueError("source 'file' needs data.path (a CSV or Parquet file)")
            if not self.schema_file:
                raise ValueError("source 'file' needs data.schema (a schema YAML for that file)")
        elif self.source not in BUILTIN_SOURCES:
            raise ValueError(f"data.source must be one of {BUILTIN_SOURCES + ('file',)}, got {self.source!r}")
        return self


class SplitParams(_Section):
    method: Literal["time", "group", "random"] = "time"
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _leaves_rows_for_training(self) -> "SplitParams":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% of the rows for training")
        return self


class PrepareParams(_Section):
    split: SplitParams = SplitParams()
    max_invalid_share: float = Field(default=0.05, ge=0, le=1)
    """Stop the stage when more than this share of rows is invalid (they are quarantined either way)."""


class Params(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    seed: int = 42
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()


def load_params(path: str | Path | None = None) -> Params:
    path = Path(path) if path is not None else ProjectPaths.here().params
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def schema_path(params: Params, paths: ProjectPaths) -> Path:
    name = params.data.schema_file or f"schemas/{params.data.source}.yaml"
    return paths.root / name


def load_dataset_schema(params: Params, paths: ProjectPaths) -> FeatureSchema:
    return load_schema(schema_path(params, paths))
