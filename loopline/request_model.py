"""The HTTP request model, derived from the feature schema (the one definition of the columns).

`label_model` is the shape of ground truth posted later for served records.
One record is a JSON object of raw feature values: numbers within the schema's range (whole numbers
where the column is an integer), categories from the schema's list, null or absent only where the
column is nullable, and nothing else: an unknown field is refused. A request carries 1 to
`max_records` records. `describe_errors` turns a validation failure into one line per problem that
names the record, the field and what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from loopline.schema import Column, FeatureSchema, Kind, MissingPolicy

MAX_REQUEST_ID_LENGTH = 200
"""An X-Request-ID (echoed, logged with every record, and named again by the labels posted to /feedback)."""


def valid_request_id(value: str | bytes) -> bool:
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return 0 < len(text) <= MAX_REQUEST_ID_LENGTH and text.isascii() and text.isprintable()


def _not_a_boolean(value: Any) -> Any:
    # JSON true/false equal 1/0 in Python, so a Literal of integer categories would take them.
    if isinstance(value, bool):
        raise ValueError(f"a boolean ({str(value).lower()}) is not a category")
    return value


def _field_type(col: Column) -> Any:
    if col.kind is Kind.CATEGORICAL:
        kind: Any = Literal[tuple(col.categories)]  # type: ignore[valid-type]
        if all(isinstance(c, int) for c in col.categories):
            kind = Annotated[kind, BeforeValidator(_not_a_boolean)]
    else:
        bounds = {k: v for k, v in (("ge", col.min), ("le", col.max)) if v is not None}
        # Strict: a JSON number (a whole number too, for a float column), never a string or a boolean.
        kind = Annotated[int if col.integer else float, Field(strict=True, allow_inf_nan=False, **bounds)]
    return kind | None if accepts_null(col) else kind


def _iso_time(value: Any) -> datetime:
    """An ISO 8601 date/time string as naive UTC (an offset is converted; no offset is taken as UTC), read
    the way `prepare` reads the time column of a source."""
    if not isinstance(value, str):
        raise ValueError("an ISO 8601 date/time string is expected (e.g. 2012-12-31 23:00 or 2012-12-31T23:00:00Z)")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{value!r} is not an ISO 8601 date/time (e.g. 2012-12-31 23:00 or 2012-12-31T23:00:00Z)"
        ) from None
    return parsed.astimezone(timezone.utc).replace(tzinfo=None) if parsed.tzinfo is not None else parsed


def event_time_field(schema: FeatureSchema) -> tuple[Any, Any] | None:
    """The schema's time column as an optional field of a record: when the record's event happened. The
    request log keeps it, and a harvested row takes it as its time (else the time it was served)."""
    if schema.time_column is None:
        return None
    col = schema.column(schema.time_column)
    if col.kind is Kind.DATETIME:
        kind: Any = Annotated[datetime, BeforeValidator(_iso_time)]
    else:
        kind = Annotated[float, Field(strict=True, allow_inf_nan=False)]
    description = f"optional: when the record's event happened ({col.description or 'the time column'})"
    return kind | None, Field(None, description=description)


def accepts_null(col: Column) -> bool:
    """Whether a served record may leave the column empty: nullable, and not a column whose nulls
    training dropped (the model never saw such a row)."""
    return col.nullable and col.missing is not MissingPolicy.DROP


def record_model(schema: FeatureSchema) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for col in schema.features:
        annotation = _field_type(col)
        description = col.description or f"{col.kind.value} feature"
        default = None if accepts_null(col) else ...
        fields[col.name] = (annotation, Field(default, description=description))
    event_time = event_time_field(schema)
    if event_time is not None:
        fields[schema.time_column] = event_time
    return create_model(f"{_identifier(schema.name)}_record", __config__=ConfigDict(extra="forbid"), **fields)


def request_model(schema: FeatureSchema, max_records: int) -> type[BaseModel]:
    record = record_model(schema)
    return create_model(
        f"{_identifier(schema.name)}_request",
        __config__=ConfigDict(extra="forbid"),
        records=(
            list[record],
            Field(
                ...,
                min_length=1,
                max_length=max_records,  # type: ignore[valid-type]
                description=f"1 to {max_records} records of raw feature values",
            ),
        ),
    )


def label_model(schema: FeatureSchema) -> type[BaseModel]:
    """Ground truth that arrives later for a served record: its request id, its index in that request,
    and the true target value (typed and bounded like the target column)."""
    return create_model(
        f"{_identifier(schema.name)}_label",
        __config__=ConfigDict(extra="forbid"),
        request_id=(
            str,
            Field(..., min_length=1, max_length=MAX_REQUEST_ID_LENGTH, description="the X-Request-ID of the request"),
        ),
        record=(int, Field(0, ge=0, strict=True, description="the record's index in that request")),
        value=(_field_type(schema.target_column), Field(..., description=f"the true {schema.target}")),
    )


def response_model(schema: FeatureSchema) -> type[BaseModel]:
    """The body of a successful prediction (for the OpenAPI document): values for regression; for
    classification the predicted class and each class's probability."""
    fields: dict[str, Any] = {
        "model_version": (str, Field(..., description="the registry version that answered")),
        "request_id": (str, Field(..., description="the X-Request-ID sent, or one made for the request")),
    }
    if schema.task.is_classification:
        fields["predictions"] = (
            list[Literal[tuple(schema.classes)]],
            Field(..., description="the predicted class per record"),
        )  # type: ignore[misc]
        fields["probabilities"] = (
            list[dict[str, float]],
            Field(..., description="each class's probability per record"),
        )
    else:
        fields["predictions"] = (list[float], Field(..., description=f"the predicted {schema.target} per record"))
    return create_model(f"{_identifier(schema.name)}_prediction", **fields)


def describe_errors(errors: ValidationError | Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """[{"field": "records[3].temp", "problem": "..."}] for each error, in the order pydantic found them.

    Takes a ValidationError or its `errors()` list (as BentoML reports them, without the input values)."""
    if isinstance(errors, ValidationError):
        errors = errors.errors(include_url=False)
    out = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        path = ""
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        problem = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        in_record = len(loc) == 3  # ("records", index, field)
        kind = err.get("type")
        if kind == "extra_forbidden":
            problem = "unknown field: not a feature of the model's schema" if in_record else "unknown field"
        elif kind == "missing":
            problem = "missing: the column takes no null, so the field is required" if in_record else "missing"
        elif kind == "literal_error":
            allowed = problem.removeprefix("Input should be ")
            problem = (
                f"{err['input']!r} is not one of the categories: {allowed}"
                if "input" in err
                else f"not one of the categories: {allowed}"
            )
        elif kind == "json_invalid":
            problem = f"the body is not valid JSON ({err.get('ctx', {}).get('error', problem)})"
        elif kind == "model_type" and not loc:
            problem = "the body must be a JSON object"
        out.append({"field": path or "body", "problem": problem})
    return out


def error_body(problems: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """A 400 response body: a one-line summary naming the first problem, then every problem."""
    first = problems[0] if problems else {"field": "body", "problem": "invalid request"}
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return {"error": f"invalid request: {first['field']}: {first['problem']}{more}", "problems": list(problems)}


def _identifier(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)
