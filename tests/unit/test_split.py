"""Splits never leak: properties checked on random frames (hypothesis)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataprep.split import split_by_group, split_by_time, split_rows
from loopline.config import SplitParams
from loopline.errors import DataError
from loopline.schema import schema_from_dict

fractions = st.tuples(st.floats(0.05, 0.4), st.floats(0.05, 0.4)).filter(lambda f: f[0] + f[1] < 0.85)


@st.composite
def timed_frames(draw):
    """Frames with repeated, unsorted times: many rows can share one time value."""
    n = draw(st.integers(3, 400))
    distinct = draw(st.integers(3, max(3, n)))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    times = rng.integers(0, distinct, size=n)
    times[:3] = [0, 1, 2]  # at least three distinct values exist
    return pd.DataFrame({"t": pd.Timestamp("2020-01-01") + pd.to_timedelta(times, unit="h"), "x": rng.normal(size=n)})


@settings(max_examples=200, deadline=None)
@given(frame=timed_frames(), fracs=fractions)
def test_time_split_puts_every_val_and_test_row_after_every_train_row(frame, fracs) -> None:
    splits = split_by_time(frame, "t", *fracs)
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert len(train) and len(val) and len(test)
    assert train["t"].max() < val["t"].min()
    assert val["t"].max() < test["t"].min()
    assert len(train) + len(val) + len(test) == len(frame)
    assert sorted(pd.concat([train, val, test])["x"]) == sorted(frame["x"])


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(10, 300),
    groups=st.integers(3, 40),
    seed=st.integers(0, 1000),
    fracs=fractions,
)
def test_group_split_never_puts_one_group_in_two_splits(n, groups, seed, fracs) -> None:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"g": rng.integers(0, groups, size=n), "x": np.arange(n)})
    frame.loc[:2, "g"] = [groups, groups + 1, groups + 2]  # at least three groups
    splits = split_by_group(frame, "g", *fracs, seed=seed)
    seen = [set(splits[name]["g"]) for name in ("train", "val", "test")]
    assert all(seen)
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(s) for s in splits.values()) == n


def test_time_split_refuses_data_with_too_few_distinct_times() -> None:
    frame = pd.DataFrame({"t": [1, 1, 2, 2], "x": range(4)})
    with pytest.raises(DataError, match="column 't' has 2 distinct value"):
        split_by_time(frame, "t", 0.2, 0.2)


def test_a_random_split_is_refused_unless_the_schema_says_rows_are_independent() -> None:
    schema = schema_from_dict(
        {
            "name": "s",
            "task": "regression",
            "target": "y",
            "time_column": "t",
            "columns": {"t": {"kind": "numeric"}, "x": {"kind": "numeric"}, "y": {"kind": "numeric"}},
        }
    )
    frame = pd.DataFrame({"t": range(20), "x": range(20), "y": range(20)})
    with pytest.raises(DataError, match="split method 'random' would leak"):
        split_rows(frame, schema, SplitParams(method="random"), seed=0)
