#!/usr/bin/env python3
"""What path-space training costs in PyTorch (issue 17): the training step (forward,
cross-entropy, backward, SGD with momentum) of `scripts/peer_bench.py`'s cases, plain and
with ecc_torch's parametrization (the module exported, `ecc convert`, `ecc_torch.apply`),
alternating in blocks of 10 steps in one process, CPU, 2 threads; and ecc's own SGD and
EC-SGD steps on the same case (`ecc bench train --case C --json`) beside them. Prints the
median step times and ratios.

    ~/.cache/ecc/torch-venv/bin/python scripts/bench-torch-ec.py [--runs 30] [CASE...]

Needs ecc's release build and PyTorch with onnxscript (scripts/test-python.sh makes the venv).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo / "python"))
sys.path.insert(0, str(repo / "scripts"))
import ecc_torch  # noqa: E402
import peer_bench  # noqa: E402

ECC = str(repo / "target/release/ecc")


def export(m, shape, path):
    """As python/tests/models.py: BN kept (TorchScript, training mode) or the default."""
    x = torch.rand(2, *shape)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    if any(isinstance(c, nn.BatchNorm2d) for c in m.modules()):
        m.train()
        torch.onnx.export(m, (x,), path, dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, input_names=["input"],
                          dynamic_axes={"input": {0: "N"}})
        import onnx
        from onnx import numpy_helper
        model = onnx.load(path)
        for t in model.graph.initializer:
            if "running_" in t.name and t.name in state:
                t.CopyFrom(numpy_helper.from_array(state[t.name].numpy(), t.name))
        onnx.save(model, path)
    else:
        m.eval()
        torch.onnx.export(m, (x,), path, input_names=["input"],
                          dynamic_shapes=({0: torch.export.Dim("N")},), external_data=False)
    m.load_state_dict(state)


def stepper(model, params, batch, shape):
    opt = torch.optim.SGD(params, lr=1e-9, momentum=0.9)
    x = torch.rand(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    model.train()

    def step():
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return (time.perf_counter() - t) * 1e3
    return step


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="*", default=["mlp-784-512-512-10", "cnn-28x28", "resnet20-32x32"])
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    torch.set_num_threads(2)
    print(f"{'case':<22}{'torch':>9}{'torch+ec':>10}{'ratio':>7}{'ecc sgd':>9}{'ecc ec':>8}{'ec/torch+ec':>12}")
    for case in a.cases:
        make, shape, batch = peer_bench.CASES[case]
        torch.manual_seed(0)
        plain = make()
        torch.manual_seed(0)
        param = make()
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/{case}.onnx"
            export(param, shape, path)
            subprocess.run([ECC, "convert", path, "-o", tmp], check=True, stdout=subprocess.DEVNULL)
            h = ecc_torch.apply(param, f"{tmp}/{case}.ec.json")
        steps = {"torch": stepper(plain, plain.parameters(), batch, shape),
                 "torch+ec": stepper(param, h.param_groups(0.0), batch, shape)}
        for s in steps.values():
            for _ in range(3):
                s()
        times = {k: [] for k in steps}
        for _ in range(max(1, a.runs // 10)):
            for k, s in steps.items():
                times[k] += [s() for _ in range(10)]
        t = {k: median(v) for k, v in times.items()}
        r = subprocess.run([ECC, "bench", "train", "--case", case, "--runs", str(a.runs),
                            "--optimizers", "sgd,ec-sgd", "--json"], check=True,
                           capture_output=True, text=True)
        e = {c["optimizer"]: c["ms_per_step"] for c in json.loads(r.stdout)["cases"]}
        print(f"{case:<22}{t['torch']:9.2f}{t['torch+ec']:10.2f}{t['torch+ec'] / t['torch']:7.2f}"
              f"{e['sgd']:9.2f}{e['ec-sgd']:8.2f}{e['ec-sgd'] / t['torch+ec']:12.2f}", flush=True)


if __name__ == "__main__":
    main()
