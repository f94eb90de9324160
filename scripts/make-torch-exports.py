#!/usr/bin/env python3
"""Models written by today's PyTorch exporter (issue 16): `torch.onnx.export(model, args, f)`
with its defaults (the dynamo exporter in torch 2.15, opset 18+), from eval mode, for the
8x8 digits (the data ecc embeds, so the tests train them without downloads):

  mlp.onnx       Linear 64-32, ReLU, Linear 32-10
  cnn-prelu.onnx Conv 1->8 (3x3, pad 1), PReLU(8), MaxPool 2, Dropout(0.25), Flatten, Linear
  bn-mean.onnx   Conv-BN-ReLU twice, then x.mean((2, 3)) (what AdaptiveAvgPool2d(1) and
                 mean((2, 3)) export as: ReduceMean), Linear
  decoder.onnx   Conv 1->8 stride 2, ReLU, ConvTranspose 8->4 (stride 2, output_padding 1),
                 ReLU, Upsample x2 bilinear, Conv 4->6, ReLU, interpolate x0.5 nearest,
                 mean, Linear (ConvTranspose and Resize as the exporter writes them)

Each with a reference: input_0.pb (4 random images) and PyTorch's output_0.pb, in
<name>/test_data_set_0/; the decoder also with decoder/step.safetensors: 16 images, labels and
every parameter after one PyTorch SGD step on them (lr 0.1, no momentum). Written to tests/fixtures/torch-export/ (small; committed). Needs
PyTorch 2.15 and onnxscript from PyPI in ~/.cache/ecc/torch-venv (scripts/peer-bench.sh
makes it; `pip install onnxscript` adds the exporter's dependency):

    ~/.cache/ecc/torch-venv/bin/python scripts/make-torch-exports.py [NAME...]

With names, only those models are written (each model's weights and input come from its own
seed, so one can be added without changing the others).
"""
import os
import sys
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import nn

out = Path(__file__).resolve().parent.parent / "tests/fixtures/torch-export"
torch.manual_seed(0)


class BnMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.f(x).mean((2, 3)))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.resize = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        x = torch.relu(self.down(x))
        x = torch.relu(self.up(x))
        x = torch.relu(self.conv(self.resize(x)))
        x = nn.functional.interpolate(x, scale_factor=0.5, mode="nearest")
        return self.fc(x.mean((2, 3)))


models = {
    "mlp": (nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), (64,)),
    "cnn-prelu": (
        nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.PReLU(8), nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
        ),
        (1, 8, 8),
    ),
    "bn-mean": (BnMean(), (1, 8, 8)),
}
# Models added later, each from its own seed (the ones above share seed 0 in order).
later = {"decoder": (1, Decoder, (1, 8, 8))}


def built():
    for name, (m, shape) in models.items():
        yield name, m, shape
    for name, (seed, make, shape) in later.items():
        torch.manual_seed(seed)
        yield name, make(), shape


only = set(sys.argv[1:])
for name, m, shape in built():
    if only and name not in only:
        # Keep the shared seed's sequence: draw what this model's input would have drawn.
        if name in models:
            if name == "bn-mean":
                for _ in range(5):
                    torch.rand(32, *shape)
            torch.rand(4, *shape)
        continue
    if name == "bn-mean":
        # Running statistics that are not the defaults, so eval-mode BN does something.
        m.train()
        with torch.no_grad():
            for _ in range(5):
                m(torch.rand(32, *shape))
    m.eval()
    x = torch.rand(4, *shape)
    path = out / f"{name}.onnx"
    os.makedirs(out, exist_ok=True)
    torch.onnx.export(
        m, (x,), str(path), input_names=["input"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("N")},),
    )
    # One file: the exporter may write its weights beside the model.
    model = onnx.load(str(path), load_external_data=True)
    onnx.save(model, str(path), save_as_external_data=False)
    for f in out.glob(f"{name}.onnx.data"):
        f.unlink()
    ds = out / name / "test_data_set_0"
    ds.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        y = m(x)
    (ds / "input_0.pb").write_bytes(numpy_helper.from_array(x.numpy(), "input").SerializeToString())
    (ds / "output_0.pb").write_bytes(numpy_helper.from_array(y.numpy(), "logits").SerializeToString())
    if name == "decoder":
        # One SGD step (lr 0.1, no momentum, mean cross-entropy) on 16 images and labels,
        # for tests/torch_exports.rs: ecc's step through ConvTranspose and Resize must give
        # the same parameters.
        from safetensors.torch import save_file
        xs, ys = torch.rand(16, *shape), torch.randint(0, 10, (16,))
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        opt.zero_grad()
        nn.functional.cross_entropy(m(xs), ys).backward()
        opt.step()
        after = {k: v.detach().clone() for k, v in m.state_dict().items()}
        save_file({"x": xs, "y": ys, **{f"after.{k}": v for k, v in after.items()}},
                  str(out / name / "step.safetensors"))
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"{path.name}: IR {model.ir_version}, opset {model.opset_import[0].version}, ops {ops}")
