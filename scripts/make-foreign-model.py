#!/usr/bin/env python3
"""Write models/mlp-mnist-onnx-helper.onnx: an MLP 784-32-10 built with the `onnx` Python
package's helpers (not with ecc), as PyTorch exports Linear: Gemm(transB=1) + Relu, with a
trailing Softmax, opset 11, initializers as raw data. Needs onnx and numpy (the venv of
scripts/setup-onnxruntime.sh). Deterministic: numpy seed 0."""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)


def linear(name, i, o):
    b = 1.0 / np.sqrt(i)
    w = rng.uniform(-b, b, size=(o, i)).astype(np.float32)
    bias = rng.uniform(-b, b, size=(o,)).astype(np.float32)
    return [numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(bias, f"{name}.bias")]


inits = linear("l1", 784, 32) + linear("l2", 32, 10)
nodes = [
    helper.make_node("Gemm", ["x", "l1.weight", "l1.bias"], ["h"], name="Gemm_0", transB=1),
    helper.make_node("Relu", ["h"], ["r"], name="Relu_1"),
    helper.make_node("Gemm", ["r", "l2.weight", "l2.bias"], ["logits"], name="Gemm_2", transB=1),
    helper.make_node("Softmax", ["logits"], ["probs"], name="Softmax_3", axis=1),
]
graph = helper.make_graph(
    nodes,
    "torch_jit",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 784])],
    [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
    inits,
)
model = helper.make_model(graph, producer_name="onnx-helper", opset_imports=[helper.make_opsetid("", 11)])
model.ir_version = 6
onnx.checker.check_model(model, full_check=True)
onnx.save(model, sys.argv[1] if len(sys.argv) > 1 else "models/mlp-mnist-onnx-helper.onnx")
