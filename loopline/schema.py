"""The feature schema: the single definition of a dataset's columns.

Validation, the model's input layout, the HTTP request model and the drift column mapping are all
derived from a `FeatureSchema`. Schemas are YAML files (see schemas/); `load_schema` checks that a file
is complete and does not contradict itself, and names the file and field when it does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from loopline.errors import SchemaError

# Columns that Loopline adds to raw and quarantined rows (provenance and the quarantine reason).
RESERVED_COLUMNS = ("_source_file", "_source_row", "_reason")


class Kind(str, Enum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    DATETIME = "datetime"
    ID = "id"


class Task(str, Enum):
    REGRESSION = "regression"
    BINARY = "binary"
    MULTICLASS = "multiclass"

    @property
    def is_classification(self) -> bool:
        return self is not Task.REGRESSION


class MissingPolicy(str, Enum):
    """What prepare does with a null in a nullable column."""

    KEEP = "keep"  # leave it: the model maps it to its own slot
    MEDIAN = "median"  # numeric: the train split's median
    MEAN = "mean"  # numeric: the train split's mean
    MODE = "mode"  # the train split's most frequent value
    FILL = "fill"  # a constant given as `fill_value`
    DROP = "drop"  # drop the row (counted in the data report)


Category = str | int


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    integer: bool = False
    categories: tuple[Category, ...] = ()
    missing: MissingPolicy = MissingPolicy.KEEP
    fill_value: Any = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "nullable": self.nullable}
        if self.kind is Kind.NUMERIC:
            out.update(min=self.min, max=self.max, integer=self.integer)
        if self.kind is Kind.CATEGORICAL:
            out["categories"] = list(self.categories)
        if self.nullable:
            out["missing"] = self.missing.value
            if self.missing is MissingPolicy.FILL:
                out["fill_value"] = self.fill_value
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class FeatureSchema:
    name: str
    task: Task
    target: str
    columns: tuple[Column, ...]
    time_column: str | None = None
    group_column: str | None = None
    rows_independent: bool = False
    drop_columns: dict[str, str] = field(default_factory=dict)
    description: str = ""
    learned_fills: dict[str, Any] = field(default_factory=dict)
    """What a null becomes, per column with a median/mean/mode/fill policy: learned on the training split
    by `prepare` and frozen with the model, so serving treats a null exactly as training did."""

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"schema {self.name!r} has no column {name!r}")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def target_column(self) -> Column:
        return self.column(self.target)

    @property
    def features(self) -> list[Column]:
        """Model inputs: every column but the target, the time and group columns and identifiers."""
        not_inputs = {self.target, self.time_column, self.group_column}
        return [c for c in self.columns if c.name not in not_inputs and c.kind is not Kind.ID]

    @property
    def numeric_features(self) -> list[Column]:
        return [c for c in self.features if c.kind is Kind.NUMERIC]

    @property
    def categorical_features(self) -> list[Column]:
        return [c for c in self.features if c.kind is Kind.CATEGORICAL]

    @property
    def classes(self) -> tuple[Category, ...]:
        """Class labels in model output order (classification only)."""
        return self.target_column.categories

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "task": self.task.value,
            "target": self.target,
            "time_column": self.time_column,
            "group_column": self.group_column,
            "rows_independent": self.rows_independent,
            "drop_columns": dict(self.drop_columns),
            "columns": {c.name: c.to_dict() for c in self.columns},
            **({"learned_fills": dict(self.learned_fills)} if self.learned_fills else {}),
        }


def load_schema(path: str | Path) -> FeatureSchema:
    """Read a schema file (YAML or the JSON written by `FeatureSchema.to_dict`) and check it."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: schema file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SchemaError(f"{path}: not valid YAML: {exc}") from exc
    return schema_from_dict(raw, source=str(path))


