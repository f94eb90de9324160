"""Tests of ecc_torch on CPU (scripts/test-python.sh runs them in the cached PyTorch venv):
the parametrization keeps the module's function, checks names, shapes and weights, folds
back, and trains under DistributedDataParallel (gloo, 2 processes) as one process does. The
comparisons with ecc's own step (gradients against the ICR in f64, three steps against
EC-SGD, the trained model in onnxruntime) are Rust tests on what scripts/make-torch-ec.py
recorded (tests/torch_ec.rs, tests/ort.rs)."""

import os
import sys
import tempfile
import unittest
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ecc_torch  # noqa: E402
import models  # noqa: E402


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


class Converted:
    """A module, its export and ecc's plan, in a temporary folder."""

    def __init__(self, name, seed=0):
        self.tmp = tempfile.TemporaryDirectory()
        self.name = name
        self.module = models.make(name, seed)
        self.onnx = models.export(self.module, name, self.tmp.name)
        self.plan = models.convert(self.onnx, self.tmp.name)
        self.x = torch.rand(8, *models.SHAPES[name], generator=torch.Generator().manual_seed(seed + 1))


class Parametrize(unittest.TestCase):
    def test_function_is_kept_and_coordinates_are_trainable(self):
        for name in ["mlp", "rescnn"]:
            c = Converted(name)
            m = c.module.eval()
            with torch.no_grad():
                before = m(c.x)
            h = ecc_torch.apply(m, c.plan, check_input=c.x)
            with torch.no_grad():
                after = m(c.x)
            self.assertLessEqual(rel(after, before), 1e-5, name)
            plan = ecc_torch.Plan(c.plan)
            n_tensors = sum(len(b["tensors"]) for b in plan.blocks)
            self.assertEqual(len(h.coordinates), n_tensors, name)
            self.assertEqual(len(h.skeleton), len(plan.blocks), name)
            # Every coordinate gets a gradient; the fixed scalars' entries get none.
            m.train()
            nn.functional.cross_entropy(m(c.x), torch.zeros(8, dtype=torch.long)).backward()
            for p in h.coordinates + h.skeleton:
                self.assertIsNotNone(p.grad, name)
                self.assertTrue(torch.isfinite(p.grad).all(), name)

    def test_bn_module_from_the_default_exporter_without_its_optimizer(self):
        # torch.onnx.export(..., optimize=False) keeps BN (the default folds it into the convs).
        with tempfile.TemporaryDirectory() as tmp:
            m = models.make("rescnn")
            path = models.export(m, "rescnn", tmp, bn_exporter="dynamo-unoptimized")
            plan = models.convert(path, tmp)
            x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
            h = ecc_torch.apply(m, plan, check_input=x)
            self.assertEqual(len(h.skeleton), len(ecc_torch.Plan(plan).blocks))
            self.assertGreater(len(h.coordinates), 0)

    def test_remove_folds_back_to_the_canonical_weights(self):
        c = Converted("rescnn")
        m = c.module.eval()
        ecc_torch.apply(m, c.plan)
        ecc_torch.remove(m)
        canon = ecc_torch.initializers(c.plan.replace(".ec.json", ".ec.onnx"))
        for k, v in m.state_dict().items():
            self.assertNotIn("parametrizations", k)
            if k in canon:
                self.assertLessEqual(rel(v.double(), canon[k].double()), 1e-6, k)
        for k, _ in m.named_parameters():
            self.assertNotIn("original", k)

    def test_wrong_module_names_shapes_and_weights_are_refused(self):
        c = Converted("mlp")
        other = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        with self.assertRaisesRegex(KeyError, "not a parameter of the module"):
            ecc_torch.apply(other, c.plan)
        wide = models.Mlp()
        wide.fc2 = nn.Linear(32, 17)
        with self.assertRaisesRegex(ValueError, "shape"):
            ecc_torch.apply(wide, c.plan)
        fresh = models.make("mlp", seed=5)
        with self.assertRaisesRegex(ValueError, "not the ones ecc converted"):
            ecc_torch.apply(fresh, c.plan, check_input=c.x)

    def test_sgd_with_momentum_moves_p_and_q_as_plain_parameters(self):
        # One step: each coordinate moves by -lr * (its gradient + decay), q without decay.
        c = Converted("mlp")
        m = c.module
        h = ecc_torch.apply(m, c.plan)
        opt = torch.optim.SGD(h.param_groups(weight_decay=0.01), lr=1e-3, momentum=0.9)
        nn.functional.cross_entropy(m(c.x), torch.arange(8) % 10).backward()
        before = [p.detach().clone() for p in h.coordinates + h.skeleton]
        grads = [p.grad.clone() for p in h.coordinates + h.skeleton]
        opt.step()
        n = len(h.coordinates)
        for k, (p, b, g) in enumerate(zip(h.coordinates + h.skeleton, before, grads)):
            decay = 0.01 if k < n else 0.0
            want = b - 1e-3 * (g + decay * b)
            self.assertLessEqual(rel(p.detach(), want), 1e-6)


