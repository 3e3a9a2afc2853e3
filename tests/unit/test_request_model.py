"""The HTTP request model follows the feature schema and says precisely what is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from conftest import REPO
from loopline.features import decode_predictions, encode_features
from loopline.request_model import describe_errors, request_model
from loopline.schema import load_schema

BIKE = load_schema(REPO / "schemas/bike.yaml")
ACS = load_schema(REPO / "schemas/acs.yaml")
Request = request_model(BIKE, max_records=3)
GOOD = {
    "season": "summer",
    "hr": 8,
    "holiday": "No",
    "weekday": "Mon",
    "workingday": "Yes",
    "weathersit": "Clear",
    "temp": 20,
    "atemp": 22.5,
    "hum": 50,
    "windspeed": 10.0,
}


def problems(body) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as caught:
        Request.model_validate(body)
    return describe_errors(caught.value)


def test_a_valid_record_is_accepted_and_encodes_like_training_data() -> None:
    import pandas as pd

    request = Request.model_validate({"records": [GOOD, {**GOOD, "weathersit": None}]})
    frame = pd.DataFrame([r.model_dump() for r in request.records])
    enc = encode_features(frame, BIKE)
    assert enc.numeric.shape == (2, len(BIKE.numeric_features))
    assert enc.categorical[1, [c.name for c in BIKE.categorical_features].index("weathersit")] == -1


def test_a_nullable_field_may_be_left_out() -> None:
    record = {k: v for k, v in GOOD.items() if k != "weathersit"}
    assert Request.model_validate({"records": [record]}).records[0].weathersit is None


@pytest.mark.parametrize(
    "record, field, problem",
    [
        ({k: v for k, v in GOOD.items() if k != "temp"}, "records[0].temp", "missing: the column takes no null"),
        ({**GOOD, "temp": "warm"}, "records[0].temp", "Input should be a valid number"),
        ({**GOOD, "temp": True}, "records[0].temp", "Input should be a valid number"),
        ({**GOOD, "temp": 99}, "records[0].temp", "less than or equal to 50"),
        ({**GOOD, "hum": -1}, "records[0].hum", "greater than or equal to 0"),
        (
            {**GOOD, "season": "monsoon"},
            "records[0].season",
            "'monsoon' is not one of the categories: 'spring', 'summer'",
        ),
        ({**GOOD, "hr": "8"}, "records[0].hr", "'8' is not one of the categories: 0, 1, 2"),
        ({**GOOD, "season": None}, "records[0].season", "is not one of the categories"),
        ({**GOOD, "colour": "red"}, "records[0].colour", "unknown field: not a feature of the model's schema"),
    ],
    ids=[
        "missing",
        "wrong type",
        "boolean",
        "above max",
        "below min",
        "unknown category",
        "category as text",
        "null where not nullable",
        "unknown field",
    ],
)
def test_a_bad_record_is_refused_with_its_field_and_problem(record, field, problem) -> None:
    found = problems({"records": [record]})
    assert found[0]["field"] == field
    assert problem in found[0]["problem"]


@pytest.mark.parametrize(
    "body, field, problem",
    [
        ({"records": []}, "records", "at least 1 item"),
        ({"records": [GOOD] * 4}, "records", "at most 3 items"),
        ({}, "records", "missing"),
        ({"records": [GOOD], "extra": 1}, "extra", "unknown field"),
        ([GOOD], "body", "must be a JSON object"),
    ],
)
def test_a_bad_request_body_is_refused_with_what_is_wrong(body, field, problem) -> None:
    found = problems(body)
    assert found[0]["field"] == field and problem in found[0]["problem"]


def test_the_model_follows_each_schema() -> None:
    acs = request_model(ACS, max_records=10)
    record = acs.model_json_schema()["$defs"][f"{ACS.name}_record"]
    assert set(record["properties"]) == {c.name for c in ACS.features} | {ACS.time_column}  # the event time
    assert record["additionalProperties"] is False
    assert set(record["required"]) == {c.name for c in ACS.features if not c.nullable}


def test_predictions_are_decoded_to_values_or_classes_with_probabilities() -> None:
    import numpy as np

    assert decode_predictions(np.array([1.5, 2.0], np.float32), BIKE) == {"predictions": [1.5, 2.0]}
    binary = decode_predictions(np.array([0.25, 0.9]), ACS)
    assert binary["predictions"] == [0, 1]
    assert binary["probabilities"] == [{"0": 0.75, "1": 0.25}, {"0": 0.1, "1": 0.9}]


def test_ground_truth_labels_are_typed_like_the_target() -> None:
    from loopline.request_model import label_model

    Label = label_model(BIKE)
    assert Label.model_validate({"request_id": "r1", "record": 2, "value": 41}).value == 41
    for bad, field in (
        ({"request_id": "r1", "value": -1}, "value"),
        ({"request_id": "", "value": 3}, "request_id"),
        ({"request_id": "r1", "value": "many"}, "value"),
        ({"value": 3}, "request_id"),
    ):
        with pytest.raises(ValidationError) as caught:
            Label.model_validate(bad)
        assert describe_errors(caught.value)[0]["field"] == field
    acs_label = label_model(ACS)
    assert acs_label.model_validate({"request_id": "r", "value": 1}).value == 1
    with pytest.raises(ValidationError):
        acs_label.model_validate({"request_id": "r", "value": 2})


def test_errors_reported_without_their_inputs_are_described_just_as_precisely() -> None:
    """BentoML reports pydantic's errors without the input values; the service rewords those lists."""
    from loopline.request_model import error_body

    with pytest.raises(ValidationError) as caught:
        Request.model_validate({"records": [{**GOOD, "season": "monsoon", "colour": "red"}]})
    reported = caught.value.errors(include_url=False, include_context=False, include_input=False)
    found = describe_errors(reported)
    assert found == [
        {"field": "records[0].season", "problem": "not one of the categories: 'spring', 'summer', 'fall' or 'winter'"},
        {"field": "records[0].colour", "problem": "unknown field: not a feature of the model's schema"},
    ]
    body = error_body(found)
    assert body["error"] == (
        "invalid request: records[0].season: not one of the categories: 'spring', 'summer', "
        "'fall' or 'winter' (and 1 more)"
    )
    assert body["problems"] == found
    with pytest.raises(ValidationError) as caught:
        Request.model_validate_json(b"{not json")
    assert describe_errors(caught.value)[0]["field"] == "body"
    assert describe_errors(caught.value)[0]["problem"].startswith("the body is not valid JSON")


