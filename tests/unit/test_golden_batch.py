"""The golden batch an exported model must reproduce reaches every weight the model has."""

from __future__ import annotations

import pandas as pd
import pytest


def test_the_golden_batch_reaches_every_category_and_both_ends_of_every_range() -> None:
    from models.export import golden_batch
    from toy import toy_data

    data = toy_data()
    train = data.frames["train"]
    golden = golden_batch(data.frames["test"], data.schema, train)
    for col in data.schema.categorical_features:
        assert set(col.categories) <= set(golden[col.name]), col.name
        assert "__not_a_category__" in set(golden[col.name])
    for col in data.schema.numeric_features:  # the toy schema has no bounds: the training data's ends
        values = pd.to_numeric(golden[col.name], errors="coerce")
        assert values.min() == pytest.approx(train[col.name].min()) and values.max() == pytest.approx(
            train[col.name].max()
        )
    assert golden["w"].isna().any()  # the nullable column's missing value