def calm_lr(name, state, plan, x, y):
    """A learning rate at which the first step moves no q by more than 1% (at most 0.01):
    path-space SGD at a weight-space rate is far too aggressive where the V's are small
    (spec section 13), and the parametrization has no guard."""
    m = models.make(name)
    m.load_state_dict(state)
    h = ecc_torch.apply(m, plan)
    nn.functional.cross_entropy(m(x), y).backward()
    q = min((q.detach() / q.grad).abs().min().item() for q in h.skeleton)
    return min(0.01, 0.01 * q)


class Distributed(unittest.TestCase):
    def test_two_gloo_processes_with_half_batches_train_as_one_with_the_whole(self):
        for name in ["mlp", "rescnn"]:
            c = Converted(name)
            state = {k: v.clone() for k, v in c.module.state_dict().items()}
            g = torch.Generator().manual_seed(3)
            xs = torch.rand(3, 16, *models.SHAPES[name], generator=g)
            ys = torch.randint(0, 10, (3, 16), generator=g)
            if name == "rescnn":
                # BN normalizes over each process's own half batch; make the halves equal so
                # that the statistics (and so the function) agree with the whole batch.
                xs[:, 8:] = xs[:, :8]
                ys[:, 8:] = ys[:, :8]
            lr = calm_lr(name, state, c.plan, xs[0], ys[0])
            outs = []
            for world in [1, 2]:
                out = os.path.join(c.tmp.name, f"ddp{world}.pt")
                port = 29500 + os.getpid() % 1000 + world + (7 if name == "rescnn" else 0)
                mp.spawn(_ddp_worker_named, args=(world, name, c.plan, state, xs, ys, out, port, lr), nprocs=world, join=True)
                outs.append(torch.load(out))
            # Parameters (running statistics differ: each process updates them from its own
            # half batch, with the unbiased variance of 8 values instead of 16).
            keys = [k for k in outs[0] if "running" not in k and "num_batches" not in k]
            worst = max(rel(outs[1][k].double(), outs[0][k].double()) for k in keys)
            canon = ecc_torch.initializers(c.plan.replace(".ec.json", ".ec.onnx"))
            moved = max(
                rel(outs[0][k].double(), canon[k].double())
                for k in keys
                if canon[k].abs().max() > 0
            )
            print(f"{name}: 2 processes vs 1 after 3 steps at lr {lr:.1e}: {worst:.1e} (the steps moved the weights by {moved:.1e})")
            self.assertLessEqual(worst, 1e-5, name)
            self.assertGreater(moved, 1e-5, name)


def _ddp_worker_named(rank, world, name, plan, state, xs, ys, out, port, lr):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    m = models.make(name)
    m.load_state_dict(state)
    h = ecc_torch.apply(m, plan)
    ddp = nn.parallel.DistributedDataParallel(m)
    opt = torch.optim.SGD(h.param_groups(weight_decay=1e-3), lr=lr, momentum=0.9)
    per = xs.shape[1] // world
    for x, y in zip(xs, ys):
        xb, yb = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(xb), yb).backward()
        opt.step()
    if rank == 0:
        ecc_torch.remove(m)
        torch.save(m.state_dict(), out)
    dist.destroy_process_group()


if __name__ == "__main__":
    unittest.main()