def schema_from_dict(raw: Any, *, source: str = "<schema>") -> FeatureSchema:
    where = _Where(source)
    if not isinstance(raw, dict):
        raise where.error("", "the file must hold a mapping with 'name', 'task', 'target' and 'columns'")
    known = {
        "name",
        "description",
        "task",
        "target",
        "time_column",
        "group_column",
        "rows_independent",
        "drop_columns",
        "columns",
        "learned_fills",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise where.error(unknown[0], f"unknown field; expected one of {sorted(known)}")
    for required in ("name", "task", "target", "columns"):
        if raw.get(required) in (None, "", {}, []):
            raise where.error(required, "is required")

    task = _enum(Task, raw["task"], where, "task")
    raw_columns = raw["columns"]
    if not isinstance(raw_columns, dict):
        raise where.error("columns", "must be a mapping of column name to its definition")
    columns = tuple(_column(str(name), spec, where) for name, spec in raw_columns.items())

    drop_columns = raw.get("drop_columns") or {}
    if not isinstance(drop_columns, dict):
        raise where.error("drop_columns", "must map each dropped column to the reason it is dropped")

    schema = FeatureSchema(
        name=str(raw["name"]),
        description=str(raw.get("description") or ""),
        task=task,
        target=str(raw["target"]),
        columns=columns,
        time_column=raw.get("time_column"),
        group_column=raw.get("group_column"),
        rows_independent=bool(raw.get("rows_independent", False)),
        drop_columns={str(k): str(v) for k, v in drop_columns.items()},
        learned_fills=dict(raw.get("learned_fills") or {}),
    )
    _check_consistency(schema, where)
    return schema


def schema_to_json(schema: FeatureSchema) -> str:
    return json.dumps(schema.to_dict(), indent=2) + "\n"


class _Where:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, field_path: str, problem: str) -> SchemaError:
        location = f"{self.source}: {field_path}" if field_path else self.source
        return SchemaError(f"{location}: {problem}")


def _enum(enum: type[Enum], value: Any, where: _Where, field_path: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum)
        raise where.error(field_path, f"{value!r} is not one of {choices}") from None


