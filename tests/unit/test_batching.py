"""serving/batching.py: requests that arrive together run through the model in one call, and each gets
exactly the outputs its own call would have given."""

from __future__ import annotations

import asyncio

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from loopline.features import EncodedFeatures
from loopline.runtime import run_encoded
from serving.batching import MicroBatcher


def session(weight: float) -> ort.InferenceSession:
    """A real ONNX graph with the service's inputs: numeric @ [w, 2w] + categorical."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["numeric", "w"], ["n"]),
            helper.make_node("Cast", ["categorical"], ["c"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["n", "c"], ["prediction"]),
        ],
        "toy",
        [
            helper.make_tensor_value_info("numeric", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("categorical", TensorProto.INT64, [None, 1]),
        ],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [weight, 2 * weight])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def features(rows: int, seed: int) -> EncodedFeatures:
    rng = np.random.default_rng(seed)
    return EncodedFeatures(
        numeric=rng.normal(size=(rows, 2)).astype(np.float32),
        categorical=rng.integers(0, 5, size=(rows, 1)),
        missing=np.zeros((rows, 3), dtype=bool),
    )


async def together(batcher: MicroBatcher, calls: list[tuple[ort.InferenceSession, EncodedFeatures]]) -> list:
    return await asyncio.gather(*(batcher.run(s, f) for s, f in calls))


def test_requests_arriving_together_share_one_call_and_get_their_own_rows_back() -> None:
    model = session(1.0)
    calls = [(model, features(rows, seed)) for seed, rows in enumerate([1, 3, 1, 7, 2])]
    batcher = MicroBatcher(max_rows=1024)
    outputs = asyncio.run(together(batcher, calls))
    assert (batcher.batches, batcher.requests) == (1, 5)
    for (s, f), out in zip(calls, outputs):
        np.testing.assert_array_equal(out, run_encoded(s, f))


def test_a_batch_never_exceeds_max_rows_and_requests_on_two_models_run_on_their_own() -> None:
    old, new = session(1.0), session(-3.0)  # a swap put later requests on the new model
    calls = [(old, features(4, 0)), (new, features(4, 1)), (old, features(4, 2)), (new, features(4, 3))]
    batcher = MicroBatcher(max_rows=1024)
    outputs = asyncio.run(together(batcher, calls))
    assert batcher.batches == 2
    for (s, f), out in zip(calls, outputs):
        np.testing.assert_array_equal(out, run_encoded(s, f))
    small = MicroBatcher(max_rows=8)
    asyncio.run(together(small, [(old, features(4, i)) for i in range(4)]))
    assert small.batches == 2  # 16 rows in batches of at most 8


def test_with_a_wait_requests_arriving_later_join_the_batch() -> None:
    model = session(1.0)
    batcher = MicroBatcher(max_rows=1024, max_wait_ms=50)

    async def staggered() -> list:
        first = asyncio.ensure_future(batcher.run(model, features(1, 0)))
        await asyncio.sleep(0.01)  # within the wait
        return [await batcher.run(model, features(1, 1)), await first]

    outputs = asyncio.run(staggered())
    assert batcher.batches == 1 and all(out.shape == (1, 1) for out in outputs)


def test_a_failing_call_fails_each_request_of_its_batch() -> None:
    model = session(1.0)
    wrong = EncodedFeatures(numeric=np.zeros((2, 3), np.float32), categorical=np.zeros((2, 1), np.int64))
    batcher = MicroBatcher()
    with pytest.raises(Exception, match="numeric"):
        asyncio.run(together(batcher, [(model, wrong)]))
