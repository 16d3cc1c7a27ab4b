"""What only the graph knows of an input is still the client's mistake: a 422, never a 500."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnxlift_serving.errors import Unprocessable
from onnxlift_serving.pipelines import run_session
from onnxlift_serving.session import create_session


def two_free_inputs() -> bytes:
    """y = a + b, both [N]: the manifest cannot say the two N must agree; the Add kernel can."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_kernel_refusing_the_feeds_is_unprocessable() -> None:
    session = create_session(two_free_inputs())
    ones = np.ones(3, np.float32)
    (y,) = run_session(session, ["y"], {"a": ones, "b": ones})
    assert y.tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(Unprocessable, match="the model refused the input"):
        run_session(session, ["y"], {"a": ones, "b": np.ones(2, np.float32)})