def _column(name: str, spec: Any, where: _Where) -> Column:
    at = f"columns.{name}"
    if name in RESERVED_COLUMNS:
        raise where.error(at, f"{name!r} is reserved by Loopline ({', '.join(RESERVED_COLUMNS)})")
    if not isinstance(spec, dict):
        raise where.error(at, "must be a mapping with at least 'kind'")
    known = {"kind", "nullable", "min", "max", "integer", "categories", "missing", "fill_value", "description"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise where.error(f"{at}.{unknown[0]}", f"unknown field; expected one of {sorted(known)}")
    if "kind" not in spec:
        raise where.error(f"{at}.kind", "is required (numeric, categorical, datetime or id)")
    kind = _enum(Kind, spec["kind"], where, f"{at}.kind")
    nullable = bool(spec.get("nullable", False))

    if kind is not Kind.NUMERIC:
        for numeric_only in ("min", "max", "integer"):
            if numeric_only in spec:
                raise where.error(f"{at}.{numeric_only}", f"only numeric columns take it; this one is {kind.value}")
    if kind is not Kind.CATEGORICAL and "categories" in spec:
        raise where.error(f"{at}.categories", f"only categorical columns take it; this one is {kind.value}")

    low, high = spec.get("min"), spec.get("max")
    for bound_name, bound in (("min", low), ("max", high)):
        if bound is not None and (not isinstance(bound, (int, float)) or isinstance(bound, bool) or math.isnan(bound)):
            raise where.error(f"{at}.{bound_name}", f"must be a number, got {bound!r}")
    if low is not None and high is not None and low > high:
        raise where.error(at, f"min ({low}) is greater than max ({high})")

    categories: tuple[Category, ...] = ()
    if kind is Kind.CATEGORICAL:
        raw_categories = spec.get("categories")
        if not isinstance(raw_categories, list) or not raw_categories:
            raise where.error(f"{at}.categories", "a categorical column needs a non-empty list of categories")
        types = {type(c) for c in raw_categories}
        if not types <= {str, int} or len(types) != 1 or bool in types:
            raise where.error(f"{at}.categories", "categories must be all strings or all integers")
        if len(set(raw_categories)) != len(raw_categories):
            dupes = sorted({str(c) for c in raw_categories if raw_categories.count(c) > 1})
            raise where.error(f"{at}.categories", f"repeated categories: {', '.join(dupes)}")
        categories = tuple(raw_categories)

    missing = MissingPolicy.KEEP
    fill_value = spec.get("fill_value")
    if "missing" in spec:
        if not nullable:
            raise where.error(f"{at}.missing", "a missing-value policy is set but the column is not nullable")
        missing = _enum(MissingPolicy, spec["missing"], where, f"{at}.missing")
    if missing in (MissingPolicy.MEDIAN, MissingPolicy.MEAN) and kind is not Kind.NUMERIC:
        raise where.error(f"{at}.missing", f"{missing.value!r} needs a numeric column; this one is {kind.value}")
    if missing is MissingPolicy.FILL:
        if fill_value is None:
            raise where.error(f"{at}.fill_value", "missing: fill needs a fill_value")
        if kind is Kind.CATEGORICAL and fill_value not in categories:
            raise where.error(f"{at}.fill_value", f"{fill_value!r} is not one of the column's categories")
        if kind is Kind.NUMERIC and (
            not isinstance(fill_value, (int, float))
            or (low is not None and fill_value < low)
            or (high is not None and fill_value > high)
        ):
            raise where.error(f"{at}.fill_value", f"{fill_value!r} is not a number within [{low}, {high}]")
    elif "fill_value" in spec:
        raise where.error(f"{at}.fill_value", "is only used with missing: fill")

    return Column(
        name=name,
        kind=kind,
        nullable=nullable,
        min=low,
        max=high,
        integer=bool(spec.get("integer", False)),
        categories=categories,
        missing=missing,
        fill_value=fill_value,
        description=str(spec.get("description") or ""),
    )


def _check_consistency(schema: FeatureSchema, where: _Where) -> None:
    names = schema.column_names
    if schema.target not in names:
        raise where.error("target", f"{schema.target!r} is not one of the columns")
    target = schema.target_column
    if target.nullable:
        raise where.error(f"columns.{target.name}.nullable", "the target cannot be nullable")
    if schema.task is Task.REGRESSION and target.kind is not Kind.NUMERIC:
        raise where.error("task", f"regression needs a numeric target; {target.name!r} is {target.kind.value}")
    if schema.task.is_classification:
        if target.kind is not Kind.CATEGORICAL:
            raise where.error(
                "task",
                f"{schema.task.value} needs a categorical target with its classes listed; "
                f"{target.name!r} is {target.kind.value}",
            )
        n = len(target.categories)
        if schema.task is Task.BINARY and n != 2:
            raise where.error("task", f"binary needs exactly 2 target categories; {target.name!r} has {n}")
        if schema.task is Task.MULTICLASS and n < 3:
            raise where.error("task", f"multiclass needs 3 or more target categories; {target.name!r} has {n}")

    for role in ("time_column", "group_column"):
        col_name = getattr(schema, role)
        if col_name is None:
            continue
        if col_name not in names:
            raise where.error(role, f"{col_name!r} is not one of the columns")
        if col_name == schema.target:
            raise where.error(role, f"{col_name!r} is the target")
        col = schema.column(col_name)
        if col.nullable:
            raise where.error(f"columns.{col_name}.nullable", f"the {role.replace('_', ' ')} cannot be nullable")
    if schema.time_column is not None:
        time_kind = schema.column(schema.time_column).kind
        if time_kind not in (Kind.DATETIME, Kind.NUMERIC):
            raise where.error("time_column", f"must be a datetime or numeric column, not {time_kind.value}")
    if schema.time_column is None and schema.group_column is None and not schema.rows_independent:
        raise where.error(
            "rows_independent",
            "the schema has no time_column and no group_column, so the only split is random; "
            "set rows_independent: true to say rows are independent, or name a time or group column",
        )
    overlap = sorted(set(schema.drop_columns) & set(names))
    if overlap:
        raise where.error("drop_columns", f"{overlap[0]!r} is both dropped and defined as a column")
    if not schema.features:
        raise where.error("columns", "no feature columns are left after the target, time, group and id columns")
    for col in schema.features:
        if col.kind is Kind.DATETIME:
            raise where.error(
                f"columns.{col.name}.kind",
                "a datetime column other than time_column cannot be a model input; derive numeric or "
                "categorical features from it in the source (hour, weekday, days since ...), declare it "
                "kind: id to keep it unused, or list it under drop_columns",
            )
    for name, value in schema.learned_fills.items():
        if name not in names or schema.column(name).missing in (MissingPolicy.KEEP, MissingPolicy.DROP):
            raise where.error(f"learned_fills.{name}", "names no column with a median, mean, mode or fill policy")
