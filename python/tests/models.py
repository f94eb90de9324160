"""Small modules for the package's tests and for scripts/make-torch-ec.py, their export, and
`ecc convert` on the export."""

import os
import subprocess
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]


def ecc_bin():
    """The ecc binary: $ECC_BIN, else the release build of this checkout."""
    p = os.environ.get("ECC_BIN") or str(REPO / "target/release/ecc")
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p}: build ecc first (cargo build --release) or set ECC_BIN")
    return p


class Mlp(nn.Module):
    """64-32-16-10 with biases (the 8x8 digits' shape)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 32), nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class ResCnn(nn.Module):
    """Conv-BN-ReLU, one residual block with BN (a tied stream), global mean, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.c1(x)))
        x = torch.relu(x + self.bn2(self.c2(y)))
        return self.fc(x.mean((2, 3)))


SHAPES = {"mlp": (64,), "rescnn": (1, 8, 8)}


def make(name, seed=0):
    torch.manual_seed(seed)
    m = {"mlp": Mlp, "rescnn": ResCnn}[name]()
    if name == "rescnn":
        # Running statistics other than the defaults.
        m.train()
        with torch.no_grad():
            for _ in range(3):
                m(torch.rand(16, *SHAPES[name]))
    return m


def export(m, name, folder, stem=None, bn_exporter="torchscript"):
    """FOLDER/<stem or name>.onnx, one file. Without BN: `torch.onnx.export` with its defaults
    (the dynamo exporter), in eval mode. With BN: the default exporter folds every BN into the
    conv before it (new parameters, other names), so the TorchScript exporter in training mode
    keeps them (`dynamo=False, training=TRAINING, do_constant_folding=False`); its trace runs
    the module once in training mode, so the module's state, and the running statistics in
    the file, are put back afterwards. `bn_exporter="dynamo-unoptimized"`: the default
    exporter with `optimize=False`, which keeps BN as well."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem or name}.onnx"
    was = m.training
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.rand(4, *SHAPES[name])
    has_bn = any(isinstance(c, nn.BatchNorm2d) for c in m.modules())
    if has_bn and bn_exporter == "dynamo-unoptimized":
        # The default exporter without its graph optimizer keeps BN too (it writes the
        # convs' missing biases as Expand/CastLike of constants, which ecc folds).
        m.eval()
        torch.onnx.export(
            m, (x,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("N")},), external_data=False, optimize=False,
        )
    elif has_bn:
        m.train()
        torch.onnx.export(
            m, (x,), str(path), dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
            do_constant_folding=False, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N"}},
        )
        # The trace's forward moved the running statistics the file holds: write the
        # module's own back.
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        for t in model.graph.initializer:
            if t.name in state and ("running_" in t.name):
                t.CopyFrom(numpy_helper.from_array(state[t.name].numpy(), t.name))
        onnx.save(model, str(path))
    else:
        m.eval()
        torch.onnx.export(
            m, (x,), str(path), input_names=["input"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("N")},), external_data=False,
        )
    m.load_state_dict(state)
    m.train(was)
    return path


def convert(path, folder, *extra):
    """`ecc convert` on an exported file: returns the plan's path."""
    subprocess.run(
        [ecc_bin(), "convert", str(path), "-o", str(folder), *extra],
        check=True, stdout=subprocess.DEVNULL,
    )
    return str(Path(folder) / (Path(path).stem + ".ec.json"))
