#!/usr/bin/env python3
"""Step time of ConvTranspose and Resize against the convolutions they sit beside (issue 16:
are their kernels fast enough not to show in a step?). Writes five small models into a temp
folder and times one SGD training step of each with `ecc bench train --model` (batch 64,
random inputs; 16 channels, a global pool and a 16 -> 10 Gemm after the layer(s) named):

  conv32      3x3 conv, stride 1, on 16x32x32              (the baseline step)
  nearest     Resize nearest x2 (16x16 -> 32x32), then conv32's conv
  bilinear    Resize linear x2, then conv32's conv
  strided     3x3 conv, stride 2, pads 1, on 16x32x32 -> 16x16
  transposed  ConvTranspose 3x3, stride 2, pads 1, output_padding 1, 16x16 -> 32x32 (the
              adjoint of `strided`: the same multiply-adds)

Rounds alternate the models (--rounds, default 3) and every step time is printed, so the
spread is visible. Needs the onnx venv (scripts/setup-onnxruntime.sh) and a release build:

    ~/.cache/ecc/venv/bin/python scripts/bench-resample.py [--rounds N]
"""
import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

ap = argparse.ArgumentParser()
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--ecc", default=str(Path(__file__).resolve().parent.parent / "target/release/ecc"))
a = ap.parse_args()
rng = np.random.default_rng(0)


def w(name, *d):
    return nh.from_array((rng.standard_normal(d) * 0.1).astype(np.float32), name)


def model(path, inshape, nodes, inits):
    head = [h.make_node("GlobalAveragePool", ["r"], ["p"]), h.make_node("Flatten", ["p"], ["f"]),
            h.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1)]
    g = h.make_graph(nodes + head, path.stem,
                     [h.make_tensor_value_info("x", T.FLOAT, ["N", *inshape])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 10])],
                     inits + [w("wf", 10, 16), w("bf", 10)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))


def conv(i, o, stride=1):
    return h.make_node("Conv", [i, "wc", "wcb"], [o], pads=[1, 1, 1, 1], strides=[stride, stride])


relu = h.make_node("Relu", ["c"], ["r"])
cw = [w("wc", 16, 16, 3, 3), w("wcb", 16)]
scales = nh.from_array(np.array([1, 1, 2, 2], np.float32), "s")
tmp = Path(tempfile.mkdtemp())
specs = {
    "conv32": ([16, 32, 32], [conv("x", "c"), relu], cw),
    "nearest": ([16, 16, 16], [h.make_node("Resize", ["x", "", "s"], ["t"], mode="nearest"),
                               conv("t", "c"), relu], [scales] + cw),
    "bilinear": ([16, 16, 16], [h.make_node("Resize", ["x", "", "s"], ["t"], mode="linear"),
                                conv("t", "c"), relu], [scales] + cw),
    "strided": ([16, 32, 32], [conv("x", "c", 2), relu], cw),
    "transposed": ([16, 16, 16], [h.make_node("ConvTranspose", ["x", "wc", "wcb"], ["c"],
                                              strides=[2, 2], pads=[1, 1, 1, 1],
                                              output_padding=[1, 1]), relu], cw),
}
for name, (shape, nodes, inits) in specs.items():
    model(tmp / f"{name}.onnx", shape, nodes, inits)
times = {n: [] for n in specs}
for r in range(a.rounds):
    for name in specs:
        out = subprocess.run([a.ecc, "bench", "train", "--model", str(tmp / f"{name}.onnx"),
                              "--batch", "64", "--runs", "60", "--optimizers", "sgd"],
                             capture_output=True, text=True, check=True).stdout
        row = out.strip().splitlines()[-1].split()
        times[name].append(float(row[4]))
print(f"{'model':<12} ms/step (SGD, batch 64), one per round")
for name, t in times.items():
    print(f"{name:<12} " + "  ".join(f"{v:7.2f}" for v in t) + f"   median {np.median(t):7.2f}")
