"""Train/validation/test splits that do not leak.

- time: rows in time order; every validation row is later than every training row and every test row
  later than every validation row (cut points are moved to the nearest change of time value, so rows
  that share a time stay together);
- group: no group appears in two splits;
- random: only when the schema says rows are independent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from loopline.config import SplitParams
from loopline.errors import DataError
from loopline.schema import FeatureSchema

SPLIT_NAMES = ("train", "val", "test")


def split_rows(df: pd.DataFrame, schema: FeatureSchema, params: SplitParams, seed: int) -> dict[str, pd.DataFrame]:
    if params.method == "time":
        if schema.time_column is None:
            raise DataError(f"split method 'time' needs a time_column in schema {schema.name!r}")
        return split_by_time(df, schema.time_column, params.val_fraction, params.test_fraction)
    if params.method == "group":
        if schema.group_column is None:
            raise DataError(f"split method 'group' needs a group_column in schema {schema.name!r}")
        return split_by_group(df, schema.group_column, params.val_fraction, params.test_fraction, seed)
    if not schema.rows_independent:
        raise DataError(
            f"split method 'random' would leak: schema {schema.name!r} does not declare rows_independent: true; "
            f"use prepare.split.method: time or group"
        )
    return split_randomly(df, params.val_fraction, params.test_fraction, seed)


def split_by_time(
    df: pd.DataFrame, time_column: str, val_fraction: float, test_fraction: float
) -> dict[str, pd.DataFrame]:
    ordered = df.sort_values(time_column, kind="mergesort").reset_index(drop=True)
    times = ordered[time_column].to_numpy()
    n = len(ordered)
    # Indices where the time value changes: the only places a cut may fall.
    changes = np.flatnonzero(times[1:] != times[:-1]) + 1
    if changes.size < 2:
        raise DataError(
            f"cannot split by time: column {time_column!r} has {changes.size + 1} distinct value(s) in "
            f"{n} rows; train, validation and test each need their own time range"
        )
    # The training cut leaves at least one later change of time for the validation/test cut.
    train_end = _nearest(changes[:-1], n * (1 - val_fraction - test_fraction))
    val_end = _nearest(changes[changes > train_end], n * (1 - test_fraction))
    return {
        "train": ordered.iloc[:train_end].reset_index(drop=True),
        "val": ordered.iloc[train_end:val_end].reset_index(drop=True),
        "test": ordered.iloc[val_end:].reset_index(drop=True),
    }


def _nearest(candidates: np.ndarray, target: float) -> int:
    return int(candidates[np.argmin(np.abs(candidates - target))])


def split_by_group(
    df: pd.DataFrame, group_column: str, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    sizes = df.groupby(group_column, sort=True).size()
    if len(sizes) < 3:
        raise DataError(f"cannot split by group: column {group_column!r} has only {len(sizes)} group(s)")
    order = np.random.default_rng(seed).permutation(len(sizes))
    shuffled = sizes.iloc[order]
    cumulative = shuffled.cumsum().to_numpy() / len(df)
    assignment = np.where(
        cumulative <= test_fraction, "test", np.where(cumulative <= test_fraction + val_fraction, "val", "train")
    )
    # Every split gets at least one group, even when one group is larger than a split's share.
    assignment[0], assignment[-1] = "test", "train"
    if "val" not in assignment:
        assignment[1] = "val"
    split_of = pd.Series(assignment, index=shuffled.index)
    labels = df[group_column].map(split_of)
    return {name: df[labels.to_numpy() == name].reset_index(drop=True) for name in SPLIT_NAMES}


def split_randomly(df: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(df))
    n_test = max(1, round(len(df) * test_fraction))
    n_val = max(1, round(len(df) * val_fraction))
    if len(df) - n_test - n_val < 1:
        raise DataError(f"cannot split {len(df)} rows into train, validation and test")
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return {name: df.iloc[np.sort(parts[name])].reset_index(drop=True) for name in SPLIT_NAMES}