def test_records_encode_without_a_dataframe_exactly_as_the_training_encoding_does() -> None:
    import numpy as np
    import pandas as pd

    from loopline.features import RecordEncoder

    records = [
        GOOD,
        {**GOOD, "weathersit": None, "hr": 23, "temp": 12.345678},
        {k: v for k, v in GOOD.items() if k != "weathersit"},
        {**GOOD, "season": "monsoon", "hr": 7.0, "hum": None},
    ]  # values validation would refuse, too
    fast = RecordEncoder(BIKE)(records)
    slow = encode_features(pd.DataFrame(records, columns=[c.name for c in BIKE.features]), BIKE)
    np.testing.assert_array_equal(fast.numeric, slow.numeric)
    np.testing.assert_array_equal(fast.categorical, slow.categorical)
    assert fast.numeric.dtype == np.float32 and fast.categorical.dtype == np.int64


def test_a_boolean_is_not_an_integer_category() -> None:
    found = problems({"records": [{**GOOD, "hr": False}]})
    assert found == [{"field": "records[0].hr", "problem": "a boolean (false) is not a category"}]


def test_a_column_whose_nulls_training_dropped_takes_no_null_at_serving() -> None:
    from loopline.schema import schema_from_dict

    raw = BIKE.to_dict()
    raw["columns"]["weathersit"]["missing"] = "drop"
    dropping = request_model(schema_from_dict(raw), max_records=3)
    with pytest.raises(ValidationError) as caught:
        dropping.model_validate({"records": [{**GOOD, "weathersit": None}]})
    assert [p["field"] for p in describe_errors(caught.value)] == ["records[0].weathersit"]
    with pytest.raises(ValidationError):
        dropping.model_validate({"records": [{k: v for k, v in GOOD.items() if k != "weathersit"}]})
    assert Request.model_validate({"records": [{**GOOD, "weathersit": None}]})  # keep: null is the model's own slot


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ("2012-07-01 08:00", "2012-07-01 08:00:00"),
        ("2012-07-01T10:00:00+02:00", "2012-07-01 08:00:00"),  # to UTC, like the source's times
        ("2012-07-01T08:00:00Z", "2012-07-01 08:00:00"),
    ],
)
def test_a_record_may_carry_its_event_time_in_iso_8601(sent: str, read: str) -> None:
    record = Request.model_validate({"records": [{**GOOD, "timestamp": sent}, GOOD]}).records
    assert str(record[0].timestamp) == read and record[1].timestamp is None


def test_an_event_time_that_is_not_iso_8601_names_the_field() -> None:
    [problem] = problems({"records": [{**GOOD, "timestamp": "07/01/2012"}]})
    assert problem["field"] == "records[0].timestamp" and "not an ISO 8601 date/time" in problem["problem"]
