"""A torchvision resnet18 (random init, seed 0: no weights are downloaded) exported to ONNX
the two ways PyTorch users do (for the coverage table of docs/ec-dag.md and the tests):
  resnet18-bn.onnx      TorchScript exporter, TrainingMode.TRAINING: BatchNormalization kept
  resnet18-folded.onnx  the default (dynamo) exporter from eval mode: every BN folded into
                        the conv before it (a residual network without BN)
Written to $ECC_CACHE/fixtures/torchvision (default ~/.cache/ecc), outside the source tree
(45 MB each). Needs PyTorch and torchvision from PyPI in ~/.cache/ecc/torch-venv:
  ~/.cache/ecc/torch-venv/bin/pip install torchvision==0.29.2 --no-deps; pip install pillow
  ~/.cache/ecc/torch-venv/bin/python scripts/make-torchvision-resnet18.py
The tests do not need these files; when they are there, tests/torch_exports.rs imports,
analyzes, converts and trains both (at 3x32x32), tests/ort.rs runs them and their canonical
forms in onnxruntime (at 224x224), and scripts/coverage.sh counts them."""
import os
import torch
import torchvision

cache = os.environ.get("ECC_CACHE", os.path.expanduser("~/.cache/ecc"))
out = os.path.join(cache, "fixtures", "torchvision")
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
m = torchvision.models.resnet18(weights=None)
x = torch.randn(1, 3, 224, 224)
m.train()
torch.onnx.export(
    m, (x,), os.path.join(out, "resnet18-bn.onnx"), dynamo=False,
    training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
    input_names=["input"], output_names=["logits"],
    dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
)
m.eval()
folded = os.path.join(out, "resnet18-folded.onnx")
torch.onnx.export(m, (x,), folded)
# The dynamo exporter keeps large weights in an external .data file; embed them.
import onnx
onnx.save(onnx.load(folded), folded, save_as_external_data=False)
if os.path.exists(folded + ".data"):
    os.remove(folded + ".data")
print("wrote", out)
