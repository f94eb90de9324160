#!/usr/bin/env python3
"""Make tests/fixtures/skl-mlp-digits.onnx (issue 16): a scikit-learn MLPClassifier (64-32-10, ReLU)
trained on the 8x8 digits (pixels / 16, as ecc's embedded `digits` set reads them),
converted by skl2onnx with its defaults: a float input, the network, then the label branch
(ArgMax, and the ai.onnx.ml ArrayFeatureExtractor over the classes) and ZipMap over the
probabilities. Run in a venv with scikit-learn 1.7.2, skl2onnx 1.19.1 (and packaging) from
PyPI:

    python3 -m venv ~/.cache/ecc/skl-venv
    ~/.cache/ecc/skl-venv/bin/pip install scikit-learn==1.7.2 skl2onnx==1.19.1 packaging
    ~/.cache/ecc/skl-venv/bin/python scripts/make-skl2onnx-mlp.py
"""
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype(np.float32)
clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(x, y)
onx = to_onnx(clf, x[:1], target_opset={"": 21, "ai.onnx.ml": 3})
out = Path(__file__).resolve().parent.parent / "tests/fixtures/skl-mlp-digits.onnx"
out.write_bytes(onx.SerializeToString())
print(f"{out}: train accuracy {clf.score(x, y):.4f}, nodes",
      [n.op_type for n in onx.graph.node], "outputs", [o.name for o in onx.graph.output])
