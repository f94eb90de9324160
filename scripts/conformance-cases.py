#!/usr/bin/env python3
"""Write the onnx wheel's node test cases (onnx.backend.test.case.node, at the installed, pinned
onnx version) out as files, in the layout of onnx's data directories: OUT/<case>/model.onnx,
test_data_set_0/{input,output}_K.pb, and tolerance.json with the case's rtol and atol. Cases
whose inputs are not plain tensors (sequences, maps, optionals) are written without data sets
(the runner skips them; ecc reads tensors only) and counted.

    conformance-cases.py OUT
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, numpy_helper
from onnx.backend.test.case import node

out = Path(sys.argv[1])
if out.exists():
    shutil.rmtree(out)
written, skipped = 0, 0


def tensor(x, name):
    if isinstance(x, TensorProto):
        x.name = name
        return x.SerializeToString()
    return numpy_helper.from_array(np.asarray(x), name).SerializeToString()


for case in node.collect_testcases(None):
    d = out / case.name
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(case.model.SerializeToString())
    (d / "tolerance.json").write_text(json.dumps({"rtol": case.rtol, "atol": case.atol}))
    if not all(i.type.HasField("tensor_type") for i in case.model.graph.input) or not all(
        o.type.HasField("tensor_type") for o in case.model.graph.output
    ):
        skipped += 1
        continue
    for s, (inputs, outputs) in enumerate(case.data_sets):
        ds = d / f"test_data_set_{s}"
        ds.mkdir()
        for j, x in enumerate(inputs):
            name = case.model.graph.input[j].name
            (ds / f"input_{j}.pb").write_bytes(tensor(x, name))
        for j, y in enumerate(outputs):
            name = case.model.graph.output[j].name
            (ds / f"output_{j}.pb").write_bytes(tensor(y, name))
    written += 1
print(f"node cases: {written} written to {out}, {skipped} with non-tensor inputs or outputs left without data")
