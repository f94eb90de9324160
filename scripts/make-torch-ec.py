#!/usr/bin/env python3
"""What PyTorch does with ecc's plan (issue 17), recorded for ecc's Rust tests, which must not
need PyTorch (tests/torch_ec.rs, tests/ort.rs). For each module of python/tests/models.py
(`mlp`: 64-32-16-10; `rescnn`: conv-BN-ReLU and a residual block with BN, on 1x8x8):

  tests/fixtures/torch-ec/<name>.onnx              the module exported (dynamo exporter,
                                                   eval mode, one file)
  tests/fixtures/torch-ec/<name>/record.safetensors
      x, y          three batches of 16 (inputs, labels)
      cfg           [lr, momentum, weight decay] of the steps below
      grad.p.<w>, grad.q.<b>
                    float64 autodiff through ecc_torch's parametrization (module in float64,
                    training mode, mean cross-entropy on batch 0) w.r.t. every coordinate
                    tensor p and every block's q: the ICR that tests/torch_ec.rs compares with
                    src/ec/step.rs
      after.<k>     the module's state after three float32 SGD steps (momentum, decay on
                    everything but the q's) on the parametrized module, folded back
                    (ecc_torch.remove)
  tests/fixtures/torch-ec/<name>/trained.onnx      that trained module exported

lr: 1% of the smallest |q / dL/dq| on batch 0 (at most 0.01), so that EC-SGD's guard on R
stays out of the way (ecc_torch has none). Needs ecc's release build, and PyTorch 2.15 with
onnxscript in ~/.cache/ecc/torch-venv (scripts/test-python.sh makes it):

    ~/.cache/ecc/torch-venv/bin/python scripts/make-torch-ec.py
"""
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

repo = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(repo / "python"))
sys.path.insert(0, str(repo / "python/tests"))
import ecc_torch  # noqa: E402
import models  # noqa: E402

out = repo / "tests/fixtures/torch-ec"
MOMENTUM, DECAY = 0.9, 1e-3

for name in ["mlp", "rescnn"]:
    m = models.make(name, seed=0)
    onnx_path = models.export(m, name, out)
    state0 = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    xs = torch.rand(3, 16, *models.SHAPES[name], generator=g)
    ys = torch.randint(0, 10, (3, 16), generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        plan = models.convert(onnx_path, tmp)
        # float64 gradients at the canonical start.
        m64 = models.make(name, seed=0).double()
        m64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state0.items()})
        h = ecc_torch.apply(m64, plan)
        m64.train()
        nn.functional.cross_entropy(m64(xs[0].double()), ys[0]).backward()
        rec = {"x": xs, "y": ys}
        for n, p in m64.named_parameters():
            if n.endswith(".original"):
                # "<owner>.parametrizations.<attr>.original" -> "<owner>.<attr>"
                owner, _, rest = ("." + n).rpartition(".parametrizations.")
                key = (owner[1:] + "." if owner else "") + rest[: -len(".original")]
                rec[f"grad.p.{key}"] = p.grad.detach().clone()
        for b, q in enumerate(h.skeleton):
            rec[f"grad.q.{b}"] = q.grad.detach().clone()
        qmin = min((q.detach() / q.grad).abs().min().item() for q in h.skeleton)
        lr = min(0.01, 0.01 * qmin)
        rec["cfg"] = torch.tensor([lr, MOMENTUM, DECAY], dtype=torch.float64)
        # Three float32 steps on the parametrized module, folded back.
        m32 = models.make(name, seed=0)
        m32.load_state_dict(state0)
        h = ecc_torch.apply(m32, plan)
        m32.train()
        opt = torch.optim.SGD(h.param_groups(weight_decay=DECAY), lr=lr, momentum=MOMENTUM)
        for x, y in zip(xs, ys):
            opt.zero_grad()
            nn.functional.cross_entropy(m32(x), y).backward()
            opt.step()
        ecc_torch.remove(m32)
        for k, v in m32.state_dict().items():
            rec[f"after.{k}"] = v.detach().clone()
    (out / name).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in rec.items()}, str(out / name / "record.safetensors"))
    trained = models.export(m32, name, out / name, stem="trained")
    print(f"{name}: lr {lr:.3e}, {sum(k.startswith('grad.p.') for k in rec)} coordinate tensors, "
          f"{len(h.skeleton)} blocks; wrote {onnx_path.name}, {name}/record.safetensors, {name}/{trained.name}")
